#!/usr/bin/env bash
# The browser tests: builds tests/*.rs for wasm32 and runs them in headless Chromium through
# wasm-bindgen-test-runner and chromedriver, with WebGPU on SwiftShader (webdriver.json).
# Needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver) and
# wasm-bindgen-test-runner of the pinned wasm-bindgen version.
set -euo pipefail
cd "$(dirname "$0")"

pinned=$(sed -n 's/^wasm-bindgen = "=\(.*\)"$/\1/p' Cargo.toml)
have=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}' || true)
if [[ "$have" != "$pinned" ]]; then
    echo "wasm-bindgen-test-runner ${have:-is missing}, the crate pins wasm-bindgen $pinned; run:" >&2
    echo "  cargo install wasm-bindgen-cli --version $pinned" >&2
    exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
# The browser build must never link the server's stack or the CUDA loader.
if forbidden=$(cargo tree --target wasm32-unknown-unknown -e normal --prefix none 2>/dev/null | grep -oE '^(wasmtime|tokio|cudarc|ureq)[^ ]* ' | sort -u | tr -d ' ') && [[ -n "$forbidden" ]]; then
    echo "error: the browser build depends on: $forbidden" >&2
    exit 1
fi
export CHROMEDRIVER=${CHROMEDRIVER:-$(command -v chromedriver || echo /usr/bin/chromedriver)}
# The runner's timeout per test file (seconds): a cold SwiftShader compiles every kernel.
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-300}
exec cargo test --release "$@"
