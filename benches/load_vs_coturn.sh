#!/usr/bin/env bash
# veil vs coturn vs a plain UDP forwarder, same machine, same run, same load generator.
#
#   benches/load_vs_coturn.sh [seconds-per-step] [repeats]      (run by hand, as root; ~10 min)
#
# Each server is pinned to CPU 0 with one worker/relay thread; `veil load` (clients and its
# echo peer) is pinned to CPU 1. Everything stays on 127.0.0.1. For payloads of 160 and 1200
# bytes it reports, per server: the highest offered rate (a step list) delivered with at most
# 0.01 % loss (median of the repeats), the server's CPU time per relayed round trip at a common
# load, the p99 round trip at 50 % of veil's ceiling (median of the repeats), and the server's
# resident memory per idle allocation at 1 000 and 10 000 allocations (and veil's at 19 500 on
# two relay IPs). Needs: coturn (turnserver), taskset, a release build (made here). Prints a table; raw lines go to $OUT (default /tmp/veil-bench).
set -euo pipefail
# Throughput and capacity, not the hostile-client defences: the bench sends thousands of
# allocations from one address and more than a call's bandwidth through each.
NO_CAPS='{allocation: {bytes_per_second: 0, packets_per_second: 0}, user: {bytes_per_second: 0, packets_per_second: 0}}'
cd "$(dirname "$0")/.."
STEP=${1:-3}
REPEATS=${2:-3}
OUT=${OUT:-/tmp/veil-bench}
mkdir -p "$OUT"
command -v turnserver >/dev/null || { echo "needs coturn: apt-get install coturn" >&2; exit 1; }
command -v taskset >/dev/null || { echo "needs taskset (util-linux)" >&2; exit 1; }
cargo build --release --quiet
VEIL=$PWD/target/release/veil
SECRET=bench-secret-0123456789abcdef
echo "$SECRET" > "$OUT/secret"
ulimit -n "$(ulimit -Hn)"

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start_veil() {   # $1 port-range
  taskset -c 0 "$VEIL" relay --listen 127.0.0.1:3478 --workers 1 --port-range "$1" \
    --auth-secret-file "$OUT/secret" --allow-peer 127.0.0.0/8 --user-quota 100000 --source-quota 0 \
    --total-quota 100000 --watch-interval 0 --set limits.unauthenticated.per_second=0 --set "limits.bandwidth=$NO_CAPS" >"$OUT/veil.log" 2>&1 &
  SERVER_PID=$!; PIDS+=("$SERVER_PID"); SERVER=127.0.0.1:3478; sleep 0.5
}
start_coturn() { # $1 min-port $2 max-port
  taskset -c 0 turnserver -n --listening-ip=127.0.0.1 --listening-port=3479 \
    --relay-ip=127.0.0.1 --min-port="$1" --max-port="$2" --relay-threads=1 \
    --use-auth-secret --static-auth-secret="$SECRET" --realm=veil --no-tls --no-dtls \
    --no-tcp --no-cli --allow-loopback-peers --user-quota=0 --total-quota=0 \
    --no-stdout-log --log-file=/dev/null >"$OUT/coturn.log" 2>&1 &
  SERVER_PID=$!; PIDS+=("$SERVER_PID"); SERVER=127.0.0.1:3479; sleep 1
}
start_raw() {
  taskset -c 0 "$VEIL" bench-forwarder --listen 127.0.0.1:3480 --to 127.0.0.1:4100 \
    --seconds 3600 >"$OUT/raw.log" 2>&1 &
  SERVER_PID=$!; PIDS+=("$SERVER_PID"); SERVER=127.0.0.1:3480; sleep 0.3
}
stop_server() { kill -9 "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; sleep 0.5; }

# load KIND CLIENTS RATE-PER-CLIENT SIZE SECONDS [extra...] -> the summary line
load() {
  local kind=$1 clients=$2 rate=$3 size=$4 secs=$5; shift 5
  local auth=(--secret-file "$OUT/secret")
  [ "$kind" = raw ] && auth=(--raw --peer 127.0.0.1:4100)
  taskset -c 1 "$VEIL" load --server "$SERVER" "${auth[@]}" --clients "$clients" \
    --rate "$rate" --size "$size" --duration "$secs" "$@" 2>>"$OUT/load.err" | tail -1
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

CLIENTS=100
RATES=(100 200 400 600 800 1000 1300 1600 2000 2500 3000)   # per client; x100 = offered pps

ceiling() {  # kind size -> highest total pps with <= 0.01 % loss
  local kind=$1 size=$2 best=0
  for r in "${RATES[@]}"; do
    local line; line=$(load "$kind" $CLIENTS "$r" "$size" "$STEP")
    echo "$kind size=$size rate=$r $line" >>"$OUT/steps.txt"
    local loss; loss=$(echo "$line" | field loss_pct)
    if awk "BEGIN{exit !($loss <= 0.01)}"; then best=$((r * CLIENTS)); else break; fi
  done
  echo "$best"
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

declare -A CEIL CPU P99 MEM1K MEM10K
for size in 160 1200; do
  for kind in raw veil coturn; do
    vals=()
    for _ in $(seq "$REPEATS"); do
      case $kind in veil) start_veil 20000-29999;; coturn) start_coturn 40000 49999;; raw) start_raw;; esac
      vals+=("$(ceiling "$kind" "$size")")
      stop_server
    done
    CEIL[$kind,$size]=$(median "${vals[@]}")
    echo "ceiling $kind size=$size: ${vals[*]} -> ${CEIL[$kind,$size]} pps" | tee -a "$OUT/summary.txt"
  done
  # CPU per round trip at a load every server sustains, and p99 at 50 % of veil's ceiling.
  common=$(( CEIL[coturn,$size] < CEIL[veil,$size] ? CEIL[coturn,$size] : CEIL[veil,$size] ))
  common=$(( common * 8 / 10 / CLIENTS )); [ "$common" -lt 50 ] && common=50
  half=$(( CEIL[veil,$size] / 2 / CLIENTS )); [ "$half" -lt 50 ] && half=50
  for kind in raw veil coturn; do
    case $kind in veil) start_veil 20000-29999;; coturn) start_coturn 40000 49999;; raw) start_raw;; esac
    t0=$(cpu_ticks "$SERVER_PID")
    line=$(load "$kind" $CLIENTS "$common" "$size" 5)
    t1=$(cpu_ticks "$SERVER_PID")
    got=$(echo "$line" | field received)
    CPU[$kind,$size]=$(awk "BEGIN{printf \"%.2f\", ($t1-$t0)*10000/($got>0?$got:1)}")  # µs (100 Hz ticks)
    p99s=()
    for _ in $(seq "$REPEATS"); do
      p99s+=("$(load "$kind" $CLIENTS "$half" "$size" 5 | field rtt_p99_us)")
    done
    P99[$kind,$size]=$(median "${p99s[@]}")
    echo "$kind size=$size p99 samples: ${p99s[*]}" >>"$OUT/summary.txt"
    echo "$kind size=$size cpu@${common}x$CLIENTS=${CPU[$kind,$size]}us/rt p99@${half}x$CLIENTS=${P99[$kind,$size]}us" | tee -a "$OUT/summary.txt"
    stop_server
  done
