#!/usr/bin/env python3
"""MiniLM on the CPU: tandem against ONNX Runtime (default and transformer-optimized graphs)
and PyTorch, side by side, plus the f32 GEMM against OpenBLAS (numpy's) at the same shapes.

Every runtime gets the same token ids (tokenized here by the model's own HF tokenizer) and the
same number of threads. The peers run the sentence-transformers model (BertModel + masked mean
pooling + normalize) on padded batches, as every padded runtime must; tandem runs its packed
graph, which computes real tokens only. Workloads:

  padded-32x128  32 sequences of exactly 128 tokens (no padding for anyone)
  batch1-16      one 16-token query (latency: what a search box sends)
  realistic-mix  16 search queries + 16 product titles (4 to ~40 tokens); the peers pad to the
                 longest in the batch, tandem computes real tokens only

The runtimes take turns, round after round (each round: `runs` timed batches of each, after
a warm-up), so that load from elsewhere hits all alike; the table shows each side's median of
round medians and the median of tandem's per-round time ratio to the faster ORT variant.
Before and after, it records the CPU model, its SIMD flags, the thread counts and `uptime`'s
load: figures taken on a busy machine are not figures.

Usage: cpu_compare.py MODEL_DIR [--threads 2] [--rounds 5] [--isa avx2] [--tandem-bin PATH]
                                 [--no-torch] [--bf16] [--mobilenet DIR [--no-minilm]] [--readme]
  --bf16        also times tandem with its linear layers in bf16 (`--precision bf16`: bf16
                products where the CPU has AVX-512 BF16) and PyTorch under bf16 autocast, and
                reports tandem bf16 / tandem f32
  --isa avx2    runs every runtime as on an AVX2 CPU (Haswell to Zen 3: AVX2 and FMA, no
                AVX-512, AMX or AVX-VNNI): where the kernel can fault on CPUID (`cpuid_fault` in
                /proc/cpuinfo) the script builds benches/cpuid_avx2.c and runs itself and
                tandem with it preloaded, which hides those features from CPUID, so ONNX
                Runtime (which has no switch), PyTorch, OpenBLAS, the `gemm` crate and tandem
                all pick their AVX2 kernels at run time. Also sets tandem's own switch
                (TANDEM_CPU_ISA=avx2), PyTorch's (ATEN_CPU_CAPABILITY=avx2,
                MKL_ENABLE_INSTRUCTIONS=AVX2) and OpenBLAS's (OPENBLAS_CORETYPE=Haswell). Without
                CPUID faulting only those switches apply: ORT then stays at its best path (the
                table says so), and the `gemm` crate's f32 kernels too unless --tandem-bin is a
                build without its `x86-v4` feature.
  --mobilenet DIR  also times MobileNetV2 (a fetched mobilenetv2 folder) at batch 1 and 8;
                with --no-minilm (and --no-gemm) MobileNetV2 alone. tandem's side stays loaded
                (`mobilenet_timing --serve`) and its block of calls runs right before or after
                ORT's, and the table adds the ratio of the two runtimes' fast modes (10th
                percentiles of every call's time): on a VM whose speed jumps between two modes
                within a second, round medians mix them in whatever share each block got
  --readme      also writes the tables between the cpu_compare markers of benches/README.md
Needs: torch, transformers, onnxruntime, numpy (pip), and `cargo` to build tandem's timing
binaries (benches/src/bin/minilm_timing.rs and gemm_timing.rs).
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

import cpuid_avx2

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


def timed(fn, runs):
    return statistics.median(timed_calls(fn, runs))


def timed_calls(fn, runs):
    """Each of `runs` calls' time in ms, after a warm-up call."""
    # Thread pools spin for a while after their last task (OpenBLAS, OpenMP, ORT's): let the
    # previous runtime's go idle first, so that no runtime is timed against another's spinning.
    time.sleep(0.5)
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def fast_mode(times):
    """The 10th percentile of a runtime's call times over all rounds: on a VM whose speed
    jumps between a fast and a slow mode (1.6× apart, switching within a second), the median
    of a block mixes the two in whatever share that block got, while both runtimes' fast
    modes are the same machine."""
    return float(np.percentile(times, 10))


