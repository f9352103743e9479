# What the A/B benchmark scripts share (sourced, not run).

# Busy and total jiffies of CPU 0 and CPU 1, one line each.
cpu_times() { awk '/^cpu[01] /{ print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8 }' /proc/stat; }

# Each core's busy fraction between two `cpu_times` samples: "97% 94% ".
busy() { paste <(echo "$1") <(echo "$2") | awk '{ printf "%.0f%% ", 100*($3-$1)/($4-$2) }'; }

# Waits (at most 5 s) until something accepts connections on 127.0.0.1:$1.
wait_for_port() {
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
}
