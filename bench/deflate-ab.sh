#!/usr/bin/env bash
# What permessage-deflate costs the server, interleaved with the same run
# uncompressed (plain, deflate, plain, deflate, ...).
#
#   bash bench/deflate-ab.sh [ROUNDS] [SECONDS]
#
# 1. Fan-out: the `fanout` example with --compression (one loop, pinned to
#    CPU 0), `herald-bench fanout` (CPU 1): 10,000 subscribers of one topic,
#    1 KiB messages that read like market data (--quotes), window 16. In
#    "deflate" rounds the subscribers offer permessage-deflate, so each
#    message is compressed once and the same compressed frame goes to all
#    of them; in "plain" rounds they do not. Prints deliveries/s, the
#    server's CPU per delivery, the message's size plain and compressed,
#    what was missing after the drain, and both cores' busy fraction.
# 2. Memory per idle connection: 19,900 connections to a fresh server,
#    offering the extension or not (`idle`: RSS growth per connection).
#
# Build first:
#   cargo build --release -p herald --example fanout -p herald-bench
set -euo pipefail
source "$(dirname "$0")/common.sh"
rounds=${1:-4}
seconds=${2:-10}
bench=${HERALD_BENCH:-target/release/herald-bench}
fanout=${FANOUT:-target/release/examples/fanout}
port=9460
ulimit -n 20000

start_server() {
  taskset -c 0 "$fanout" --port $port --loops 1 --compression >/dev/null 2>&1 &
  pid=$!
  wait_for_port $port
}
trap 'kill "$pid" 2>/dev/null || true' EXIT

echo "== fan-out: 10,000 subscribers, 1 KiB market-data JSON, window 16, 1 loop on CPU 0"
start_server
for round in $(seq "$rounds"); do
  label=plain; flag=; [ $((round % 2)) -eq 0 ] && { label=deflate; flag=--deflate; }
  before=$(cpu_times)
  report=$(taskset -c 1 "$bench" --addr 127.0.0.1:$port --server-pid $pid --quotes $flag --json \
    fanout --subscribers 10000 --payload 1024 --window 16 --seconds "$seconds" | tail -n 1)
  after=$(cpu_times)
  python3 - "$label" "$report" "$(busy "$before" "$after")" <<'PY'
import json, sys
label, busy = sys.argv[1], sys.argv[3]
figures = json.loads(sys.argv[2])["figures"]
value = lambda key: figures.get(key, {}).get("value")
deflated = value("message_bytes_deflated")
size = f"{value('message_bytes')} B" + (f" -> {deflated} B on the wire" if deflated else "")
print(f"{label:7} deliveries/s {value('deliveries'):,.0f}  server {value('server_cpu_per_delivery'):,.0f} ns/delivery  "
      f"message {size}  missing_after_drain {value('missing_after_drain')}  "
      f"client_bound {value('client_bound')}  cores {busy}")
PY
done
kill "$pid"; wait "$pid" 2>/dev/null || true

echo "== idle connections: 19,900 to a fresh server each"
for label in plain deflate; do
  flag=; [ "$label" = deflate ] && flag=--deflate
  start_server
  report=$(taskset -c 1 "$bench" --addr 127.0.0.1:$port --server-pid $pid $flag --json idle --connections 19900)
  python3 - "$label" "$report" <<'PY'
import json, sys
figures = json.loads(sys.argv[2].strip().splitlines()[-1])["figures"]
value = lambda key: figures.get(key, {}).get("value")
print(f"{sys.argv[1]:7} {value('connections')} connections: RSS {value('server_rss_before'):.2f} -> "
      f"{value('server_rss_after'):.2f} MiB, {value('rss_per_connection'):.0f} B per connection")
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
  sleep 1
done
