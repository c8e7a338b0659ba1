#!/usr/bin/env python3
"""A fixed random LoRA adapter for all-MiniLM-L6-v2 and PEFT's embeddings with it, for
tandem's LoRA test.

Usage: make_minilm_lora_reference.py MODEL_DIR [OUT_DIR]

MODEL_DIR is the unpacked model folder (`tandem fetch minilm` puts it in
~/.cache/tandem/models/minilm). Writes into OUT_DIR (default: minilm_lora/ beside this
script):

- adapter_config.json + adapter_model.safetensors: PEFT's own files for a LoRA of rank 4,
  alpha 8 on every layer's attention query and value and on the intermediate dense (so the
  fused op meets both square and 384 -> 1536 shapes). PEFT initialises B to zero,
  which would make the adapter a no-op; here A and B are drawn from a seeded normal, scaled so
  that the adapter moves embeddings clearly (cosine to the base about 0.9) without swamping them.
- embeddings.json: for each input text, the sentence embedding (mean pooling over tokens, then
  L2 normalisation, as sentence-transformers does for this model) computed three ways with
  torch: PEFT's unmerged model, the same model after `merge_and_unload()`, and the base model
  without the adapter. Rounded to 7 significant digits.

Needs torch, transformers, peft and safetensors; the Rust test that reads the files does not.
"""

import json
import platform
import sys
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModel, AutoTokenizer

TEXTS = [
    "red running shoes",
    "Nike Air Zoom Pegasus 40 men's road running shoes, black/white, size 10",
    "stainless steel chef knife 8 inch",
    "iphone 15 pro max case",
    "a",
    "Wireless noise-cancelling over-ear headphones with 30-hour battery and USB-C fast charging",
    "organic cotton crew-neck t-shirt, women's, heather grey, medium",
    "usb c cable 2m",
]
RANK = 4
ALPHA = 8
TARGETS = ["query", "value", "intermediate.dense"]
SEED = 20261125
# Size of the random A and B entries, relative to 1/sqrt(fan_in).
SPREAD = 0.4


def embed(model, tokenizer, texts):
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def rounded(t):
    return [float(f"{x:.7g}") for x in t.tolist()]


def main():
    model_dir = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).with_name("minilm_lora")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModel.from_pretrained(model_dir).eval()
    base_embeddings = embed(base, tokenizer, TEXTS)

    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, bias="none")
    model = get_peft_model(AutoModel.from_pretrained(model_dir), config).eval()
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                fan_in = param.shape[1]
                param.copy_(torch.randn(param.shape, generator=generator) * (SPREAD / fan_in**0.5))
    model.save_pretrained(out)
    # Not PEFT's model-card template, and no path of this machine in the config.
    (out / "README.md").unlink(missing_ok=True)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = "sentence-transformers/all-MiniLM-L6-v2"
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    unmerged = embed(model, tokenizer, TEXTS)
    merged = embed(model.merge_and_unload(), tokenizer, TEXTS)

    result = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "adapter": {"r": RANK, "lora_alpha": ALPHA, "target_modules": TARGETS, "seed": SEED},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "pooling": "mean, then L2 normalisation",
        "cases": [
            {
                "text": text,
                "unmerged": rounded(unmerged[i]),
                "merged": rounded(merged[i]),
                "base": rounded(base_embeddings[i]),
                "cosine_to_base": float(torch.dot(unmerged[i], base_embeddings[i])),
            }
            for i, text in enumerate(TEXTS)
        ],
    }
    (out / "embeddings.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}; cosines to the base: {[round(c['cosine_to_base'], 3) for c in result['cases']]}")


if __name__ == "__main__":
    main()
