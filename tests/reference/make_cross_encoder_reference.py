#!/usr/bin/env python3
"""A tiny random cross-encoder (BertForSequenceClassification) and its scores by transformers,
for tandem's cross-encoder test.

Usage: make_cross_encoder_reference.py [OUT_DIR]

No cross-encoder checkpoint is reachable from this project's machines (no model hub), so the
test checks the architecture instead of trained weights: a seeded random BERT with 2 layers,
hidden size 32, a pooler and a one-label classifier, over a WordPiece vocabulary made from the
words of the test pairs. Writes into OUT_DIR (default: tiny_cross_encoder/ beside this
script): config.json, model.safetensors, tokenizer.json (with pair post-processing:
[CLS] a [SEP] b [SEP], token types 0 then 1), and scores.json with each (query, document)
pair, its token ids and type ids, and transformers' logit. Needs torch, transformers and
tokenizers; the Rust test does not.
"""

import json
import sys
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification

PAIRS = [
    ("nike running shoes", "brand: nike"),
    ("nike running shoes", "brand: adidas"),
    ("iphone 15 case", "Apple iPhone 15 silicone case with MagSafe, midnight"),
    ("red dress", "color: red"),
    ("a", "b"),
    ("usb c cable 2m", "category: Electronics > Electronics Accessories > Cables"),
    ("stainless steel chef knife", "material: stainless steel, 8 inch blade, with an unknownword"),
]
SEED = 7


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("tiny_cross_encoder")
    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = set()
    pre = pre_tokenizers.BertPreTokenizer()
    for pair in PAIRS:
        for text in pair:
            words.update(w for w, _ in pre.pre_tokenize_str(text.lower()) if w != "unknownword")
    # Some continuation pieces, so that WordPiece splits words it lacks.
    vocab = specials + sorted(words) + ["##s", "##ing", "##er"]
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.save(str(out / "tokenizer.json"))

    torch.manual_seed(SEED)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=1,
        architectures=["BertForSequenceClassification"],
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        # LayerNorms keep their (1, 0) init: random gains near 0 would wash every input out.
        for name, p in model.named_parameters():
            if "LayerNorm" not in name:
                p.copy_(torch.randn(p.shape) * 0.3)
    model.save_pretrained(out, safe_serialization=True)

    cases = []
    for query, doc in PAIRS:
        enc = tokenizer.encode(query, doc)
        ids = torch.tensor([enc.ids])
        types = torch.tensor([enc.type_ids])
        with torch.no_grad():
            logit = model(input_ids=ids, token_type_ids=types, attention_mask=torch.ones_like(ids)).logits[0, 0]
        cases.append({"query": query, "document": doc, "ids": enc.ids, "type_ids": enc.type_ids, "logit": float(logit)})
    result = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "cases": cases,
    }
    (out / "scores.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}: {[round(c['logit'], 4) for c in cases]}")


if __name__ == "__main__":
    main()
