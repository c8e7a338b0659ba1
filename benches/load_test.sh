#!/usr/bin/env bash
# Load test of `tandem serve` on loopback with wrk (a real load generator, from Debian).
#
#   benches/load_test.sh                 # everything below, about 3.5 minutes
#   DURATION=5 benches/load_test.sh      # shorter runs
#   TANDEM_BIN=target/release/tandem benches/load_test.sh   # skip the build
#
# Measures, each run bounded in time (DURATION seconds, wrk --timeout 10s):
#   1. throughput and p50/p99 latency at concurrency 1, 8 and 64 for /embed, /rerank and
#      /relevance (20 items; warm: the same query each time, so QE scores come from the cache;
#      cold: a new query each request, so every QE score is encoded);
#   2. dynamic batching: /embed at concurrency 32 with the default batcher against a second
#      server with max_batch_requests = 1 (a forward pass per request), three turns each;
#   3. overload: 1024 connections against a queue of 256 requests: counts of 200 and 503,
#      socket errors and timeouts (none expected), the server's RSS before, after and at
#      peak, and a request after the burst.
# The server and wrk share this machine's cores; wrk takes a small part of one.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
WRK_THREADS=${WRK_THREADS:-2}
OUT=${OUT:-benches/out/load_test}
mkdir -p "$OUT"

if ! command -v wrk >/dev/null; then
  echo "== installing wrk" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
if [ -z "${TANDEM_BIN:-}" ]; then
  echo "== building tandem (release)" >&2
  cargo build -q --release -p tandem
  TANDEM_BIN=target/release/tandem
fi
"$TANDEM_BIN" fetch minilm >/dev/null
# 1024 connections on each side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

PIDS=()
stop_servers() {
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      wait "$pid" || true
    fi
  done
  PIDS=()
}
trap stop_servers EXIT

# start_server NAME ARGS...: starts one more server on a free port, sets SERVER_PID and URL.
start_server() {
  local name=$1
  shift
  local log="$OUT/server-$name.log"
  : >"$log" # exists before the background server opens it, for the sed below
  "$TANDEM_BIN" serve --port 0 "$@" 2>"$log" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 600); do
    URL=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$log")
    [ -n "$URL" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "server did not start" >&2
  exit 1
}

rss_kb() { awk "/^$1:/ {print \$2}" "/proc/$SERVER_PID/status"; }

# The wrk script: POSTs $BODY, tallies status codes per thread and prints one RESULT line.
cat >"$OUT/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BODY")
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; counter = 0 end
-- "__N__" in the body becomes a number unique to this request (a cold QE cache each time).
if string.find(wrk.body, "__N__", 1, true) then
  request = function()
    counter = counter + 1
    local n = tostring(counter) .. "x" .. tostring(math.random(1, 1000000000))
    return wrk.format(nil, nil, nil, (string.gsub(wrk.body, "__N__", n)))
  end
