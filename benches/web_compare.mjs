// tandem's wasm CPU backend against transformers.js (onnxruntime-web, wasm) on all-MiniLM-L6-v2,
// in the same headless Chromium with WebGPU off, on the same weights. See benches/README.md
// ("In the browser, against transformers.js").
//
//   node benches/web_compare.mjs [--rounds 7] [--threads 1,max] [--engines tandem,tjs]
//        [--tjs DIR] [--onnx FILE] [--model DIR] [--pkg web/pkg] [--out benches/out/web_compare.json]
//
// --tjs: a folder with node_modules/@huggingface/transformers and node_modules/onnxruntime-web
//   (npm install --ignore-scripts @huggingface/transformers there; not part of the repo).
// --onnx: MiniLM exported as fp32 ONNX with mean pooling and normalization inside (inputs
//   input_ids, attention_mask, token_type_ids; output `embeddings`), as benches/cpu_compare.py
//   writes it to benches/out/minilm.onnx.
// --pkg: the tandem package to load (bindings/web/build.sh [--out DIR] builds one).
// --model: tandem's MiniLM folder (config.json, tokenizer.json, model.safetensors; `tandem
//   fetch minilm` puts it in ~/.cache/tandem/models/minilm).
//
// --threads: the thread counts to run ("max": the browser's navigator.hardwareConcurrency);
// at each, both engines get that many threads: tandem as Tandem.create({ threads }) (its pool
// of Web Workers, each with its own wasm instance and copy of the model), transformers.js as
// onnxruntime-web's numThreads. A run where an engine did not get them fails.
// The page is served by this script with COOP/COEP headers (cross-origin isolated), so
// onnxruntime-web may use its SharedArrayBuffer threads (tandem's workers need no such
// headers); every engine gets the same page.
// Each thread count gets a fresh browser; each engine embeds every workload once to warm
// up, then the rounds interleave the engines (alternating which goes first) and the table
// shows medians (5x the rounds for the one-text workload). Before timing, the embeddings of the engines are compared (cosine per
// text); a pair below 0.999 fails the run.

import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const rounds = Number(args.rounds || 7);
const engines = (args.engines || "tandem,tjs").split(",");
const tjsDir = path.resolve(args.tjs || process.env.TJS_DIR || "/tmp/tjs");
const onnx = path.resolve(args.onnx || path.join(root, "benches/out/minilm.onnx"));
const modelDir = path.resolve(args.model || path.join(os.homedir(), ".cache/tandem/models/minilm"));
const pkgDir = path.resolve(args.pkg || path.join(root, "web/pkg"));
const outFile = path.resolve(args.out || path.join(root, "benches/out/web_compare.json"));
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const { chromium } = await import(path.join(root, "web/tests/node_modules/playwright-core/index.mjs"));

function need(file, why) {
  if (!fs.existsSync(file)) {
    console.error(`web_compare: ${file} is missing: ${why}`);
    process.exit(2);
  }
}
need(path.join(pkgDir, "tandem_web.js"), "run bash bindings/web/build.sh");
need(path.join(modelDir, "model.safetensors"), "run `tandem fetch minilm` or pass --model");
if (engines.includes("tjs")) {
  need(path.join(tjsDir, "node_modules/@huggingface/transformers/dist/transformers.min.js"), "npm install --ignore-scripts @huggingface/transformers in --tjs");
  need(onnx, "export it (benches/cpu_compare.py) or pass --onnx");
}

// Workloads. Every word of the long texts is one WordPiece token of MiniLM's vocabulary, so
// 126 words + [CLS] + [SEP] are 128 tokens.
const WORDS = ("the of and to in for with on by from at as is are was this that it be or an new all can more one your our " +
  "their about other which will has have not but what when how some time price size color black white blue red green steel " +
  "wood cotton leather glass water coffee tea kitchen home garden light power battery phone case cover bag shoe shirt dress " +
  "table chair lamp cup bottle box set pack small large long short high low fast easy soft hard clean fresh best good great " +
  "free day year week use made design quality brand model style fit quick gift travel outdoor indoor sport car bike watch " +
  "book game music video camera screen card paper pen desk bed room door wall floor window kids women men baby dog cat food " +
  "oil milk sugar salt fruit plant flower tree stone metal plastic gold silver").split(" ");
