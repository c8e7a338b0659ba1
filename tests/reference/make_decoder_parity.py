"""Two peers side by side on tandem's GGUF decoders: transformers (weights dequantized to fp32
by gguf-py) and llama.cpp (llama-cpp-python, the quantized weights as they are).

For each model: 12 hand-written user messages of the kinds tandem's decoders serve (grading a
query-item pair, query suggestion, product Q&A, attribute extraction, a general question,
Chinese and mixed-language queries, awkward characters) plus a 13th with an explicit system
message. Each is rendered once, as one user turn with the generation prompt, by the GGUF's own
chat template through transformers (`apply_chat_template(..., tokenize=False,
add_generation_prompt=True)`); that text then goes to both tools:

- transformers: `tokenizer(text, add_special_tokens=False)` (the template already holds the
  special tokens), a forward pass over the prompt, then a greedy loop of exactly NEW tokens
  with its KV cache;
- llama.cpp: `Llama.tokenize(text, add_bos=<tokenizer.ggml.add_bos_token>, special=True)`,
  `eval` over the prompt, then the same greedy loop.

Greedy here is argmax of the raw logits, no penalties, no sampling; EOS does not stop the
loop (where and which end-of-generation token came first is recorded). For each tool the JSON
holds the prompt ids, the generated ids and their text, and the top TOP [id, logit] after the
last prompt token; per case an `agreement` block (same prompt ids, same first token, same
NEW tokens, first step where they part, both tools' top 5 at that step, and the largest
|logit difference| over the union of both top-10 sets at the first position). Where the two
tokenizers disagree, llama.cpp is also run on transformers' ids so that the logits compare
like for like. Since one near-tie sends two greedy runs apart for good, `teacher_forced` also
compares the logits along one path: llama.cpp fed transformers' continuation, step by step
argmax agreement and logit differences. The model-level `agreement` sums it up.

    python -m venv /work/venv-peers
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON ..." /work/venv-peers/bin/pip install \
        torch transformers accelerate gguf numpy jinja2 sentencepiece llama-cpp-python
    /work/venv-peers/bin/python tests/reference/make_decoder_parity.py \
        --model smollm2=$CACHE/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out tests/reference/parity_smollm2.json
    /work/venv-peers/bin/python tests/reference/make_decoder_parity.py \
        --model qwen2.5-coder-0.5b=$CACHE/models/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        --out tests/reference/parity_qwen2.5-coder-0.5b.json

`--cases N` runs only the first N cases (a quick check of the script).
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np

NEW = 32
TOP = 20
DIFF_TOP = 10
THREADS = 2
N_CTX = 2048

# (name, system message or None, user message)
CASES = [
    ("grade_label_first", None,
     'You grade search results for an online store.\n'
     'Query: "wireless noise cancelling headphones"\n'
     'Product: "Sony WH-1000XM5 Wireless Noise Canceling Over-Ear Headphones, 30h battery, Black"\n'
     'Answer with one label first (Exact, Substitute, Complement or Irrelevant), then one sentence '
     'of reason.'),
    ("grade_mismatch", None,
     'Query: "iphone 15 case"\n'
     'Item: "Samsung Galaxy S24 Ultra Silicone Cover, Titanium Gray"\n'
     'Is the item relevant to the query? Reply with relevant, partially relevant or irrelevant, '
     'then explain briefly.'),
    ("query_suggestion", None,
     'A shopper just searched for "trail running shoes". Suggest 5 follow-up search queries they '
     'might type next, one per line, without numbering.'),
    ("product_qa", None,
     'Product: Hydro Flask 32 oz Wide Mouth bottle. Double-wall vacuum insulated stainless steel; '
     'keeps drinks cold up to 24 hours and hot up to 12 hours; lid is dishwasher safe, bottle is '
     'hand wash only.\n'
     'Question: If I fill it with hot coffee at 7 am, will it still be warm at lunch? And can the '
     'whole thing go in the dishwasher?'),
    ("attribute_extraction", None,
     'Extract brand, color, size and material from this product title. Reply with JSON only, keys '
     '"brand", "color", "size", "material", null when missing.\n'
     "Title: Levi's 501 Original Fit Men's Jeans, Dark Stonewash, 32W x 34L, 100% Cotton"),
    ("general_question", None,
     'What is the difference between a duvet and a comforter?'),
    ("chinese_query", None,
     '用户搜索“无线蓝牙耳机 降噪 长续航”。请用一句话说明搜索结果应该优先展示哪类商品，并给出两个相关的搜索词。'),
    ("mixed_language", None,
     'Query: "苹果手机壳 iPhone 15 Pro 防摔"\n'
     'Product: "ESR Clear Case for iPhone 15 Pro, MagSafe compatible, military-grade drop protection"\n'
     'Does the product match the query? Answer yes or no first, then give the reason in Chinese.'),
    ("awkward_characters", None,
     'Normalize this listing into name, capacity_ml, diameter_cm and price_eur:\n'
     '"Crème Brûlée Café ☕️ Mug — 350 ml / 12 oz, Ø 8,5 cm, 🔥 microwave-safe ✅ (2‑pack) – €14,99 '
     '😍👍🏽 naïve façade déjà-vu"'),
    ("code_filter", None,
     'Turn this search filter into an Elasticsearch bool query (JSON only):\n'
     'brand:(nike OR adidas) AND price:[20 TO 80] AND color:"black/white" AND NOT size:"kids" '
     '&& stock>0 // sort=-rating'),
    ("spelling_correction", None,
     'Correct the spelling of this search query and reply with the corrected query only: '
     '"samsng galxy s23 ultar 256gb phatom blak"'),
    ("category_choice", None,
     'Which category fits this item best: Electronics > Audio, Home & Kitchen > Appliances, '
     'Sports > Cycling, or Toys & Games? Reply with the category only.\n'
     'Item: "Bosch PowerPack 500 Wh e-bike battery, frame mount, 36 V, 13.4 Ah"'),
    ("system", 'You are a shopping assistant for an electronics store. Answer in at most two '
               'sentences and never recommend a competitor.',
     'Do I need a 65 W charger for a MacBook Air M2, or is the 30 W one enough?'),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions():
    import gguf
    import jinja2
    import llama_cpp
    import tokenizers
    import torch
    import transformers
    from importlib.metadata import version

    out = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "gguf": version("gguf"),
        "jinja2": jinja2.__version__,
        "llama_cpp_python": llama_cpp.__version__,
    }
    try:
        out["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    except Exception as e:  # noqa: BLE001 - informational only
        out["llama_cpp_system_info"] = f"unavailable: {e}"
    return out


def top(logits, n):
    ids = np.argsort(-logits, kind="stable")[:n]
    return [[int(i), round(float(logits[i]), 4)] for i in ids]


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


class HF:
    def __init__(self, path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        torch.set_num_threads(THREADS)
        d, f = os.path.dirname(path), os.path.basename(path)
        self.tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        self.model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()

    def render(self, messages):
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def tokenize(self, text):
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False)

    def generate(self, ids, new):
        """Greedy, exactly `new` tokens; returns (generated ids, logits before each token)."""
        torch = self.torch
        out, steps = [], []
        with torch.no_grad():
            r = self.model(torch.tensor([ids]), use_cache=True)
            for i in range(new):
                logits = r.logits[0, -1].float().numpy().copy()
                steps.append(logits)
                nxt = int(np.argmax(logits))
                out.append(nxt)
                if i + 1 < new:
                    r = self.model(torch.tensor([[nxt]]), past_key_values=r.past_key_values, use_cache=True)
        return out, steps


class LlamaCpp:
    def __init__(self, path):
        import llama_cpp

        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS,
                                   logits_all=True, verbose=False)
        meta = self.llm.metadata
        self.add_bos = str(meta.get("tokenizer.ggml.add_bos_token", "true")).lower() == "true"
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.eog = {t for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}

    def tokenize(self, text, add_bos=None):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos if add_bos is None else add_bos,
                                 special=True)

    def decode(self, ids):
        return self.llm.detokenize(ids, special=True).decode("utf-8", errors="replace")

    def generate(self, ids, new):
        llm = self.llm
        llm.reset()
        llm.eval(ids)
        out, steps = [], []
        for i in range(new):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            steps.append(logits)
            nxt = int(np.argmax(logits))
            out.append(nxt)
            if i + 1 < new:
                llm.eval([nxt])
        return out, steps

    def forced(self, ids, gen):
        """Teacher forcing: one eval of ids + gen[:-1]; the logits before each token of gen."""
        llm = self.llm
        llm.reset()
        llm.eval(list(ids) + list(gen[:-1]))
        n = len(ids)
        return [np.array(llm.scores[n - 1 + i], dtype=np.float32) for i in range(len(gen))]

    def builtin_render(self, messages):
        """llama.cpp's own C++ chat-template renderer (llama_chat_apply_template), which matches
        known template families instead of running the Jinja template."""
        lc = self.lc
        import ctypes

        tmpl = lc.llama_model_chat_template(self.llm.model, None)
        msgs = (lc.llama_chat_message * len(messages))()
        keep = []
        for i, m in enumerate(messages):
            role, content = m["role"].encode(), m["content"].encode()
            keep += [role, content]
            msgs[i].role, msgs[i].content = role, content
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = lc.llama_chat_apply_template(tmpl, msgs, len(messages), True, buf, size)
        if n < 0:
            return None
        return buf.raw[:n].decode("utf-8", errors="replace")


def first_eog(ids, eog):
    for i, t in enumerate(ids):
        if t in eog:
            return i
    return None


def compare(a_ids, a_steps, b_ids, b_steps):
    """Agreement of two greedy runs (a = transformers, b = llama.cpp) on the same prompt ids."""
    div = next((i for i, (x, y) in enumerate(zip(a_ids, b_ids)) if x != y), None)
    a0, b0 = a_steps[0], b_steps[0]
    union = sorted(set(np.argsort(-a0)[:DIFF_TOP].tolist()) | set(np.argsort(-b0)[:DIFF_TOP].tolist()))
    diff = float(np.max(np.abs(a0[union].astype(np.float64) - b0[union])))
    la, lb = log_softmax(a0), log_softmax(b0)
    lp_diff = float(np.max(np.abs(la[union] - lb[union])))
    overlap = len(set(np.argsort(-a0)[:DIFF_TOP].tolist()) & set(np.argsort(-b0)[:DIFF_TOP].tolist()))
    out = {
        "first_token_same": a_ids[0] == b_ids[0],
        "all_same": div is None,
        "first_divergence": div,
        "max_top10_logit_diff": round(diff, 4),
        "max_top10_logprob_diff": round(lp_diff, 4),
        "top10_overlap": overlap,
        "top1_margin_transformers": round(float(np.sort(a0)[-1] - np.sort(a0)[-2]), 4),
    }
    if div is not None:
        out["at_divergence_top5"] = {"transformers": top(a_steps[div], 5), "llama_cpp": top(b_steps[div], 5)}
    return out


def forced_compare(a_steps, b_steps):
    """Both tools' logits along the same token path (transformers' greedy continuation)."""
    diffs, same = [], 0
    for a, b in zip(a_steps, b_steps):
        union = sorted(set(np.argsort(-a)[:DIFF_TOP].tolist()) | set(np.argsort(-b)[:DIFF_TOP].tolist()))
        diffs.append(float(np.max(np.abs(a[union].astype(np.float64) - b[union]))))
        same += int(np.argmax(a)) == int(np.argmax(b))
    return {"steps": len(diffs), "argmax_same": same, "max_top10_logit_diff": round(max(diffs), 4),
            "median_top10_logit_diff": round(float(np.median(diffs)), 4)}


def summarize(cases):
    like = [c["agreement"] for c in cases]
    return {
        "cases": len(cases),
        "prompt_ids_same": sum(c["prompt_ids_same"] for c in cases),
        "first_token_same": sum(a["first_token_same"] for a in like),
        "all_new_tokens_same": sum(a["all_same"] for a in like),
        "first_divergence_steps": [a["first_divergence"] for a in like],
        "max_top10_logit_diff": max(a["max_top10_logit_diff"] for a in like),
        "median_top10_logit_diff": round(float(np.median([a["max_top10_logit_diff"] for a in like])), 4),
        "max_top10_logprob_diff": max(a["max_top10_logprob_diff"] for a in like),
        "min_top10_overlap": min(a["top10_overlap"] for a in like),
        "teacher_forced_argmax_same": f"{sum(c['teacher_forced']['argmax_same'] for c in cases)} of "
                                      f"{sum(c['teacher_forced']['steps'] for c in cases)}",
        "teacher_forced_max_top10_logit_diff": max(c["teacher_forced"]["max_top10_logit_diff"] for c in cases),
        "note": "per case, compared on the same prompt ids (transformers' ids where the tokenizers differ)",
    }


def dump(obj, indent=0):
    """JSON with one item per line, except that lists of numbers and [id, logit] pairs stay on one."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        flat = all(isinstance(x, (int, float, bool)) or x is None for x in obj)
        pairs = all(isinstance(x, list) and all(isinstance(y, (int, float)) for y in x) for x in obj)
        if flat or pairs:
            return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))
        return "[\n" + ",\n".join(inner + dump(x, indent + 1) for x in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="name=path.gguf")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", type=int, default=len(CASES))
    a = ap.parse_args()
    name, path = a.model.split("=", 1)
    t0 = time.time()
    hf = HF(path)
    lc = LlamaCpp(path)
    meta = lc.llm.metadata
    print(f"{name}: loaded in {time.time() - t0:.0f} s; llama.cpp EOG ids {sorted(lc.eog)}", file=sys.stderr)

    cases = []
    for cname, system, user in CASES[:a.cases]:
        t = time.time()
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        rendered = hf.render(messages)
        builtin = lc.builtin_render(messages)
        hf_ids = hf.tokenize(rendered)
        lc_ids = lc.tokenize(rendered)
        lc_ids_default = lc.tokenize(rendered, add_bos=True)
        hf_gen, hf_steps = hf.generate(hf_ids, NEW)
        lc_gen, lc_steps = lc.generate(lc_ids, NEW)
        case = {
            "name": cname,
            "system": system,
            "user": user,
            "rendered": rendered,
            "llama_cpp_builtin_template_same": builtin == rendered,
            "prompt_ids_same": hf_ids == lc_ids,
            "prompt_ids": {"transformers": hf_ids} if hf_ids == lc_ids else {"transformers": hf_ids, "llama_cpp": lc_ids},
        }
        if builtin != rendered:
            case["llama_cpp_builtin_template"] = builtin
        if lc_ids_default != lc_ids:
            case["llama_cpp_ids_with_add_bos_true"] = lc_ids_default
        for tool, gen, steps, dec in (("transformers", hf_gen, hf_steps, hf.decode), ("llama_cpp", lc_gen, lc_steps, lc.decode)):
            case[tool] = {
                "ids": gen,
                "text": dec(gen),
                "first_eog_at": first_eog(gen, lc.eog),
                "first_top": top(steps[0], TOP),
            }
        if hf_ids == lc_ids:
            case["agreement"] = compare(hf_gen, hf_steps, lc_gen, lc_steps)
        else:
            # Like for like: llama.cpp on transformers' ids.
            lc2_gen, lc2_steps = lc.generate(hf_ids, NEW)
            case["llama_cpp_on_transformers_ids"] = {"ids": lc2_gen, "text": lc.decode(lc2_gen),
                                                     "first_top": top(lc2_steps[0], TOP)}
            case["agreement"] = compare(hf_gen, hf_steps, lc2_gen, lc2_steps)
            case["agreement_own_tokenizations"] = {
                "first_token_same": hf_gen[0] == lc_gen[0], "all_same": hf_gen == lc_gen}
        case["teacher_forced"] = forced_compare(hf_steps, lc.forced(hf_ids, hf_gen))
        cases.append(case)
        ag = case["agreement"]
        print(f"  {cname}: {len(hf_ids)} prompt tokens (same ids: {case['prompt_ids_same']}), first token "
              f"same {ag['first_token_same']}, all {NEW} same {ag['all_same']} (diverge at {ag['first_divergence']}), "
              f"max top-10 logit diff {ag['max_top10_logit_diff']}, teacher-forced argmax same "
              f"{case['teacher_forced']['argmax_same']}/{NEW}, {time.time() - t:.0f} s", file=sys.stderr)

    out = {
        "model": name,
        "file": os.path.basename(path),
        "sha256": sha256(path),
        "arch": meta.get("general.architecture"),
        "gguf_tokenizer": {
            "add_bos_token": meta.get("tokenizer.ggml.add_bos_token"),
            "bos_token_id": int(meta["tokenizer.ggml.bos_token_id"]) if "tokenizer.ggml.bos_token_id" in meta else None,
            "eos_token_id": int(meta["tokenizer.ggml.eos_token_id"]) if "tokenizer.ggml.eos_token_id" in meta else None,
            "llama_cpp_eog_ids": sorted(lc.eog),
            "transformers_bos_token": hf.tok.bos_token,
            "transformers_eos_token": hf.tok.eos_token,
        },
        "tools": versions(),
        "settings": {
            "new_tokens": NEW,
            "greedy": "argmax of raw logits each step; no penalties, no sampling; EOS does not stop generation",
            "transformers": "AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32): every tensor "
                            "dequantized to fp32 by gguf-py; tokenizer(rendered, add_special_tokens=False)",
            "llama_cpp": f"Llama(n_ctx={N_CTX}, n_threads={THREADS}, n_threads_batch={THREADS}, logits_all=True), "
                         "default context params otherwise; tokenize(rendered, add_bos=tokenizer.ggml.add_bos_token, "
                         "special=True); first_eog_at uses llama.cpp's end-of-generation set",
            "top": TOP,
            "logit_diff": f"max |logit_transformers - logit_llama_cpp| over the union of both top-{DIFF_TOP} ids "
                          "at the first position (and the same for log-probabilities)",
            "teacher_forced": "llama.cpp fed the prompt plus transformers' greedy tokens in one eval (logits_all); "
                              "per step, whether the argmax agrees and the top-10 logit diff as above",
        },
        "agreement": summarize(cases),
        "cases": cases,
    }
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(dump(out) + "\n")
    print(json.dumps(out["agreement"]), file=sys.stderr)


if __name__ == "__main__":
    main()
