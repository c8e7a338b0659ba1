#!/usr/bin/env python3
"""MiniLM forward pass, tandem's CPU backend vs ONNX Runtime fp32, side by side.

Both runtimes get the same token ids (tokenized here by the model's own HF tokenizer) and
the same number of threads. ORT runs the torch.onnx export of the sentence-transformers
model (BertModel + masked mean pooling + normalize) on padded batches, as every padded peer
does; tandem runs its packed graph, which computes only real tokens. Two workloads:

  padded-32x128  32 sequences of exactly 128 tokens (no padding for anyone)
  realistic-mix  32 inputs, half search queries and half product titles (4 to ~60 tokens);
                 ORT pads to the longest in the batch, tandem computes real tokens only

Usage: ort_compare.py MODEL_DIR [--threads 2] [--runs 3] [--rounds 5]
Needs: torch, transformers, onnxruntime (pip), and `cargo` to build tandem's timing binary.
The two runtimes take turns for several rounds (each round: `runs` timed batches of each),
so that load from elsewhere on a shared machine hits both alike; it prints each side's
median and the median of the per-round time ratios.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

QUERIES = [
    "red running shoes", "iphone 15 case", "organic green tea", "usb c charger 65w",
    "king size duvet cover", "kids bike helmet", "stainless steel water bottle", "wireless earbuds",
    "yoga mat non slip", "mens leather wallet", "4k hdmi cable 2m", "air fryer 5l",
    "lego star wars", "coffee grinder burr", "gaming mouse rgb", "baby stroller lightweight",
]
TITLES = [
    "Nike Air Zoom Pegasus 40 Men's Road Running Shoes, Breathable Mesh Upper, React Foam Cushioning, Size 10.5 US, University Red/White",
    "Apple iPhone 15 Pro Max Silicone Case with MagSafe - Storm Blue, Soft-Touch Finish, Microfiber Lining",
    "Twinings Organic Pure Green Tea, 100 Individually Wrapped Tea Bags, Smooth and Refreshing, Caffeinated",
    "Anker 735 Charger (Nano II 65W) 3-Port Fast Compact Foldable GaN USB C Charger for MacBook Pro, iPad Pro, Galaxy S23",
    "Utopia Bedding Duvet Cover King Size Set - 1 Duvet Cover with 2 Pillow Shams - 3 Pieces Comforter Cover with Zipper Closure",
    "Giro Scamp MIPS Youth Recreational Cycling Helmet - Matte Black (2022), Extra Small (45-49 cm)",
    "Hydro Flask Standard Mouth Bottle with Flex Cap, Stainless Steel Reusable Water Bottle, Vacuum Insulated, 21 oz",
    "Sony WF-1000XM5 The Best Truly Wireless Bluetooth Noise Canceling Earbuds Headphones with Alexa Built in, Black",
    "Gaiam Yoga Mat - Premium 6mm Print Extra Thick Non Slip Exercise & Fitness Mat for All Types of Yoga, Pilates",
    "Bellroy Hide & Seek Wallet (Slim Leather Bifold Design, RFID Protected, Holds 5-12 Cards, Coin Pouch) - Black",
    "Amazon Basics High-Speed 4K HDMI Cable, 18Gbps, 4K/60Hz, 6.5 Feet, Black",
    "COSORI Pro LE Air Fryer 5-Qt, 1500W, Compact Oilless Air Fryer Oven, 9 Customizable Functions",
    "LEGO Star Wars Millennium Falcon 75257 Building Kit (1,351 Pieces), Starship Model with Minifigures",
    "OXO Brew Conical Burr Coffee Grinder, 15 Grind Settings, Stainless Steel, UV-Blocking Tinted Hopper",
    "Logitech G502 HERO High Performance Wired Gaming Mouse, HERO 25K Sensor, 25,600 DPI, RGB, Adjustable Weights",
    "Baby Jogger City Mini GT2 All-Terrain Stroller, Lightweight Folding, Jet Black, One-Hand Fold, Forever-Air Tires",
]


def export_onnx(model_dir: Path, out: Path):
    import torch
    from transformers import AutoModel

    class Pooled(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    model = Pooled(AutoModel.from_pretrained(str(model_dir))).eval()
    ids = torch.ones(2, 16, dtype=torch.long)
    dyn = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}, "token_type_ids": {0: "b", 1: "s"}}
    torch.onnx.export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(out),
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["embeddings"],
                      dynamic_axes=dyn, opset_version=17, dynamo=False)


def tokenize(model_dir: Path, texts, max_len):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_len)
    return [tok.encode(t).ids for t in texts]


def padded(batch):
    n = max(len(s) for s in batch)
    ids = np.zeros((len(batch), n), dtype=np.int64)
    mask = np.zeros((len(batch), n), dtype=np.int64)
    for i, s in enumerate(batch):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask


def time_ort(sess, batch, runs):
    ids, mask = padded(batch)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def time_tandem(model_dir: Path, batch, runs, threads):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(batch, f)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run(["cargo", "run", "-q", "--release", "-p", "tandem-benches", "--bin", "minilm_timing", "--",
                          str(model_dir), f.name, str(runs)], cwd=REPO, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["median_ms"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import onnxruntime as ort

    onnx_path = REPO / "benches" / "out" / "minilm.onnx"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    if not onnx_path.exists():
        export_onnx(args.model_dir, onnx_path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])

    long_texts = [(t + " ") * 8 for t in TITLES] * 2
    full = [s[:128] for s in tokenize(args.model_dir, long_texts, 512)]
    assert all(len(s) == 128 for s in full)
    mix = tokenize(args.model_dir, QUERIES + TITLES, 256)
    print(f"onnxruntime {ort.__version__}, {args.threads} threads; tandem via RAYON_NUM_THREADS={args.threads}")
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "tandem-benches", "--bin", "minilm_timing"],
                   cwd=REPO, check=True)
    for name, batch in [("padded-32x128", full), ("realistic-mix", mix)]:
        real = sum(len(s) for s in batch)
        ort_times, tandem_times = [], []
        for _ in range(args.rounds):
            ort_times.append(time_ort(sess, batch, args.runs))
            tandem_times.append(time_tandem(args.model_dir, batch, args.runs, args.threads))
        ratio = statistics.median(t / o for t, o in zip(tandem_times, ort_times))
        print(f"{name:14s} real tokens {real:5d}  ORT {statistics.median(ort_times):8.1f} ms  "
              f"tandem {statistics.median(tandem_times):8.1f} ms  tandem/ORT time ratio {ratio:5.2f} "
              f"(per round: {', '.join(f'{t / o:.2f}' for t, o in zip(tandem_times, ort_times))})")


if __name__ == "__main__":
    main()