const longText = (i) => Array.from({ length: 126 }, (_, j) => WORDS[(i * 37 + j * 13 + ((i * j) % 7)) % WORDS.length]).join(" ");
const QUERIES = [
  "lavazza espresso", "wireless earbuds", "running shoes men", "stainless steel water bottle", "kids rain jacket",
  "organic green tea", "usb c charger", "office chair ergonomic", "cast iron skillet", "yoga mat thick",
  "led desk lamp", "dog food grain free", "bluetooth speaker waterproof", "leather wallet", "4k monitor 27 inch",
  "coffee grinder burr",
];
const TITLES = [
  "Lavazza Super Crema Whole Bean Espresso Coffee, Medium Roast, 2.2 lb Bag",
  "Soundcore Wireless Earbuds with Noise Cancelling, 40H Playtime, Bluetooth 5.3",
  "Nike Revolution 7 Men's Road Running Shoes, Black/White, Size 10",
  "Hydro Flask 32 oz Wide Mouth Stainless Steel Water Bottle with Flex Cap",
  "Columbia Kids' Glennaker Waterproof Rain Jacket, Packable Hood",
  "Yogi Organic Green Tea Super Antioxidant, 16 Tea Bags (Pack of 6)",
  "Anker 65W USB C Charger, Foldable GaN Fast Charger for Laptop and Phone",
  "Ergonomic Office Chair with Lumbar Support, Adjustable Arms, Mesh Back",
  "Lodge 10.25 Inch Cast Iron Skillet, Pre-Seasoned, Oven Safe",
  "Gaiam Essentials Thick Yoga Mat with Carrying Strap, 10 mm",
  "LED Desk Lamp with USB Charging Port, 5 Color Modes, Touch Control",
  "Blue Buffalo Wilderness Grain Free Dry Dog Food, Chicken, 24 lb",
  "JBL Flip 6 Portable Bluetooth Speaker, IP67 Waterproof, Black",
  "Fossil Men's Derrick Leather Bifold Wallet with Flip ID Window",
  "Dell 27 Inch 4K UHD Monitor, IPS, USB-C, Height Adjustable",
  "Baratza Encore Conical Burr Coffee Grinder, 40 Grind Settings",
];
const WORKLOADS = {
  "1 text (17 tokens)": ["Lavazza Super Crema espresso, whole bean coffee, 1 kg"],
  "32 × 128 tokens": Array.from({ length: 32 }, (_, i) => longText(i)),
  "16 queries + 16 titles": [...QUERIES, ...TITLES],
};

