#!/usr/bin/env bash
# What history costs: publishing with history on Redis, and a recovery storm.
#
#   bash bench/history.sh [ROUNDS] [SECONDS]
#   SUBSCRIBERS=100 WINDOW=64 bash bench/history.sh 4 10   (publish-bound)
#
# 1. API fan-out on Redis, history off vs on, interleaved (off, on, off,
#    on, ...): a `redis-server` (CPU 1) and, per round, a fresh standalone
#    `herald --broker redis` (one loop; the whole process on CPU 0) whose
#    rule for the topic keeps history or not. `herald-bench fanout
#    --phoenix --api` (CPU 1) joins 10,000 subscribers and publishes each
#    message with POST /api/broadcast, 16 in flight: broadcasts/s,
#    deliveries/s, server CPU per delivery, what was missing after the
#    drain, and both cores' busy fraction. With history each publish runs
#    the Lua script and reaches the subscribers when Redis publishes it
#    back: the figure shows whether that round trip serializes publishing.
# 2. Recovery storm, one node (memory store): `herald-bench recovery-storm`
#    with 5,000 clients, each 20 messages behind, reconnecting at once:
#    when the last one has every missed message, server CPU and peak RSS.
#
# Build first: cargo build --release -p herald -p herald-bench
set -euo pipefail
source "$(dirname "$0")/common.sh"
rounds=${1:-4}
seconds=${2:-10}
subscribers=${SUBSCRIBERS:-10000}
window=${WINDOW:-16}
bench=${HERALD_BENCH:-target/release/herald-bench}
herald=${HERALD:-target/release/herald}
redis_server=$(command -v redis-server || echo /usr/bin/redis-server)
port=9440
api=9441
redis_port=9442
ulimit -n 20000
dir=$(mktemp -d)
pid=
trap 'kill $pid $redis 2>/dev/null || true; rm -rf "$dir"' EXIT
taskset -c 1 "$redis_server" --port $redis_port --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
redis=$!
wait_for_port $redis_port

write_config() { # $1: history_size for the fan-out topic (0: none)
  cat >"$dir/herald.toml" <<TOML
[[channels]]
pattern = "herald-bench"
messages = "refuse"
history_size = $1
[[channels]]
pattern = "storm:*"
messages = "refuse"
history_size = 100
TOML
}

start_herald() { # $@: extra flags
  taskset -c 0 "$herald" --config "$dir/herald.toml" --listen 127.0.0.1:$port \
    --api-listen 127.0.0.1:$api --no-demo --loops 1 --no-pin "$@" >/dev/null 2>&1 &
  pid=$!
  wait_for_port $port
  wait_for_port $api
}

stop_herald() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

path='/socket/websocket?vsn=2.0.0'
echo "== API fan-out to $subscribers subscribers, $window in flight, on Redis: history off vs on (1 loop on CPU 0; redis and load on CPU 1)"
for round in $(seq "$rounds"); do
  label=off; size=0
  [ $((round % 2)) -eq 0 ] && label=on && size=100
  write_config $size
  start_herald --broker redis --broker-url redis://127.0.0.1:$redis_port/
  before=$(cpu_times)
  report=$(taskset -c 1 "$bench" --addr 127.0.0.1:$port --path "$path" --server-pid $pid --json \
    fanout --phoenix --api 127.0.0.1:$api --subscribers "$subscribers" --window "$window" --seconds "$seconds")
  after=$(cpu_times)
  appends=$(curl -s 127.0.0.1:$api/metrics | awk '/^herald_history_appends_total/ { print $2 }')
  stop_herald
  python3 - "$label" "$report" "$(busy "$before" "$after")" "$appends" "$subscribers" <<'PY'
import json, sys
label, busy, appends, subscribers = sys.argv[1], sys.argv[3], sys.argv[4], int(sys.argv[5])
figures = json.loads(sys.argv[2])["figures"]
value = lambda key: figures.get(key, {}).get("value")
deliveries = value("deliveries")
print(f"history {label:3}  broadcasts/s {deliveries / subscribers:,.1f}  deliveries/s {deliveries:,.0f}  "
      f"server {value('server_cpu_per_delivery'):,.0f} ns/delivery  missing_after_drain {value('missing_after_drain')}  "
      f"appends {appends}  client_bound {value('client_bound')}  cores {busy}")
PY
done

echo "== recovery storm: 5,000 clients 20 behind reconnect at once (memory store; herald on CPU 0, load on CPU 1)"
write_config 0
for round in $(seq "$rounds"); do
  start_herald
  before=$(cpu_times)
  report=$(taskset -c 1 "$bench" --addr 127.0.0.1:$port --path "$path" --server-pid $pid --json \
    recovery-storm --clients 5000 --behind 20 --topic "storm:$round" --api 127.0.0.1:$api)
  after=$(cpu_times)
  stop_herald
  python3 - "$report" "$(busy "$before" "$after")" <<'PY'
import json, sys
figures = json.loads(sys.argv[1])["figures"]
value = lambda key: figures.get(key, {}).get("value")
print(f"recovered {value('recovered')}/{value('clients')} in {value('all_recovered_after'):,.0f} ms "
      f"(connected after {value('connected_after'):,.0f} ms)  messages {value('messages_recovered')}  "
      f"out_of_order_or_twice {value('out_of_order_or_twice')}  server_cpu {value('server_cpu')} s  "
      f"rss {value('server_rss_before')} -> peak {value('server_rss_peak')} MiB  client_bound {value('client_bound')}  cores {sys.argv[2]}")
PY
done
