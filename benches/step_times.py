#!/usr/bin/env python3
"""Medians per graph step from TANDEM_STEP_TIMES lines (runtime/src/exec), for one model run
many times, e.g.

    TANDEM_STEP_TIMES=1 target/release/mobilenet_timing ~/.cache/tandem/models/mobilenetv2 \\
        benches/out/mobilenet_pixels_1.f32 1 60 2> steps.txt
    python3 benches/step_times.py steps.txt [--each]

Every run prints the same steps in the same order; the script finds the run length from the
first step's repeats, drops the first half of the runs (warm-up) and prints the median of
each step, totals per op (convolutions split into 1x1, 3x3 depthwise and other), and with
--each every step with its input shapes.
"""
import collections
import statistics
import sys


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        sys.exit(__doc__)
    steps = [line.rstrip("\n").split(None, 3)[1:] for line in open(args[0]) if line.startswith("step ")]
    if not steps:
        sys.exit(f"{args[0]}: no 'step' lines (was TANDEM_STEP_TIMES set?)")
    first = (steps[0][1], steps[0][2])
    starts = [i for i, s in enumerate(steps) if (s[1], s[2]) == first]
    period = starts[1] - starts[0] if len(starts) > 1 else len(steps)
    runs = len(steps) // period
    kept = range(runs // 2, runs)
    medians = [statistics.median(float(steps[r * period + j][0]) for r in kept) for j in range(period)]
    kinds = collections.Counter()
    for (_, op, shapes), m in zip(steps[:period], medians):
        if op == "conv2d":
            op = "conv2d 1x1" if ", 1, 1]" in shapes else "conv2d 3x3 depthwise" if ", 1, 3, 3]" in shapes else "conv2d other"
        kinds[op] += m
    print(f"{runs} runs of {period} steps; medians of the last {len(kept)}: total {sum(medians):.0f} us")
    for op, total in kinds.most_common():
        print(f"  {op:22} {total:9.0f} us")
    if "--each" in sys.argv:
        for (_, op, shapes), m in zip(steps[:period], medians):
            print(f"{m:9.1f} {op} {shapes}")


if __name__ == "__main__":
    main()
