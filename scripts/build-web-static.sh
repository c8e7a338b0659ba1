#!/usr/bin/env bash
# Assembles the in-browser demo as a static site in DIR: the page (web/), the WebAssembly
# package (web/pkg/, built here unless SKIP_WASM_BUILD=1) and the model and data files it
# downloads, copied from the tandem cache (fetched first when missing).
#
#   scripts/build-web-static.sh DIR
#   python3 -m http.server -d DIR 8000     # then open http://localhost:8000/
#
# Any static host works if it serves .wasm as application/wasm; WebGPU needs a secure
# context (https, or localhost).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$1"
cd "$root"

if [ -z "${SKIP_WASM_BUILD:-}" ]; then
  bash bindings/web/build.sh
fi
[ -f web/pkg/tandem_web.js ] || { echo "web/pkg/ is not built: bash bindings/web/build.sh" >&2; exit 1; }

# The tandem binary, for `tandem fetch`.
tandem=""
for b in target/release/tandem target/debug/tandem; do
  [ -x "$b" ] && { tandem="$b"; break; }
done
if [ -z "$tandem" ]; then
  cargo build --release -p tandem
  tandem=target/release/tandem
fi
"$tandem" fetch minilm >/dev/null
"$tandem" fetch mobilenetv2 >/dev/null
"$tandem" fetch brands >/dev/null || echo "warning: no brand list; the page finds brands in attributes only" >&2

cache="${TANDEM_CACHE:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/tandem}}"
cache="${cache:-$HOME/.cache/tandem}"

mkdir -p "$dest/samples" "$dest/pkg" "$dest/models/minilm" "$dest/models/mobilenetv2" "$dest/data"
cp web/index.html web/app.js web/style.css "$dest/"
cp web/samples/* "$dest/samples/"
cp -R web/pkg/. "$dest/pkg/"
for f in config.json tokenizer.json model.safetensors; do
  cp "$cache/models/minilm/$f" "$dest/models/minilm/"
done
cp "$cache/models/mobilenetv2/mobilenet_v2-b0353104.pth" "$dest/models/mobilenetv2/"
brands="$(ls "$cache"/vocab/brands-*.json 2>/dev/null | sort | tail -n1 || true)"
[ -n "$brands" ] && cp "$brands" "$dest/data/brands.json"
[ -f "$cache/taxonomy/google-0.3.2-minilm.emb" ] && cp "$cache/taxonomy/google-0.3.2-minilm.emb" "$dest/data/taxonomy-minilm.emb"
du -sh "$dest"
echo "static demo in $dest: python3 -m http.server -d $dest 8000"
