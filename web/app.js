// tandem's in-browser demo: MobileNetV2 and MiniLM run in the page through the tandem
// WebAssembly package (/pkg/tandem_web.js), on WebGPU when the browser has it, else on the
// CPU (wasm SIMD). No framework, no build step.
//
// Hooks for tests: #status[data-state] (loading | ready | busy | error), #backend[data-backend],
// #category / #agreement / #attributes / #relevance [data-state] (idle | busy | done | error),
// #ask[data-state] (idle | loading | busy | done | error) with data-pieces (streamed pieces so
// far), data-finish (eog | length | aborted) and data-tokens,
// body[data-runs] (analyses finished; one superseded by a newer photo or title does not
// count), #error[data-code] (visible on errors), and window.tandemDemo.timings().

// Relative to this file, so the static site works from any folder.
const PKG = new URL("pkg/tandem_web.js", import.meta.url).href;
const TEXT_MODEL = new URL("models/minilm/", import.meta.url).pathname;
const TEXT_FILES = ["config.json", "tokenizer.json", "model.safetensors"];
const IMAGE_MODEL = new URL("models/mobilenetv2/mobilenet_v2-b0353104.pth", import.meta.url).pathname;
// The decoder of "Ask about this product": downloaded on the first question only (98 MB).
const LANGUAGE_MODEL = new URL("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", import.meta.url).pathname;
// A layer-wise visual adapter for the decoder, when the server has one (`tandem serve --llm …
// --llm-visual-adapter DIR`, said in /info): the answer then sees the photo itself
// (docs/visual-adapters.md).
const VISUAL_ADAPTER = new URL("models/visual-adapter/", import.meta.url).pathname;
const ASK_SYSTEM = "You are a shopping assistant. Answer in one or two short sentences, using only the product details given.";
// New tokens per answer; `?askTokens=N` (1 to 512) changes it (the end-to-end test keeps
// answers short on software WebGPU, where SmolLM2 takes seconds a token).
const ASK_MAX_TOKENS = (() => {
  const n = Number(new URLSearchParams(location.search).get("askTokens"));
  return Number.isInteger(n) && n >= 1 && n <= 512 ? n : 96;
})();
// What in-page relevance (EBRM) needs besides MiniLM: the brand list and the taxonomy paths
// embedded by MiniLM, as the server and the static build publish them.
const RELEVANCE_DATA = {
  brandsUrl: new URL("data/brands.json", import.meta.url).pathname,
  taxonomyUrl: new URL("data/taxonomy-minilm.emb", import.meta.url).pathname,
};
// Least probability of the class the product category is taken from.
const MIN_CATEGORY_PROBABILITY = 0.05;
const MAX_IMAGE_BYTES = 40 * 1024 * 1024; // the package's limit (MAX_IMAGE_BYTES)
const BUILD_COMMAND = "bash bindings/web/build.sh";

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const e = Object.assign(document.createElement(tag), props);
  for (const c of children) e.append(c);
  return e;
};

const params = new URLSearchParams(location.search);
const requestedBackend = ["auto", "webgpu", "cpu"].includes(params.get("backend")) ? params.get("backend") : "auto";
// `?threads=N` or `?threads=max`: embed on N threads on the CPU backend (this page and N - 1
// Web Workers, each with its own copy of MiniLM). 1 by default: the page embeds two or three
// texts at a time, which gain little from more.
const requestedThreads = params.get("threads") === "max" ? "max" : Number(params.get("threads") || 1);

const state = {
  tandem: null,
  textReady: false,
  // In-page EBRM: true once its data loaded; else relevance comes from the server, or cosine.
  relevanceReady: false,
  imageReady: false,
  llmReady: false,
  // Whether the loaded decoder sees the photo (the server serves a visual adapter).
  llmSeesPhotos: false,
  // The AbortController of the answer being generated, if any.
  asking: null,
  image: null, // { bytes: Uint8Array, name }
  busy: false,
  // The input changed while an analysis ran: that one stops at its next step, unrendered,
  // and a new one starts for the latest photo, title and query.
  pending: false,
  runs: 0,
  // step -> [ms, ...] (the first is the cold run)
  times: new Map(),
  // one-off steps: name -> ms
  once: new Map(),
};

