// End-to-end tests of the demo page against a running `tandem serve`, in the system's
// Chromium through playwright-core (no browser download). scripts/test-web.sh starts the
// server and runs this; by hand:
//
//   node web/tests/e2e.mjs --url http://127.0.0.1:8080 [--out target/web-e2e] [--modes webgpu,cpu]
//                          [--visual-adapter yes]   (the server has --llm-visual-adapter)
//
// Each mode loads the page, classifies the coffee photo (expects "espresso" and a coffee or
// beverages category), checks the relevance card and the backend shown, that nothing the page
// asks for is a 404, that the relevance table fits its card (desktop and phone) and that no
// attribute chip is empty, runs the analysis again for steady-state timings and saves a
// screenshot; a photo picked while an analysis runs replaces it (the cards and the answer
// follow the last photo); when the server serves a visual adapter (scripts/test-web.sh starts it
// with the repository's seeded one), the answer sees the photo through it. Then the bad-input flows: a file
// that is not an image, a huge image, and a model download that fails (route interception).
// In the cpu mode, the page again with ?threads=2: its analysis runs through the pool of Web
// Workers, and MiniLM's embeddings there equal a one-thread instance's in the same page.
// Prints the timings of every mode as a table and writes them to <out>/timings.json.

import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const base = (args.url || process.env.TANDEM_URL || "http://127.0.0.1:8080").replace(/\/$/, "");
// What the server serves besides the page (a visual adapter for the decoder, say).
const serverInfo = await fetch(`${base}/info`).then((r) => r.json(), () => null);
const out = args.out || "target/web-e2e";
const modes = (args.modes || "webgpu,cpu").split(",");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const steadyRuns = Number(args["steady-runs"] || 3);
// Model loads on the CPU in a debug-free but slow headless browser can take minutes.
const LOAD_TIMEOUT = Number(process.env.E2E_LOAD_TIMEOUT_MS || 600_000);
const STEP_TIMEOUT = Number(process.env.E2E_STEP_TIMEOUT_MS || 180_000);

const COMMON = [
  "--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run", "--disable-quic",
];
const FLAGS = {
  webgpu: [...COMMON, "--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader", "--use-angle=swiftshader", "--disable-gpu-sandbox"],
  cpu: [...COMMON, "--disable-features=WebGPU"],
};

fs.mkdirSync(out, { recursive: true });
const failures = [];
const results = {};

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`  ok: ${what}`);
}

// The webgpu mode's only adapter is SwiftShader, which auto skips for the CPU: that mode asks
// for WebGPU by name; the cpu mode (WebGPU off) lets auto choose.
function pageBackend(mode) {
  return mode === "webgpu" ? "webgpu" : "auto";
}

async function launch(mode) {
  return chromium.launch({ executablePath: chromiumPath, headless: false, args: FLAGS[mode] });
}

