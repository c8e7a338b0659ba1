"""Builds and names benches/cpuid_avx2.c, the LD_PRELOAD library that makes a process see an
AVX2 CPU (see that file), for the side-by-side scripts' AVX2 runs (`cpu_compare.py --isa avx2`,
`llama_compare.py --isa avx2`)."""
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def shim():
    """The library built into benches/out, or None (said on stderr) where this kernel and CPU
    cannot fault on CPUID (no `cpuid_fault` flag in /proc/cpuinfo)."""
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    if "cpuid_fault" not in flags:
        print("no cpuid_fault in /proc/cpuinfo: CPUID cannot be capped; only the runtimes' own switches apply",
              file=sys.stderr)
        return None
    out = HERE / "out" / "cpuid_avx2.so"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(out), str(HERE / "cpuid_avx2.c")], check=True)
    return out


def preloaded(env, library):
    """`env` with `library` first in LD_PRELOAD."""
    return dict(env, LD_PRELOAD=" ".join(filter(None, [str(library), env.get("LD_PRELOAD")])))


def capped():
    """Whether this process runs with the library preloaded."""
    return "cpuid_avx2.so" in os.environ.get("LD_PRELOAD", "")