// ---------------------------------------------------------------- status, errors, timings

function setStatus(s, text) {
  const node = $("status");
  node.dataset.state = s;
  node.textContent = text;
}

const HINTS = {
  bad_image: "Pick a PNG or JPEG photo.",
  image_too_large: "Try a smaller photo (under 40 MB and a few thousand pixels a side).",
  download_failed: "Check the connection and that the server serves the model files, then retry.",
  bad_model: "The model files are damaged or of another version; clear the site data and retry.",
  device_lost: "The GPU stopped answering. Switch to the CPU backend, or reload to try the GPU again.",
  not_loaded: "Wait for the models to finish loading.",
  bad_input: "Check the title and the query.",
  no_pkg: `Build it with <code>${BUILD_COMMAND}</code> and reload.`,
  webgpu_unavailable: "This page was opened with <code>?backend=webgpu</code>, and this browser gives it no WebGPU " +
    "(turned off, not supported here, or blocked for this GPU). Use the CPU backend, or a browser with WebGPU.",
  internal: "This is a bug; reloading the page usually helps.",
};

function showError(err, { action } = {}) {
  const code = (err && err.code) || "internal";
  const message = (err && err.message) || String(err);
  console.error("tandem demo:", code, message, err);
  const box = $("error");
  box.dataset.code = code;
  $("error-message").textContent = message;
  $("error-hint").innerHTML = HINTS[code] || "";
  const button = $("error-action");
  const act = action || ((code === "device_lost" || code === "webgpu_unavailable") && requestedBackend !== "cpu"
    ? { label: "Switch to the CPU", run: () => switchBackend("cpu") } : null);
  if (act) {
    button.hidden = false;
    button.textContent = act.label;
    button.onclick = act.run;
  } else {
    button.hidden = true;
    button.onclick = null;
  }
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").dataset.code = "";
}

function tandemError(code, message) {
  const e = new Error(message);
  e.name = "TandemError";
  e.code = code;
  return e;
}

function switchBackend(backend) {
  const url = new URL(location.href);
  url.searchParams.set("backend", backend);
  location.href = url.toString();
}

async function timed(step, fn, { once = false } = {}) {
  const t0 = performance.now();
  const result = await fn();
  const ms = performance.now() - t0;
  if (once) {
    state.once.set(step, ms);
  } else {
    if (!state.times.has(step)) state.times.set(step, []);
    state.times.get(step).push(ms);
  }
  renderTimings();
  return result;
}

function median(xs) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function timings() {
  const out = {};
  for (const [k, v] of state.once) out[k] = { first: v, steady: null, runs: 1 };
  for (const [k, v] of state.times) out[k] = { first: v[0], steady: median(v.slice(1)), runs: v.length };
  return out;
}

