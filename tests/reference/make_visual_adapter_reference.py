"""A layer-wise gated visual adapter (docs/visual-adapters.md) for SmolLM2 with seeded random
weights, and reference logits of an independent implementation of the formula, for tandem's
visual adapter test (models/tests/visual_adapter.rs).

The decoder is a plain torch float32 forward of llama (SmolLM2) over the weights as gguf-py
dequantizes them (RMSNorm, RoPE on interleaved pairs as GGUF stores llama's q/k rows, grouped-
query causal attention, SwiGLU, the tied head), recomputing the whole sequence per token;
the picture side is torchvision's MobileNetV2 `features` (the checkpoint `tandem fetch
mobilenetv2` stores) with the ImageNet evaluation transform, then
`torch.nn.functional.adaptive_avg_pool2d` to grid × grid; the projector, the adapters, the
visual keys and values and the gated second softmax as docs/visual-adapters.md writes them.
float32 throughout, as tandem computes (a float64 reference drifts from any f32
implementation by a few thousandths after 30 layers). Adapter weights are drawn from a seeded numpy generator and stored as f16 (halving the
file); the reference computes with exactly those f16 values.

    python -m venv /tmp/venv && /tmp/venv/bin/pip install gguf numpy torch torchvision safetensors pillow
    /tmp/venv/bin/python tests/reference/make_visual_adapter_reference.py \\
        --gguf $CACHE/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --mobilenet $CACHE/models/mobilenetv2/mobilenet_v2-b0353104.pth \\
        --out tests/reference/visual_adapter

The repo holds two: visual_adapter/ (the defaults: grid 3, rank 8, GELU, every layer) and
visual_adapter_silu/ (`--seed 7 --grid 2 --rank 4 --act silu --layers 0,3,11,29`).

Writes OUT/adapter_config.json, OUT/adapter.safetensors and OUT/reference.json (for each
photo and prompt: the prompt ids, the top-10 logits after the prompt, 12 greedy tokens and
each step's top-10 logits).
"""

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.numpy import save_file
from torchvision import transforms
from torchvision.models import mobilenet_v2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gguf import GGUFReader  # noqa: E402
from make_decoder_reference import encode, field, tensors, top  # noqa: E402

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
# PNGs: tandem decodes JPEGs within a level of PIL's libjpeg, which moves MobileNetV2's
# features and so these logits by a few hundredths (see models/tests/mobilenet_parity.rs).
PHOTOS = ["coffee.png", "astronaut.png", "chelsea.png"]
# Chat turns of SmolLM2's template as byte-level BPE pieces (Ġ a space, Ċ a newline).
PROMPTS = [
    ["<|im_start|>", "user", "Ċ", "Describe", "Ġthis", "Ġproduct", ".", "<|im_end|>", "Ċ", "<|im_start|>",
     "assistant", "Ċ"],
    ["<|im_start|>", "user", "Ċ", "What", "Ġcategory", "Ġdoes", "Ġthis", "Ġitem", "Ġbelong", "Ġto", "?", "<|im_end|>",
     "Ċ", "<|im_start|>", "assistant", "Ċ"],
]
STEPS = 12


def adapter_weights(rng, d, heads, layers, rank, channels):
    """Weights sized so that the picture moves the logits by tenths while the text stays the
    model's own (stronger gates drown it: it repeats one token): unit-scale visual tokens,
    adapters that change them by a fraction, gates whose tanh is ±0.05 … ±0.35."""
    t = {}
    t["visual.proj.weight"] = rng.normal(0.0, 1.0 / np.sqrt(channels), (d, channels))
    t["visual.proj.bias"] = rng.normal(0.0, 0.1, d)
    for layer in layers:
        p = f"layers.{layer}.adapter."
        t[p + "down.weight"] = rng.normal(0.0, 1.0 / np.sqrt(d), (rank, d))
        t[p + "down.bias"] = rng.normal(0.0, 0.1, rank)
        t[p + "up.weight"] = rng.normal(0.0, 0.5 / np.sqrt(rank), (d, rank))
        t[p + "up.bias"] = rng.normal(0.0, 0.05, d)
        t[p + "gate"] = rng.choice([-1.0, 1.0], heads) * rng.uniform(0.05, 0.37, heads)
    return {k: v.astype(np.float16) for k, v in t.items()}


