"""How far llama.cpp agrees with itself: its greedy continuations of the decoder parity prompts
under other settings of its own, against its default run stored in parity_<model>.json.

tests/reference/make_decoder_parity.py stores llama.cpp's greedy continuations (32 tokens, 13
chat prompts per model) with default context settings, and models/tests/decoder_parity.rs
counts how many of them tandem's default CPU path reproduces token for token. This script
measures what that count can be expected to reach: the same llama.cpp build, the same prompt
ids and the same weights, changing only things that leave the model alone and move the
floating point arithmetic:

- `flash_attn`: llama.cpp's fused attention (f16 accumulation of the values) instead of its
  default two products over the f16 cache;
- `n_batch_1`: the prompt fed one token at a time (`n_batch = n_ubatch = 1`), so every product
  runs the decode kernels;
- `kv_f32`: an f32 KV cache instead of f16.

Per variant and prompt: the first step where the continuation parts from the default one
(null: all 32 the same) and the largest first-position logit difference at the default run's
top 10. Also the default run's margin between its top two logits at each of the 32 steps
(where it is small, any change to the arithmetic may flip the token). First it checks that the default settings reproduce the stored continuations and
logits (to the 4 decimals stored) on this machine (else the comparison would mix in another build or CPU).

    /work/venv-llama/bin/pip install llama-cpp-python==0.3.36 numpy   # as make_decoder_parity.py builds it
    /work/venv-llama/bin/python tests/reference/make_llama_cpp_self_agreement.py \
        --model smollm2=$CACHE/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out tests/reference/llama_cpp_self_smollm2.json
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from make_decoder_parity import dump

NEW = 32
DIFF_TOP = 10
THREADS = 2
N_CTX = 2048


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def variants(lc):
    return {
        "flash_attn": dict(flash_attn=True),
        "n_batch_1": dict(n_batch=1, n_ubatch=1),
        "kv_f32": dict(type_k=lc.GGML_TYPE_F32, type_v=lc.GGML_TYPE_F32),
    }


def greedy(llm, ids):
    """The greedy ids, the first position's logits and each step's margin between the top two."""
    llm.reset()
    llm.eval(ids)
    out, first, margins = [], None, []
    for i in range(NEW):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        if first is None:
            first = logits
        top2 = np.sort(logits)[-2:]
        margins.append(round(float(top2[1] - top2[0]), 4))
        out.append(int(np.argmax(logits)))
        if i + 1 < NEW:
            llm.eval([out[-1]])
    return out, first, margins


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="name=path.gguf")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reference", help="parity JSON (default: parity_<name>.json beside this script)")
    a = ap.parse_args()
    name, path = a.model.split("=", 1)
    here = os.path.dirname(os.path.abspath(__file__))
    ref = json.load(open(a.reference or os.path.join(here, f"parity_{name}.json"), encoding="utf-8"))

    import llama_cpp

    def load(**kw):
        return llama_cpp.Llama(model_path=path, n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS,
                               logits_all=True, verbose=False, **kw)

    prompts = [(c["name"], c["prompt_ids"].get("llama_cpp") or c["prompt_ids"]["transformers"], c["llama_cpp"])
               for c in ref["cases"]]

    # The stored default run must be this build's on this machine.
    llm = load()
    margins = {}
    for cname, ids, stored in prompts:
        ids_now, first, margins[cname] = greedy(llm, ids)
        diff = max(abs(float(first[i]) - l) for i, l in stored["first_top"][:DIFF_TOP])
        if ids_now != stored["ids"] or diff > 1e-4:  # the stored logits have 4 decimals
            sys.exit(f"{cname}: llama.cpp's default run here differs from the stored one (logits by {diff}); "
                     "the self-agreement would not be about that run")
    del llm

    out = {"model": name, "file": os.path.basename(path), "reference": f"parity_{name}.json",
           "llama_cpp_python": llama_cpp.__version__, "llama_cpp_system_info":
           llama_cpp.llama_print_system_info().decode().strip(), "cpu": cpu_model(),
           "settings": f"as the reference (n_ctx={N_CTX}, {THREADS} threads, logits_all), one change per variant; "
                       f"greedy {NEW} tokens, EOS does not stop",
           "default_top2_margins": margins, "variants": {}}
    for vname, kw in variants(llama_cpp).items():
        t = time.time()
        llm = load(**kw)
        parts, diffs = [], []
        for cname, ids, stored in prompts:
            gen, first, _ = greedy(llm, ids)
            parts.append(next((i for i, (x, y) in enumerate(zip(gen, stored["ids"])) if x != y), None))
            diffs.append(round(max(abs(float(first[i]) - l) for i, l in stored["first_top"][:DIFF_TOP]), 4))
        del llm
        same = sum(p is None for p in parts)
        out["variants"][vname] = {"context_params": {k: str(v) for k, v in kw.items()},
                                  "all_new_tokens_same": same, "first_token_same": sum(p != 0 for p in parts),
                                  "first_divergence_steps": parts, "max_top10_logit_diff": max(diffs),
                                  "top10_logit_diffs": diffs}
        print(f"{name} {vname}: {same} of {len(prompts)} continuations as the default run's, first-position "
              f"top-10 logits within {max(diffs)} ({time.time() - t:.0f} s)", file=sys.stderr)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(dump(out) + "\n")


if __name__ == "__main__":
    main()
