#!/usr/bin/env python3
"""Streaming chat completions under load: `tandem serve --llm` side by side with llama.cpp's
server (llama-cpp-python[server]), the same GGUF, the same prompts, the same threads.

For each concurrency level (default 1, 8 and 32) each server gets REQUESTS(level) streaming
`POST /v1/chat/completions` requests (greedy, max_tokens MAX_TOKENS), `level` of them in flight
at any time, from asyncio clients (aiohttp) that read every server-sent event. The servers take
turns level by level, alternating which goes first, for ROUNDS rounds. Per server and level:

- tokens/s overall: completion tokens of all requests / wall time from the first request sent
  to the last stream closed (completion tokens from the usage chunk when the server sends one,
  else the count of content chunks);
- time to first token (first chunk with content), p50 and p99; inter-token gaps p50 and p99;
- lost streams (connection errors, HTTP errors) and truncated ones (no finish_reason or no
  `data: [DONE]`): both must be 0.

Also the CPU model and ISA flags, the load average before and after, and versions. Raw
results go to benches/out/llm_load_test.json.

Usage (the Python running it needs aiohttp; llama-cpp-python[server] for the peer):
    python benches/llm_load_test.py [--tandem target/release/tandem] [--model smollm2]
        [--threads 2] [--levels 1,8,32] [--max-tokens 64] [--rounds 2] [--no-peer]
"""

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent

# Hand-written shopper questions about products, of different lengths.
PROMPTS = [
    "What is a good gift for someone who loves espresso?",
    "Is a 20000 mAh power bank allowed in carry-on luggage?",
    "Explain the difference between running shoes and trail running shoes.",
    "Which is better for a small kitchen: an air fryer or a toaster oven? Give two reasons.",
    "Write a short product description for a stainless steel water bottle, 750 ml, keeps drinks cold for 24 hours.",
    "What should I look for when buying a mechanical keyboard for programming?",
    "Suggest three search queries a shopper might type to find waterproof hiking boots for women.",
    "Is a 65W USB-C charger safe to use with a phone that supports 25W charging?",
    "List the pros and cons of memory foam pillows.",
    "How do I choose the right size of a bike frame?",
    "What does SPF 50 mean on a sunscreen bottle?",
    "Compare LED and OLED televisions for a bright living room.",
    "A customer asks whether this cast iron skillet can go in the dishwasher. What do you answer?",
    "What are good accessories to buy with a new DSLR camera?",
    "Summarize in two sentences why someone would buy a robot vacuum.",
    "Which baby stroller features matter most for city apartments with stairs?",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_facts():
    model, flags = platform.processor(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile"]
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags]}


def loadavg():
    return os.getloadavg()


class Server:
    def __init__(self, name, argv, env, port, model_id):
        self.name, self.argv, self.env, self.port, self.model_id = name, argv, env, port, model_id
        self.proc = None

    def start(self):
        self.log = open(ROOT / f"benches/out/llm_load_test.{self.name}.log", "w")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited; see benches/out/llm_load_test.{self.name}.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                import urllib.request

                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"{self.name} did not answer /v1/models in 600 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc:
            self.log.close()


