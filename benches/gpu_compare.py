#!/usr/bin/env python3
"""The PyTorch side of the CUDA comparison (scripts/gpu-check.sh runs it on the GPU machine).

Usage: gpu_compare.py TANDEM_JSON MODEL_DIR OUT_JSON

Reads the benchmark list and the MiniLM texts from TANDEM_JSON (written by
`tandem-gpu-check run`), so both sides always measure the same shapes, and writes OUT_JSON:
- matmul: torch.matmul(a, b.T) on cuBLAS, f32 with TF32 off (tandem's f32 path is exact f32)
  and f16;
- attention: torch.nn.functional.scaled_dot_product_attention on [seqs, heads, len, d], the
  padded equivalent of tandem's packed batch (all sequences have the same length);
- MiniLM: sentence-transformers on MODEL_DIR, the same batch shape of token ids, end to end
  (ids in, normalized embeddings back on the host), and its embeddings of the texts.
Needs torch and sentence-transformers, nothing else; no network.
"""

import json
import sys

import torch
import torch.nn.functional as F


def time_ms(fn, iters):
    """Milliseconds per call, by CUDA events around `iters` calls after a warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def ramp(shape, dtype, seed):
    """The same deterministic data as tandem-gpu-check's `ramp` (values do not change timings)."""
    n = 1
    for s in shape:
        n *= s
    i = torch.arange(n, dtype=torch.float64, device="cuda")
    v = (((i + seed) * 7919) % 1000) / 1000.0 - 0.5
    return v.to(dtype).reshape(shape)


DTYPES = {"f32": torch.float32, "f16": torch.float16}


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    tandem_path, model_dir, out_path = sys.argv[1:]
    with open(tandem_path) as f:
        tandem = json.load(f)
    if not torch.cuda.is_available():
        sys.exit("gpu_compare.py: torch sees no CUDA device")
    # Exact f32 matmuls, as tandem computes them; PyTorch's default, stated anyway.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    benches = []
    for b in tandem["benches"]:
        iters = 50
        if b["kind"] == "matmul":
            dt = DTYPES[b["dtype"]]
            a, w = ramp((b["m"], b["k"]), dt, 0), ramp((b["n"], b["k"]), dt, 1)
            ms = time_ms(lambda: torch.matmul(a, w.t()), iters)
        elif b["kind"] == "attention":
            dt = DTYPES[b["dtype"]]
            shape = (b["seqs"], b["heads"], b["len"], b["d"])
            q, k, v = ramp(shape, dt, 0), ramp(shape, dt, 1), ramp(shape, dt, 2)
            causal = b["causal"]
            ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), iters)
        else:
            continue
        benches.append({"name": b["name"], "ms": ms})
        print(f"torch {b['name']}: {ms:.3f} ms", file=sys.stderr)

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cuda")
    model.eval()
    for b in tandem["benches"]:
        if b["kind"] != "minilm":
            continue
        seqs, length = b["seqs"], b["len"]
        gen = torch.Generator().manual_seed(7)
        ids = torch.randint(1996, 1996 + 28000, (seqs, length), generator=gen)
        ids[:, 0], ids[:, -1] = 101, 102
        features = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
        }

        def forward():
            # ids to the GPU, embeddings back to the host: what tandem's run includes.
            with torch.inference_mode():
                batch = {k: v.to("cuda", non_blocking=True) for k, v in features.items()}
                return model(batch)["sentence_embedding"].cpu()

        ms = time_ms(forward, 30)
        benches.append({"name": b["name"], "ms": ms})
        print(f"torch {b['name']}: {ms:.3f} ms", file=sys.stderr)

    embeddings = []
    texts = tandem.get("minilm", {}).get("texts")
    if texts:
        with torch.inference_mode():
            emb = model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=False)
        embeddings = [[float(x) for x in row] for row in emb]

    out = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "benches": benches,
        "embeddings": embeddings,
    }
    with open(out_path, "w") as f:
        json.dump(out, f)
    print(f"wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
