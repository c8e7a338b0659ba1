"""Reference logits for tandem's GGUF decoder graphs (models/tests/decoder_gguf.rs).

An independent forward pass in numpy (float64) over the weights as gguf-py dequantizes them,
following llama.cpp's llama and qwen2 graphs: RMSNorm, rotary embedding (interleaved pairs
for `llama`, whose GGUF q/k rows are stored permuted for it; half-split for `qwen2`),
grouped-query causal attention, SwiGLU, tied or separate output head. For each prompt (token
ids, so no tokenizer is involved) it stores the top logits after the last prompt token and
then the greedy continuation with each step's top logits, which exercises a KV cache.

    python -m venv /tmp/venv && /tmp/venv/bin/pip install gguf numpy
    /tmp/venv/bin/python tests/reference/make_decoder_reference.py \
        --model smollm2=$CACHE/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out tests/reference/decoder_smollm2.json
"""

import argparse
import json

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

# Prompts as byte-level BPE pieces (Ġ a space, Ċ a newline), turned into ids by the file's own
# vocabulary (a piece it lacks is split greedily into the longest pieces it has): a chat turn
# in the models' template, a grading-style prompt and a plain sentence.
PROMPTS = [
    ["<|im_start|>", "user", "Ċ", "What", "Ġis", "Ġthe", "Ġcapital", "Ġof", "ĠFrance", "?", "<|im_end|>", "Ċ",
     "<|im_start|>", "assistant", "Ċ"],
    ["Query", ":", "Ġred", "Ġrunning", "Ġshoes", "Ċ", "Product", ":", "ĠNike", "ĠPegasus", "Ġ40", "Ġrunning", "Ġshoe",
     ",", "Ġred", "Ċ", "Relevant", ":"],
    ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"],
]
STEPS = 8
TOP = 10


def encode(pieces, vocab):
    ids = []
    for piece in pieces:
        while piece:
            for end in range(len(piece), 0, -1):
                if piece[:end] in vocab:
                    ids.append(vocab[piece[:end]])
                    piece = piece[end:]
                    break
            else:
                raise SystemExit(f"no vocabulary entry starts {piece!r}")
    return ids


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def tensors(reader):
    out = {}
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape)]  # GGUF lists dims innermost first
        out[t.name] = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(shape)
    return out


def rms_norm(x, g, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def rope(x, pos, inv_freq, half):
    # x [heads, d]; rotates the first 2·len(inv_freq) dims.
    theta = (np.float32(pos) * inv_freq).astype(np.float64)
    cos, sin = np.cos(theta), np.sin(theta)
    x = x.copy()
    n = len(inv_freq)
    if half:
        a, b = x[:, :n].copy(), x[:, n:2 * n].copy()
        x[:, :n], x[:, n:2 * n] = a * cos - b * sin, a * sin + b * cos
    else:
        a, b = x[:, 0:2 * n:2].copy(), x[:, 1:2 * n:2].copy()
        x[:, 0:2 * n:2], x[:, 1:2 * n:2] = a * cos - b * sin, a * sin + b * cos
    return x


class Decoder:
    def __init__(self, path):
        r = GGUFReader(path)
        arch = field(r, "general.architecture")
        self.w = tensors(r)
        self.layers = field(r, f"{arch}.block_count")
        self.heads = field(r, f"{arch}.attention.head_count")
        self.kv_heads = field(r, f"{arch}.attention.head_count_kv", self.heads)
        self.eps = field(r, f"{arch}.attention.layer_norm_rms_epsilon")
        d = field(r, f"{arch}.embedding_length")
        self.head_dim = d // self.heads
        rot = field(r, f"{arch}.rope.dimension_count", self.head_dim)
        base = np.float32(field(r, f"{arch}.rope.freq_base", 10000.0))
        # As tandem's ops::rope::inv_freq (and Hugging Face) compute it, in f32.
        self.inv_freq = np.array(
            [np.float32(1.0) / np.power(base, np.float32(2 * i) / np.float32(rot)) for i in range(rot // 2)],
            dtype=np.float32,
        )
        self.half = arch == "qwen2"
        self.arch = arch
        self.vocab = {t: i for i, t in enumerate(field(r, "tokenizer.ggml.tokens"))}
        self.reset()

    def reset(self):
        self.k = [[] for _ in range(self.layers)]
        self.v = [[] for _ in range(self.layers)]

    def lin(self, x, name):
        y = self.w[name + ".weight"] @ x
        if name + ".bias" in self.w:
            y = y + self.w[name + ".bias"]
        return y

    def step(self, token):
        w, hd = self.w, self.head_dim
        pos = len(self.k[0])
        x = w["token_embd.weight"][token]
        for l in range(self.layers):
            p = f"blk.{l}."
            h = rms_norm(x, w[p + "attn_norm.weight"], self.eps)
            q = rope(self.lin(h, p + "attn_q").reshape(self.heads, hd), pos, self.inv_freq, self.half)
            k = rope(self.lin(h, p + "attn_k").reshape(self.kv_heads, hd), pos, self.inv_freq, self.half)
            v = self.lin(h, p + "attn_v").reshape(self.kv_heads, hd)
            self.k[l].append(k)
            self.v[l].append(v)
            ks, vs = np.stack(self.k[l]), np.stack(self.v[l])  # [t, kv_heads, hd]
            group = self.heads // self.kv_heads
            out = np.zeros((self.heads, hd))
            for hh in range(self.heads):
                s = ks[:, hh // group] @ q[hh] / np.sqrt(hd)
                e = np.exp(s - s.max())
                out[hh] = (e / e.sum()) @ vs[:, hh // group]
            x = x + self.lin(out.reshape(-1), p + "attn_output")
            h = rms_norm(x, w[p + "ffn_norm.weight"], self.eps)
            gate = self.lin(h, p + "ffn_gate")
            f = gate / (1.0 + np.exp(-gate)) * self.lin(h, p + "ffn_up")
            x = x + self.lin(f, p + "ffn_down")
        h = rms_norm(x, w["output_norm.weight"], self.eps)
        head = w.get("output.weight", w["token_embd.weight"])
        return head @ h


def top(logits):
    ids = np.argsort(-logits)[:TOP]
    return [[int(i), float(logits[i])] for i in ids]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="name=path.gguf")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    name, path = a.model.split("=", 1)
    dec = Decoder(path)
    cases = []
    for pieces in PROMPTS:
        prompt = encode(pieces, dec.vocab)
        dec.reset()
        for t in prompt:
            logits = dec.step(t)
        first = top(logits)
        generated, tops = [], []
        for _ in range(STEPS):
            nxt = int(np.argmax(logits))
            generated.append(nxt)
            logits = dec.step(nxt)
            tops.append(top(logits))
        cases.append({"prompt": prompt, "first_top": first, "greedy": generated, "step_tops": tops})
    json.dump({"model": name, "arch": dec.arch, "cases": cases}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
