#!/usr/bin/env bash
# Builds the browser package: tandem_web.js, tandem_web.d.ts, tandem_web_bg.wasm and a
# package.json in web/pkg (git-ignored), with precompressed copies of the wasm and the JS
# (.gz always, .br with the brotli CLI or node's zlib) that `tandem serve` sends to browsers
# that accept them, then prints the wasm's sizes.
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
    # Precompressed copies for servers that send them by Accept-Encoding (tandem serve does).
    # brotli from the brotli CLI, else node's zlib; without either, gzip only.
    for f in tandem_web_bg.wasm tandem_web.js; do
        gzip -9 -n -c "$out/$f" > "$out/$f.gz"
        if command -v brotli >/dev/null; then
            brotli -q 11 -f -o "$out/$f.br" "$out/$f"
        elif command -v node >/dev/null; then
            node -e 'const z = require("zlib"), fs = require("fs"); const [src, dst] = process.argv.slice(1);
                fs.writeFileSync(dst, z.brotliCompressSync(fs.readFileSync(src), { params: {
                    [z.constants.BROTLI_PARAM_QUALITY]: 11, [z.constants.BROTLI_PARAM_SIZE_HINT]: fs.statSync(src).size } }));' \
                "$out/$f" "$out/$f.br"
        else
            rm -f "$out/$f.br"
            echo "note: no brotli CLI and no node: $f.br not written (gzip only)" >&2
        fi
    done
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

size() { printf '%d bytes (%.2f MiB)' "$1" "$(echo "$1 / 1048576" | bc -l)"; }
wasm_out="$out/tandem_web_bg.wasm"
line="$wasm_out: $(size "$(stat -c %s "$wasm_out")"), gzip -9: $(size "$(stat -c %s "$wasm_out.gz")")"
if [[ -f "$wasm_out.br" ]]; then line="$line, brotli: $(size "$(stat -c %s "$wasm_out.br")")"; fi
echo "$line"
