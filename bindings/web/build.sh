#!/usr/bin/env bash
# Builds the browser package: tandem_web.js, tandem_web.d.ts, tandem_web_bg.wasm and a
# package.json in web/pkg (git-ignored), then prints the wasm's size raw and gzipped.
# Idempotent: cargo rebuilds only what changed, and the wasm-bindgen step is skipped when its
# input and this script are unchanged.
#
#   bindings/web/build.sh [--out DIR]
#
# Adds the wasm32-unknown-unknown target when it is missing; needs
# wasm-bindgen-cli of the version the crate pins. wasm-opt runs only when the one on PATH is
# npm's (`npm i -g wasm-opt`); Debian's binaryen is too old for this wasm and breaks it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../../web/pkg"
if [[ "${1:-}" == "--out" && -n "${2:-}" ]]; then out=$2; fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$here"

pinned=$(sed -n 's/^wasm-bindgen = "=\(.*\)"$/\1/p' Cargo.toml)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [[ "$have" != "$pinned" ]]; then
    echo "error: wasm-bindgen ${have:-is not installed}; the crate pins wasm-bindgen $pinned, and the two must match." >&2
    echo "Run:  cargo install wasm-bindgen-cli --version $pinned" >&2
    exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi

cargo build --release --target wasm32-unknown-unknown
wasm="$here/target/wasm32-unknown-unknown/release/tandem_web.wasm"

# What the package was made from: the cargo output, this script and the wasm-opt in use.
opt=$(command -v wasm-opt || true)
if [[ -n "$opt" && "$(readlink -f "$opt")" != */node_modules/* ]]; then
    echo "note: skipping wasm-opt: $opt is not npm's (Debian's binaryen breaks this wasm)" >&2
    opt=
fi
stamp=$( (sha256sum "$wasm" "$here/build.sh"; echo "wasm-opt: $opt") | sha256sum | cut -d' ' -f1)
if [[ -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" && -f "$out/tandem_web_bg.wasm" ]]; then
    echo "web/pkg is up to date"
else
    rm -f "$out/.stamp"
    wasm-bindgen --target web --remove-name-section --remove-producers-section --out-dir "$out" "$wasm"
    if [[ -n "$opt" ]]; then
        "$opt" -O --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
            --enable-mutable-globals --enable-reference-types --enable-multivalue \
            -o "$out/tandem_web_bg.wasm.opt" "$out/tandem_web_bg.wasm"
        mv "$out/tandem_web_bg.wasm.opt" "$out/tandem_web_bg.wasm"
    fi
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
    cat > "$out/package.json" <<JSON
{
  "name": "tandem-web",
  "version": "$version",
  "description": "tandem in the browser: text embeddings and image classification on WebGPU or the CPU (WebAssembly)",
  "license": "Apache-2.0",
  "type": "module",
  "module": "tandem_web.js",
  "main": "tandem_web.js",
  "types": "tandem_web.d.ts",
  "exports": {
    ".": { "types": "./tandem_web.d.ts", "default": "./tandem_web.js" },
    "./tandem_web_bg.wasm": "./tandem_web_bg.wasm"
  },
  "files": ["tandem_web.js", "tandem_web.d.ts", "tandem_web_bg.wasm", "tandem_web_bg.wasm.d.ts"],
  "sideEffects": false
}
JSON
    echo "$stamp" > "$out/.stamp"
fi

raw=$(stat -c %s "$out/tandem_web_bg.wasm")
gz=$(gzip -9c "$out/tandem_web_bg.wasm" | wc -c)
printf '%s: %d bytes (%.2f MiB), gzip -9: %d bytes (%.2f MiB)\n' \
    "$out/tandem_web_bg.wasm" "$raw" "$(echo "$raw / 1048576" | bc -l)" "$gz" "$(echo "$gz / 1048576" | bc -l)"