done

# Memory per idle allocation (the server's RSS growth while N allocations are held).
for n in 1000 10000; do
  for kind in veil coturn; do
    case $kind in veil) start_veil 10000-21999;; coturn) start_coturn 22000 32767;; esac
    before=$(rss_kb "$SERVER_PID")
    load "$kind" "$n" 1 160 0.2 --hold 4 --threads 2 >"$OUT/mem-$kind-$n.txt" &
    lp=$!
    sleep 3.5
    held=$(rss_kb "$SERVER_PID")
    wait "$lp" || true
    per=$(awk "BEGIN{printf \"%.0f\", ($held-$before)*1024/$n}")
    [ "$n" = 1000 ] && MEM1K[$kind]=$per || MEM10K[$kind]=$per
    echo "$kind memory: $before kB idle, $held kB with $n allocations: $per B each ($(field clients <"$OUT/mem-$kind-$n.txt") allocated)" | tee -a "$OUT/summary.txt"
    stop_server
  done
done

# Past one relay IP's ports: 19 500 allocations on two relay IPs of 12 000 ports each (the
# generator needs a socket per client too; this machine's hard limit is 20 000 open files).
taskset -c 0 "$VEIL" relay --listen 127.0.0.1:3478 --workers 1 --port-range 10000-21999 \
  --relay-ip 127.0.0.1 --relay-ip 127.0.0.2 --auth-secret-file "$OUT/secret" \
  --allow-peer 127.0.0.0/8 --user-quota 100000 --source-quota 0 --total-quota 100000 --watch-interval 0 \
  --set limits.unauthenticated.per_second=0 --set "limits.bandwidth=$NO_CAPS" \
  >"$OUT/veil.log" 2>&1 &
