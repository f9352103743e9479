#!/usr/bin/env bash
# Multi-core scaling of fan-out: 1, 2, 4 and 8 event loops on CPUs 0-7, the
# load generator's threads on CPUs 8-15, one topic (10,000 subscribers,
# window 64) and 1,000 rooms; prints deliveries/s and the efficiency
# E(N) = R(N) / (N x R(1)). Needs a machine with 16 cores or more; on a
# smaller one it says so and stops. The server runs in the load generator's
# process (--embedded), so the file-descriptor limit is halved; the rooms
# scenario drives its rooms from one client thread, so its larger N may be
# client-bound (each report says so).
#
#   cargo build --release -p herald-bench --bin herald-bench
#   bash bench/scaling.sh [SECONDS]
set -euo pipefail
seconds=${1:-10}
bench=${HERALD_BENCH:-target/release/herald-bench}
cores=$(nproc)
if [ "$cores" -lt 16 ]; then
  echo "scaling.sh needs 16 cores (8 for the loops, 8 for the load); this machine has $cores" >&2
  exit 2
fi
ulimit -n "$(ulimit -Hn)"

rate() { # the JSON report's deliveries per second
  python3 -c 'import json,sys; print(round(json.loads(sys.stdin.readlines()[-1])["figures"]["deliveries"]["value"]))'
}

declare -A one_topic rooms
for n in 1 2 4 8; do
  server="0-$((n - 1))"
  one_topic[$n]=$(taskset -c 8-15 "$bench" --embedded --server-cpus "$server" --threads 8 --json \
    fanout --subscribers 10000 --window 64 --seconds "$seconds" 2>/dev/null | rate)
  rooms[$n]=$(taskset -c 8-15 "$bench" --embedded --server-cpus "$server" --threads 8 --json \
    rooms --rooms 1000 --size 9 --window 4 --seconds "$seconds" 2>/dev/null | rate)
done

python3 - "${one_topic[1]}" "${one_topic[2]}" "${one_topic[4]}" "${one_topic[8]}" \
  "${rooms[1]}" "${rooms[2]}" "${rooms[4]}" "${rooms[8]}" <<'EOF'
import sys
one, rooms = list(map(int, sys.argv[1:5])), list(map(int, sys.argv[5:9]))
print(f"{'loops':<6} {'one topic (/s)':>16} {'E(N)':>6} {'1,000 rooms (/s)':>18} {'E(N)':>6}")
for i, n in enumerate([1, 2, 4, 8]):
    print(f"{n:<6} {one[i]:>16,} {one[i] / (n * one[0]):>6.2f} {rooms[i]:>18,} {rooms[i] / (n * rooms[0]):>6.2f}")
EOF