const fmt = (ms) => (ms == null ? "—" : ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(ms < 10 ? 1 : 0)} ms`);

function renderTimings() {
  const body = $("timings").tBodies[0];
  body.replaceChildren();
  for (const [name, t] of Object.entries(timings())) {
    const row = el("tr", {}, el("td", { textContent: name }), el("td", { textContent: fmt(t.first) }), el("td", { textContent: fmt(t.steady) }));
    row.dataset.step = name;
    body.append(row);
  }
}

// ---------------------------------------------------------------- downloads with progress

function setDownload(id, s, note, fraction) {
  const box = $(id);
  box.dataset.state = s;
  box.querySelector(".dl-note").textContent = note;
  const bar = box.querySelector("progress");
  if (fraction == null) bar.removeAttribute("value");
  else bar.value = fraction;
}

const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;

// The package keeps model files in this Cache Storage cache, by URL (bindings/web/src/fetch.rs).
const MODEL_CACHE = "tandem-models-v1";

async function openModelCache() {
  try {
    return "caches" in self ? await caches.open(MODEL_CACHE) : null;
  } catch {
    return null; // insecure context, private mode, quota: the package then downloads itself
  }
}

// Downloads the files with a progress bar and puts them where the package looks first (its
// Cache Storage), so it reads them from there instead of downloading again. Files already
// cached are skipped. Without Cache Storage the package downloads them again (from the HTTP
// cache, usually).
async function prefetch(id, urls) {
  const cache = await openModelCache();
  const todo = [];
  for (const url of urls) {
    if (cache && (await cache.match(url).catch(() => undefined))) continue;
    todo.push(url);
  }
  if (!todo.length) {
    setDownload(id, "done", "from the browser's cache", 1);
    return;
  }
  let total = 0;
  let done = 0;
  setDownload(id, "loading", "connecting…", null);
  const responses = await Promise.all(todo.map(async (url) => {
    let r;
    try {
      r = await fetch(url);
    } catch (e) {
      throw tandemError("download_failed", `Cannot download ${url}: ${e.message}`);
    }
    if (!r.ok) {
      let why = "";
      try {
        const body = await r.json();
        why = body.error ? `: ${body.error}` : "";
      } catch { /* not JSON */ }
      throw tandemError("download_failed", `Cannot download ${url} (HTTP ${r.status})${why}`);
    }
    total += Number(r.headers.get("content-length")) || 0;
    return [url, r];
  }));
  const tick = () => setDownload(id, "loading", total ? `${mb(done)} of ${mb(total)}` : mb(done), total ? Math.min(1, done / total) : null);
  await Promise.all(responses.map(async ([url, r]) => {
    const reader = r.body.getReader();
    const chunks = [];
    for (;;) {
      const { done: end, value } = await reader.read();
      if (end) break;
      chunks.push(value);
      done += value.byteLength;
      tick();
    }
    if (cache) {
      const headers = { "content-type": r.headers.get("content-type") || "application/octet-stream" };
      await cache.put(url, new Response(new Blob(chunks), { headers })).catch(() => {});
    }
  }));
  setDownload(id, "done", `${mb(done)} downloaded`, 1);
}

// ---------------------------------------------------------------- start-up

async function loadPackage() {
  let mod;
  try {
    mod = await import(PKG);
  } catch (e) {
    throw Object.assign(tandemError("no_pkg", `The tandem WebAssembly package is not built (${PKG} did not load).`), { cause: e });
  }
  await mod.default();
  return mod;
}

async function loadImageModel() {
  try {
    await timed("download image model", () => prefetch("dl-image", [IMAGE_MODEL]), { once: true });
    setDownload("dl-image", "loading", "loading into the runtime…", null);
    await timed("load image model", () => state.tandem.loadImageModel({ url: IMAGE_MODEL }), { once: true });
    setDownload("dl-image", "done", "ready", 1);
    state.imageReady = true;
  } catch (e) {
    setDownload("dl-image", "error", "failed", 0);
    throw e;
  }
}

async function loadTextModel() {
  try {
    await timed("download text model", () => prefetch("dl-text", TEXT_FILES.map((f) => TEXT_MODEL + f)), { once: true });
    setDownload("dl-text", "loading", "loading into the runtime…", null);
    await timed("load text model", () => state.tandem.loadTextModel({ baseUrl: TEXT_MODEL }), { once: true });
    setDownload("dl-text", "done", "ready", 1);
    state.textReady = true;
    await loadRelevanceData();
  } catch (e) {
    setDownload("dl-text", "error", "failed", 0);
    throw e;
  }
}

// Optional: without the data (a static host that left it out), relevance falls back.
async function loadRelevanceData() {
  if (typeof state.tandem.loadRelevanceData !== "function") return;
  try {
    await timed("load relevance data", () => state.tandem.loadRelevanceData(RELEVANCE_DATA), { once: true });
    state.relevanceReady = true;
  } catch (e) {
    console.warn("in-page relevance is off:", e);
  }
}

async function loadLanguageModel() {
  try {
    await timed("download language model", () => prefetch("dl-llm", [LANGUAGE_MODEL]), { once: true });
    setDownload("dl-llm", "loading", "loading into the runtime…", null);
    // The server says in /info whether it serves one (no 404 asked for when it does not).
    const info = await fetch(new URL("info", import.meta.url)).then((r) => (r.ok ? r.json() : null), () => null);
    const adapter = Boolean(info?.web?.visual_adapter);
    const options = adapter ? { visualAdapter: { baseUrl: VISUAL_ADAPTER }, imageModel: { url: IMAGE_MODEL } } : undefined;
    await timed("load language model", () => state.tandem.loadLanguageModel({ url: LANGUAGE_MODEL }, options), { once: true });
    state.llmSeesPhotos = adapter;
    setDownload("dl-llm", "done", "ready", 1);
    state.llmReady = true;
  } catch (e) {
    setDownload("dl-llm", "error", "failed", 0);
    throw e;
  }
}

async function loadModels() {
  clearError();
  setStatus("loading", "Downloading models…");
  $("analyze").disabled = true;
  const failures = [];
  // One at a time: the image model is small and gives the first result soonest.
  for (const [ready, load, what] of [[() => state.imageReady, loadImageModel, "image"], [() => state.textReady, loadTextModel, "text"]]) {
    if (ready()) continue;
    try {
      await load();
    } catch (e) {
      failures.push([what, e]);
    }
  }
  $("analyze").disabled = !(state.imageReady || state.textReady);
  if (failures.length) {
    const [what, e] = failures[0];
    setStatus("error", `The ${what} model is not available`);
    const err = tandemError(e.code || "download_failed", `The ${what} model could not be loaded. ${e.message || e}`);
    showError(err, { action: { label: "Retry", run: () => loadModels().then(analyze).catch(showError) } });
    return false;
  }
  setStatus("ready", "Ready");
  return true;
}

async function start() {
  renderTimings();
  setStatus("loading", "Loading the runtime…");
  let mod;
  try {
    mod = await timed("load wasm package", loadPackage, { once: true });
  } catch (e) {
    setStatus("error", "Runtime not available");
    $("downloads").hidden = true;
    showError(e);
    return;
  }
  try {
    state.tandem = await timed("create runtime", () => mod.Tandem.create({ backend: requestedBackend, threads: requestedThreads }), { once: true });
  } catch (e) {
    setStatus("error", e && e.code === "webgpu_unavailable" ? "No WebGPU" : "No backend");
    showError(e, requestedBackend !== "cpu" ? { action: { label: "Use the CPU", run: () => switchBackend("cpu") } } : undefined);
    return;
  }
  const backend = state.tandem.backend;
  const info = state.tandem.backendInfo || "";
  const badge = $("backend");
  badge.dataset.backend = backend;
  badge.textContent = backend === "webgpu" ? "WebGPU" : "CPU · wasm";
  badge.title = info;
  $("backend-name").textContent = backend === "webgpu" ? "WebGPU" : "CPU (WebAssembly SIMD)";
  const threads = state.tandem.threads > 1 ? `; embeddings on ${state.tandem.threads} threads` : "";
  $("backend-info").textContent = `${info}${threads}${requestedBackend !== "auto" ? ` (asked for ${requestedBackend})` : ""}`;
  $("ask-button").disabled = false;
  if (await loadModels()) await analyze();
}

// ---------------------------------------------------------------- input

function looksLikeImage(bytes) {
  const png = bytes.length > 8 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47;
  const jpeg = bytes.length > 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff;
  return png || jpeg;
}

let previewUrl = null;

async function useFile(file) {
  clearError();
  if (file.size > MAX_IMAGE_BYTES) {
    showError(tandemError("image_too_large", `${file.name} is ${mb(file.size)}; the limit is ${mb(MAX_IMAGE_BYTES)}.`));
    return;
  }
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (!looksLikeImage(bytes)) {
    showError(tandemError("bad_image", `${file.name} is not a PNG or JPEG image.`));
    return;
  }
  for (const b of document.querySelectorAll(".sample")) b.setAttribute("aria-pressed", "false");
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(new Blob([bytes], { type: file.type || "image/png" }));
  $("preview").src = previewUrl;
  $("preview").alt = `Your photo: ${file.name}`;
  state.image = { bytes, name: file.name };
  clearAnswer();
  await analyze();
}

async function useSample(button) {
  clearError();
  for (const b of document.querySelectorAll(".sample")) b.setAttribute("aria-pressed", String(b === button));
  const src = button.dataset.src;
  $("preview").src = src;
  $("preview").alt = button.querySelector("img").alt;
  if (button.dataset.title) $("title").value = button.dataset.title;
  const r = await fetch(src);
  state.image = { bytes: new Uint8Array(await r.arrayBuffer()), name: src };
  clearAnswer();
  await analyze();
}

async function currentImage() {
  if (!state.image) {
    const pressed = document.querySelector('.sample[aria-pressed="true"]') || document.querySelector(".sample");
    const r = await fetch(pressed.dataset.src);
    state.image = { bytes: new Uint8Array(await r.arrayBuffer()), name: pressed.dataset.src };
  }
  return state.image;
}

// ---------------------------------------------------------------- analysis

const cosine = (a, b) => {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
};

function setCard(id, s) {
  $(id).dataset.state = s;
  $(id).setAttribute("aria-busy", String(s === "busy"));
}

function renderCategory(top) {
  const list = $("top5");
  list.replaceChildren();
  for (const c of top) {
    const li = el("li", {},
      el("span", { className: "name", textContent: c.name }),
      el("span", { className: "num", textContent: `${(c.probability * 100).toFixed(1)}%` }),
      el("span", { className: "bar", role: "presentation" }, el("span", { style: `width:${Math.max(1, c.probability * 100)}%` })));
    if (c.category) li.append(el("span", { className: "cat", textContent: c.category }));
    li.dataset.class = c.class;
    list.append(li);
  }
  // A class far down the list says little about the photo: a category only from a class
  // the model gives a real chance.
  const best = top.find((c) => c.category && c.probability >= MIN_CATEGORY_PROBABILITY);
  $("taxonomy").textContent = best ? best.category : "No product category";
  $("taxonomy").dataset.class = best ? best.name : "";
  $("taxonomy-note").textContent = best
    ? `From “${best.name}” (${(best.probability * 100).toFixed(1)}%), ImageNet class ${best.class}.`
    : `None of the likely classes maps to the Google product taxonomy: “${top[0].name}” is not a product class.`;
  return best || top[0];
}

function agreementLabel(cos) {
  if (cos >= 0.45) return ["Photo and title agree", "good"];
  if (cos >= 0.25) return ["Loosely related", "fair"];
  return ["Photo and title disagree", "poor"];
}

// A taxonomy path's last two levels ("Coffee Makers & Espresso Machines > Espresso Pots"):
// the full path goes in a tooltip.
const shortPath = (v) => (typeof v === "string" && v.includes(" > ") ? `… ${v.split(" > ").slice(-2).join(" > ")}` : v);
const cell = (text, props = {}) => el("td", { textContent: shortPath(text), title: text, ...props });

// The title's attributes among an item's scored entities: those extracted from the title (or
// given), and, for the kinds the query names, what the title has (`item_value`). Skipped: the
// stand-ins EBRM scores for kinds the title lacks ("missing", or a query kind without an
// item value) and the query-title similarity, which is no attribute.
function titleAttributes(entities) {
  const seen = new Set();
  const out = [];
  for (const e of entities) {
    if (e.source === "missing" || e.kind === "similarity") continue;
    const value = String((e.source === "query" ? e.item_value : e.value ?? e.item_value) ?? "").trim();
    const key = `${e.kind}\u0000${value.toLowerCase()}`;
    if (!value || seen.has(key)) continue;
    seen.add(key);
    out.push({ kind: e.kind, value });
  }
  return out;
}

function renderAttributes(attributes, note) {
  const list = $("attribute-list");
  list.replaceChildren();
  for (const { kind, value } of attributes) {
    list.append(el("li", { title: value }, el("span", { className: "kind", textContent: kind }), shortPath(value)));
  }
  if (!list.children.length) list.append(el("li", { className: "none", textContent: "none found" }));
  if (note) $("attributes-note").textContent = note;
}

function renderRelevance(result, query, source) {
  const grade = $("grade");
  grade.textContent = result.grade || "—";
  grade.dataset.grade = result.grade || "";
  const score = result.final_score ?? result.score;
  $("relevance-score").textContent = score == null ? "" : `score ${score.toFixed(3)}`;
  $("relevance").dataset.score = score == null ? "" : String(score);
  const body = $("deciding");
  body.replaceChildren();
  const queryEntities = (query && query.entities) || [];
  for (const d of result.deciding || []) {
    const q = d.query ?? queryEntities.find((e) => e.kind === d.kind)?.value ?? "—";
    const item = d.item ?? d.value ?? "—";
    const effect = d.contribution == null ? "" : d.contribution.toFixed(3);
    body.append(el("tr", {},
      el("td", { textContent: d.kind }), cell(q), cell(item),
      el("td", { className: "num", textContent: d.qe == null ? "" : d.qe.toFixed(2) }),
      el("td", { className: "num", textContent: effect })));
  }
  const lines = $("explanation");
  lines.replaceChildren(...(result.explanation || []).map((t) => el("li", { textContent: t })));
  $("relevance-source").textContent = source;
}

let serverRelevance; // undefined: not checked; false: none; true: the page's server has /relevance

async function hasServerRelevance() {
  if (serverRelevance === undefined) {
    try {
      const r = await fetch(new URL("info", location.href));
      const info = r.ok ? await r.json() : {};
      serverRelevance = !!info.relevance;
    } catch {
      serverRelevance = false;
    }
  }
  return serverRelevance;
}

// Relevance of the item to the query: in the page when the package has it, else the
// server that served the page (tandem serve), else plain cosine similarity in the page.
async function relevanceOf(query, title) {
  const t = state.tandem;
  if (state.relevanceReady) {
    const r = await timed("relevance", () => t.relevance(query, [{ title }], { explain: true, allEntities: true }));
    const result = r.results[0];
    const on = r.aggregated_on === "wgpu" ? "WebGPU" : "the CPU (wasm)";
    return { result, query: r.query, entities: result.entities, source: `EBRM in the page, aggregated on ${on}.` };
  }
  if (await hasServerRelevance()) {
    const r = await timed("relevance (server)", async () => {
      const resp = await fetch(new URL("relevance", location.href), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ query, items: [{ title }], explain: true, all_entities: true }),
      });
      const body = await resp.json();
      if (!resp.ok) throw tandemError("bad_input", body.error || `relevance: HTTP ${resp.status}`);
      return body;
    });
    const result = r.results[0];
    return { result, query: r.query, entities: result.entities, source: "EBRM on the server (the page could not load its relevance data)." };
  }
  const cos = await timed("similarity", () => t.similarity(query, title));
  const grade = cos >= 0.6 ? "Exact" : cos >= 0.4 ? "Substitute" : "Irrelevant";
  return { result: { score: cos, grade, deciding: [], explanation: [`cosine of query and title: ${cos.toFixed(3)}`] }, query: null, entities: null, source: "Cosine similarity in the page (no entity model in this build)." };
}

// Thrown by a step of an analysis whose input changed meanwhile.
const SUPERSEDED = Symbol("superseded");

function stopIfSuperseded() {
  if (state.pending) throw SUPERSEDED;
}

async function analyze() {
  if (!state.tandem || !(state.imageReady || state.textReady)) return;
  if (state.busy) {
    // A call into the package cannot be interrupted: the running analysis stops at its next
    // step without showing its results, and this one runs after it.
    state.pending = true;
    return;
  }
  const title = $("title").value.trim();
  const query = $("query").value.trim();
  if (!title || !query) {
    showError(tandemError("bad_input", !title ? "Type a product title." : "Type a query."));
    return;
  }
  state.busy = true;
  state.pending = false;
  setStatus("busy", "Analyzing…");
  $("analyze").disabled = true;
  const cards = ["category", "agreement", "attributes", "relevance"];
  cards.forEach((c) => setCard(c, "busy"));
  let failed = null;
  try {
    await timed("analysis (all steps)", async () => {
      let best = null;
      if (state.imageReady) {
        const { bytes } = await currentImage();
        try {
          // A copy: the package may take ownership of the buffer.
          const top = await timed("classify image", () => state.tandem.classify(bytes.slice(), 5));
          stopIfSuperseded();
          best = renderCategory(top);
          setCard("category", "done");
        } catch (e) {
          setCard("category", "error");
          throw e;
        }
      } else {
        setCard("category", "error");
        $("taxonomy").textContent = "The image model is not loaded";
      }
      if (state.textReady) {
        if (best) {
          const label = best.category ? `${best.name}: ${best.category.split(" > ").slice(-2).join(", ")}` : best.name;
          const [a, b] = await timed("embed title + category", () => state.tandem.embed([title, label]));
          stopIfSuperseded();
          const cos = cosine(a, b);
          const [text, level] = agreementLabel(cos);
          $("agreement-meter").value = Math.max(0, cos);
          $("agreement-meter").setAttribute("aria-valuetext", `${text}, cosine ${cos.toFixed(2)}`);
          $("agreement-label").textContent = text;
          $("agreement-value").textContent = `cosine ${cos.toFixed(3)} with “${label}”`;
          $("agreement").dataset.level = level;
          $("agreement").dataset.cosine = String(cos);
          setCard("agreement", "done");
        } else {
          setCard("agreement", "error");
        }
        const rel = await relevanceOf(query, title);
        stopIfSuperseded();
        renderRelevance(rel.result, rel.query, rel.source);
        setCard("relevance", "done");
        if (rel.entities) {
          renderAttributes(titleAttributes(rel.entities), "As the relevance model reads the title.");
        } else {
          renderAttributes([], "Attribute extraction needs the entity model (EBRM), not in this build.");
        }
        setCard("attributes", "done");
      } else {
        for (const c of ["agreement", "attributes", "relevance"]) setCard(c, "error");
      }
    });
  } catch (e) {
    if (e !== SUPERSEDED) {
      failed = e;
      cards.filter((c) => $(c).dataset.state === "busy").forEach((c) => setCard(c, "error"));
      showError(e);
    }
  } finally {
    state.busy = false;
  }
  if (state.pending) {
    // Superseded (or the input changed after its last step): the latest input's turn.
    await analyze();
    return;
  }
  state.runs += 1;
  if (!failed && !state.once.has("page open → first result")) {
    // performance.now() counts from the navigation's start.
    state.once.set("page open → first result", performance.now());
    renderTimings();
  }
  document.body.dataset.runs = String(state.runs);
  $("analyze").disabled = false;
  if (failed && failed.code === "device_lost") setStatus("error", "GPU lost");
  else if (!state.imageReady) setStatus("error", "The image model is not available");
  else if (!state.textReady) setStatus("error", "The text model is not available");
  else setStatus("ready", "Ready");
}

// ---------------------------------------------------------------- ask about this product

// What the decoder is told: the typed title, the category the photo got (when it has one)
// and the question.
function askPrompt(question) {
  const lines = [`Product title: ${$("title").value.trim() || "(none)"}`];
  const category = $("taxonomy").textContent.trim();
  if ($("category").dataset.state === "done" && category !== "No product category") {
    lines.push(`Category, from its photo: ${category}`);
  }
  lines.push(`Question: ${question}`);
  return lines.join("\n");
}

// A new photo makes the answer about the old one stale: clear it, stopping a generation.
function clearAnswer() {
  if (state.asking) {
    state.asking.cleared = true;
    state.asking.abort();
  }
  $("answer").textContent = "";
  $("answer-note").textContent = "Ask again about this photo.";
  Object.assign($("ask").dataset, { pieces: "0", finish: "", tokens: "" });
  setCard("ask", "idle");
}

async function ask() {
  if (state.asking || !state.tandem) return;
  const question = $("question").value.trim();
  if (!question) {
    showError(tandemError("bad_input", "Type a question."));
    return;
  }
  clearError();
  const card = $("ask");
  const answer = $("answer");
  const controller = new AbortController();
  state.asking = controller;
  $("ask-button").disabled = true;
  $("ask-stop").hidden = false;
  answer.textContent = "";
  Object.assign(card.dataset, { pieces: "0", finish: "", tokens: "" });
  try {
    if (!state.llmReady) {
      setCard("ask", "loading");
      $("answer-note").textContent = "Downloading the language model (98 MB, once)…";
      await loadLanguageModel();
    }
    setCard("ask", "busy");
    let pieces = 0;
    const options = { system: ASK_SYSTEM, maxTokens: ASK_MAX_TOKENS, repetitionPenalty: 1.1, signal: controller.signal };
    const onPiece = (piece) => {
      if (controller.cleared) return;
      answer.textContent += piece;
      card.dataset.pieces = String(++pieces);
    };
    // With a visual adapter the decoder sees the photo itself, besides the title.
    const photo = state.llmSeesPhotos && state.image ? state.image.bytes : null;
    card.dataset.seesPhoto = photo ? "1" : "0";
    const result = photo
      ? await timed("answer about the photo", () => state.tandem.describe(photo.slice(), { ...options, prompt: askPrompt(question) }, onPiece))
      : await timed("answer a question", () => state.tandem.generate(askPrompt(question), options, onPiece));
    if (controller.cleared) return; // the photo changed: clearAnswer has reset the card
    Object.assign(card.dataset, { finish: result.finish, tokens: String(result.ids.length) });
    const stopped = result.finish === "aborted" ? " · stopped" : "";
    $("answer-note").textContent = `${result.ids.length} tokens · first after ${fmt(result.prefillMs)} · ` +
      `${result.tokensPerSecond >= 10 ? result.tokensPerSecond.toFixed(0) : result.tokensPerSecond.toPrecision(2)} tokens/s after it${stopped} · SmolLM2-135M-Instruct in this page` +
      (photo ? ", seeing the photo through its visual adapter" : "");
    setCard("ask", "done");
  } catch (e) {
    if (controller.cleared) return;
    setCard("ask", "error");
    showError(e);
  } finally {
    if (state.asking === controller) state.asking = null;
    $("ask-button").disabled = false;
    $("ask-stop").hidden = true;
  }
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearError();
    analyze();
  });
  $("error-dismiss").addEventListener("click", clearError);
  $("ask-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    ask();
  });
  $("ask-stop").addEventListener("click", () => state.asking && state.asking.abort());
  for (const b of document.querySelectorAll(".sample")) b.addEventListener("click", () => useSample(b).catch(showError));
  $("file").addEventListener("change", (ev) => {
    const f = ev.target.files && ev.target.files[0];
    if (f) useFile(f).catch(showError);
    ev.target.value = "";
  });
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (ev) => {
      ev.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const f = ev.dataTransfer.files && ev.dataTransfer.files[0];
    if (f) useFile(f).catch(showError);
  });
  drop.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      $("file").click();
    }
  });
  window.addEventListener("unhandledrejection", (ev) => showError(ev.reason));
}

window.tandemDemo = { timings, state, analyze, ask };
wire();
start();
