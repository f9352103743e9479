#!/usr/bin/env bash
# What TLS in the event loop costs, interleaved with the same run in
# cleartext (clear, tls, clear, tls, ...).
#
#   bash bench/tls-ab.sh [ROUNDS] [SECONDS]
#
# 1. Fan-out: the `fanout` example (one loop, pinned to CPU 0; with
#    --tls-cert/--tls-key and the test certificate in tls rounds),
#    `herald-bench fanout` (CPU 1; --tls in tls rounds): 10,000 subscribers
#    of one topic, 64 B messages, window 16. Each round starts its own
#    server. Prints deliveries/s, the server's CPU per delivery, what was
#    missing after the drain, whether the load generator was the
#    bottleneck, and both cores' busy fraction.
# 2. Memory per idle connection: 19,900 connections to a fresh server, TLS
#    or not (`idle`: RSS growth per connection).
#
# Build first:
#   cargo build --release -p herald --example fanout -p herald-bench
set -euo pipefail
source "$(dirname "$0")/common.sh"
rounds=${1:-4}
seconds=${2:-10}
bench=${HERALD_BENCH:-target/release/herald-bench}
fanout=${FANOUT:-target/release/examples/fanout}
certs=tests/fixtures/tls
port=9480
ulimit -n 20000

start_server() {
  local tls_args=()
  [ "$1" = tls ] && tls_args=(--tls-cert "$certs/cert.pem" --tls-key "$certs/key.pem")
  taskset -c 0 "$fanout" --port $port --loops 1 "${tls_args[@]}" >/dev/null 2>&1 &
  pid=$!
  wait_for_port $port
}
stop_server() { kill "$pid"; wait "$pid" 2>/dev/null || true; sleep 1; }
trap 'kill "$pid" 2>/dev/null || true' EXIT

echo "== fan-out: 10,000 subscribers, 64 B, window 16, 1 loop on CPU 0"
for round in $(seq "$rounds"); do
  label=clear; flag=; [ $((round % 2)) -eq 0 ] && { label=tls; flag=--tls; }
  start_server "$label"
  before=$(cpu_times)
  report=$(taskset -c 1 "$bench" --addr 127.0.0.1:$port --server-pid $pid $flag --json \
    fanout --subscribers 10000 --payload 64 --window 16 --seconds "$seconds" | tail -n 1)
  after=$(cpu_times)
  stop_server
  python3 - "$label" "$report" "$(busy "$before" "$after")" <<'PY'
import json, sys
label, busy = sys.argv[1], sys.argv[3]
figures = json.loads(sys.argv[2])["figures"]
value = lambda key: figures.get(key, {}).get("value")
print(f"{label:5} deliveries/s {value('deliveries'):,.0f}  server {value('server_cpu_per_delivery'):,.0f} ns/delivery  "
      f"missing_after_drain {value('missing_after_drain')}  client_bound {value('client_bound')}  cores {busy}")
PY
done

echo "== idle connections: 19,900 to a fresh server each"
for label in clear tls; do
  flag=; [ "$label" = tls ] && flag=--tls
  start_server "$label"
  report=$(taskset -c 1 "$bench" --addr 127.0.0.1:$port --server-pid $pid $flag --json idle --connections 19900 | tail -n 1)
  stop_server
  python3 - "$label" "$report" <<'PY'
import json, sys
figures = json.loads(sys.argv[2])["figures"]
value = lambda key: figures.get(key, {}).get("value")
print(f"{sys.argv[1]:5} {value('connections')} connections: RSS {value('server_rss_before'):.2f} -> "
      f"{value('server_rss_after'):.2f} MiB, {value('rss_per_connection'):.0f} B per connection")
PY
done
