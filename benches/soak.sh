#!/usr/bin/env bash
# A soak: one relay under a steady call load for a long time, as `veil load` keeps its
# allocations, permissions and channels alive the way real clients do.
#
#   benches/soak.sh [minutes] [clients] [packets/s per client] [relay flags...]
#                                                  (run by hand; defaults: 30 1000 25 --shaping)
#
# The relay (release build, 2 workers, `--shaping` unless other flags are given) runs on
# 127.0.0.1 with the defences that a load from one address would trip turned off (the source
# cap, the unauthenticated-reply limit). Every minute it samples the relay's resident memory,
# its open descriptors, its CPU time (/proc/PID/stat) and the packets it relayed (/metrics,
# both directions), and prints one line: minute, RSS, descriptors, allocations, packets relayed
# in the minute, CPU µs per relayed packet in the minute. Then `veil load`'s summary line (loss,
# round trips, refreshes). Raw samples go to $OUT (default /tmp/veil-soak).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
CLIENTS=${2:-1000}
RATE=${3:-25}
shift $(( $# < 3 ? $# : 3 ))
FLAGS=("$@")
[ ${#FLAGS[@]} -eq 0 ] && FLAGS=(--shaping)
OUT=${OUT:-/tmp/veil-soak}
mkdir -p "$OUT"
cargo build --release --quiet
VEIL=$PWD/target/release/veil
echo "soak-secret-0123456789abcdef" > "$OUT/secret"
ulimit -n "$(ulimit -Hn)"
ADMIN=127.0.0.1:9470
"$VEIL" relay --listen 127.0.0.1:3490 --workers 2 --port-range 20000-29999 \
  --auth-secret-file "$OUT/secret" --allow-peer 127.0.0.0/8 --admin "$ADMIN" \
  --user-quota 100000 --source-quota 0 --total-quota 100000 --watch-interval 0 \
  --set limits.unauthenticated.per_second=0 "${FLAGS[@]}" >"$OUT/relay.log" 2>&1 &
RELAY=$!
trap 'kill $RELAY 2>/dev/null || true' EXIT
sleep 1
TICK=$(getconf CLK_TCK)
sample() {   # -> "rss_kib fds cpu_ticks packets allocations"
  local rss fds cpu pkts allocs m
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$RELAY/status)
  fds=$(ls /proc/$RELAY/fd | wc -l)
  cpu=$(awk '{print $14 + $15}' /proc/$RELAY/stat)
  m=$(curl -s "http://$ADMIN/metrics")
  pkts=$(echo "$m" | awk '/^veil_relay_packets_total/ {s += $2} END {printf "%d", s}')
  allocs=$(echo "$m" | awk '/^veil_relay_allocations / {print $2}')
  echo "$rss $fds $cpu $pkts ${allocs:-0}"
}
SECS=$((MINUTES * 60))
"$VEIL" load --server 127.0.0.1:3490 --secret-file "$OUT/secret" --clients "$CLIENTS" \
  --rate "$RATE" --duration "$SECS" --threads 1 >"$OUT/load.out" 2>"$OUT/load.err" &
LOAD=$!
sleep 5   # setup
printf '%-6s %-9s %-5s %-6s %-12s %s\n' minute rss_kib fds allocs packets cpu_us_per_packet
read -r _ _ cpu0 pkts0 _ <<<"$(sample)"
for m in $(seq 1 "$MINUTES"); do
  sleep 60
  kill -0 $LOAD 2>/dev/null || break
  read -r rss fds cpu pkts allocs <<<"$(sample)"
  echo "$m $rss $fds $cpu $pkts $allocs" >>"$OUT/samples"
  awk -v m="$m" -v r="$rss" -v f="$fds" -v a="$allocs" -v c="$cpu" -v c0="$cpu0" \
      -v p="$pkts" -v p0="$pkts0" -v t="$TICK" 'BEGIN {
    dp = p - p0; us = dp > 0 ? (c - c0) / t * 1e6 / dp : 0
    printf "%-6d %-9d %-5d %-6d %-12d %.2f\n", m, r, f, a, dp, us }'
  cpu0=$cpu; pkts0=$pkts
done
wait $LOAD || true
cat "$OUT/load.out"