def ort_runner(sess, batch):
    ids, mask = padded(batch)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return lambda: sess.run(None, feed)


def torch_runner(model, batch, bf16=False):
    import contextlib
    import torch
    ids, mask = (torch.from_numpy(x) for x in padded(batch))
    types = torch.zeros_like(ids)
    # PyTorch's own bf16 inference on the CPU: autocast runs the linear layers in bf16 (oneDNN,
    # with AVX-512 BF16 or AMX where the CPU has them).
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def run():
        with torch.inference_mode(), precision:
            model(ids, mask, types)
    return run


def tandem_time(binary: Path, model_dir: Path, batch, runs, env, precision="f32"):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(batch, f)
    time.sleep(0.5)  # as in `timed`
    out = subprocess.run([str(binary), str(model_dir), f.name, str(runs), "cpu", precision], env=env, check=True,
                         capture_output=True, text=True)
    os.unlink(f.name)
    return json.loads(out.stdout)["median_ms"]


def machine():
    info = Path("/proc/cpuinfo").read_text()
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), [])
    simd = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "sse4")))
    return model, simd, os.cpu_count()


def load():
    return Path("/proc/loadavg").read_text().split()[:3]


def build(binaries):
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "tandem-benches"] + [x for b in binaries for x in ("--bin", b)],
                   cwd=REPO, check=True, env=env)


GEMM_SHAPES = [(2048, 2048, 2048, False), (4096, 384, 384, True), (4096, 384, 1536, True), (4096, 1536, 384, True),
               (16, 384, 384, True), (16, 384, 1536, True), (16, 1536, 384, True), (1, 384, 384, True)]


def gemm_compare(args, env, gemm_bin, rounds):
    """GFLOP/s of tandem's f32 matmul and numpy's BLAS at MiniLM's shapes and 2048³, alternating."""
    rows = []
    for m, k, n, t in GEMM_SHAPES:
        a = np.random.rand(m, k).astype(np.float32)
        b = (np.random.rand(n, k).astype(np.float32).T) if t else np.random.rand(k, n).astype(np.float32)
        c = np.empty((m, n), np.float32)
        runs = max(3, min(200, int(2e9 / (2 * m * n * k))))
        blas, ours = [], []
        for _ in range(rounds):
            blas.append(timed(lambda: np.matmul(a, b, out=c), runs))
            time.sleep(0.5)  # OpenBLAS's threads spin after a call: as in `timed`
            out = subprocess.run([str(gemm_bin), str(runs), f"{m},{k},{n}" + (",t" if t else "")], env=env,
                                 check=True, capture_output=True, text=True)
            ours.append(json.loads(out.stdout)["median_ms"])
            time.sleep(0.5)
        flops = 2 * m * n * k / 1e6
        rows.append((f"{m}×{k}×{n}" + (" (b as [N, K])" if t else ""), flops / statistics.median(blas),
                     flops / statistics.median(ours)))
    return rows