async def one_stream(session, url, model, prompt, max_tokens):
    """One streamed chat completion: (ttft, gaps, completion tokens, error or None)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    ttft, last, gaps, chunks, usage, finish, done = None, None, [], 0, None, None, False
    try:
        async with session.post(url, json=body) as r:
            if r.status != 200:
                return None, [], 0, f"HTTP {r.status}: {(await r.text())[:200]}"
            buffer = b""
            async for data in r.content.iter_any():
                # sse-starlette (llama-cpp-python) ends lines with \r\n.
                buffer = (buffer + data).replace(b"\r\n", b"\n")
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            done = True
                            continue
                        chunk = json.loads(payload)
                        if chunk.get("usage"):
                            usage = chunk["usage"].get("completion_tokens")
                        for choice in chunk.get("choices", []):
                            if choice.get("finish_reason"):
                                finish = choice["finish_reason"]
                            if (choice.get("delta") or {}).get("content"):
                                now = time.perf_counter()
                                if ttft is None:
                                    ttft = now - sent
                                else:
                                    gaps.append(now - last)
                                last = now
                                chunks += 1
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return ttft, gaps, chunks, f"lost: {type(e).__name__}: {e}"
    if not done or finish is None:
        return ttft, gaps, chunks, f"truncated: done={done} finish={finish}"
    return ttft, gaps, usage if usage is not None else chunks, None


async def level_run(port, model, level, requests, max_tokens):
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    timeout = aiohttp.ClientTimeout(total=900)
    connector = aiohttp.TCPConnector(limit=level)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    queue = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    results = []

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker():
            while not queue.empty():
                prompt = queue.get_nowait()
                results.append(await one_stream(session, url, model, prompt, max_tokens))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(level)))
        wall = time.perf_counter() - started
    ttfts = [r[0] for r in results if r[0] is not None]
    gaps = [g for r in results for g in r[1]]
    tokens = sum(r[2] for r in results)
    errors = [r[3] for r in results if r[3]]

    def pct(xs, q):
        if not xs:
            return None
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    return {
        "level": level,
        "requests": requests,
        "wall_s": wall,
        "completion_tokens": tokens,
        "tokens_per_s": tokens / wall if wall else None,
        "ttft_p50_ms": pct(ttfts, 0.5) and pct(ttfts, 0.5) * 1e3,
        "ttft_p99_ms": pct(ttfts, 0.99) and pct(ttfts, 0.99) * 1e3,
        "itl_p50_ms": pct(gaps, 0.5) and pct(gaps, 0.5) * 1e3,
        "itl_p99_ms": pct(gaps, 0.99) and pct(gaps, 0.99) * 1e3,
        "lost": sum(1 for e in errors if e.startswith("lost") or e.startswith("HTTP")),
        "truncated": sum(1 for e in errors if e.startswith("truncated")),
        "errors": errors[:5],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tandem", default=str(ROOT / "target/release/tandem"))
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--slots", type=int, default=32, help="tandem's llm.slots (sequences decoded together)")
    ap.add_argument("--no-peer", action="store_true", help="tandem only")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    (ROOT / "benches/out").mkdir(parents=True, exist_ok=True)

    gguf = subprocess.run([args.tandem, "fetch", args.model], capture_output=True, text=True, check=True)
    gguf_path = gguf.stdout.strip().splitlines()[-1]
    if not gguf_path.endswith(".gguf"):
        raise SystemExit(f"`tandem fetch {args.model}` printed {gguf_path!r}, not a GGUF path")

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    port = free_port()
    tandem = Server(
        "tandem",
        [args.tandem, "serve", "--port", str(port), "--backend", "cpu", "--llm", args.model,
         "--llm-slots", str(args.slots), "--llm-slot-tokens", "1024", "--no-web"],
        env, port, args.model)
    servers = [tandem]
    if not args.no_peer:
        port = free_port()
        servers.append(Server(
            "llama.cpp",
            [sys.executable, "-m", "llama_cpp.server", "--model", gguf_path, "--model_alias", args.model,
             "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(args.threads),
             "--n_threads_batch", str(args.threads), "--n_ctx", "4096",
             # Its default cuts the running stream short when another request arrives; queue
             # them instead, as a server under load must.
             "--interrupt_requests", "False"],
            dict(os.environ), port, args.model))

    facts = {"cpu": cpu_facts(), "load_before": loadavg(), "threads": args.threads, "model": args.model,
             "gguf": gguf_path, "max_tokens": args.max_tokens, "python": sys.version.split()[0]}
    try:
        import llama_cpp

        facts["llama_cpp_python"] = llama_cpp.__version__
    except ImportError:
        pass
    print(json.dumps(facts), flush=True)
    results = {s.name: {lvl: [] for lvl in levels} for s in servers}
    for s in servers:
        s.start()
    try:
        # A warm-up request each, so that no first-request setup is timed.
        for s in servers:
            asyncio.run(level_run(s.port, s.model_id, 1, 1, 8))
        for rnd in range(args.rounds):
            for i, level in enumerate(levels):
                order = servers if (rnd + i) % 2 == 0 else list(reversed(servers))
                for s in order:
                    requests = max(4, 2 * level) if level < 32 else level
                    r = asyncio.run(level_run(s.port, s.model_id, level, requests, args.max_tokens))
                    results[s.name][level].append(r)
                    print(f"round {rnd + 1} {s.name:9} c={level:<3} {r['tokens_per_s']:7.1f} tok/s  "
                          f"TTFT p50 {r['ttft_p50_ms'] or 0:8.0f} ms p99 {r['ttft_p99_ms'] or 0:8.0f} ms  "
                          f"ITL p50 {r['itl_p50_ms'] or 0:6.1f} ms  lost {r['lost']} truncated {r['truncated']}"
                          + (f"  first error: {r['errors'][0]}" if r["errors"] else ""),
                          flush=True)
    finally:
        for s in servers:
            s.stop()
    facts["load_after"] = loadavg()

    print(f"\nCPU: {facts['cpu']['model']} ({facts['cpu']['cores']} cores; {' '.join(facts['cpu']['flags'])}); "
          f"{args.threads} threads each; load {facts['load_before'][0]:.2f} before, {facts['load_after'][0]:.2f} after")
    print(f"{args.model}, greedy, max_tokens {args.max_tokens}, medians over {args.rounds} rounds\n")
    print("| server | concurrency | tokens/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | lost | truncated |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in servers:
        for level in levels:
            rs = results[s.name][level]
            def med(k, rs=rs):
                values = [r[k] for r in rs if r[k] is not None]
                return statistics.median(values) if values else float("nan")

            print(f"| {s.name} | {level} | {med('tokens_per_s'):.1f} | {med('ttft_p50_ms'):.0f} | "
                  f"{med('ttft_p99_ms'):.0f} | {med('itl_p50_ms'):.1f} | {sum(r['lost'] for r in rs)} | "
                  f"{sum(r['truncated'] for r in rs)} |")
    out = ROOT / "benches/out/llm_load_test.json"
    out.write_text(json.dumps({"facts": facts, "results": results}, indent=1))
    print(f"\nraw results: {out}")
    bad = sum(r["lost"] + r["truncated"] for s in results.values() for rs in s.values() for r in rs)
    if bad:
        raise SystemExit(f"{bad} streams were lost or truncated")


if __name__ == "__main__":
    main()
