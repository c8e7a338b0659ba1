#!/usr/bin/env python3
"""The README's main job on a GPU machine: `tandem serve` on MiniLM with the backend it picks
itself (auto), asked over HTTP as a client would. Checks the embeddings of the reference texts
against the reference (cosine >= 0.9999) and prints the backend it chose, the first call's time
(kernels compile on first use) and the time of one single-text request.

  python3 benches/gpu_serve_check.py TANDEM_BIN MINILM_DIR REFERENCE.json [--backend auto]

Exits 1 when the server does not come up or an embedding is off. Only the standard library.
"""
import argparse
import json
import math
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tandem")
    ap.add_argument("model_dir")
    ap.add_argument("reference")
    ap.add_argument("--backend", default="auto")
    a = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([a.tandem, "serve", "--model", a.model_dir, "--backend", a.backend, "--port", str(port),
                               "--no-relevance", "--no-web"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    break
                time.sleep(0.25)
        else:
            raise SystemExit("tandem serve did not answer /health within 60 s")

        def embed(texts):
            body = json.dumps({"inputs": texts, "truncate": True}).encode()
            req = urllib.request.Request(url + "/embed", body, {"Content-Type": "application/json"})
            return json.load(urllib.request.urlopen(req, timeout=300))

        ref = json.load(open(a.reference))["inputs"]
        texts = [r["text"] for r in ref]
        start = time.perf_counter()
        got = [e for i in range(0, len(texts), 32) for e in embed(texts[i:i + 32])]  # TEI's batch limit
        first = time.perf_counter() - start
        cos = [sum(x * y for x, y in zip(g, r["embedding"])) /
               math.sqrt(sum(x * x for x in g) * sum(y * y for y in r["embedding"])) for g, r in zip(got, ref)]
        start = time.perf_counter()
        for _ in range(20):
            embed(texts[:1])
        one = (time.perf_counter() - start) / 20
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    chosen = [line for line in log.splitlines() if line.startswith("backend:") or "listening on" in line]
    print("\n".join(chosen))
    print(f"/embed of {len(texts)} reference texts: worst cosine {min(cos):.7f}; first calls {first * 1e3:.0f} ms; "
          f"one text over HTTP {one * 1e3:.2f} ms (mean of 20)")
    return 0 if min(cos) >= 0.9999 else 1


if __name__ == "__main__":
    sys.exit(main())
