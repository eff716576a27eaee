#!/usr/bin/env bash
# What 20 ms slots (with and without padding) cost veil per relayed round trip, against no
# shaping: 800 clients x 50 packets/s of 160 B for 5 s, relay pinned to CPU 0 (one worker),
# `veil load` to CPU 1, three runs each. Run by hand (as root for taskset/ulimit); ~1 minute.
set -euo pipefail
# Throughput and capacity, not the hostile-client defences: the bench sends thousands of
# allocations from one address and more than a call's bandwidth through each.
NO_CAPS='{allocation: {bytes_per_second: 0, packets_per_second: 0}, user: {bytes_per_second: 0, packets_per_second: 0}}'
cd "$(dirname "$0")/.."
cargo build --release --quiet
VEIL=$PWD/target/release/veil
OUT=${OUT:-/tmp/veil-slots}
mkdir -p "$OUT"
echo bench-secret-0123456789abcdef > "$OUT/secret"
ulimit -n "$(ulimit -Hn)"
measure() {
  taskset -c 0 "$VEIL" relay --listen 127.0.0.1:3478 --workers 1 --port-range 20000-29999 \
    --auth-secret-file "$OUT/secret" --allow-peer 127.0.0.0/8 --user-quota 100000 --source-quota 0 \
    --watch-interval 0 --set limits.unauthenticated.per_second=0 --set "limits.bandwidth=$NO_CAPS" "$@" >/dev/null 2>&1 &
  local rp=$!; sleep 0.5
  local t0; t0=$(awk '{print $14+$15}' "/proc/$rp/stat")
  local line; line=$(taskset -c 1 "$VEIL" load --server 127.0.0.1:3478 --secret-file "$OUT/secret" \
    --clients 800 --rate 50 --duration 5 2>/dev/null | tail -1)
  local t1; t1=$(awk '{print $14+$15}' "/proc/$rp/stat")
  kill -9 "$rp"; wait "$rp" 2>/dev/null || true
  local got; got=$(echo "$line" | sed -n 's/.* received=\([0-9]*\).*/\1/p')
  echo "${*:-no shaping}: cpu_us_per_round_trip=$(awk "BEGIN{printf \"%.2f\", ($t1-$t0)*10000/$got}") \
$(echo "$line" | grep -o 'loss_pct=[^ ]* rtt_p50_us=[^ ]* rtt_p99_us=[^ ]*')"
}
for _ in 1 2 3; do
  measure
  measure --timing slots:20ms --pad-buckets off
  measure --timing slots:20ms
done
