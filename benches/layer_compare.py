#!/usr/bin/env python3
"""MobileNetV2 layer by layer, ONNX Runtime and tandem side by side: where the time goes on
each, for finding the layers where tandem loses (`cpu_compare.py` gives the whole-model
ratio; this one is a diagnostic, its times include each tool's own timing overhead).

    python3 benches/layer_compare.py ~/.cache/tandem/models/mobilenetv2 --batch 1 [--rounds 3]

Needs what `cpu_compare.py --mobilenet` made: benches/out/mobilenetv2.onnx and
benches/out/mobilenet_pixels_{1,8}.f32 (run it once first), and a Python with onnxruntime
and numpy. Each round runs ORT with its profiler (`enable_profiling`: per-node kernel times)
and then tandem's `mobilenet_timing` with TANDEM_STEP_TIMES=1 (per-step times), both on
`--threads` threads; the tools alternate. Per layer it prints the median over every run of
every round after each side's warm-up, and the time ratio tandem / ORT. Layers are matched
by order: both run the 52 convolutions in the graph's order (ORT fuses the residual adds and
ReLU6 into its convolutions, as tandem does); ORT's layout reorders (NCHW to its blocked
NCHWc and back) are listed on their own.
"""
import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benches" / "out"


def ort_round(sess_factory, pixels, runs):
    """Per-node median microseconds of `runs` runs after one warm-up, in execution order."""
    sess = sess_factory()
    sess.run(None, {"pixels": pixels})  # warm-up (profiled too; dropped below)
    for _ in range(runs):
        sess.run(None, {"pixels": pixels})
    events = json.loads(Path(sess.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    order, times, ops = [], collections.defaultdict(list), {}
    for e in nodes:
        name = e["name"][: -len("_kernel_time")]
        if name not in times:
            order.append(name)
            ops[name] = e["args"].get("op_name", "?")
        times[name].append(e["dur"])
    return [(ops[n], n, times[n][1:] or times[n]) for n in order]


def tandem_round(binary, model_dir, pixels_path, batch, runs, env):
    """Per-step microseconds (lists over runs after the warm-up), in execution order."""
    out = subprocess.run([str(binary), str(model_dir), str(pixels_path), str(batch), str(runs)],
                         env={**env, "TANDEM_STEP_TIMES": "1"}, check=True, capture_output=True, text=True)
    steps = [line.split(None, 3)[1:] for line in out.stderr.splitlines() if line.startswith("step ")]
    first = (steps[0][1], steps[0][2])
    starts = [i for i, s in enumerate(steps) if (s[1], s[2]) == first]
    period = starts[1] - starts[0]
    runs_seen = len(steps) // period
    return [(steps[j][1], steps[j][2], [float(steps[r * period + j][0]) for r in range(1, runs_seen)])
            for j in range(period)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path, help="a fetched mobilenetv2 folder")
    ap.add_argument("--batch", type=int, default=1, choices=[1, 8])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, help="runs per round (default 30 at batch 1, 6 at batch 8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tandem-bin", type=Path, default=REPO / "target" / "release" / "mobilenet_timing")
    args = ap.parse_args()
    import numpy as np
    import onnxruntime as ort

    onnx_path, pixels_path = OUT / "mobilenetv2.onnx", OUT / f"mobilenet_pixels_{args.batch}.f32"
    for p in (onnx_path, pixels_path, args.tandem_bin):
        if not p.exists():
            sys.exit(f"{p} is missing: run benches/cpu_compare.py with --mobilenet first (and build tandem-benches)")
    pixels = np.fromfile(pixels_path, dtype=np.float32).reshape(args.batch, 3, 224, 224)
    runs = args.runs or (30 if args.batch == 1 else 6)

    def session():
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.enable_profiling = True
        so.profile_file_prefix = str(OUT / "ort_profile")
        return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])

    env = {**os.environ, "RAYON_NUM_THREADS": str(args.threads)}
    info = Path("/proc/cpuinfo").read_text()
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "?")
    print(f"{model}; load before {' '.join(Path('/proc/loadavg').read_text().split()[:3])}; "
          f"onnxruntime {ort.__version__}; batch {args.batch}; {args.threads} threads; {args.rounds} rounds of {runs}")
    ort_all, tandem_all = None, None
    for _ in range(args.rounds):
        o = ort_round(session, pixels, runs)
        t = tandem_round(args.tandem_bin, args.model_dir, pixels_path, args.batch, runs, env)
        ort_all = o if ort_all is None else [(a, n, ts + more) for (a, n, ts), (_, _, more) in zip(ort_all, o)]
        tandem_all = t if tandem_all is None else [(a, s, ts + more) for (a, s, ts), (_, _, more) in zip(tandem_all, t)]
    for f in OUT.glob("ort_profile*.json"):
        f.unlink()

    ort_convs = [(n, statistics.median(ts)) for op, n, ts in ort_all if op in ("Conv", "FusedConv")]
    ort_rest = [(f"{op} {n}", statistics.median(ts)) for op, n, ts in ort_all if op not in ("Conv", "FusedConv")]
    tandem_convs = [(s, statistics.median(ts)) for op, s, ts in tandem_all if op == "conv2d"]
    tandem_rest = [(f"{op} {s}", statistics.median(ts)) for op, s, ts in tandem_all if op != "conv2d"]
    if len(ort_convs) != len(tandem_convs):
        sys.exit(f"ORT ran {len(ort_convs)} convolutions and tandem {len(tandem_convs)}: cannot match them")
    print(f"{'tandem step (input, weight shapes)':58} {'ORT us':>8} {'tandem us':>9} {'ratio':>6}")
    for (shapes, t), (_, o) in zip(tandem_convs, ort_convs):
        print(f"{shapes[:58]:58} {o:8.0f} {t:9.0f} {t / o:6.2f}")
    for name, v in ort_rest:
        print(f"ORT {name[:54]:54} {v:8.0f}")
    for name, v in tandem_rest:
        print(f"tandem {name[:51]:51} {'':8} {v:9.0f}")
    total_o, total_t = sum(v for _, v in ort_convs + ort_rest), sum(v for _, v in tandem_convs + tandem_rest)
    print(f"{'sum of the medians':58} {total_o:8.0f} {total_t:9.0f} {total_t / total_o:6.2f}")
    print(f"load after {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