function watch(page, log) {
  page.on("console", (m) => log.push(`[console.${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => log.push(`[pageerror] ${e.message}`));
  page.on("requestfailed", (r) => log.push(`[requestfailed] ${r.url()} ${r.failure()?.errorText}`));
}

// Asks a question in the "Ask about this product" card and waits for the whole answer.
async function askQuestion(page, question) {
  await page.fill("#question", question);
  const t0 = Date.now();
  await page.click("#ask-button");
  await page.waitForSelector('#ask:is([data-state="done"], [data-state="error"])', { timeout: LOAD_TIMEOUT });
  const card = await page.$eval("#ask", (e) => ({ ...e.dataset }));
  const answer = {
    state: card.state, finish: card.finish, pieces: Number(card.pieces), tokens: Number(card.tokens), seesPhoto: card.seesPhoto,
    text: await page.textContent("#answer"), note: (await page.textContent("#answer-note")).trim(), ms: Date.now() - t0,
  };
  console.log(`  answer (${answer.ms} ms, ${answer.pieces} pieces): ${answer.text.trim().replace(/\s+/g, " ")}`);
  console.log(`  ${answer.note}`);
  return answer;
}

async function runs(page) {
  return Number(await page.getAttribute("body", "data-runs"));
}

async function waitRuns(page, n) {
  await page.waitForFunction((n) => Number(document.body.dataset.runs) >= n, n, { timeout: STEP_TIMEOUT });
}

// Whether the relevance table fits its card: nothing to scroll, its last column in view.
async function tableFits(page) {
  return page.$eval("#relevance .table-wrap", (wrap) => {
    const last = wrap.querySelector("thead th:last-child").getBoundingClientRect();
    const box = wrap.getBoundingClientRect();
    return { fits: wrap.scrollWidth <= wrap.clientWidth + 1 && last.right <= box.right + 1, scroll: wrap.scrollWidth, client: wrap.clientWidth };
  });
}

async function errorShown(page) {
  const visible = await page.isVisible("#error");
  return visible ? { code: await page.getAttribute("#error", "data-code"), text: await page.textContent("#error") } : null;
}

// Runs `flow` on a fresh page of a browser launched for `mode`, then closes both; a failure
// is recorded under `label`, with the page's last log lines.
async function onPage(mode, label, flow) {
  const browser = await launch(mode);
  const log = [];
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
    const page = await context.newPage();
    watch(page, log);
    await flow(page, context);
    await context.close();
  } catch (e) {
    failures.push(`${label}: ${e.message}`);
    console.log(`  FAILED: ${e.message}\n  page log:\n    ${log.slice(-40).join("\n    ")}`);
  } finally {
    await browser.close();
  }
}

async function mainFlow(mode) {
  console.log(`\n== ${mode}: the coffee photo`);
  await onPage(mode, `${mode}`, async (page) => {
    const notFound = [];
    const on404 = (r) => r.status() === 404 && notFound.push(new URL(r.url()).pathname);
    page.on("response", on404);
    // Keeps the GPU devices the page opens, so the test can lose them on purpose.
    await page.addInitScript(() => {
      if (!self.GPUAdapter) return;
      const request = GPUAdapter.prototype.requestDevice;
      GPUAdapter.prototype.requestDevice = async function (...args) {
        const device = await request.apply(this, args);
        (self.__e2eDevices ||= []).push(device);
        return device;
      };
    });
    const t0 = Date.now();
    // Software WebGPU (SwiftShader) runs SmolLM2 at seconds a token: a 3-token answer there;
    // the CPU (wasm) run checks a whole one, Stop, and the model's cache after a reload.
    const slowDecoder = mode === "webgpu";
    await page.goto(`${base}/?backend=${pageBackend(mode)}${slowDecoder ? "&askTokens=3" : ""}`);
    await page.waitForSelector('#status:is([data-state="ready"], [data-state="error"])', { timeout: LOAD_TIMEOUT });
    const status = await page.getAttribute("#status", "data-state");
    if (status !== "ready") {
      throw new Error(`the page did not get ready: ${JSON.stringify(await errorShown(page))}`);
    }
    await waitRuns(page, 1);
    const pageLoadMs = Date.now() - t0;
    const backend = await page.getAttribute("#backend", "data-backend");
    const backendInfo = await page.getAttribute("#backend", "title");
    console.log(`  backend: ${backend} (${backendInfo})`);
    check(backend === mode, `the backend shown is ${mode}`);
    page.off("response", on404);
    // The relevance data is optional (a server may not have it); everything else must be there.
    const missing = notFound.filter((p) => !p.startsWith("/data/"));
    check(missing.length === 0, `no request of the page load is a 404 (${JSON.stringify(notFound)})`);
    check((await errorShown(page)) === null, "no error shown");
    check((await page.getAttribute("#category", "data-state")) === "done", "#category is done");
    const top = await page.$$eval("#top5 li", (lis) => lis.map((li) => ({
      class: Number(li.dataset.class), name: li.querySelector(".name").textContent, p: li.querySelector(".num").textContent,
    })));
    console.log(`  top 5: ${top.map((t) => `${t.name} ${t.p}`).join(" | ")}`);
    check(/espresso/i.test(top[0].name), `top class is espresso (got ${top[0].name})`);
    const taxonomy = await page.textContent("#taxonomy");
    console.log(`  category: ${taxonomy}`);
    check(/Coffee|Beverages/.test(taxonomy), "the category path names Coffee or Beverages");
    check((await page.getAttribute("#relevance", "data-state")) === "done", "#relevance is done");
    const grade = (await page.textContent("#grade")).trim();
    const score = await page.getAttribute("#relevance", "data-score");
    console.log(`  relevance: ${grade} ${score}; ${(await page.textContent("#relevance-source")).trim()}`);
    check(grade && grade !== "—" && Number.isFinite(Number(score)), "a relevance grade and score are shown");
    // EBRM ran in the page, and agrees with the server's EBRM on the same query and title
    // (same model, same data: only float rounding may differ).
    const source = (await page.textContent("#relevance-source")).trim();
    check(/in the page/.test(source), `relevance ran in the page (${source})`);
    const aggregatedOn = mode === "webgpu" ? /aggregated on WebGPU/ : /aggregated on the CPU/;
    check(aggregatedOn.test(source), `the aggregate ran on the page's backend (${source})`);
    const [title, query] = [await page.inputValue("#title"), await page.inputValue("#query")];
    const server = await (await fetch(`${base}/relevance`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ query, items: [{ title }] }),
    })).json();
    const serverScore = server.results?.[0]?.score;
    console.log(`  server's relevance: ${server.results?.[0]?.grade} ${serverScore}`);
    check(Math.abs(Number(score) - serverScore) < 1e-3, `the page's score ${score} matches the server's ${serverScore}`);
    check(grade === server.results?.[0]?.grade, "the page's grade matches the server's");
    const cos = Number(await page.getAttribute("#agreement", "data-cosine"));
    console.log(`  agreement: ${(await page.textContent("#agreement-label")).trim()} (${cos.toFixed(3)})`);
    check(Number.isFinite(cos), "photo-title agreement is shown");
    const attributes = await page.$$eval("#attribute-list li", (lis) => lis.map((li) => ({
      text: li.textContent, kind: li.querySelector(".kind")?.textContent ?? null, none: li.classList.contains("none"),
    })));
    console.log(`  attributes: ${attributes.map((a) => a.text).join(", ")}`);
    check(attributes.length > 0 && attributes.every((a) => a.none || (a.kind !== null && a.text.length > a.kind.length)),
      "every attribute chip has a value (none for kinds the title lacks)");
    check(attributes.some((a) => a.kind === "brand" && /lavazza/i.test(a.text)), "the title's brand (Lavazza) is among its attributes");
    check(!attributes.some((a) => a.kind === "similarity"), "the query-title similarity is not shown as an attribute");
    const fits = await tableFits(page);
    check(fits.fits, `the relevance table fits its card on a desktop (${fits.scroll} px in ${fits.client})`);

    // Steady state: the same analysis again.
    for (let i = 0; i < steadyRuns; i++) {
      const n = await runs(page);
      await page.click("#analyze");
      await waitRuns(page, n + 1);
    }
    check((await errorShown(page)) === null, `no error after ${steadyRuns} more runs`);
    await page.screenshot({ path: path.join(out, `${mode}.png`), fullPage: true });
    const timings = await page.evaluate(() => window.tandemDemo.timings());
    results[mode] = { top: top[0], taxonomy, grade, score: Number(score), cosine: cos, timings, pageLoadMs, backendInfo };

    // The same page on a phone-sized screen.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({ path: path.join(out, `${mode}-mobile.png`), fullPage: true });
    const phone = await tableFits(page);
    check(phone.fits, `the relevance table fits its card on a phone (${phone.scroll} px in ${phone.client})`);
    await page.setViewportSize({ width: 1280, height: 1000 });

    console.log(`\n== ${mode}: ask about this product`);
    const answer = await askQuestion(page, "What is this product, and who would buy it?");
    results[mode].answer = answer;
    results[mode].timings = await page.evaluate(() => window.tandemDemo.timings());
    check(answer.state === "done", `the answer is done (${answer.state}: ${JSON.stringify(await errorShown(page))})`);
    check(answer.text.trim().length > 0, "the answer has text");
    if (args["visual-adapter"] === "yes") {
      check(Boolean(serverInfo?.web?.visual_adapter), "the server serves a visual adapter (/info)");
      check(answer.seesPhoto === "1" && answer.note.includes("visual adapter"), `the answer saw the photo through the visual adapter (${answer.note})`);
    }
    check(answer.pieces >= 2, `the answer streamed in pieces (${answer.pieces})`);
    check(["eog", "length"].includes(answer.finish), `it finished on an end token or the length (${answer.finish})`);
    if (!slowDecoder) {
      // Stop: the answer ends at once, marked aborted.
      await page.fill("#question", "Describe this product in detail.");
      await page.click("#ask-button");
      await page.waitForFunction(() => Number(document.querySelector("#ask").dataset.pieces) >= 2, null, { timeout: LOAD_TIMEOUT });
      await page.click("#ask-stop");
      await page.waitForSelector('#ask:is([data-state="done"], [data-state="error"])', { timeout: STEP_TIMEOUT });
      const stopped = await page.getAttribute("#ask", "data-finish");
      check(stopped === "aborted", `Stop ends the answer (finish ${stopped})`);
    }

    console.log(`\n== ${mode}: a photo picked while an analysis runs`);
    check((await page.textContent("#answer")).trim().length > 0, "an answer about the coffee is shown");
    // The first analysis is held after its classification until the second photo is picked.
    await page.evaluate(() => {
      const t = window.tandemDemo.state.tandem;
      const classify = Object.getPrototypeOf(t).classify;
      t.classify = async function (...args) {
        const top = await classify.apply(this, args);
        if (!window.__e2eHeld) {
          window.__e2eHeld = true;
          await new Promise((release) => (window.__e2eRelease = release));
        }
        return top;
      };
    });
    const before = await runs(page);
    await page.click('.sample[data-src="samples/camera.png"]');
    await page.waitForFunction(() => typeof window.__e2eRelease === "function", null, { timeout: STEP_TIMEOUT });
    await page.click('.sample[data-src="samples/chelsea.png"]');
    await page.waitForFunction(() => window.tandemDemo.state.pending, null, { timeout: STEP_TIMEOUT });
    await page.evaluate(() => window.__e2eRelease());
    await page.waitForFunction((n) => Number(document.body.dataset.runs) > n && !window.tandemDemo.state.busy && !window.tandemDemo.state.pending,
      before, { timeout: STEP_TIMEOUT });
    await page.evaluate(() => delete window.tandemDemo.state.tandem.classify);
    const latest = await page.$$eval("#top5 li .name", (names) => names.map((n) => n.textContent));
    console.log(`  cards after camera, then the cat while it ran: ${latest.join(" | ")}`);
    check(/cat/i.test(latest[0] || ""), "the cards show the photo picked last (the cat), not the camera");
    check((await runs(page)) === before + 1, "the superseded analysis is not counted as a run");
    check((await page.getAttribute("#category", "data-state")) === "done" && (await errorShown(page)) === null, "the cat's analysis is done, no error");
    check((await page.textContent("#answer")).trim() === "" && (await page.getAttribute("#ask", "data-state")) === "idle",
      "the answer about the coffee is cleared when the photo changes");

    console.log(`\n== ${mode}: bad input`);
    // Not an image.
    await page.setInputFiles("#file", { name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("not a photo\n") });
    await page.waitForSelector("#error:not([hidden])", { timeout: STEP_TIMEOUT });
    let err = await errorShown(page);
    console.log(`  text file: [${err.code}] ${err.text.replace(/\s+/g, " ").trim()}`);
    check(err.code === "bad_image", "a text file shows a bad_image message");
    // A PNG that claims to be 60000 x 60000 pixels.
    const n0 = await runs(page);
    await page.setInputFiles("#file", { name: "huge.png", mimeType: "image/png", buffer: hugePng(60000, 60000) });
    await waitRuns(page, n0 + 1);
    err = await errorShown(page);
    console.log(`  huge image: [${err?.code}] ${err?.text.replace(/\s+/g, " ").trim()}`);
    check(err && ["image_too_large", "bad_image"].includes(err.code), "a huge image shows an image_too_large or bad_image message");
    check((await page.getAttribute("#status", "data-state")) === "ready", "the page is ready again after the errors");
    // Still works: another sample.
    const n1 = await runs(page);
    await page.click('.sample[data-src="samples/chelsea.png"]');
    await waitRuns(page, n1 + 1);
    check((await errorShown(page)) === null, "the error is gone after picking another photo");
    check((await page.getAttribute("#category", "data-state")) === "done", "the cat photo is classified after the errors");
    console.log(`  cat photo: ${await page.textContent("#top5 li .name")}`);
    await page.screenshot({ path: path.join(out, `${mode}-after-errors.png`), fullPage: true });

    // A reload downloads no model or data file again: they are in Cache Storage.
    const downloads = [];
    const onRequest = (r) => {
      const p = new URL(r.url()).pathname;
      if (p.startsWith("/models/") || p.startsWith("/data/")) downloads.push(p);
    };
    page.on("request", onRequest);
    await page.reload();
    await page.waitForSelector('#status:is([data-state="ready"], [data-state="error"])', { timeout: LOAD_TIMEOUT });
    await waitRuns(page, 1);
    page.off("request", onRequest);
    console.log(`  after a reload: ${downloads.length} model/data requests ${JSON.stringify(downloads)}`);
    check((await page.getAttribute("#status", "data-state")) === "ready", "the page is ready after a reload");
    check(downloads.length === 0, "a reload takes the models and data from Cache Storage");
    if (!slowDecoder) {
      page.on("request", onRequest);
      const again = await askQuestion(page, "Is it a good gift?");
      page.off("request", onRequest);
      check(again.state === "done" && again.text.trim().length > 0, "a question after the reload is answered");
      check(downloads.length === 0, `the language model comes from Cache Storage after a reload (${JSON.stringify(downloads)})`);
    }

    if (mode === "webgpu") {
      console.log(`\n== ${mode}: the GPU device is lost`);
      const lost = await page.evaluate(() => (self.__e2eDevices || []).map((d) => d.destroy()).length);
      check(lost > 0, `the page's GPU device was destroyed (${lost})`);
      const n2 = await runs(page);
      await page.click("#analyze");
      await waitRuns(page, n2 + 1);
      err = await errorShown(page);
      console.log(`  message: [${err?.code}] ${err?.text.replace(/\s+/g, " ").trim()}`);
      check(err && err.code === "device_lost", "a device_lost message is shown");
      check(await page.isVisible("#error-action"), "the page offers to switch to the CPU");
      check((await page.getAttribute("#status", "data-state")) !== "busy", "the page is not stuck");
      await page.screenshot({ path: path.join(out, `${mode}-device-lost.png`), fullPage: true });

      console.log(`\n== ${mode}: auto skips the software adapter`);
      await page.goto(`${base}/?backend=auto`);
      await page.waitForSelector('#backend:not([data-backend=""])', { timeout: LOAD_TIMEOUT });
      const auto = { backend: await page.getAttribute("#backend", "data-backend"), info: await page.getAttribute("#backend", "title") };
      console.log(`  auto: ${auto.backend} (${auto.info})`);
      check(auto.backend === "cpu" && /software/.test(auto.info), "auto takes the CPU over SwiftShader and says why");
    } else {
      console.log(`\n== ${mode}: ?backend=webgpu without WebGPU`);
      await page.goto(`${base}/?backend=webgpu`);
      await page.waitForSelector('#status[data-state="error"]', { timeout: LOAD_TIMEOUT });
      err = await errorShown(page);
      console.log(`  message: [${err?.code}] ${err?.text.replace(/\s+/g, " ").trim()}`);
      check(err && err.code === "webgpu_unavailable", "a webgpu_unavailable message is shown");
      check(!/bug/i.test(err.text) && /WebGPU/.test(err.text), "it says WebGPU is missing, not that this is a bug");
      check(await page.isVisible("#error-action"), "the page offers the CPU");
    }
  });
}