end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do total[code] = (total[code] or 0) + n end
  end
  local secs = summary.duration / 1e6
  io.write(string.format("RESULT requests=%d rps=%.1f p50_ms=%.2f p99_ms=%.2f max_ms=%.1f",
    summary.requests, summary.requests / secs, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
  for code, n in pairs(total) do io.write(string.format(" status_%d=%d", code, n)) end
  local e = summary.errors
  io.write(string.format(" err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
    e.connect, e.read, e.write, e.timeout))
end
LUA

# A forward pass cannot be cancelled: after a run, the last (possibly large) batch may still
# be running. One request completes only after it, so each run starts on an idle model.
settle() { curl -s -o /dev/null -d "$EMBED" "$URL/embed"; }

# run NAME PATH CONNECTIONS SECONDS: one wrk run; prints and returns its RESULT line.
run() {
  local name=$1 path=$2 conns=$3 secs=$4
  settle
  local threads=$((conns < WRK_THREADS ? conns : WRK_THREADS))
  local line
  line=$(BODY="$BODY" timeout $((secs + 30)) wrk -t"$threads" -c"$conns" -d"${secs}s" --timeout 10s \
    -s "$OUT/post.lua" "$URL$path" | tee "$OUT/wrk-$name.txt" | grep '^RESULT')
  local summary="$OUT/summary.txt"
  [ "$name" = warmup ] && summary=/dev/null
  printf '%-28s %s\n' "$name" "${line#RESULT }" | tee -a "$summary"
}

EMBED='{"inputs":"nike air zoom pegasus 40 mens road running shoes black white size 10"}'
RERANK='{"query":"red running shoes","texts":["nike air zoom pegasus mens running shoe red","adidas ultraboost light womens running shoes","red leather handbag with gold chain","trail running socks 3 pack","puma red suede classic sneakers","stainless steel water bottle 1l","asics gel kayano 30 red","kids rain boots red"]}'
# One query, 20 items whose brands, categories and colors overlap, as a search page's do.
RELEVANCE=$(python3 - <<'PY'
import json
brands = ["Nike", "Adidas", "Asics", "Puma", "Brooks"]
colors = ["red", "black", "white", "blue"]
items = []
for i in range(20):
    brand, color = brands[i % 5], colors[i % 4]
    kind = ["running shoes", "trail running shoes", "running socks", "sports bag"][i % 4]
    items.append({"id": str(i), "title": f"{brand} {kind} {color} size {8 + i % 5}", "brand": brand, "color": color})
print(json.dumps({"query": "nike running shoes", "items": items}))
PY
)

: >"$OUT/summary.txt"
echo "== $(nproc) cores, load average $(cut -d" " -f1-3 /proc/loadavg) before; $DURATION s per run; $("$TANDEM_BIN" --version)" | tee -a "$OUT/summary.txt"

start_server default
BODY=$EMBED run warmup /embed 8 2 >/dev/null
for c in 1 8 64; do BODY=$EMBED run "embed c=$c" /embed "$c" "$DURATION"; done
for c in 1 8 64; do BODY=$RERANK run "rerank(8 texts) c=$c" /rerank "$c" "$DURATION"; done
for c in 1 8 64; do BODY=$RELEVANCE run "relevance(20) warm c=$c" /relevance "$c" "$DURATION"; done
for c in 1 8 64; do BODY=${RELEVANCE/running shoes/running shoes __N__} run "relevance(20) cold c=$c" /relevance "$c" "$DURATION"; done
# batched NAME ARGS...: run ARGS, then print the mean requests per forward pass during it.
batch_totals() { curl -s "$URL/metrics" | awk '/^tandem_batch_requests_(sum|count)/ {printf "%s ", $2}'; }
batched() {
  local name=$1 before after
  before=$(batch_totals)
  run "$@"
  after=$(batch_totals)
  echo "$before $after" | awk -v n="$name" '{printf "%-28s mean requests per forward pass: %.1f\n", n, ($3-$1)/($4-$2)}' |
    tee -a "$OUT/summary.txt"
}
# The two servers run side by side and take turns, so that a slow or fast spell of this
# shared machine does not fall on one side only; the medians of three runs are compared.
URL_BATCHED=$URL
start_server unbatched --max-batch-requests 1
URL_UNBATCHED=$URL
BODY=$EMBED run warmup /embed 8 2 >/dev/null
for round in 1 2 3; do
  URL=$URL_BATCHED BODY=$EMBED batched "embed c=32 batching #$round" /embed 32 "$DURATION"
  URL=$URL_UNBATCHED BODY=$EMBED batched "embed c=32 batch size 1 #$round" /embed 32 "$DURATION"
done
median_rps() { grep "^$1 #" "$OUT/summary.txt" | grep -o 'rps=[0-9.]*' | cut -d= -f2 | sort -n | sed -n 2p; }
batched_rps=$(median_rps "embed c=32 batching")
single_rps=$(median_rps "embed c=32 batch size 1")
echo "batching gain at c=32: median $batched_rps / $single_rps rps = $(echo "$batched_rps $single_rps" | awk '{printf "%.2f", $1/$2}')x" |
  tee -a "$OUT/summary.txt"
stop_servers

start_server overload
BODY=$EMBED run warmup /embed 8 2 >/dev/null
before=$(rss_kb VmRSS)
BODY=$EMBED run "overload c=1024" /embed 1024 "$DURATION"
after=$(rss_kb VmRSS)
peak=$(rss_kb VmHWM)
after_burst=$(curl -s -o /dev/null -w '%{http_code}' -d "$EMBED" "$URL/embed")
shed=$(curl -s "$URL/metrics" | grep '^tandem_shed_total' | tr '\n' ' ')
echo "overload RSS before=${before}kB after=${after}kB peak=${peak}kB; request after the burst: $after_burst; $shed" |
  tee -a "$OUT/summary.txt"
stop_servers
echo "== figures in $OUT/summary.txt" >&2
echo "== load average $(cut -d" " -f1-3 /proc/loadavg) after" | tee -a "$OUT/summary.txt"