class AdaptedDecoder:
    """SmolLM2 (llama) in torch float32 over gguf-py's dequantized weights, with a visual
    adapter's second softmax in every adapted layer. It recomputes the whole sequence for each
    token (no cache): slow, and independent of how tandem caches."""

    def __init__(self, path, adapter, act, layers):
        r = GGUFReader(path)
        arch = field(r, "general.architecture")
        assert arch == "llama", arch
        self.w = {k: torch.from_numpy(v).float() for k, v in tensors(r).items()}
        self.layers = field(r, f"{arch}.block_count")
        self.heads = field(r, f"{arch}.attention.head_count")
        self.kv_heads = field(r, f"{arch}.attention.head_count_kv", self.heads)
        self.eps = float(field(r, f"{arch}.attention.layer_norm_rms_epsilon"))
        d = field(r, f"{arch}.embedding_length")
        self.hd = d // self.heads
        base = np.float32(field(r, f"{arch}.rope.freq_base", 10000.0))
        self.inv_freq = torch.tensor(
            [np.float32(1.0) / np.power(base, np.float32(2 * i) / np.float32(self.hd)) for i in range(self.hd // 2)]
        )
        self.vocab = {t: i for i, t in enumerate(field(r, "tokenizer.ggml.tokens"))}
        self.adapter = {k: torch.from_numpy(v.astype(np.float32)) for k, v in adapter.items()}
        self.act = act
        self.adapted = layers
        self.visual = {}

    def norm(self, x, g):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps) * g

    def lin(self, x, name):
        y = x @ self.w[name + ".weight"].T
        if name + ".bias" in self.w:
            y = y + self.w[name + ".bias"]
        return y

    def see(self, tokens):
        """The picture's visual keys and values per adapted layer (None: no picture)."""
        self.visual = {}
        if tokens is None:
            return
        a = self.adapter
        v = tokens @ a["visual.proj.weight"].T + a["visual.proj.bias"]  # [k, d]
        for layer in self.adapted:
            p = f"layers.{layer}.adapter."
            al = v + self.act(v @ a[p + "down.weight"].T + a[p + "down.bias"]) @ a[p + "up.weight"].T + a[p + "up.bias"]
            n = self.norm(al, self.w[f"blk.{layer}.attn_norm.weight"])
            k = self.lin(n, f"blk.{layer}.attn_k").reshape(len(n), self.kv_heads, self.hd)
            vv = self.lin(n, f"blk.{layer}.attn_v").reshape(len(n), self.kv_heads, self.hd)
            self.visual[layer] = (k, vv, torch.tanh(a[p + "gate"]))

    def rope(self, x):
        # x [t, heads, hd]; llama GGUF rows are stored for interleaved pairs (2i, 2i+1).
        t = x.shape[0]
        theta = torch.arange(t, dtype=torch.float32)[:, None] * self.inv_freq[None, :]  # [t, hd/2]
        cos, sin = torch.cos(theta)[:, None, :], torch.sin(theta)[:, None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out

    def logits(self, ids):
        """Logits after the last of `ids`."""
        w, hd, group = self.w, self.hd, self.heads // self.kv_heads
        t = len(ids)
        x = w["token_embd.weight"][torch.tensor(ids)]
        mask = torch.full((t, t), float("-inf")).triu(1)
        for layer in range(self.layers):
            p = f"blk.{layer}."
            h = self.norm(x, w[p + "attn_norm.weight"])
            q = self.rope(self.lin(h, p + "attn_q").reshape(t, self.heads, hd))
            k = self.rope(self.lin(h, p + "attn_k").reshape(t, self.kv_heads, hd))
            v = self.lin(h, p + "attn_v").reshape(t, self.kv_heads, hd)
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # [t, heads, hd]
            s = torch.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
            out = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v)
            if layer in self.visual:
                vk, vv, gate = self.visual[layer]
                vk, vv = vk.repeat_interleave(group, 1), vv.repeat_interleave(group, 1)
                s = torch.einsum("qhd,khd->hqk", q, vk) / np.sqrt(hd)
                out = out + gate[None, :, None] * torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), vv)
            x = x + self.lin(out.reshape(t, -1), p + "attn_output")
            h = self.norm(x, w[p + "ffn_norm.weight"])
            x = x + self.lin(torch.nn.functional.silu(self.lin(h, p + "ffn_gate")) * self.lin(h, p + "ffn_up"), p + "ffn_down")
        h = self.norm(x[-1], w["output_norm.weight"])
        head = w.get("output.weight", w["token_embd.weight"])
        return (head @ h).double().numpy()


