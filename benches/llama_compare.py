#!/usr/bin/env python3
"""GGUF decoders on the CPU, tandem side by side with llama.cpp (llama-cpp-python).

For each model: prefill of a prompt of exactly PREFILL tokens (default 128; a product-listing
text cut so that llama.cpp's tokenizer of that GGUF makes exactly that many tokens, tandem's
count is checked from its `prompt_ids`) and greedy decode of DECODE tokens (default 64, EOS
ignored). Both sides run with THREADS threads (default 2; tandem through RAYON_NUM_THREADS,
llama.cpp through n_threads and n_threads_batch), each run in a fresh process of its own, so
that its peak RSS is its own (os.wait4 on the child). The tools take turns for ROUNDS rounds,
alternating which goes first, so that load from elsewhere on a shared machine hits both alike.

- tandem: `tandem generate --model FILE --raw --max-tokens DECODE --ignore-eos --json TEXT`,
  which prints one JSON object with prompt_ids, ids, text, finish, prefill_tokens_per_s and
  decode_tokens_per_s; skipped with a message when the binary is missing.
- llama.cpp: this script re-run as a worker (`--worker`) under the Python of the venv that holds
  llama-cpp-python (this one, or `--avx2-venv DIR` for a second build limited to AVX2): load,
  then `eval` of the prompt ids in one batch (prefill), then DECODE single-token `eval`s, each
  feeding the argmax of the previous logits (decode, as llama-bench's tg: DECODE forward passes
  of one token). The first prefill+decode in the process is the one compared (tandem's process
  runs once too); a second, warm repetition in the same process is recorded beside it.

Reported per model: median tokens/s per tool (prefill and decode), the median over rounds of
the time ratio tandem / llama.cpp (above 1: tandem is slower), peak RSS, and KV-cache bytes per
1000 tokens (llama.cpp: its own report of the cache it allocated, per cell; tandem: its
`generate --json` kv_cache_bytes_per_token, or from the GGUF metadata as an f32 cache for an
older binary). Also the CPU model, its ISA flags, the load average before and after, and tool versions. Raw results go to
benches/out/llama_compare.json.

Usage (the Python running it needs llama-cpp-python and numpy):
    /work/venv-peers/bin/python benches/llama_compare.py [--tandem target/release/tandem]
        [--model NAME=FILE ...] [--rounds 5] [--prefill 128] [--decode 64] [--threads 2]
        [--n-ctx 512] [--avx2-venv /work/venv-peers-avx2] [--isa avx2] [--out FILE]

--isa avx2 runs tandem as on an AVX2 CPU without AVX-VNNI (Haswell to Zen 3):
TANDEM_CPU_ISA=avx2-novnni, and CPUID itself capped by benches/cpuid_avx2.c where the kernel
can fault on it, so that nothing in tandem (the `gemm` crate included) finds AVX-512. llama.cpp
picks its kernels when it is built, not at run time: compare against a build for AVX2 alone
(run this script with that venv's Python, or give it as --avx2-venv); with --isa avx2 a
llama.cpp whose system info reports AVX512 is refused.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cpuid_avx2

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path(os.environ.get("TANDEM_CACHE", Path.home() / ".cache" / "tandem"))
DEFAULT_MODELS = [
    f"smollm2={CACHE}/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    f"qwen2.5-coder-0.5b={CACHE}/models/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
]

# Plain product-listing text, long enough for well over 128 tokens with any of the tokenizers.
LISTING = (
    "Nike Air Zoom Pegasus 40 Men's Road Running Shoes, breathable mesh upper, React foam cushioning, "
    "size 10.5 US, university red and white. Apple iPhone 15 Pro silicone case with MagSafe, storm blue, "
    "soft-touch finish and microfiber lining. Twinings organic pure green tea, 100 individually wrapped "
    "tea bags, smooth and refreshing. Anker 735 charger (Nano II 65W), three ports, fast and compact "
    "foldable GaN USB-C charger for laptops, tablets and phones. Utopia Bedding duvet cover, king size "
    "set with two pillow shams and zipper closure. Giro Scamp youth cycling helmet, matte black, extra "
    "small. Hydro Flask standard mouth bottle with flex cap, stainless steel, vacuum insulated, 21 oz. "
    "Sony wireless noise cancelling earbuds with eight hours of battery life and a charging case. Gaiam "
    "premium yoga mat, 6 mm thick, non-slip surface for all types of yoga and pilates. Bellroy slim "
    "leather wallet, holds up to twelve cards, RFID protected, black. Amazon Basics high-speed 4K HDMI "
    "cable, 6.5 feet. COSORI air fryer, 5 quart, 1500 watts, nine customizable cooking functions."
)

ISA = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
       "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


# ---------------------------------------------------------------- llama.cpp worker (subprocess)

def worker(args):
    import resource

    import llama_cpp
    import numpy as np

    import_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Python + numpy + llama_cpp, no model
    spec = json.loads(Path(args.worker).read_text())
    # n_batch as large as the context: llama-cpp-python keeps the logits of one batch only, so
    # a prompt longer than n_batch (512 by default) would have no last-position logits.
    llm = llama_cpp.Llama(model_path=spec["model"], n_ctx=spec["n_ctx"], n_batch=spec["n_ctx"],
                          n_threads=spec["threads"], n_threads_batch=spec["threads"], logits_all=False,
                          verbose=True)
    meta = llm.metadata
    add_bos = str(meta.get("tokenizer.ggml.add_bos_token", "true")).lower() == "true"
    ids = llm.tokenize(spec["text"].encode("utf-8"), add_bos=add_bos, special=False)

    def run():
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        prefill = time.perf_counter() - t
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out = [nxt]
        t = time.perf_counter()
        for _ in range(spec["decode"]):
            llm.eval([nxt])
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(nxt)
        decode = time.perf_counter() - t
        return {"prefill_s": prefill, "decode_s": decode, "prefill_tokens_per_s": len(ids) / prefill,
                "decode_tokens_per_s": spec["decode"] / decode, "ids": out[:spec["decode"]]}

    first = run()
    warm = run()
    keys = ("general.architecture", "tokenizer.ggml.add_bos_token")
    arch = meta.get("general.architecture", "")
    keys += tuple(f"{arch}.{k}" for k in ("block_count", "embedding_length", "attention.head_count",
                                          "attention.head_count_kv", "attention.key_length",
                                          "attention.value_length"))
    print(json.dumps({
        "n_prompt": len(ids),
        "first": first,
        "warm": warm,
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "metadata": {k: meta[k] for k in keys if k in meta},
        "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "import_rss_kib": import_rss,
    }))


# ---------------------------------------------------------------- parent

def run_child(cmd, env=None):
    """Runs cmd with stdout and stderr to temporary files; returns (rc, stdout, stderr, peak RSS in KiB,
    wall seconds), the RSS from wait4 on this very child."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (p.returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                usage.ru_maxrss, wall)


