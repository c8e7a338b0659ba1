"""Reference dequantization by gguf-py (PyPI `gguf`, `gguf.quants.dequantize`), which tandem's
weights::quant must match bit for bit.

    python3 -m venv /work/venv-gguf && /work/venv-gguf/bin/pip install gguf==0.19.0 numpy
    /work/venv-gguf/bin/python tests/reference/make_gguf_dequant_reference.py \
        --smollm2 PATH/SmolLM2-135M-Instruct.Q4_1.gguf --qwen PATH/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf

writes
- gguf_random_blocks.json: for each supported type, random blocks (every bit pattern of the
  quants, finite f16 scales) as hex and the sha256 of their dequantized little-endian f32s;
- gguf_dequant_<model>.json: for each tensor of a real file, its GGUF type, row-major shape and
  the sha256 of its dequantized little-endian f32s. The files are fetched by `tandem fetch
  smollm2` / `tandem fetch qwen2.5-coder-0.5b`; they are never committed.
"""

import argparse
import hashlib
import importlib.metadata
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, quants

HERE = os.path.dirname(os.path.abspath(__file__))

# type: (values per block, bytes per block, byte offsets of the f16 scales in a block)
LAYOUTS = {
    T.F16: (1, 2, [0]),
    T.BF16: (1, 2, []),
    T.Q8_0: (32, 34, [0]),
    T.Q4_0: (32, 18, [0]),
    T.Q4_1: (32, 20, [0, 2]),
    T.Q5_0: (32, 22, [0]),
    T.Q4_K: (256, 144, [0, 2]),
    T.Q5_K: (256, 176, [0, 2]),
    T.Q6_K: (256, 210, [208]),
}
BLOCKS = 24


def digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<f4").tobytes()).hexdigest()


def finite_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    # Exponent 31 is inf/NaN: clear its top bit (the value stays random and finite).
    infinite = (bits >> 10) & 0x1F == 0x1F
    bits[infinite] &= np.uint16(~0x4000 & 0xFFFF)
    return bits


def random_blocks() -> dict:
    rng = np.random.default_rng(20250213)
    out = {"gguf_version": importlib.metadata.version("gguf"), "types": {}}
    for qtype, (values, size, scales) in LAYOUTS.items():
        raw = rng.integers(0, 256, size=(BLOCKS, size), dtype=np.uint8)
        for at in scales:
            raw[:, at : at + 2] = finite_f16(rng, BLOCKS).view(np.uint8).reshape(BLOCKS, 2)
        if qtype == T.F16:
            raw = finite_f16(rng, BLOCKS * size // 2).view(np.uint8).reshape(BLOCKS, size)
        data = raw.reshape(-1)
        if qtype == T.F16:
            y = quants.dequantize(data.view(np.float16), qtype)
        else:
            y = quants.dequantize(data, qtype)
        assert y.size == BLOCKS * values
        out["types"][qtype.name] = {"bytes": data.tobytes().hex(), "values": int(y.size), "sha256": digest(y)}
    return out


# The names the files have in tandem's model cache (`tandem fetch` places them so).
CACHE_NAMES = {"smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"}


def file_digests(path: str, model: str) -> dict:
    reader = GGUFReader(path)
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    tensors = {}
    for t in reader.tensors:
        y = quants.dequantize(t.data, t.tensor_type)
        shape = [int(d) for d in reversed(t.shape.tolist())]
        assert list(y.shape) == shape, (t.name, y.shape, shape)
        tensors[t.name] = {"type": t.tensor_type.name, "shape": shape, "sha256": digest(y)}
    return {"file": CACHE_NAMES[model], "file_sha256": sha.hexdigest(), "tensors": tensors}


def write(name: str, value: dict) -> None:
    with open(os.path.join(HERE, name), "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smollm2")
    parser.add_argument("--qwen")
    args = parser.parse_args()
    write("gguf_random_blocks.json", random_blocks())
    for model, path in [("smollm2", args.smollm2), ("qwen2.5-coder-0.5b", args.qwen)]:
        if path:
            write(f"gguf_dequant_{model}.json", file_digests(path, model))


if __name__ == "__main__":
    main()