// The bench page: window.bench.{setup, embed, time}.
const PAGE = `<!doctype html><meta charset="utf-8"><title>web_compare</title><script type="module">
const engines = {};
window.bench = {
  async setup(which, threads) {
    const info = { crossOriginIsolated, hardwareConcurrency: navigator.hardwareConcurrency };
    if (which.includes("tandem")) {
      const mod = await import("/pkg/tandem_web.js");
      await mod.default();
      const t = await mod.Tandem.create({ backend: "cpu", threads });
      await t.loadTextModel({ baseUrl: "/minilm/" });
      engines.tandem = { embed: (texts) => t.embed(texts) };
      info.tandem = { backend: t.backendInfo, threads: t.threads };
    }
    if (which.includes("tjs")) {
      const { AutoTokenizer, AutoModel, env } = await import("/tjs/transformers.min.js");
      env.allowRemoteModels = false;
      env.allowLocalModels = true;
      env.localModelPath = "/models/";
      env.useBrowserCache = false;
      env.backends.onnx.wasm.wasmPaths = "/ort/";
      env.backends.onnx.wasm.numThreads = threads;
      const tokenizer = await AutoTokenizer.from_pretrained("minilm");
      const model = await AutoModel.from_pretrained("minilm", { dtype: "fp32", device: "wasm" });
      engines.tjs = {
        tokenizer,
        async embed(texts) {
          const inputs = tokenizer(texts, { padding: true, truncation: true });
          const { embeddings } = await model(inputs);
          const [n, d] = embeddings.dims;
          return Array.from({ length: n }, (_, i) => embeddings.data.slice(i * d, (i + 1) * d));
        },
      };
      info.tjs = { threads: env.backends.onnx.wasm.numThreads };
    }
    return info;
  },
  tokens(texts) {
    const tok = engines.tjs?.tokenizer;
    return tok ? texts.map((t) => tok(t).input_ids.dims.at(-1)) : null;
  },
  async embed(engine, texts) {
    return (await engines[engine].embed(texts)).map((v) => Array.from(v));
  },
  async time(engine, texts) {
    const t0 = performance.now();
    await engines[engine].embed(texts);
    return performance.now() - t0;
  },
};
window.benchReady = true;
</script>`;