def llama_run(python, model, text, a, label):
    spec = {"model": model, "text": text, "n_ctx": a.n_ctx, "threads": a.threads, "decode": a.decode}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    try:
        rc, out, err, rss, wall = run_child([python, str(Path(__file__).resolve()), "--worker", f.name], env)
    finally:
        os.unlink(f.name)
    if rc != 0:
        raise SystemExit(f"{label} worker failed ({rc}):\n{err[-3000:]}")
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_rss_mib"] = rss / 1024
    r["wall_s"] = wall
    m = re.search(r"llama_kv_cache:\s+size\s*=\s*([\d.]+)\s*MiB\s*\(\s*(\d+)\s+cells", err)
    if m:
        r["kv_cache_mib"], r["kv_cells"] = float(m.group(1)), int(m.group(2))
        r["kv_bytes_per_1000_tokens"] = float(m.group(1)) * 2**20 / int(m.group(2)) * 1000
    r["log"] = [ln.strip() for ln in err.splitlines()
                if re.search(r"llama_kv_cache: +size|flash_attn|type_k|type_v|n_ctx +=|buffer size|file type", ln)][:20]
    return r


def tandem_run(binary, model, text, a):
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    if a.isa == "avx2":
        env["TANDEM_CPU_ISA"] = "avx2-novnni"
        if a.cpuid_shim:
            env = cpuid_avx2.preloaded(env, a.cpuid_shim)
    cmd = [str(binary), "generate", "--model", model, "--raw", "--max-tokens", str(a.decode), "--ignore-eos",
           "--json", text]
    rc, out, err, rss, wall = run_child(cmd, env)
    if rc != 0:
        raise SystemExit(f"tandem failed ({rc}): {' '.join(cmd[:-1])} TEXT\n{err[-3000:]}")
    obj = None
    for line in reversed(out.strip().splitlines()):
        try:
            obj = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if obj is None:
        try:
            obj = json.loads(out)
        except json.JSONDecodeError:
            raise SystemExit(f"tandem printed no JSON object:\n{out[-2000:]}")
    return {"n_prompt": len(obj.get("prompt_ids", [])), "prefill_tokens_per_s": obj["prefill_tokens_per_s"],
            "decode_tokens_per_s": obj["decode_tokens_per_s"], "ids": obj.get("ids"), "finish": obj.get("finish"),
            "kv_cache_bytes_per_token": obj.get("kv_cache_bytes_per_token"), "kv_cache_dtype": obj.get("kv_cache_dtype"),
            "peak_rss_mib": rss / 1024, "wall_s": wall}


