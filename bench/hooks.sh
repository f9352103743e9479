#!/usr/bin/env bash
# What backend hooks cost, and that a slow backend costs the loops nothing.
#
#   bash bench/hooks.sh [ROUNDS] [SECONDS]
#
# Starts the standalone `herald` (one loop, pinned to CPU 0) with a rule
# `hook:*` whose joins go through a join hook to `hook-backend` (a stand-in
# backend, CPU 1) and a rule `*` without hooks. Then, interleaved
# (hook, plain, hook, plain, ...):
#
# 1. joins: `herald-bench joins` (4, then 64 clients, CPU 1), each joining a fresh
#    topic, waiting for the reply, leaving and joining the next: joins/s and
#    the join reply's latency through a backend that answers in 1 ms, and
#    without a hook. The p99 added is the difference.
# 2. slow backend: the backend now answers after 2 s (under the hook timeout
#    of 5 s). `herald-bench latency` streams 200 broadcasts/s through the
#    API to 1,000 subscribers of a plain topic, while (in "hung" rounds) 200
#    more clients keep joining `hook:` topics, every join waiting 2 s, so
#    the hook threads and queue are full the whole time; "quiet" rounds run
#    the stream alone. Latency and what was missing after the drain must
#    not differ.
#
# Each round prints its figures, the server's CPU per join or delivery, and
# both cores' busy fraction. Build first:
#   cargo build --release -p herald --bin herald -p herald-bench
set -euo pipefail
source "$(dirname "$0")/common.sh"
rounds=${1:-4}
seconds=${2:-10}
bench=${HERALD_BENCH:-target/release/herald-bench}
backend_bin=${HOOK_BACKEND:-target/release/hook-backend}
herald=${HERALD:-target/release/herald}
port=9430
api=9431
backend_port=9432
ulimit -n 20000
config=$(mktemp --suffix .toml)
trap 'rm -f "$config"; kill "$pid" "$backend" 2>/dev/null || true' EXIT
cat >"$config" <<TOML
[hooks]
timeout_ms = 5000
concurrency = 32
queue = 4096
[[channels]]
pattern = "hook:*"
join_hook = "http://127.0.0.1:$backend_port/join"
[[channels]]
pattern = "*"
messages = "refuse"
TOML

start_backend() {
  taskset -c 1 "$backend_bin" --listen 127.0.0.1:$backend_port --delay-ms "$1" 2>/dev/null &
  backend=$!
  wait_for_port $backend_port
}
start_backend 1
taskset -c 0 "$herald" --config "$config" --listen 127.0.0.1:$port --api-listen 127.0.0.1:$api \
  --no-demo --loops 1 --no-pin >/dev/null 2>&1 &
pid=$!
wait_for_port $port

path='/socket/websocket?vsn=2.0.0'

for clients in 4 64; do
echo "== joins, $clients clients: a join hook answering in 1 ms vs no hook (1 loop on CPU 0; load and backend on CPU 1)"
for round in $(seq "$rounds"); do
  prefix=hook:; [ $((round % 2)) -eq 0 ] && prefix=plain:
  before=$(cpu_times)
  report=$(taskset -c 1 "$bench" --addr 127.0.0.1:$port --path "$path" --server-pid $pid \
    --json joins --clients "$clients" --prefix "$prefix" --seconds "$seconds")
  after=$(cpu_times)
  python3 - "$prefix" "$report" "$(busy "$before" "$after")" <<'PY'
import json, sys
label, busy = sys.argv[1], sys.argv[3]
figures = json.loads(sys.argv[2])["figures"]
value = lambda key: figures.get(key, {}).get("value")
latency = value("join_reply") or {}
print(f"{label:6} joins/s {value('joins'):,.0f}  refused {value('refused')}  reply p50 {latency.get('p50')} µs  "
      f"p99 {latency.get('p99')} µs  p99.9 {latency.get('p99.9')} µs  "
      f"server {value('server_cpu_per_delivery'):,.0f} ns/join  cores {busy}")
PY
done
done

echo "== broadcasts on a plain topic while every hooked join hangs 2 s on the backend"
kill "$backend"; wait "$backend" 2>/dev/null || true
start_backend 2000
for round in $(seq "$rounds"); do
  label=hung; [ $((round % 2)) -eq 0 ] && label=quiet
  if [ "$label" = hung ]; then
    taskset -c 1 "$bench" --addr 127.0.0.1:$port --path "$path" --json \
      joins --clients 200 --prefix hook: --seconds $((seconds + 4)) >/dev/null &
    joiners=$!
    sleep 1
  fi
  before=$(cpu_times)
  report=$(taskset -c 1 "$bench" --addr 127.0.0.1:$port --path "$path" --server-pid $pid \
    --json latency --subscribers 1000 --rate 200 --seconds "$seconds" --api 127.0.0.1:$api)
  after=$(cpu_times)
  [ "$label" = hung ] && wait $joiners
  hooks=$(curl -s 127.0.0.1:$api/metrics | awk '/^herald_hook_calls_total\{hook="join"/ { printf "%s ", $0 }')
  python3 - "$label" "$report" "$(busy "$before" "$after")" "$hooks" <<'PY'
import json, sys
label, busy, hooks = sys.argv[1], sys.argv[3], sys.argv[4]
figures = json.loads(sys.argv[2])["figures"]
value = lambda key: figures.get(key, {}).get("value")
latency = value("latency") or {}
print(f"{label:5} deliveries/s {value('deliveries'):,.0f}  latency p50 {latency.get('p50')} µs  "
      f"p99 {latency.get('p99')} µs  p99.9 {latency.get('p99.9')} µs  missing_after_drain {value('missing_after_drain')}  "
      f"server {value('server_cpu_per_delivery'):.0f} ns/delivery  cores {busy}")
print(f"      hooks so far: {hooks}")
PY
done