async function downloadFailure(mode) {
  console.log(`\n== ${mode}: the image model's download fails (HTTP 500)`);
  await onPage(mode, `${mode} download failure`, async (page) => {
    await page.route("**/mobilenet_v2-b0353104.pth", (route) => route.fulfill({
      status: 500, contentType: "application/json", body: JSON.stringify({ error: "injected failure", error_type: "Backend" }),
    }));
    // Software WebGPU (SwiftShader) runs SmolLM2 at seconds a token: a 3-token answer there;
    // the CPU (wasm) run checks a whole one, Stop, and the model's cache after a reload.
    const slowDecoder = mode === "webgpu";
    await page.goto(`${base}/?backend=${pageBackend(mode)}${slowDecoder ? "&askTokens=3" : ""}`);
    await page.waitForSelector('#status:is([data-state="ready"], [data-state="error"])', { timeout: LOAD_TIMEOUT });
    check((await page.getAttribute("#status", "data-state")) === "error", "the status says error");
    const err = await errorShown(page);
    console.log(`  message: [${err?.code}] ${err?.text.replace(/\s+/g, " ").trim()}`);
    check(err && err.code === "download_failed", "a download_failed message is shown");
    check(/image model/i.test(err.text) && /500/.test(err.text), "the message names the image model and the HTTP status");
    check(await page.isVisible("#error-action"), "a Retry button is offered");
    check((await page.getAttribute("#dl-image", "data-state")) === "error", "the image model's download shows failed");
    await page.screenshot({ path: path.join(out, `${mode}-download-failure.png`), fullPage: true });
  });
}