def prompt_text(model, n):
    """A prefix of LISTING (repeated as often as n needs) that llama.cpp's tokenizer for `model`
    turns into exactly n tokens."""
    import llama_cpp

    # A vocabulary-only load; its context still warns about n_ctx_train (0) on stderr, so hush fd 2.
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    add_bos = str(llm.metadata.get("tokenizer.ggml.add_bos_token", "true")).lower() == "true"

    def tok(s):
        return llm.tokenize(s.encode("utf-8"), add_bos=add_bos, special=False)

    # Long prompts (a long-context run, `--prefill 2000`) repeat the listing, as a page of
    # several listings would.
    listing = LISTING
    while len(tok(listing)) < n + 8:
        listing += "\n\n" + LISTING
    ids = tok(listing)
    for k in [n + d for d in (0, -1, 1, -2, 2, -3, 3, -4, 4)]:
        cut = ids[1:k] if add_bos else ids[:k]  # n counts a BOS when the GGUF adds one
        text = llm.detokenize(cut).decode("utf-8", "replace")
        if len(tok(text)) == n:
            return text
    raise SystemExit(f"no prefix of the listing tokenizes to exactly {n} tokens for {model}")


def machine():
    info = {"nproc": os.cpu_count()}
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        info["cpu"] = re.search(r"model name\s*:\s*(.*)", cpu).group(1)
        flags = set(re.search(r"flags\s*:\s*(.*)", cpu).group(1).split())
        info["isa"] = [f for f in ISA if f in flags]
        mem = Path("/proc/meminfo").read_text()
        info["mem_total_gib"] = round(int(re.search(r"MemTotal:\s*(\d+)", mem).group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    return info


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def tandem_version(binary):
    out = {"binary": str(binary)}
    try:
        out["mtime"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(binary.stat().st_mtime))
        r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
        out["version"] = (r.stdout or r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        out["repo_commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return out


def tandem_kv_bytes_per_1000(meta):
    arch = meta["general.architecture"]
    layers = int(meta[f"{arch}.block_count"])
    heads = int(meta[f"{arch}.attention.head_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    k_dim = int(meta.get(f"{arch}.attention.key_length", int(meta[f"{arch}.embedding_length"]) // heads))
    v_dim = int(meta.get(f"{arch}.attention.value_length", k_dim))
    return layers * kv_heads * (k_dim + v_dim) * 4 * 1000


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tandem", type=Path, default=REPO / "target" / "release" / "tandem")
    ap.add_argument("--model", action="append", help="NAME=FILE.gguf (repeatable; default: both project decoders)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=512, help="llama.cpp context (KV cache cells)")
    ap.add_argument("--avx2-venv", type=Path, help="a venv whose llama-cpp-python is built for AVX2 only")
    ap.add_argument("--isa", choices=["best", "avx2"], default="best", help="tandem's ISA (see above)")
    ap.add_argument("--out", type=Path, default=REPO / "benches" / "out" / "llama_compare.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)

    models = [m.split("=", 1) for m in (a.model or DEFAULT_MODELS)]
    a.cpuid_shim = cpuid_avx2.shim() if a.isa == "avx2" else None
    peers = [("llama.cpp", sys.executable)]
    if a.avx2_venv:
        py = a.avx2_venv / "bin" / "python"
        if not py.exists():
            raise SystemExit(f"--avx2-venv: no {py}")
        peers.append(("llama.cpp-avx2", str(py)))
    have_tandem = a.tandem.exists() and os.access(a.tandem, os.X_OK)
    if not have_tandem:
        print(f"tandem binary {a.tandem} not found: skipping tandem (build it with "
              f"`cargo build --release -p tandem-server` or pass --tandem)", file=sys.stderr)

    report = {"machine": machine(), "load_before": uptime(), "settings": {
        "prefill_tokens": a.prefill, "decode_tokens": a.decode, "threads": a.threads, "rounds": a.rounds,
        "llama_n_ctx": a.n_ctx, "tandem_isa": a.isa,
        "tandem_cpuid_capped": a.cpuid_shim is not None}, "tandem": tandem_version(a.tandem) if have_tandem else None, "models": []}
    print(f"{report['machine'].get('cpu')} ({report['machine'].get('nproc')} cpus; "
          f"{' '.join(report['machine'].get('isa', []))})")
    print(f"load before: {report['load_before']}")

    for name, path in models:
        text = prompt_text(path, a.prefill)
        runs = {label: [] for label, _ in peers}
        if have_tandem:
            runs["tandem"] = []
        for r in range(a.rounds):
            order = [("peer", p) for p in peers] + ([("tandem", None)] if have_tandem else [])
            if r % 2:
                order.reverse()
            for kind, peer in order:
                if kind == "tandem":
                    res = tandem_run(a.tandem, path, text, a)
                    runs["tandem"].append(res)
                    label = "tandem"
                else:
                    label, py = peer
                    res = llama_run(py, path, text, a, label)
                    if a.isa == "avx2" and re.search(r"AVX512[A-Z0-9_]* = 1", res["system_info"]):
                        raise SystemExit(f"--isa avx2: {label} ({py}) is built with AVX-512: "
                                         f"{res['system_info']}")
                    runs[label].append(res)
                    res = dict(res, **{k: res["first"][k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s")})
                    runs[label][-1] = res
                print(f"  {name} round {r + 1} {label:15s} prefill {res['prefill_tokens_per_s']:8.1f} tok/s  "
                      f"decode {res['decode_tokens_per_s']:7.1f} tok/s  peak RSS {res['peak_rss_mib']:6.0f} MiB",
                      file=sys.stderr)

        first_peer = runs["llama.cpp"][0]
        meta = first_peer["metadata"]
        entry = {"name": name, "file": path, "prompt_text": text, "tools": {}}
        for label, rs in runs.items():
            t = {
                "n_prompt": rs[0]["n_prompt"],
                "prefill_tokens_per_s": [round(x["prefill_tokens_per_s"], 2) for x in rs],
                "decode_tokens_per_s": [round(x["decode_tokens_per_s"], 2) for x in rs],
                "median_prefill_tokens_per_s": round(med([x["prefill_tokens_per_s"] for x in rs]), 2),
                "median_decode_tokens_per_s": round(med([x["decode_tokens_per_s"] for x in rs]), 2),
                "peak_rss_mib": round(max(x["peak_rss_mib"] for x in rs), 1),
                "rss_before_model_mib": (round(rs[0]["import_rss_kib"] / 1024, 1) if "import_rss_kib" in rs[0]
                                         else None),
                "ids": rs[0].get("ids"),
            }
            if label == "tandem":
                per_token = rs[0].get("kv_cache_bytes_per_token")
                if per_token:
                    t["kv_bytes_per_1000_tokens"] = per_token * 1000
                    t["kv_note"] = f"tandem generate --json: {per_token} bytes per token, {rs[0].get('kv_cache_dtype')}"
                else:
                    t["kv_bytes_per_1000_tokens"] = tandem_kv_bytes_per_1000(meta)
                    t["kv_note"] = "computed: layers x 2 x kv_heads x head_dim x 4 bytes (f32) x 1000"
                t["finish"] = rs[0].get("finish")
            else:
                t["warm_median_prefill_tokens_per_s"] = round(med([x["warm"]["prefill_tokens_per_s"] for x in rs]), 2)
                t["warm_median_decode_tokens_per_s"] = round(med([x["warm"]["decode_tokens_per_s"] for x in rs]), 2)
                t["kv_bytes_per_1000_tokens"] = rs[0].get("kv_bytes_per_1000_tokens")
                t["kv_note"] = f"llama.cpp's own log: {rs[0].get('kv_cache_mib')} MiB for {rs[0].get('kv_cells')} cells"
                t["version"] = rs[0]["llama_cpp_python"]
                t["system_info"] = rs[0]["system_info"]
                t["log"] = rs[0]["log"]
            entry["tools"][label] = t
        if have_tandem:
            for stage in ("prefill", "decode"):
                ratios = [l[f"{stage}_tokens_per_s"] / t[f"{stage}_tokens_per_s"]
                          for t, l in zip(runs["tandem"], runs["llama.cpp"])]
                entry[f"{stage}_time_ratio_tandem_over_llama"] = round(statistics.median(ratios), 3)
                entry[f"{stage}_time_ratio_per_round"] = [round(x, 3) for x in ratios]
            entry["same_greedy_ids"] = runs["tandem"][0].get("ids") == runs["llama.cpp"][0].get("ids")
            if entry["tools"]["tandem"]["n_prompt"] != a.prefill:
                print(f"  note: tandem tokenized the prompt into {entry['tools']['tandem']['n_prompt']} tokens, "
                      f"llama.cpp into {a.prefill}", file=sys.stderr)
        report["models"].append(entry)

    report["load_after"] = uptime()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")

    print(f"load after: {report['load_after']}")
    for label, _ in peers:
        print(f"{label}: llama-cpp-python {report['models'][0]['tools'][label]['version']}; "
              f"{report['models'][0]['tools'][label]['system_info']}")
    if have_tandem:
        print(f"tandem: {report['tandem']}")
    print(f"\n{a.prefill}-token prefill and {a.decode}-token decode, tandem ISA {a.isa}, {a.threads} threads, median of {a.rounds} "
          f"rounds (tokens/s; time ratio tandem/llama.cpp, above 1 = tandem slower)")
    print(f"{'model':20s} {'tool':15s} {'prefill':>9s} {'decode':>8s} {'peak RSS':>9s} {'KV/1000 tok':>12s}"
          "  (llama.cpp's RSS includes its Python interpreter, numpy and bindings: see rss_before_model_mib)")
    for e in report["models"]:
        for label, t in e["tools"].items():
            kv = t.get("kv_bytes_per_1000_tokens")
            print(f"{e['name']:20s} {label:15s} {t['median_prefill_tokens_per_s']:9.1f} "
                  f"{t['median_decode_tokens_per_s']:8.1f} {t['peak_rss_mib']:6.0f} MiB "
                  f"{(kv / 2**20 if kv else float('nan')):8.2f} MiB")
        if "prefill_time_ratio_tandem_over_llama" in e:
            print(f"{'':20s} {'ratio':15s} {e['prefill_time_ratio_tandem_over_llama']:9.2f} "
                  f"{e['decode_time_ratio_tandem_over_llama']:8.2f}   same greedy ids: {e['same_greedy_ids']}")
    print(f"\nraw results: {a.out}")


if __name__ == "__main__":
    main()
