#!/usr/bin/env bash
# Does Presence on a topic slow its plain broadcasts? Interleaved: the
# standalone `herald` with the bench topic's rule tracking presence, then
# without, then with, then without (one loop on CPU 0, the load on CPU 1).
#
#   bash bench/presence-ab.sh [ROUNDS] [SECONDS] [SUBSCRIBERS] [WINDOW]
#
# Each round starts a fresh server with a rule `* = rebroadcast` and
# `presence = true` or `false`, runs `herald-bench fanout --phoenix` (every
# subscriber joins, so with presence every one is tracked and gets the
# presence_state, before the measured window), and prints deliveries/s,
# what was missing after the drain, server CPU per delivery and both
# cores' busy fraction. Where the load generator is the bottleneck
# (client_bound True), compare the server's CPU per delivery. Mind N: every
# member is told of every join (each joiner's state, and the diffs), so N
# members joining move about N^2 x 70 bytes of presence frames before the
# stream starts (2,000: 280 MB; 10,000: 7 GB, more than this 2-core box's
# load generator takes in before its window). Build first:
#   cargo build --release -p herald --bin herald -p herald-bench
set -euo pipefail
source "$(dirname "$0")/common.sh"
rounds=${1:-4}
seconds=${2:-8}
subscribers=${3:-2000}
window=${4:-16}
bench=${HERALD_BENCH:-target/release/herald-bench}
herald=${HERALD:-target/release/herald}
port=9430
ulimit -n 20000
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for presence in true false; do
  cat >"$dir/$presence.toml" <<TOML
[[channels]]
pattern = "*"
messages = "broadcast_from"
presence = $presence
TOML
done


for round in $(seq "$rounds"); do
  presence=true
  [ $((round % 2)) -eq 0 ] && presence=false
  taskset -c 0 "$herald" --config "$dir/$presence.toml" --listen 127.0.0.1:$port --no-api \
    --no-demo --loops 1 --no-pin --log-level warn >/dev/null 2>&1 &
  pid=$!
  wait_for_port $port
  before=$(cpu_times)
  report=$(taskset -c 1 "$bench" --addr 127.0.0.1:$port --path /socket/websocket --server-pid $pid \
    --json fanout --phoenix --subscribers "$subscribers" --window "$window" --seconds "$seconds")
  after=$(cpu_times)
  kill $pid
  wait $pid 2>/dev/null || true
  python3 - "$presence" "$report" "$(busy "$before" "$after")" <<'PY'
import json, sys
presence, busy = sys.argv[1], sys.argv[3]
figures = json.loads(sys.argv[2])["figures"]
value = lambda key: figures.get(key, {}).get("value")
print(f"presence={presence:5} deliveries/s {value('deliveries'):,.0f}  missing_after_drain "
      f"{value('missing_after_drain')}  server {value('server_cpu_per_delivery'):.0f} ns/delivery  "
      f"client_bound {value('client_bound')}  cores {busy}")
PY
done
