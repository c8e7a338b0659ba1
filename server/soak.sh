#!/usr/bin/env bash
# A bounded soak of `tandem serve`: mixed /embed, /rerank, /v1/embeddings and /relevance
# (with a rule plugin) from a few concurrent clients for DURATION seconds, the server's RSS
# sampled every 5 s. Fails on any 5xx other than 503 (shedding), on a request that gets no
# answer, or when RSS after the first minute grows by more than GROWTH_MB.
#
#   server/soak.sh [DURATION_SECS=600] [CLIENTS=8] [GROWTH_MB=64]
#
# Uses target/release/tandem (cargo build --release -p tandem) unless TANDEM_BIN is set, and
# bindings/rules/out (bindings/rules/build.sh) for the rule. Image classification is not
# served over HTTP, so it is not in the mix.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-600}" clients="${2:-8}" growth_mb="${3:-64}"
bin="${TANDEM_BIN:-${CARGO_TARGET_DIR:-target}/release/tandem}"
work="$(mktemp -d)"
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT

printf '[[plugin]]\nname = "brand-conflict"\npath = "%s"\n' "$PWD/bindings/rules/out/rules/brand-conflict.wasm" > "$work/rules.toml"
"$bin" serve --port 0 --no-web --rules "$work/rules.toml" 2> "$work/server.log" &
server=$!
for _ in $(seq 600); do
    addr=$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$work/server.log" | head -1)
    [ -n "$addr" ] && break
    sleep 0.5
done
[ -n "$addr" ] || { cat "$work/server.log"; echo "the server did not start" >&2; exit 1; }

bodies=(
    "/embed|{\"inputs\": [\"red running shoes\", \"waterproof hiking boots size 44\", \"leather backpack\"]}"
    "/rerank|{\"query\": \"nike running shoes\", \"texts\": [\"Nike Pegasus 40\", \"Adidas Ultraboost\", \"chef knife\"]}"
    "/v1/embeddings|{\"input\": [\"blue denim jacket\", \"wireless earbuds\"], \"model\": \"minilm\"}"
    "/relevance|{\"query\": \"nike running shoes\", \"items\": [{\"id\": \"a\", \"title\": \"Adidas Ultraboost running shoes\", \"brand\": \"Adidas\", \"category\": \"Apparel & Accessories > Shoes\"}, {\"id\": \"n\", \"title\": \"Nike Pegasus 40 running shoes\", \"brand\": \"Nike\"}]}"
)
client() {
    local end=$((SECONDS + duration)) i=$1
    while [ $SECONDS -lt $end ]; do
        local pick="${bodies[$((i++ % ${#bodies[@]}))]}"
        curl -s -o /dev/null -w '%{http_code}\n' --max-time 60 -H 'content-type: application/json' \
            -d "${pick#*|}" "http://$addr${pick%%|*}" || echo "000"
    done > "$work/status.$1"
}
for c in $(seq "$clients"); do client "$c" & done

rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$server/status"; }
samples=()
end=$((SECONDS + duration))
while [ $SECONDS -lt $end ]; do
    samples+=("$(rss)")
    sleep 5
done
wait $(jobs -p | grep -v "^$server$") 2>/dev/null || true
samples+=("$(rss)")

cat "$work"/status.* | sort | uniq -c | sort -rn > "$work/counts"
echo "requests by status:"; cat "$work/counts"
# RSS after the first minute (warm caches, allocator settled) against the last sample.
warm="${samples[$(( ${#samples[@]} > 12 ? 12 : 0 ))]}"
max=$(printf '%s\n' "${samples[@]}" | sort -n | tail -1)
last="${samples[-1]}"
echo "RSS MiB: first ${samples[0]}, after warm-up $warm, max $max, last $last (${#samples[@]} samples)"
bad=$(awk '$2 !~ /^(200|503)$/ {n += $1} END {print n + 0}' "$work/counts")
[ "$bad" -eq 0 ] || { echo "FAILED: $bad requests answered neither 200 nor 503 (000: no answer)"; exit 1; }
[ $((last - warm)) -le "$growth_mb" ] || { echo "FAILED: RSS grew $((last - warm)) MiB after warm-up"; exit 1; }
echo "soak passed: ${duration}s, $clients clients"
