#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is missing, then runs
# every test of the workspace. Safe to run again; each step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n== %s\n' "$*"; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Vulkan on the CPU (Mesa lavapipe) so the wgpu backend is tested without a GPU; Chromium and
# its driver for the browser tests (WebGPU on SwiftShader, and the CPU fallback); Redis for
# the shared QE cache's tests (they start their own redis-server on a free loopback port).
apt_install mesa-vulkan-drivers chromium chromium-driver redis-server

step "fetching the default model (MiniLM), multilingual E5, the brand list, MobileNetV2 and the GGUF decoders into the cache"
cargo run -q -p tandem -- fetch minilm
cargo run -q -p tandem -- fetch multilingual-e5-small
cargo run -q -p tandem -- fetch brands
cargo run -q -p tandem -- fetch mobilenetv2
cargo run -q -p tandem -- fetch smollm2
cargo run -q -p tandem -- fetch qwen2.5-coder-0.5b

step "fetching NVRTC (pinned PyPI wheels) so every CUDA kernel is compiled to PTX without a GPU"
eval "$(cuda/fetch_nvrtc.sh)"

step "building the rule plugin guests (wasm components) the plugin tests run"
bash bindings/rules/build.sh

step "installing the wasm-bindgen CLI the browser bindings pin (skipped when present)"
wasm_bindgen_version=$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' bindings/web/Cargo.toml)
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $wasm_bindgen_version" ]; then
  cargo install -q wasm-bindgen-cli --version "$wasm_bindgen_version"
fi

step "the official openai Python client (pinned) for the OpenAI-compatible server's test, in target/venv-openai"
if ! target/venv-openai/bin/python -c "import openai" 2>/dev/null; then
  rm -rf target/venv-openai
  python3 -m venv target/venv-openai 2>/dev/null || { apt_install python3-venv && python3 -m venv target/venv-openai; }
  target/venv-openai/bin/pip install -q "openai==3.57.0"
fi

failed=()
step "running the tests"
# The cuda feature builds the CUDA backend (no toolkit needed) and its tests: kernel twins,
# NVRTC compilation for sm_80/sm_90, the emulated kernels; on a machine without a GPU the
# on-device tests say so and skip.
cargo test --workspace --no-fail-fast --features tandem-tests/cuda "$@" || failed+=("cargo test")

step "the CPU parity suites again as on an AVX2 CPU (AVX-512, AMX and AVX-VNNI hidden from CPUID by benches/cpuid_avx2.c)"
# The suites above ran on this CPU's best path; where that is AVX-512, these run the same
# test binaries with every kernel choice (tandem's, the gemm crate's) made as on a Haswell to
# Zen 3 class CPU, through Linux's CPUID faulting. Skipped where either is missing.
if grep -qw avx512f /proc/cpuinfo && grep -qw cpuid_fault /proc/cpuinfo; then
  cc -O2 -shared -fPIC -o target/cpuid_avx2.so benches/cpuid_avx2.c
  CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="env LD_PRELOAD=$PWD/target/cpuid_avx2.so TANDEM_CPU_ISA=avx2" \
    cargo test --workspace --no-fail-fast --features tandem-tests/cuda \
    --test parity --test mobilenet_parity --test cross_encoder --test lora --test e5_reference \
    --test gguf_parity --test decoder_parity --test batch_invariance "$@" || failed+=("the AVX2 pass")
else
  echo "skipped: this CPU has no AVX-512 (the suites above ran its AVX2 path) or Linux cannot fault on its CPUID"
fi

step "fuzz smoke: each target (readers, JSON lines, HTTP bodies) under libFuzzer for 15 s on its committed corpus (fuzz/README.md)"
bash fuzz/run.sh 15 || failed+=("fuzz/run.sh")

step "the browser bindings in headless Chromium (wasm-bindgen-test, WebGPU and CPU)"
bash bindings/web/test.sh || failed+=("bindings/web/test.sh")

step "the demo page end to end from tandem serve (Playwright, WebGPU and the CPU fallback)"
bash scripts/test-web.sh || failed+=("scripts/test-web.sh")

if [ ${#failed[@]} -gt 0 ]; then
  printf '\nFAILED: %s\n' "${failed[*]}"
  exit 1
fi
printf '\nall tests passed\n'
