#!/usr/bin/env bash
# The runner inside a bundle made by scripts/gpu-check.sh (copied there as run.sh). On a
# machine with an NVIDIA GPU, the driver, NVRTC (any CUDA 12 install or PyTorch's pip wheels
# provide it), python3 with torch and sentence-transformers; no Rust toolchain, no network:
#
#   ./run.sh          results (JSON) go to $OUT when set, else ./results
#
# Runs the parts of the bundle that are there (each of its two archives holds one):
# - the CUDA conformance tests, the MiniLM parity test, then tandem-gpu-check (the same
#   checks, MiniLM embeddings, timings) and benches/gpu_compare.py (PyTorch on the same
#   shapes), and prints the table;
# - with both: `tandem serve` on MiniLM, backend auto, asked over HTTP
#   (benches/gpu_serve_check.py: the backend it picked, cosines, first and single-text times);
# - the decoders (bin/tandem and decoders/*.gguf): benches/gpu_llm_compare.py, tandem's CUDA
#   backend against PyTorch (needs the gguf Python package beside transformers).
# Exits non-zero when a check fails.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="${OUT:-$here/results}"
mkdir -p "$out"

# NVRTC: $TANDEM_NVRTC_DIR, else the nvidia-cuda-nvrtc wheel of PyTorch's install (CUDA 12's
# `nvidia/cuda_nvrtc/lib` or CUDA 13's `nvidia/cu13/lib` layout), else a CUDA install.
nvrtc_dir() {
  if [ -n "${TANDEM_NVRTC_DIR:-}" ]; then echo "$TANDEM_NVRTC_DIR"; return; fi
  local d
  for d in $(python3 -c 'import nvidia, os; [print(os.path.join(p, s, "lib")) for p in nvidia.__path__ for s in ("cuda_nvrtc", "cu13", "cu12")]' 2>/dev/null) \
    /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
    if ls "$d"/libnvrtc.so.* >/dev/null 2>&1; then echo "$d"; return; fi
  done
  d=$(ldconfig -p 2>/dev/null | awk '/libnvrtc\.so/ {print $NF; exit}')
  [ -n "$d" ] && dirname "$d"
}
nvrtc=$(nvrtc_dir)
if [ -z "$nvrtc" ]; then
  echo "run.sh: no NVRTC found: set TANDEM_NVRTC_DIR to a folder with libnvrtc.so.12" >&2
else
  export TANDEM_NVRTC_DIR="$nvrtc"
  export LD_LIBRARY_PATH="$nvrtc${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # The CUDA bindings look NVRTC up by name: libnvrtc.so.12 or a plain libnvrtc.so. A CUDA 13
  # install has libnvrtc.so.13 only, so give it the plain name too (its API is the same).
  if ! ls "$nvrtc"/libnvrtc.so.12* >/dev/null 2>&1 && ! [ -e "$nvrtc/libnvrtc.so" ]; then
    alias_dir=$(mktemp -d)
    real=$(ls "$nvrtc"/libnvrtc.so.[0-9]* | grep -v -e builtins -e '\.alt\.' | head -n1)
    ln -s "$real" "$alias_dir/libnvrtc.so"
    export LD_LIBRARY_PATH="$alias_dir:$LD_LIBRARY_PATH"
  fi
fi
export TANDEM_MINILM_DIR="$here/minilm"
export TANDEM_MINILM_REFERENCE="$here/minilm_embeddings.json"
export TANDEM_CACHE="${TANDEM_CACHE:-$here/cache}"  # compiled kernels
export TANDEM_REQUIRE_CUDA=1  # the tests fail rather than skip when CUDA cannot start
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /' || true
echo "nvrtc: ${TANDEM_NVRTC_DIR:-none}"

status=0
run() {
  local name=$1
  shift
  echo "== $name"
  if "$@" >"$out/$name.log" 2>&1; then
    grep -E "^test result|^FAIL|skipping|kernel builds ready|MiniLM on" "$out/$name.log" || true
  else
    status=1
    echo "FAILED (log: $out/$name.log):"
    tail -n 40 "$out/$name.log"
  fi
}
if [ -d "$here/minilm" ]; then
  run conformance_cuda "$here/bin/conformance_cuda" --nocapture
  run minilm_cuda "$here/bin/minilm_cuda" --nocapture
  run tandem-gpu-check "$here/bin/tandem-gpu-check" run --backend cuda --out "$out/tandem.json"
  if ! python3 "$here/gpu_compare.py" "$out/tandem.json" "$here/minilm" "$out/torch.json" 2>"$out/torch.log"; then
    echo "PyTorch comparison failed (log: $out/torch.log):"
    tail -n 20 "$out/torch.log"
  fi
  "$here/bin/tandem-gpu-check" report "$out/tandem.json" "$out/torch.json" | tee "$out/table.txt" || status=1
fi
if [ -x "$here/bin/tandem" ] && [ -d "$here/minilm" ]; then
  echo "== tandem serve, backend auto, over HTTP"
  python3 "$here/gpu_serve_check.py" "$here/bin/tandem" "$here/minilm" "$here/minilm_embeddings.json" || status=1
fi
if [ -x "$here/bin/tandem" ]; then
  echo "== decoders: tandem CUDA against PyTorch"
  python3 "$here/gpu_llm_compare.py" --tandem "$here/bin/tandem" --out "$out/decoders.json" "$here"/decoders/*.gguf \
    2>"$out/decoders.log" || { status=1; echo "FAILED (log: $out/decoders.log):"; tail -n 30 "$out/decoders.log"; }
fi
exit $status
