#!/usr/bin/env python3
"""Decoder speed on an NVIDIA GPU: tandem's CUDA backend against PyTorch (transformers, eager,
the same GGUF dequantized by transformers, in fp32 and in bf16), side by side in alternating
rounds after one warm-up round each.

  python3 benches/gpu_llm_compare.py --tandem BIN [--rounds 3] [--decode 64] [--out F.json] MODEL.gguf...

Per model: prefill of one product-listing prompt (tandem's tokenization; PyTorch is fed the same
prompt_ids) and DECODE greedy tokens. tandem: `tandem generate --backend cuda --raw --ignore-eos
--json`, whose prefill rate is prompt tokens over the time to the first generated token, and
decode rate is the later tokens over their time (each one read back to the host). PyTorch: one
forward of the prompt with a KV cache and an argmax (prefill), then DECODE - 1 single-token
forwards over the cache, each argmax read back with .item() (decode), as a serving loop would.

The GGUFs may be shape-only copies (`tandem-gpu-check pack-gguf`: tensor bytes zeroed, so they
travel small): the timings hold, since no kernel on either side looks at the values, but the
generated text means nothing. Needs torch with CUDA, transformers and the gguf package.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

LISTING = (
    "Stainless steel insulated water bottle, 32 oz, wide mouth with straw lid and handle, keeps drinks "
    "cold for 24 hours and hot for 12 hours, leak proof, BPA free, dishwasher safe lid, powder coated "
    "finish in matte black. Fits most car cup holders with the slim base. Includes two lids: a straw lid "
    "for sipping during workouts and a flex cap for hiking and travel. Double wall vacuum insulation, no "
    "condensation on the outside, 18/8 pro-grade stainless steel that does not retain flavors. Backed by "
    "a lifetime warranty. Dimensions: 3.6 x 3.6 x 10.8 inches, weight 15.4 ounces."
)


def tandem_round(binary, model, decode):
    cmd = [binary, "generate", "--model", model, "--backend", "cuda", "--raw", "--max-tokens", str(decode),
           "--ignore-eos", "--json", LISTING]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"tandem failed on {model}:\n{proc.stderr[-3000:]}")
    obj = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"prompt_ids": obj["prompt_ids"], "prefill_tokens_per_s": obj["prefill_tokens_per_s"],
            "decode_tokens_per_s": obj["decode_tokens_per_s"], "generated": len(obj["ids"])}


def torch_round(torch, model, prompt_ids, decode):
    ids = torch.tensor([prompt_ids], device="cuda")
    with torch.inference_mode():
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        nxt = int(out.logits[0, -1].argmax().item())
        prefill = time.perf_counter() - start
        past = out.past_key_values
        start = time.perf_counter()
        for _ in range(decode - 1):
            out = model(input_ids=torch.tensor([[nxt]], device="cuda"), past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = int(out.logits[0, -1].argmax().item())
        steps = time.perf_counter() - start
    return {"prefill_tokens_per_s": len(prompt_ids) / prefill, "decode_tokens_per_s": (decode - 1) / steps}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--out")
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM
    gpu = torch.cuda.get_device_name(0)
    print(f"GPU: {gpu}; torch {torch.__version__}; tandem {a.tandem}", flush=True)
    results = {"gpu": gpu, "torch": torch.__version__, "decode": a.decode, "rounds": a.rounds, "models": {}}
    for path in a.models:
        name = os.path.basename(path)
        print(f"== {name}", flush=True)
        warm = tandem_round(a.tandem, path, a.decode)  # kernel builds go to the disk cache here
        prompt_ids = warm["prompt_ids"]
        fp32 = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=name,
                                                    dtype=torch.float32).cuda().eval()
        variants = {"torch fp32": fp32, "torch bf16": AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(path)), gguf_file=name, dtype=torch.bfloat16).cuda().eval()}
        for m in variants.values():
            torch_round(torch, m, prompt_ids, 8)  # warm-up: cuBLAS handles, allocator
        rows = {"tandem cuda": [], **{k: [] for k in variants}}
        for r in range(a.rounds):
            t = tandem_round(a.tandem, path, a.decode)
            if t["prompt_ids"] != prompt_ids:
                raise SystemExit("tandem tokenized the prompt differently between rounds")
            rows["tandem cuda"].append(t)
            for k, m in variants.items():
                rows[k].append(torch_round(torch, m, prompt_ids, a.decode))
            for k, v in rows.items():
                print(f"  round {r + 1} {k:12s} prefill {v[-1]['prefill_tokens_per_s']:9.1f} tok/s  "
                      f"decode {v[-1]['decode_tokens_per_s']:7.1f} tok/s", flush=True)
        summary = {k: {"median_prefill_tokens_per_s": statistics.median(x["prefill_tokens_per_s"] for x in v),
                       "median_decode_tokens_per_s": statistics.median(x["decode_tokens_per_s"] for x in v),
                       "rounds": v} for k, v in rows.items()}
        results["models"][name] = {"prompt_tokens": len(prompt_ids), **summary}
        del variants, fp32
        torch.cuda.empty_cache()

    print(f"\n{'model':42s} {'runner':12s} {'prefill tok/s':>14s} {'decode tok/s':>13s}")
    for name, res in results["models"].items():
        for k in ("tandem cuda", "torch fp32", "torch bf16"):
            print(f"{name:42s} {k:12s} {res[k]['median_prefill_tokens_per_s']:14.1f} "
                  f"{res[k]['median_decode_tokens_per_s']:13.1f}")
        print(f"{'':42s} prompt {res['prompt_tokens']} tokens, decode {a.decode}, medians of {a.rounds} rounds")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
