#!/usr/bin/env bash
# End-to-end tests of the in-browser demo: builds the WebAssembly package and the server,
# starts `tandem serve` on a free port, and runs web/tests/e2e.mjs (playwright-core driving
# the system's Chromium) twice: with WebGPU (SwiftShader) and with WebGPU disabled (CPU).
# Screenshots and timings go to target/web-e2e/.
#
#   scripts/test-web.sh                 # debug server build (the server only serves files here)
#   TANDEM_WEB_PROFILE=release scripts/test-web.sh
#   E2E_MODES=cpu scripts/test-web.sh   # one mode only
#   SKIP_WASM_BUILD=1 scripts/test-web.sh  # use the web/pkg/ already there
#
# Needs node (20+), npm and Chromium (/usr/bin/chromium, or $CHROMIUM). Never downloads a
# browser. The server is killed on exit, whatever happens.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
profile="${TANDEM_WEB_PROFILE:-debug}"
out="${E2E_OUT:-$root/target/web-e2e}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

say() { printf '\n== %s\n' "$*"; }

command -v node >/dev/null || { echo "test-web: node is not installed" >&2; exit 1; }
[ -x "$CHROMIUM" ] || { echo "test-web: no Chromium at $CHROMIUM (set CHROMIUM)" >&2; exit 1; }

if [ ! -d web/tests/node_modules/playwright-core ]; then
  say "installing playwright-core (no browser download)"
  (cd web/tests && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund 2>/dev/null \
    || PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund)
fi

if [ -z "${SKIP_WASM_BUILD:-}" ]; then
  say "building the WebAssembly package (bash bindings/web/build.sh)"
  bash bindings/web/build.sh
fi
[ -f web/pkg/tandem_web.js ] || { echo "test-web: web/pkg/tandem_web.js is missing after the build" >&2; exit 1; }

say "building the server ($profile)"
if [ "$profile" = release ]; then
  cargo build --release -p tandem
else
  cargo build -p tandem
fi
bin="$root/target/$profile/tandem"

# The models the page loads, fetched before the server starts so its first request is quick.
"$bin" fetch minilm >/dev/null
"$bin" fetch mobilenetv2 >/dev/null
"$bin" fetch smollm2 >/dev/null

log="$(mktemp)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -f "$log"
}
trap cleanup EXIT INT TERM

say "starting tandem serve"
# The page runs the models; the server only serves files and /relevance, so the CPU backend.
# It also serves the repository's seeded visual adapter (and so SmolLM2, in one small slot),
# which the page's "Ask about this product" then shows the photo through.
"$bin" serve --port 0 --backend cpu --llm smollm2 --llm-slots 1 --llm-slot-tokens 256 \
  --llm-visual-adapter tests/reference/visual_adapter >"$log" 2>&1 &
server_pid=$!
addr=""
for _ in $(seq 1 600); do
  addr="$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$log" | head -n1)"
  [ -n "$addr" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; echo "test-web: the server exited" >&2; exit 1; }
  sleep 0.5
done
[ -n "$addr" ] || { cat "$log" >&2; echo "test-web: the server did not start in 300 s" >&2; exit 1; }
for _ in $(seq 1 100); do
  curl -fsS "http://$addr/health" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://$addr/health" >/dev/null
echo "server at http://$addr (pid $server_pid)"

say "e2e in Chromium"
mkdir -p "$out"
status=0
node web/tests/e2e.mjs --url "http://$addr" --out "$out" --modes "${E2E_MODES:-webgpu,cpu}" --visual-adapter yes || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- server log (last 40 lines)"
  tail -n 40 "$log"
fi
exit "$status"