// Texts of uneven lengths: the pool's shares differ in size.
const UNEVEN = [
  "lavazza espresso",
  "Lavazza Super Crema Whole Bean Espresso Coffee, Medium Roast, 2.2 lb Bag, a blend of Arabica and Robusta " +
    "from Brazil, India, Indonesia and Vietnam, mild and creamy, with notes of hazelnut and brown sugar",
  "a",
  "Nike Revolution 7 Men's Road Running Shoes, Black/White, Size 10",
  "",
  "stainless steel water bottle",
  "Hydro Flask 32 oz Wide Mouth Stainless Steel Water Bottle with Flex Cap",
];

async function threadsFlow(mode) {
  console.log(`\n== ${mode}: ?threads=2`);
  await onPage(mode, `${mode} threads`, async (page, context) => {
    const notFound = [];
    context.on("response", (r) => r.status() === 404 && notFound.push(new URL(r.url()).pathname));
    await page.goto(`${base}/?backend=${pageBackend(mode)}&threads=2`);
    await page.waitForSelector('#status:is([data-state="ready"], [data-state="error"])', { timeout: LOAD_TIMEOUT });
    check((await page.getAttribute("#status", "data-state")) === "ready", "the page is ready on two threads");
    await waitRuns(page, 1);
    check((await page.getAttribute("#category", "data-state")) === "done", "its analysis ran through the pool");
    check(await page.evaluate(() => window.tandemDemo.state.tandem.threads) === 2, "the runtime has two threads");
    check(/2 threads/.test(await page.textContent("#backend-info")), "the page says so");
    const cosines = await page.evaluate(async (texts) => {
      const mod = await import("/pkg/tandem_web.js"); // the page's module, initialized
      const one = await mod.Tandem.create({ backend: "cpu" });
      await one.loadTextModel({ baseUrl: "/models/minilm/" });
      const two = window.tandemDemo.state.tandem;
      const cos = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) / Math.hypot(...a) / Math.hypot(...b);
      const out = {};
      for (const n of [1, 3, 7]) {
        const [a, b] = [await two.embed(texts.slice(0, n)), await one.embed(texts.slice(0, n))];
        out[n] = a.map((v, i) => cos(v, b[i]));
      }
      one.free();
      return out;
    }, UNEVEN);
    console.log(`  cosines with one thread: ${JSON.stringify(cosines)}`);
    for (const n of [1, 3, 7]) {
      check(cosines[n].length === n && cosines[n].every((c) => c >= 0.99999), `${n} texts on two threads embed as on one, in order`);
    }
    check(notFound.length === 0, `nothing the page or its workers ask for is a 404 (${notFound.join(", ")})`);
  });
}

