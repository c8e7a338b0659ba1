#!/usr/bin/env bash
# One command for a GPU machine: builds the CUDA conformance and MiniLM parity tests and the
# check/bench binary here, packs them with what they need into a bundle, and, when this
# machine has an NVIDIA GPU, runs the bundle (op conformance vs CPU, MiniLM cosine vs
# reference, timings vs PyTorch) and prints a short table.
#
#   scripts/gpu-check.sh                 build + bundle, and run it if there is a GPU here
#   scripts/gpu-check.sh --bundle-only   build + bundle only (to carry to a GPU machine; also
#                                        written as <bundle>.tar.xz and, with the decoders,
#                                        <bundle>-decoders.tar.xz, which are smaller)
#   BUNDLE=dir scripts/gpu-check.sh      bundle somewhere else (default target/gpu-bundle)
#
# The bundle needs no Rust toolchain on the GPU machine: on it, run `<bundle>/run.sh` (it
# finds NVRTC, runs everything, writes the JSON results to $OUT or <bundle>/results). It is
# kept under 64 MiB so that a transfer with that limit carries it: the binaries are stripped
# and MiniLM travels with f16 weights (45 MB instead of 87 MB; both readers widen them to
# f32, and they move the embeddings by less than 2e-6 in cosine, far inside the 1e-4 floor).
# Needs here: cargo, python3, strip (binutils), and MiniLM in the model cache (fetched with
# `cargo run -p tandem -- fetch minilm` when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

bundle_only=false
[ "${1:-}" = "--bundle-only" ] && bundle_only=true
bundle="${BUNDLE:-$repo/target/gpu-bundle}"

step() { printf '\n== %s\n' "$*" >&2; }

mkdir -p target
step "building the CUDA tests and tandem-gpu-check (release)"
cargo test --release --no-run -p tandem-tests --features cuda \
  --test conformance_cuda --test minilm_cuda --message-format=json >target/gpu-check-build.json
cargo build --release -p tandem-tests --features cuda --bin tandem-gpu-check
# The test executables, by target name, from cargo's JSON messages.
mapfile -t tests < <(python3 - target/gpu-check-build.json <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("conformance_cuda", "minilm_cuda"):
        print(m["target"]["name"] + "=" + m["executable"])
EOF
)
[ ${#tests[@]} -eq 2 ] || { echo "gpu-check.sh: expected 2 test executables, cargo reported: ${tests[*]:-none}" >&2; exit 1; }

step "finding MiniLM"
model="${TANDEM_MINILM_DIR:-}"
if [ -z "$model" ]; then
  cache_root="${TANDEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}"
  model="$cache_root/models/minilm"
  [ -f "$model/model.safetensors" ] || cargo run -q --release -p tandem -- fetch minilm
fi
[ -f "$model/model.safetensors" ] || { echo "gpu-check.sh: no MiniLM at $model" >&2; exit 1; }

step "packing $bundle"
rm -rf "$bundle"
mkdir -p "$bundle/bin"
for t in "${tests[@]}"; do cp "${t#*=}" "$bundle/bin/${t%%=*}"; done
cp target/release/tandem-gpu-check "$bundle/bin/"
strip "$bundle"/bin/* 2>/dev/null || echo "gpu-check.sh: strip not found; the archives may not fit a 64 MiB transfer" >&2
target/release/tandem-gpu-check pack-model "$model" "$bundle/minilm"
cp tests/reference/minilm_embeddings.json benches/gpu_compare.py benches/gpu_serve_check.py "$bundle/"
cp cuda/gpu_run.sh "$bundle/run.sh"
chmod +x "$bundle/run.sh"

# The decoder part: the tandem binary and shape-only copies of the two GGUF decoders (tensor
# bytes zeroed: the real files are 98 and 491 MB), timed against PyTorch. Only when both
# models are in the cache (`tandem fetch smollm2`, `tandem fetch qwen2.5-coder-0.5b`).
models_dir="${TANDEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}/models"
ggufs=("$models_dir"/smollm2/*.gguf "$models_dir"/qwen2.5-coder-0.5b/*.gguf)
decoders=false
if [ -f "${ggufs[0]}" ] && [ -f "${ggufs[1]}" ]; then
  decoders=true
  cargo build --release -p tandem
  cp target/release/tandem "$bundle/bin/"
  strip "$bundle/bin/tandem" 2>/dev/null || true
  mkdir -p "$bundle/decoders"
  for g in "${ggufs[@]}"; do target/release/tandem-gpu-check pack-gguf "$g" "$bundle/decoders/$(basename "$g")"; done
  cp benches/gpu_llm_compare.py "$bundle/"
else
  echo "gpu-check.sh: smollm2 or qwen2.5-coder-0.5b is not in $models_dir: the bundle leaves the decoders out" >&2
fi

# The bundle also travels compressed, in two archives that unpack into the same folder (a
# transfer that carries the repository beside them has room for about 34 MiB): the checks
# and MiniLM (its zeroed word-embedding rows compress away), and the decoder part.
archive() {
  local out=$1
  shift
  tar -C "$(dirname "$bundle")" -cf - "$@" | xz -T0 -6 >"$out"
  printf '%s: %d MiB\n' "$out" $(($(stat -c %s "$out") / 1024 / 1024)) >&2
}
name=$(basename "$bundle")
archive "$bundle.tar.xz" --exclude "$name/bin/tandem" --exclude "$name/decoders" --exclude "$name/gpu_llm_compare.py" "$name"
rm -f "$bundle-decoders.tar.xz"
if $decoders; then
  archive "$bundle-decoders.tar.xz" "$name/bin/tandem" "$name/decoders" "$name/gpu_llm_compare.py" "$name/run.sh"
fi

if $bundle_only; then
  echo "on the GPU machine: run $bundle/run.sh (or unpack $bundle.tar.xz and/or $bundle-decoders.tar.xz there and run its run.sh)" >&2
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  step "running the bundle on this machine's GPU"
  exec "$bundle/run.sh"
fi
echo "no NVIDIA GPU here (nvidia-smi finds none): carry $bundle to a GPU machine and run its run.sh" >&2
