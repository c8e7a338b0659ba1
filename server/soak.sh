#!/usr/bin/env bash
# A bounded soak of `tandem serve`: mixed /embed, /rerank, /v1/embeddings and /relevance
# (with a rule plugin) from a few concurrent clients for DURATION seconds, the server's RSS
# sampled every 5 s. Then SIGTERM, which must drain and exit 0. Fails on:
#   - any 5xx other than 503 (shedding), or any other status but 200;
#   - a lost request: no answer at all (connection reset or refused, 60 s timeout);
#   - RSS growth: the last sample more than GROWTH_MB above the sample after the first minute
#     (warm caches, allocator settled; the first sample on runs of a minute or less);
#   - the server dying, or not exiting 0 on SIGTERM.
#
#   server/soak.sh [DURATION_SECS] [CLIENTS] [GROWTH_MB]    defaults: 600 8 64
#   DURATION=600 CLIENTS=8 GROWTH_MB=64 server/soak.sh      the same, from the environment
#
# Uses ${CARGO_TARGET_DIR:-target}/release/tandem (cargo build --release -p tandem) unless
# TANDEM_BIN is set, and the brand-conflict rule from bindings/rules/out
# (bash bindings/rules/build.sh) unless RULE_WASM is set. Image classification is not served
# over HTTP, so it is not in the mix. The RSS samples (rss.tsv: seconds, MiB), the status
# counts and the server's log are kept in SOAK_OUT (default: a new folder under /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-${DURATION:-600}}" clients="${2:-${CLIENTS:-8}}" growth_mb="${3:-${GROWTH_MB:-64}}"
bin="${TANDEM_BIN:-${CARGO_TARGET_DIR:-target}/release/tandem}"
rule="${RULE_WASM:-$PWD/bindings/rules/out/rules/brand-conflict.wasm}"
[ -x "$bin" ] || { echo "no tandem binary at $bin: cargo build --release -p tandem, or set TANDEM_BIN" >&2; exit 1; }
[ -f "$rule" ] || { echo "no rule plugin at $rule: bash bindings/rules/build.sh, or set RULE_WASM" >&2; exit 1; }
out="${SOAK_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/tandem-soak.XXXXXX")}"
mkdir -p "$out"
server= pids=()
# On any exit: stop the clients (a failed run must not leave curl loops behind) and the server.
# Under set -e a failing command in the trap would set the exit status: kill with no pids
# left (a passed run) exits 2.
trap 'kill "${pids[@]}" 2>/dev/null || true; [ -n "$server" ] && kill "$server" 2>/dev/null || true' EXIT
fail() {
    echo "FAILED: $*"
    echo "server log (last lines), kept in $out/server.log:"
    tail -5 "$out/server.log"
    exit 1
}

printf '[[plugin]]\nname = "brand-conflict"\npath = "%s"\n' "$rule" > "$out/rules.toml"
"$bin" serve --port 0 --no-web --rules "$out/rules.toml" 2> "$out/server.log" &
server=$!
addr=
for _ in $(seq 600); do
    addr=$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$out/server.log" | head -1)
    [ -n "$addr" ] && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.5
done
[ -n "$addr" ] || fail "the server did not start"
echo "soak: ${duration}s, $clients clients, against $bin at $addr; results in $out"

bodies=(
    "/embed|{\"inputs\": [\"red running shoes\", \"waterproof hiking boots size 44\", \"leather backpack\"]}"
    "/rerank|{\"query\": \"nike running shoes\", \"texts\": [\"Nike Pegasus 40\", \"Adidas Ultraboost\", \"chef knife\"]}"
    "/v1/embeddings|{\"input\": [\"blue denim jacket\", \"wireless earbuds\"], \"model\": \"minilm\"}"
    "/relevance|{\"query\": \"nike running shoes\", \"items\": [{\"id\": \"a\", \"title\": \"Adidas Ultraboost running shoes\", \"brand\": \"Adidas\", \"category\": \"Apparel & Accessories > Shoes\"}, {\"id\": \"n\", \"title\": \"Nike Pegasus 40 running shoes\", \"brand\": \"Nike\"}]}"
)
client() {
    local end=$((SECONDS + duration)) i=$1 code
    while [ $SECONDS -lt $end ]; do
        local pick="${bodies[$((i++ % ${#bodies[@]}))]}"
        # curl writes 000 itself when it gets no answer; `|| true` keeps it to one line.
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 60 -H 'content-type: application/json' \
            -d "${pick#*|}" "http://$addr${pick%%|*}") || true
        echo "${code:-000} ${pick%%|*}"
    done > "$out/status.$1"
}
for c in $(seq "$clients"); do
    client "$c" &
    pids+=($!)
done

rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$server/status" 2>/dev/null; }
samples=()
start=$SECONDS
sample() {
    local mib
    mib=$(rss) || true
    [ -n "$mib" ] || fail "the server died $((SECONDS - start)) s into the soak"
    samples+=("$mib")
    printf '%s\t%s\n' "$((SECONDS - start))" "$mib" >> "$out/rss.tsv"
}
: > "$out/rss.tsv"
while [ $((SECONDS - start)) -lt "$duration" ]; do
    sample
    sleep 5
done
wait "${pids[@]}"
pids=()
sample

kill -TERM "$server"
code=0
wait "$server" || code=$?
server=
[ "$code" -eq 0 ] || fail "the server exited $code on SIGTERM"

cat "$out"/status.* | sort | uniq -c | sort -rn > "$out/counts"
echo "requests by status and route:"
cat "$out/counts"
total=$(awk '{n += $1} END {print n + 0}' "$out/counts")
lost=$(awk '$2 == "000" {n += $1} END {print n + 0}' "$out/counts")
errors=$(awk '$2 ~ /^5/ && $2 != "503" {n += $1} END {print n + 0}' "$out/counts")
other=$(awk '$2 !~ /^(200|503|000)$/ && $2 !~ /^5/ {n += $1} END {print n + 0}' "$out/counts")
warm="${samples[$(( ${#samples[@]} > 12 ? 12 : 0 ))]}"
max=$(printf '%s\n' "${samples[@]}" | sort -n | tail -1)
last="${samples[-1]}"
echo "RSS MiB: first ${samples[0]}, after warm-up $warm, max $max, last $last (${#samples[@]} samples in $out/rss.tsv)"
[ "$total" -gt 0 ] || fail "no request was made"
[ "$lost" -eq 0 ] || fail "$lost of $total requests got no answer"
[ "$errors" -eq 0 ] || fail "$errors of $total requests answered 5xx other than 503"
[ "$other" -eq 0 ] || fail "$other of $total requests answered neither 200 nor 503"
[ $((last - warm)) -le "$growth_mb" ] || fail "RSS grew $((last - warm)) MiB after warm-up (bound: $growth_mb MiB)"
echo "soak passed: ${duration}s, $clients clients, $total requests, RSS growth $((last - warm)) MiB (bound $growth_mb MiB)"