SERVER_PID=$!; PIDS+=("$SERVER_PID"); SERVER=127.0.0.1:3478; sleep 0.5
before=$(rss_kb "$SERVER_PID")
load veil 19500 1 160 0.2 --hold 6 --threads 2 --peer 127.0.0.3:0 >"$OUT/mem-veil-19500.txt" &
lp=$!
sleep 5
held=$(rss_kb "$SERVER_PID")
wait "$lp" || true
MEM20K=$(awk "BEGIN{printf \"%.0f\", ($held-$before)*1024/19500}")
echo "veil memory, two relay IPs: $held kB with 19500 allocations: $MEM20K B each ($(field clients <"$OUT/mem-veil-19500.txt") allocated, $(field setup_failures <"$OUT/mem-veil-19500.txt") failed)" | tee -a "$OUT/summary.txt"
stop_server

echo
printf '%-28s %12s %12s %12s %10s %10s\n' "" veil coturn raw veil/coturn veil/raw
for size in 160 1200; do
  v=${CEIL[veil,$size]} c=${CEIL[coturn,$size]} r=${CEIL[raw,$size]}
  printf '%-28s %12s %12s %12s %10s %10s\n' "pps at zero loss, ${size} B" "$v" "$c" "$r" \
    "$(awk "BEGIN{printf \"%.2f\", $v/($c>0?$c:1)}")" "$(awk "BEGIN{printf \"%.2f\", $v/($r>0?$r:1)}")"
  v=${CPU[veil,$size]} c=${CPU[coturn,$size]} r=${CPU[raw,$size]}
  printf '%-28s %12s %12s %12s %10s %10s\n' "CPU µs per round trip, ${size} B" "$v" "$c" "$r" \
    "$(awk "BEGIN{printf \"%.2f\", $v/($c>0?$c:1)}")" "$(awk "BEGIN{printf \"%.2f\", $v/($r>0?$r:1)}")"
  v=${P99[veil,$size]} c=${P99[coturn,$size]} r=${P99[raw,$size]}
  printf '%-28s %12s %12s %12s %10s %10s\n' "p99 µs at 50 % load, ${size} B" "$v" "$c" "$r" \
    "$(awk "BEGIN{printf \"%.2f\", $v/($c>0?$c:1)}")" "$(awk "BEGIN{printf \"%.2f\", $v/($r>0?$r:1)}")"
done
printf '%-28s %12s %12s\n' "bytes per allocation, 1k" "${MEM1K[veil]}" "${MEM1K[coturn]}"
printf '%-28s %12s %12s\n' "bytes per allocation, 10k" "${MEM10K[veil]}" "${MEM10K[coturn]}"
printf '%-28s %12s\n' "bytes per allocation, 19.5k" "$MEM20K"
