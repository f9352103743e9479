#!/usr/bin/env bash
# Interleaved A/B of two builds of the `fanout` example: A, B, A, B, ...
#
#   bash bench/ab-fanout.sh OLD_FANOUT NEW_FANOUT [ROUNDS] [SECONDS] [WINDOW] [SUBSCRIBERS]
#
# Each round starts the server pinned to CPU 0 (one loop), runs
# `herald-bench fanout` pinned to CPU 1 against it, and prints one line:
# which build, deliveries/s, the server's and the client's CPU per delivery,
# and both cores' busy fraction over the run (from /proc/stat), so that a
# client-bound round (CPU 1 near 100 %) can be told apart. Nothing is lost
# unnoticed: the publisher keeps WINDOW messages in flight and sends the
# next only when the oldest reached every subscriber, so one lost delivery
# stalls the run. Build first:
#   cargo build --release -p herald --example fanout
#   cargo build --release -p herald-bench --bin herald-bench
set -euo pipefail
old=${1:?old fanout binary}
new=${2:?new fanout binary}
rounds=${3:-3}
seconds=${4:-8}
window=${5:-16}
subscribers=${6:-10000}
bench=${HERALD_BENCH:-target/release/herald-bench}
port=9402
# PHOENIX=1: both servers speak Phoenix channels (every subscriber joins the
# topic through a channel) instead of plain pub/sub.
phoenix=""
path=/
if [ -n "${PHOENIX:-}" ]; then
  phoenix=--phoenix
  path=/socket/websocket
fi
ulimit -n 20000

cpu_times() { awk '/^cpu[01] /{ print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8 }' /proc/stat; }

busy() { # before after -> "cpu0 % cpu1 %"
  paste <(echo "$1") <(echo "$2") | awk '{ printf "%.0f%% ", 100*($3-$1)/($4-$2) }'
}

run_one() {
  local label=$1 binary=$2
  taskset -c 0 "$binary" --port "$port" --loops 1 $phoenix >/dev/null &
  local pid=$!
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
  local before after report
  before=$(cpu_times)
  report=$(taskset -c 1 "$bench" --addr "127.0.0.1:$port" --path "$path" --server-pid "$pid" --json \
    fanout $phoenix --subscribers "$subscribers" --window "$window" --seconds "$seconds" 2>/dev/null | tail -n 1)
  after=$(cpu_times)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  python3 -c '
import json, sys
label, report, busy = sys.argv[1:4]
f = json.loads(report)["figures"]
rate = f["deliveries"]["value"]
server = f["server_cpu_per_delivery"]["value"]
client = f["client_cpu_per_delivery"]["value"]
print(f"{label:4} deliveries/s {rate:>11,.0f}  server ns/delivery {server:6.0f}  client ns/delivery {client:6.0f}  busy cpu0 cpu1 {busy}")
' "$label" "$report" "$(busy "$before" "$after")"
  echo "$label $report" >> "${AB_LOG:-/dev/null}"
}

for round in $(seq "$rounds"); do
  run_one old "$old"
  run_one new "$new"
done
