"""What a layer-wise visual adapter costs: `tandem generate` and `tandem describe` (the same
prompt, 128 greedy tokens, SmolLM2 on the CPU, the repository's seeded all-layer adapter)
in alternating runs; medians of prefill and decode tokens/s and of the photo's run. No peer
runtime implements these adapters, so this compares tandem with and without one.

    cargo build --release -p tandem
    python3 benches/visual_adapter_cost.py [--bin target/release/tandem] [--rounds 7]
"""

import argparse
import json
import platform
import statistics
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT = "What is this product made of? Answer with the materials, the care instructions and who it suits."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "target/release/tandem"))
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    common = ["--model", "smollm2", "--backend", "cpu", "--max-tokens", "128", "--ignore-eos", "--json"]
    runs = {
        "generate": [a.bin, "generate", *common, PROMPT],
        "describe": [a.bin, "describe", str(REPO / "tests/reference/images/coffee.png"),
                     "--adapter", str(REPO / "tests/reference/visual_adapter"), *common, "--prompt", PROMPT],
    }
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"cpu: {cpu}; load before: {open('/proc/loadavg').read().split()[:3]}")
    results = {name: [] for name in runs}
    for i in range(a.rounds):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        for name in order:
            out = json.loads(subprocess.run(runs[name], capture_output=True, text=True, check=True).stdout)
            results[name].append(out)
    for name, outs in results.items():
        med = lambda key: statistics.median(o.get(key, 0.0) for o in outs)  # noqa: E731
        print(f"{name}: prompt {len(outs[0]['prompt_ids'])} tokens, prefill {med('prefill_tokens_per_s'):.1f} tok/s, "
              f"decode {med('decode_tokens_per_s'):.1f} tok/s, photo {med('picture_ms'):.1f} ms "
              f"(medians of {a.rounds})")
    print(f"load after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
