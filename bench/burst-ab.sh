#!/usr/bin/env bash
# Does a rate-limited connection storm disturb the connections already
# open? Interleaved: quiet, storm, quiet, storm, ...
#
#   bash bench/burst-ab.sh [ROUNDS] [SECONDS] [SUBSCRIBERS] [RATE] [BURST]
#
# Starts the standalone `herald` (one loop, pinned to CPU 0) with a limit of
# 1,000 connections a second per address (bursts of 2,000), then per round
# runs `herald-bench latency --phoenix` (SUBSCRIBERS Phoenix subscribers,
# RATE publishes a second, pinned to CPU 1). In storm rounds
# `bench/connect-burst.py` (also on CPU 1) makes BURST upgrade attempts as
# fast as it can while the stream runs; past the limit they get 429 before
# their request is read. Each round prints deliveries/s, latency p50/p99,
# what was missing after the drain, the server's CPU per delivery, and both
# cores' busy fraction. Build first:
#   cargo build --release -p herald --bin herald -p herald-bench
set -euo pipefail
source "$(dirname "$0")/common.sh"
rounds=${1:-4}
seconds=${2:-10}
subscribers=${3:-1000}
rate=${4:-200}
burst=${5:-20000}
bench=${HERALD_BENCH:-target/release/herald-bench}
herald=${HERALD:-target/release/herald}
port=9420
ulimit -n 20000
config=$(mktemp --suffix .toml)
trap 'rm -f "$config"; kill "$pid" 2>/dev/null || true' EXIT
cat >"$config" <<TOML
[server]
connect_rate_per_address = 1000
connect_burst_per_address = 2000
[[channels]]
pattern = "*"
messages = "broadcast_from"
TOML

taskset -c 0 "$herald" --config "$config" --listen 127.0.0.1:$port --no-api --no-demo \
  --loops 1 --no-pin >/dev/null 2>&1 &
pid=$!
wait_for_port $port
sleep 2 # the probes above spent some of the burst allowance


for round in $(seq "$rounds"); do
  label=quiet
  [ $((round % 2)) -eq 0 ] && label=storm
  before=$(cpu_times)
  if [ "$label" = storm ]; then
    # Starts once the subscribers are connected and the stream runs.
    (sleep 3 && taskset -c 1 python3 bench/connect-burst.py 127.0.0.1 $port "$burst" /socket/websocket) &
    storm=$!
  fi
  report=$(taskset -c 1 "$bench" --addr 127.0.0.1:$port --path /socket/websocket --server-pid $pid \
    --json latency --phoenix --subscribers "$subscribers" --rate "$rate" --seconds "$seconds")
  [ "$label" = storm ] && wait $storm
  after=$(cpu_times)
  python3 - "$label" "$report" "$(busy "$before" "$after")" <<'PY'
import json, sys
label, busy = sys.argv[1], sys.argv[3]
figures = json.loads(sys.argv[2])["figures"]
value = lambda key: figures.get(key, {}).get("value")
latency = value("latency") or {}
print(f"{label:5} deliveries/s {value('deliveries'):,.0f}  latency p50 {latency.get('p50')} µs  "
      f"p99 {latency.get('p99')} µs  missing_after_drain {value('missing_after_drain')}  "
      f"server {value('server_cpu_per_delivery'):.0f} ns/delivery  cores {busy}")
PY
  sleep 2 # the limiter's bucket refills before the next round connects
done