const TYPES = { ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json", ".html": "text/html" };
const MOUNTS = [
  ["/pkg/", pkgDir],
  ["/minilm/", modelDir],
  ["/tjs/", path.join(tjsDir, "node_modules/@huggingface/transformers/dist")],
  ["/ort/", path.join(tjsDir, "node_modules/onnxruntime-web/dist")],
  ["/models/minilm/onnx/model.onnx", onnx],
  ["/models/minilm/", modelDir],
];
const server = http.createServer((req, res) => {
  const url = decodeURIComponent(new URL(req.url, "http://x").pathname);
  const headers = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp", "Cache-Control": "no-store" };
  if (url === "/") {
    res.writeHead(200, { ...headers, "Content-Type": "text/html" }).end(PAGE);
    return;
  }
  for (const [prefix, dir] of MOUNTS) {
    if (!url.startsWith(prefix)) continue;
    const file = prefix.endsWith("/") ? path.join(dir, url.slice(prefix.length)) : dir;
    if ((prefix.endsWith("/") && !file.startsWith(dir + path.sep)) || !fs.existsSync(file) || !fs.statSync(file).isFile()) break;
    res.writeHead(200, { ...headers, "Content-Type": TYPES[path.extname(file)] || "application/octet-stream", "Content-Length": fs.statSync(file).size });
    fs.createReadStream(file).pipe(res);
    return;
  }
  res.writeHead(404, headers).end("not found");
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const base = `http://127.0.0.1:${server.address().port}`;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const cosine = (a, b) => {
  let d = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) (d += a[i] * b[i]), (na += a[i] * a[i]), (nb += b[i] * b[i]);
  return d / Math.sqrt(na * nb);
};

const results = { date: new Date().toISOString(), pkg: pkgDir, uptime: os.loadavg(), rounds, engines, runs: [] };
let failed = false;
const browserThreads = async () => {
  const b = await chromium.launch({ executablePath: chromiumPath, headless: true, args: ["--disable-features=WebGPU"] });
  const n = await (await b.newPage()).evaluate(() => navigator.hardwareConcurrency);
  await b.close();
  return n;
};
const max = await browserThreads();
const threadCounts = [...new Set((args.threads || "1,max").split(",").map((t) => (t === "max" ? max : Number(t))))];
try {
  for (const threads of threadCounts) {
    const browser = await chromium.launch({
      executablePath: chromiumPath, headless: true,
      args: ["--headless=new", "--no-sandbox", "--disable-features=WebGPU", "--disable-background-networking", "--no-first-run"],
    });
    try {
      const page = await browser.newPage();
      page.on("pageerror", (e) => console.error(`[pageerror] ${e.message}`));
      page.on("console", (m) => m.type() === "error" && console.error(`[console] ${m.text()}`));
      await page.goto(base);
      await page.waitForFunction(() => window.benchReady);
      const info = await page.evaluate(([e, t]) => window.bench.setup(e, t), [engines, threads]);
      console.log(`\n== ${threads} thread(s): ${JSON.stringify(info)}`);
      for (const e of engines) {
        if (info[e].threads !== threads) {
          console.error(`FAIL: ${e} runs ${info[e].threads} thread(s), not ${threads}`);
          failed = true;
        }
      }
      const run = { threads, info, workloads: {} };
      for (const [name, texts] of Object.entries(WORKLOADS)) {
        const tokens = await page.evaluate((t) => window.bench.tokens(t), texts);
        const w = { texts: texts.length, tokens: tokens && tokens.reduce((a, b) => a + b, 0), ms: {} };
        if (engines.length === 2) {
          const [a, b] = await Promise.all(engines.map((e) => page.evaluate(([e, t]) => window.bench.embed(e, t), [e, texts])));
          w.minCosine = Math.min(...a.map((v, i) => cosine(v, b[i])));
          if (!(w.minCosine > 0.999)) {
            console.error(`FAIL: ${name}: the engines disagree (least cosine ${w.minCosine})`);
            failed = true;
          }
        }
        // A one-text call takes tens of milliseconds and swings with the page's timers and the
        // engine's tiering: more warm-up and 5x the rounds.
        const small = texts.length === 1;
        for (let i = 0; i < (small ? 5 : 1); i++) {
          for (const e of engines) await page.evaluate(([e, t]) => window.bench.time(e, t), [e, texts]); // warm-up
        }
        for (const e of engines) w.ms[e] = [];
        for (let r = 0; r < (small ? 5 * rounds : rounds); r++) {
          for (const e of r % 2 ? [...engines].reverse() : engines) {
            w.ms[e].push(await page.evaluate(([e, t]) => window.bench.time(e, t), [e, texts]));
          }
        }
        w.median = Object.fromEntries(engines.map((e) => [e, median(w.ms[e])]));
        console.log(`${name}: ${texts.length} texts, ${w.tokens ?? "?"} tokens; medians ${JSON.stringify(w.median)}; least cosine ${w.minCosine ?? "-"}`);
        run.workloads[name] = w;
      }
      results.runs.push(run);
    } finally {
      await browser.close();
    }
  }
} finally {
  server.close();
}
results.uptimeAfter = os.loadavg();

const fmt = (x) => (x >= 100 ? x.toFixed(0) : x.toFixed(1));
console.log(`\n| workload | threads | ${engines.map((e) => `${e} (ms)`).join(" | ")} |${engines.length === 2 ? " tjs / tandem | least cosine |" : ""}`);
console.log(`|---|---:|${engines.map(() => "---:").join("|")}|${engines.length === 2 ? "---:|---:|" : ""}`);
for (const run of results.runs) {
  for (const [name, w] of Object.entries(run.workloads)) {
    const cells = engines.map((e) => fmt(w.median[e]));
    const extra = engines.length === 2 ? ` ${(w.median.tjs / w.median.tandem).toFixed(2)}× | ${w.minCosine.toFixed(6)} |` : "";
    console.log(`| ${name} | ${run.threads} | ${cells.join(" | ")} |${extra}`);
  }
}
console.log(`load average before ${results.uptime.map((x) => x.toFixed(2)).join(" ")}, after ${results.uptimeAfter.map((x) => x.toFixed(2)).join(" ")}`);
fs.mkdirSync(path.dirname(outFile), { recursive: true });
fs.writeFileSync(outFile, JSON.stringify(results, null, 2));
console.log(`raw timings in ${outFile}`);
process.exit(failed ? 1 : 0);