def mobilenet_compare(args, env, so, tandem_dir: Path, out_dir: Path):
    """MobileNetV2 at batch 1 and 8 (224 × 224): ORT on the torch.onnx export of torchvision's
    model with the same checkpoint, PyTorch, and tandem (batch norms folded at load)."""
    import onnxruntime as ort
    import torch
    import torchvision
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(str(args.mobilenet / "mobilenet_v2-b0353104.pth"), map_location="cpu"))
    model.eval()
    onnx_path = out_dir / "mobilenetv2.onnx"
    if not onnx_path.exists():
        x = torch.zeros(1, 3, 224, 224)
        torch.onnx.export(model, (x,), str(onnx_path), input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    rows = []
    for batch, runs in [(1, 50), (8, 10)]:
        pixels = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        path = out_dir / f"mobilenet_pixels_{batch}.f32"
        pixels.tofile(path)
        want = sess.run(None, {"pixels": pixels})[0][0, :5]
        t = torch.from_numpy(pixels)

        def run_torch():
            with torch.inference_mode():
                model(t)
        times = {"ORT": [], "PyTorch": [], "tandem": []}
        calls = {"ORT": [], "tandem": []}  # every call's time, for `fast_mode`
        # tandem stays loaded (`--serve`) and runs a block of calls when asked, right before or
        # after ORT's block (the order alternating), so that each round's ratio compares the
        # same few seconds of the machine.
        tandem = subprocess.Popen([str(tandem_dir / "mobilenet_timing"), str(args.mobilenet), str(path), str(batch),
                                   str(runs), "--serve"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        result = json.loads(tandem.stdout.readline())

        def block(name):
            if name == "ORT":
                block_times = timed_calls(lambda: sess.run(None, {"pixels": pixels}), runs)
            else:
                time.sleep(0.5)  # as in `timed_calls`
                tandem.stdin.write(f"{runs}\n")
                tandem.stdin.flush()
                block_times = json.loads(tandem.stdout.readline())["times_ms"]
            calls[name] += block_times
            times[name].append(statistics.median(block_times))
        for round in range(args.rounds):
            times["PyTorch"].append(timed(run_torch, runs))
            for name in ["ORT", "tandem"] if round % 2 == 0 else ["tandem", "ORT"]:
                block(name)
        tandem.stdin.close()
        if tandem.wait() != 0:
            sys.exit(f"mobilenet_timing --serve exited with {tandem.returncode}")
        gap = float(np.max(np.abs(np.array(result["logits"]) - want)))
        ratios = [t / o for t, o in zip(times["tandem"], times["ORT"])]
        med = {n: statistics.median(v) for n, v in times.items()}
        fast = fast_mode(calls["tandem"]) / fast_mode(calls["ORT"])
        print(f"MobileNetV2 batch {batch}: " + "  ".join(f"{n} {v:8.2f} ms" for n, v in med.items())
              + f"  tandem / ORT {statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)});"
              f" fast modes (10th percentiles) ORT {fast_mode(calls['ORT']):.2f} ms, tandem"
              f" {fast_mode(calls['tandem']):.2f} ms, tandem / ORT {fast:.2f};"
              f" first logits differ from ORT's by {gap:.1e}")
        rows.append((batch, med, statistics.median(ratios), fast, gap))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--isa", choices=["best", "avx2"], default="best")
    ap.add_argument("--tandem-bin", type=Path, help="minilm_timing to run (default: build it here)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="also tandem --precision bf16 and PyTorch bf16 autocast")
    ap.add_argument("--no-gemm", action="store_true")
    ap.add_argument("--no-minilm", action="store_true", help="skip the MiniLM workloads (with --mobilenet: MobileNetV2 alone)")
    ap.add_argument("--readme", action="store_true")
    ap.add_argument("--mobilenet", type=Path, help="a fetched mobilenetv2 folder: time MobileNetV2 too")
    args = ap.parse_args()
    if args.no_minilm and args.readme:
        ap.error("--readme writes the MiniLM tables: not with --no-minilm")
    if args.isa == "avx2" and os.environ.get("OPENBLAS_CORETYPE") != "Haswell":
        # The peers in this process read the CPU when they load (numpy's OpenBLAS at import,
        # above): start again with them capped, CPUID itself too where it can be.
        capped = dict(os.environ, OPENBLAS_CORETYPE="Haswell")
        shim = cpuid_avx2.shim()
        if shim:
            capped = cpuid_avx2.preloaded(capped, shim)
        os.execve(sys.executable, [sys.executable] + sys.argv, capped)
    threads = str(args.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=threads, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads)
    if args.isa == "avx2":
        env.update(TANDEM_CPU_ISA="avx2", ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    # The peers in this process read their settings from the environment at import.
    os.environ.update({k: v for k, v in env.items() if k not in ("TANDEM_CPU_ISA", "RAYON_NUM_THREADS")})
    import onnxruntime as ort

    model, simd, cpus = machine()
    load_before = load()
    out_dir = REPO / "benches" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "minilm.onnx"
    if not onnx_path.exists():
        export_onnx(args.model_dir, onnx_path)
    optimized_path = out_dir / "minilm.opt.onnx"
    if not optimized_path.exists():
        from onnxruntime.transformers import optimizer
        config = json.loads((args.model_dir / "config.json").read_text())
        optimizer.optimize_model(str(onnx_path), model_type="bert", num_heads=config["num_attention_heads"],
                                 hidden_size=config["hidden_size"]).save_model_to_file(str(optimized_path))
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    peers = {
        "ORT": ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"]),
        "ORT optimized": ort.InferenceSession(str(optimized_path), so, providers=["CPUExecutionProvider"]),
    }
    torch_model = None
    if not args.no_torch:
        import torch
        from transformers import AutoModel
        torch.set_num_threads(args.threads)
        bert = AutoModel.from_pretrained(str(args.model_dir)).eval()

        def torch_model(ids, mask, types):
            h = bert(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]
            m = mask.unsqueeze(-1).to(h.dtype)
            return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)
        torch_version = torch.__version__

    if args.tandem_bin:
        tandem_bin = args.tandem_bin
    else:
        build(["minilm_timing", "gemm_timing", "mobilenet_timing"])
        tandem_bin = REPO / "target" / "release" / "minilm_timing"
    gemm_bin = tandem_bin.parent / "gemm_timing"

    long_texts = [(t + " ") * 8 for t in TITLES] * 2
    full = [s[:128] for s in tokenize(args.model_dir, long_texts, 512)]
    assert all(len(s) == 128 for s in full)
    one = [tokenize(args.model_dir, [TITLES[0]], 512)[0][:16]]
    mix = tokenize(args.model_dir, QUERIES + TITLES, 256)
    workloads = [("padded 32 × 128", full, 3), ("1 × 16 (batch 1)", one, 200), ("16 queries + 16 titles", mix, 10)]
    if args.no_minilm:
        workloads = []
    names = list(peers) + (["PyTorch"] if torch_model else []) + ["tandem"]
    if args.bf16:
        names += (["PyTorch bf16"] if torch_model else []) + ["tandem bf16"]
    print(f"{model}; {cpus} CPUs; SIMD {' '.join(simd)}; load before {' '.join(load_before)}"
          + ("; CPUID capped at AVX2 (cpuid_avx2.so)" if cpuid_avx2.capped() else ""))
    print(f"onnxruntime {ort.__version__}" + (f", torch {torch_version}" if torch_model else "") +
          f"; {args.threads} threads each; isa {args.isa}; tandem {tandem_bin}")
    results = []
    for name, batch, runs in workloads:
        times = {n: [] for n in names}
        for _ in range(args.rounds):
            for peer, sess in peers.items():
                times[peer].append(timed(ort_runner(sess, batch), runs))
            if torch_model:
                times["PyTorch"].append(timed(torch_runner(torch_model, batch), runs))
            times["tandem"].append(tandem_time(tandem_bin, args.model_dir, batch, runs, env))
            if args.bf16:
                if torch_model:
                    times["PyTorch bf16"].append(timed(torch_runner(torch_model, batch, bf16=True), runs))
                times["tandem bf16"].append(tandem_time(tandem_bin, args.model_dir, batch, runs, env, "bf16"))
        best_ort = [min(a, b) for a, b in zip(times["ORT"], times["ORT optimized"])]
        ratios = [t / o for t, o in zip(times["tandem"], best_ort)]
        real = sum(len(s) for s in batch)
        bf16_ratio = statistics.median(b / f for b, f in zip(times["tandem bf16"], times["tandem"])) if args.bf16 else None
        results.append((name, real, {n: statistics.median(v) for n, v in times.items()}, statistics.median(ratios), bf16_ratio))
        print(f"{name:24s} real tokens {real:5d}  " + "  ".join(f"{n} {statistics.median(v):8.2f} ms" for n, v in times.items())
              + f"  tandem / best ORT {statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
              + (f"  tandem bf16 / f32 {bf16_ratio:.2f}" if args.bf16 else ""))
    gemm_rows = [] if args.no_gemm else gemm_compare(args, env, gemm_bin, args.rounds)
    vision_rows = mobilenet_compare(args, env, so, tandem_bin.parent, out_dir) if args.mobilenet else []
    for shape, blas, ours in gemm_rows:
        print(f"gemm {shape:28s} numpy BLAS {blas:6.1f} GFLOP/s  tandem {ours:6.1f} GFLOP/s  ({ours / blas:.0%})")
    load_after = load()
    print(f"load after {' '.join(load_after)}")

    isa_note = ""
    if args.isa == "avx2":
        isa_note = (" (every runtime with CPUID capped at AVX2 by benches/cpuid_avx2.c)" if cpuid_avx2.capped()
                    else " (ORT at its own best ISA: it has no switch)")
    blas_name = "numpy's BLAS"
    try:
        blas_name = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:
        pass
    lines = [f"{time.strftime('%Y-%m-%d')}, {model} ({cpus} CPUs; {' '.join(simd)}), {args.threads} threads each, "
             f"isa {args.isa}{isa_note}, "
             f"{args.rounds} alternating rounds; onnxruntime {ort.__version__}"
             + (f", torch {torch_version}" if torch_model else "") + f"; load average before {' '.join(load_before)}, "
             f"after {' '.join(load_after)}. Command: `{' '.join(['python3', 'benches/cpu_compare.py'] + sys.argv[1:])}`",
             "", "| workload | real tokens | " + " | ".join(names) + " | tandem / best ORT (median of rounds) |"
             + (" tandem bf16 / tandem f32 |" if args.bf16 else ""),
             "|---|---|" + "---|" * len(names) + "---|" + ("---|" if args.bf16 else "")]
    for name, real, med, ratio, bf16_ratio in results:
        lines.append(f"| {name} | {real} | " + " | ".join(f"{med[n]:.2f} ms" for n in names) + f" | **{ratio:.2f}** |"
                     + (f" {bf16_ratio:.2f} |" if args.bf16 else ""))
    if gemm_rows:
        lines += ["", f"| f32 GEMM, m × k × n | {blas_name} GFLOP/s | tandem GFLOP/s | tandem / BLAS |", "|---|---|---|---|"]
        lines += [f"| {shape} | {blas:.0f} | {ours:.0f} | {ours / blas:.0%} |" for shape, blas, ours in gemm_rows]
    if vision_rows:
        lines += ["", "| MobileNetV2, 224 × 224 | ORT | PyTorch | tandem | tandem / ORT (median of rounds) "
                      "| tandem / ORT (fast modes) | logits vs ORT |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| batch {b} | {m['ORT']:.2f} ms | {m['PyTorch']:.2f} ms | {m['tandem']:.2f} ms | **{r:.2f}** "
                  f"| {f:.2f} | {g:.0e} |" for b, m, r, f, g in vision_rows]
    table = "\n".join(lines) + "\n"
    (out_dir / f"cpu_compare.{args.isa}.md").write_text(table)
    if args.readme:
        readme = HERE / "README.md"
        text = readme.read_text()
        begin, end = f"<!-- cpu_compare {args.isa}: begin -->", f"<!-- cpu_compare {args.isa}: end -->"
        if begin in text:
            head, rest = text.split(begin, 1)
            text = head + begin + "\n" + table + end + rest.split(end, 1)[1]
            readme.write_text(text)
        else:
            print(f"README has no {begin} marker; table left in {out_dir}")


if __name__ == "__main__":
    main()