// A PNG signature and IHDR chunk for a width x height RGB image, then a truncated IDAT.
function hugePng(width, height) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", Buffer.from([0x78, 0x9c, 0x63, 0x60])),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

function table() {
  const steps = [...new Set(Object.values(results).flatMap((r) => Object.keys(r.timings)))];
  const fmt = (t) => (t == null ? "—" : t.toFixed(t < 10 ? 1 : 0));
  const lines = [
    `| step (ms) | ${modes.map((m) => `${m} first | ${m} steady`).join(" | ")} |`,
    `|---|${modes.map(() => "---:|---:").join("|")}|`,
  ];
  for (const s of steps) {
    lines.push(`| ${s} | ${modes.map((m) => `${fmt(results[m]?.timings[s]?.first)} | ${fmt(results[m]?.timings[s]?.steady)}`).join(" | ")} |`);
  }
  return lines.join("\n");
}

for (const mode of modes) await mainFlow(mode);
await downloadFailure(modes[modes.length - 1]);
if (modes.includes("cpu")) await threadsFlow("cpu");

if (modes.every((m) => results[m])) {
  const classes = modes.map((m) => results[m].top.class);
  console.log(`\ntop class per mode: ${modes.map((m, i) => `${m}=${classes[i]} (${results[m].top.name})`).join(", ")}`);
  if (new Set(classes).size !== 1) failures.push(`the modes disagree on the top class: ${classes.join(" vs ")}`);
}
if (Object.keys(results).length) {
  console.log(`\nTimings (Chromium ${chromiumPath}, steady = median of ${steadyRuns} runs after the first):\n`);
  console.log(table());
  fs.writeFileSync(path.join(out, "timings.json"), JSON.stringify(results, null, 2));
  fs.writeFileSync(path.join(out, "timings.md"), table() + "\n");
}
console.log(`\nscreenshots and timings in ${out}/`);
if (failures.length) {
  console.log(`\nFAILED:\n  ${failures.join("\n  ")}`);
  process.exit(1);
}
console.log("\nall web e2e checks passed");