def visual_tokens(model, path, grid):
    transform = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    with Image.open(path) as img:
        x = transform(img.convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        fmap = model.features(x)  # [1, 1280, 7, 7]
        pooled = torch.nn.functional.adaptive_avg_pool2d(fmap, grid)  # [1, 1280, g, g]
    return pooled[0].reshape(pooled.shape[1], grid * grid).T.contiguous()  # [g², 1280], row-major cells


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--mobilenet", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--grid", type=int, default=3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--act", choices=["gelu", "silu"], default="gelu")
    ap.add_argument("--layers", help="adapted layers, comma-separated (default: all, and absent from the config)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    sha = hashlib.sha256(Path(a.gguf).read_bytes()).hexdigest()
    act = {"gelu": lambda x: torch.nn.functional.gelu(x), "silu": torch.nn.functional.silu}[a.act]
    dec = AdaptedDecoder(a.gguf, {}, act, [])
    d = dec.w["token_embd.weight"].shape[1]
    layers = [int(v) for v in a.layers.split(",")] if a.layers else list(range(dec.layers))
    rng = np.random.default_rng(a.seed)
    adapter = adapter_weights(rng, d, dec.heads, layers, a.rank, 1280)
    dec.adapter = {k: torch.from_numpy(v.astype(np.float32)) for k, v in adapter.items()}
    dec.adapted = layers
    save_file(adapter, str(out / "adapter.safetensors"))
    config = {
        "encoder": "mobilenetv2",
        "grid": a.grid,
        "rank": a.rank,
        "act": a.act,
        "base_model": "smollm2",
        "base_sha256": sha,
    }
    if a.layers:
        config["layers"] = layers
    (out / "adapter_config.json").write_text(json.dumps(config, indent=1) + "\n")

    # The torch decoder without a picture against make_decoder_reference's float64 numpy one.
    base = json.loads((HERE / "decoder_smollm2.json").read_text())
    worst = 0.0
    with torch.no_grad():
        for case in base["cases"]:
            logits = dec.logits(case["prompt"])
            worst = max(worst, max(abs(logits[i] - v) for i, v in case["first_top"]))
    print(f"without a picture: within {worst:.2e} of decoder_smollm2.json (float64)")
    assert worst < 0.02, worst

    model = mobilenet_v2()
    model.load_state_dict(torch.load(a.mobilenet, map_location="cpu", weights_only=True))
    model.eval()
    cases = []
    for photo in PHOTOS:
        tokens = visual_tokens(model, HERE / "images" / photo, a.grid)
        for pieces in PROMPTS:
            prompt = encode(pieces, dec.vocab)
            dec.see(tokens)
            with torch.no_grad():
                logits = dec.logits(prompt)
                first = top(logits)
                generated, tops = [], []
                for _ in range(STEPS):
                    nxt = int(np.argmax(logits))
                    generated.append(nxt)
                    logits = dec.logits(prompt + generated)
                    tops.append(top(logits))
            print(f"{photo}: {generated}", flush=True)
            cases.append({"photo": f"images/{photo}", "prompt": prompt, "first_top": first, "greedy": generated,
                          "step_tops": tops})
    reference = {
        "made_by": {
            "script": "tests/reference/make_visual_adapter_reference.py",
            "seed": a.seed,
            "numpy": np.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        },
        "base": Path(a.gguf).name,
        "base_sha256": sha,
        "cases": cases,
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")


if __name__ == "__main__":
    main()
