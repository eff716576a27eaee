#!/usr/bin/env bash
# The kernel fast path's benchmark (issue 24 §3): whole-system CPU per million relayed packets,
# each server in the same topology, the same run, the same paced load.
#
#   benches/fast_path.sh [seconds-per-run] [rounds]     (run by hand, as root; ~6 min at 10 3)
#
# Why namespaces: on loopback or a bare veth pair the receiver's kernel work runs in the
# sender's softirq, so a server's own CPU time bills part of its work to the load generator and
# part of the generator's to it. Here four network namespaces are joined through a router:
#
#   vb-cl (clients, 10.80.1.2) -- vb-rt (router) -- vb-pe (echo peer, 10.80.2.2)
#                                     |
#                               vb-re (the server, 10.80.3.2 on one interface, s0)
#
# checksum offload off on every veth, and the same XDP_PASS program on every veth end (so that
# each runs NAPI, as a NIC's receive path does; a veth delivers frames sent with XDP_TX only to
# a peer that runs it), except the server's s0 while veil's own program is attached there. What is measured is the whole machine's busy CPU
# (/proc/stat: user+nice+system+irq+softirq+steal) over the traffic, per million packets
# relayed (those the peer received plus those the clients received), minus the same for a run
# where the clients talk to the peer directly through the router: what remains is what the
# relay hop costs the machine, whoever's softirq ran it. Loss and the UDP receive-buffer errors
# of every namespace are reported; a run with any is marked.
#
# Servers, alternated in each round (the order rotates): veil with the XDP fast path, the same
# with half of the clients on Send indications (what the kernel leaves to user space), veil
# without it, the same with `batch_wait_us: 0` (nowait: a wakeup per datagram), (on request:
# SERVERS="... shaped ...") veil shaping the client leg with --shaping's defaults, coturn (Debian's turnserver 4.6.1, which has no batching flags), and the plain
# recvmmsg/sendmmsg forwarder (`veil bench-forwarder`, no TURN). One worker / relay thread
# each. Load: $CLIENTS allocations x $RATE packets/s each way, payloads cycling through $SIZES.
# BATCH_WAIT sets veil's batch_wait_us (default 100; the nowait row has 0). Raw lines in $OUT
# (default /tmp/veil-fastpath-bench). Needs: iproute2, ethtool, clang-19,
# libbpf-dev, coturn.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}
CLIENTS=${CLIENTS:-500}
RATE=${RATE:-50}
SIZES=${SIZES:-60,200,600,1200}
OUT=${OUT:-/tmp/veil-fastpath-bench}
mkdir -p "$OUT"
for tool in ip ethtool clang-19 turnserver curl taskset; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
cargo build --release --quiet
VEIL=$PWD/target/release/veil
SECRET=bench-secret-0123456789abcdef
echo "$SECRET" >"$OUT/secret"
ulimit -n "$(ulimit -Hn)"

NS=(vb-cl vb-pe vb-re vb-rt)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done
  for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
}
trap cleanup EXIT

topology() {
  for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; ip netns add "$n"; ip -n "$n" link set lo up; done
  local i=1
  for pair in "vb-cl c0" "vb-pe p0" "vb-re s0"; do
    set -- $pair
    ip -n vb-rt link add "r$2" type veth peer name "$2" netns "$1"
    ip -n vb-rt addr add "10.80.$i.1/24" dev "r$2"
    ip -n "$1" addr add "10.80.$i.2/24" dev "$2"
    ip -n vb-rt link set "r$2" up
    ip -n "$1" link set "$2" up
    ip -n "$1" route add default via "10.80.$i.1"
    ip netns exec vb-rt ethtool -K "r$2" tx off rx off >/dev/null
    ip netns exec "$1" ethtool -K "$2" tx off rx off >/dev/null
    i=$((i + 1))
  done
  ip netns exec vb-rt sysctl -qw net.ipv4.ip_forward=1
  cat >"$OUT/pass.c" <<'EOF'
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int pass(struct xdp_md *ctx) { return XDP_PASS; }
char LICENSE[] SEC("license") = "Apache-2.0";
EOF
  clang-19 -O2 -target bpf -I/usr/include/x86_64-linux-gnu -c "$OUT/pass.c" -o "$OUT/pass.o"
  # Every veth end runs NAPI, as a NIC's receive path does (a veth without an XDP program
  # hands frames to the backlog one by one instead, which made the direct run dearer than the
  # relayed ones): the same XDP_PASS program on each, but on s0 while a relay attaches its own.
  for dev in "vb-rt rc0" "vb-rt rp0" "vb-rt rs0" "vb-cl c0" "vb-pe p0"; do
    set -- $dev
    ip -n "$1" link set dev "$2" xdp obj "$OUT/pass.o" sec xdp
  done
}
pass_on_s0() { # on|off
  ip -n vb-re link set dev s0 xdp off
  [ "$1" = on ] && ip -n vb-re link set dev s0 xdp obj "$OUT/pass.o" sec xdp
  return 0
}

VEIL_ARGS=(relay --listen 10.80.3.2:3478 --relay-ip 10.80.3.2 --workers 1
  --port-range 20000-20999 --auth-secret-file "$OUT/secret" --allow-peer 10.80.2.0/24
  --user-quota 100000 --source-quota 0 --total-quota 100000 --watch-interval 0
  --admin 127.0.0.1:9478 --set limits.unauthenticated.per_second=0
  --set "batch_wait_us=${BATCH_WAIT:-100}")

start() { # server -> SERVER (address), LOAD_ARGS
  LOAD_ARGS=(--secret-file "$OUT/secret")
  if [ "$1" = xdp ] || [ "$1" = mix ]; then pass_on_s0 off; else pass_on_s0 on; fi
  case $1 in
    direct) SERVER=10.80.2.2:4100; LOAD_ARGS=(--raw); return ;;
    xdp | mix) ip netns exec vb-re "$VEIL" "${VEIL_ARGS[@]}" \
        --set 'fast_path={mode: xdp, interfaces: [s0]}' >"$OUT/veil-$1.log" 2>&1 &
      SERVER=10.80.3.2:3478 ;;
    user) ip netns exec vb-re "$VEIL" "${VEIL_ARGS[@]}" >"$OUT/veil-user.log" 2>&1 &
      SERVER=10.80.3.2:3478 ;;
    nowait) ip netns exec vb-re "$VEIL" "${VEIL_ARGS[@]}" --set batch_wait_us=0 \
        >"$OUT/veil-nowait.log" 2>&1 &
      SERVER=10.80.3.2:3478 ;;
    shaped) ip netns exec vb-re "$VEIL" "${VEIL_ARGS[@]}" --shaping >"$OUT/veil-shaped.log" 2>&1 &
      SERVER=10.80.3.2:3478 ;;
    coturn) ip netns exec vb-re turnserver -n --listening-ip=10.80.3.2 --listening-port=3478 \
        --relay-ip=10.80.3.2 --min-port=20000 --max-port=20999 --relay-threads=1 \
        --use-auth-secret --static-auth-secret="$SECRET" --realm=veil --no-tls --no-dtls \
        --no-tcp --no-cli --user-quota=0 --total-quota=0 --no-stdout-log \
        --log-file=/dev/null >"$OUT/coturn.log" 2>&1 &
      SERVER=10.80.3.2:3478 ;;
    raw) ip netns exec vb-re "$VEIL" bench-forwarder --listen 10.80.3.2:3480 \
        --to 10.80.2.2:4100 --seconds 3600 >"$OUT/raw.log" 2>&1 &
      SERVER=10.80.3.2:3480; LOAD_ARGS=(--raw) ;;
  esac
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  [ "$1" = mix ] && LOAD_ARGS+=(--send-share 0.5)
  sleep 1
}
stop() {
  [ "$1" = direct ] && return
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  sleep 0.5
}

# The server process's own CPU (user + system ticks of all its threads).
# (`ip netns exec` execs the server, so the PID started is the server's.)
proc_cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Times the server's threads went to sleep (voluntary context switches), summed.
proc_sleeps() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches/ {n += $2} END {print n + 0}'; }
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# UDP receive-buffer and input errors in every namespace, summed.
drops() {
  local n=0
  for ns in "${NS[@]}"; do
    n=$((n + $(ip netns exec "$ns" awk '/^Udp: [0-9]/ {print $4 + $6}' /proc/net/snmp)))
  done
  echo "$n"
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

run() { # server round
  start "$1"
  local d0 err="$OUT/load-$1-$2.err"
  d0=$(drops)
  : >"$err"
  # The generator on CPU 1 (its client and echo threads would otherwise wake each other across
  # CPUs in some runs and not others: the direct run's figure was bimodal, 2 or 13 s/M).
  ip netns exec vb-cl taskset -c 1 "$VEIL" load --server "$SERVER" "${LOAD_ARGS[@]}" \
    --clients "$CLIENTS" --rate "$RATE" --sizes "$SIZES" --duration "$SECS" \
    --local-ip 10.80.1.2 --peer 10.80.2.2:4100 --peer-netns vb-pe \
    >"$OUT/load-$1-$2.out" 2>"$err" &
  local load=$!
  # The window: from the end of the allocations' setup to the end of the traffic.
  until grep -q "allocations in" "$err" 2>/dev/null || ! kill -0 $load 2>/dev/null; do sleep 0.05; done
  local c0 t0 c1 t1 s0=0 s1=0
  c0=$(busy); t0=$(date +%s.%N)
  local w0=0 w1=0
  [ "$1" != direct ] && s0=$(proc_cpu "$SERVER_PID") && w0=$(proc_sleeps "$SERVER_PID")
  wait $load
  c1=$(busy); t1=$(date +%s.%N)
  [ "$1" != direct ] && s1=$(proc_cpu "$SERVER_PID") && w1=$(proc_sleeps "$SERVER_PID")
  local line; line=$(tail -1 "$OUT/load-$1-$2.out")
  local got echoed loss
  got=$(echo "$line" | field received); echoed=$(echo "$line" | field echoed)
  loss=$(echo "$line" | field loss_pct)
  local d; d=$(( $(drops) - d0 ))
  local hz; hz=$(getconf CLK_TCK)
  # CPU seconds per million relayed packets.
  local per; per=$(awk -v c=$((c1 - c0)) -v hz="$hz" -v n=$((got + echoed)) 'BEGIN{printf "%.3f", c / hz / n * 1e6}')
  # The relay's own count of what the kernel carried (both legs).
  local kernel=-
  if [ "$1" = xdp ] || [ "$1" = mix ]; then
    kernel=$(ip netns exec vb-re curl -s 127.0.0.1:9478/metrics |
      awk '/^veil_relay_fast_path_packets_total\{action="to_(peer|client)"\}/ {n += $2} END {print n + 0}')
  fi
  local own; own=$(awk -v c=$((s1 - s0)) -v hz="$hz" -v n=$((got + echoed)) 'BEGIN{printf "%.3f", c / hz / n * 1e6}')
  local wakes; wakes=$(awk -v w=$((w1 - w0)) -v t0="$t0" -v t1="$t1" 'BEGIN{printf "%.0f", w / (t1 - t0)}')
  echo "$1 round=$2 cpu_s_per_mpkt=$per server_own=$own server_sleeps_per_s=$wakes kernel=$kernel relayed=$((got + echoed)) loss_pct=$loss drops=$d wall_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b - a}') $(echo "$line" | grep -o 'rtt_p50_us=[^ ]* rtt_p99_us=[^ ]*')" | tee -a "$OUT/runs.txt"
  stop "$1"
}

topology
: >"$OUT/runs.txt"
read -r -a SERVERS <<<"${SERVERS:-direct xdp mix user nowait coturn raw}"
for r in $(seq 1 "$ROUNDS"); do
  n=${#SERVERS[@]}
  for k in $(seq 0 $((n - 1))); do
    run "${SERVERS[$(((k + r - 1) % n))]}" "$r"
  done
done

median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
of() { grep "^$1 round=" "$OUT/runs.txt" | field "$2"; }
# The direct run's median over the rounds is subtracted from each server's.
DIRECT=$(of direct cpu_s_per_mpkt | median)
COTURN=$(of coturn cpu_s_per_mpkt | median)
echo
echo "Whole-system CPU per million relayed packets, $CLIENTS allocations x $RATE pps each way, sizes $SIZES, ${SECS}s x $ROUNDS rounds (medians)"
printf '%-8s %12s %14s %10s %12s %12s %7s %9s\n' server cpu_s/Mpkt minus_direct vs_coturn server_own sleeps/s drops max_loss%
for s in "${SERVERS[@]}"; do
  raw=$(of "$s" cpu_s_per_mpkt | median)
  net=$(awk -v a="$raw" -v b="$DIRECT" 'BEGIN{printf "%.2f", a - b}')
  ratio=$(awk -v a="$raw" -v b="$COTURN" -v d="$DIRECT" 'BEGIN{ if (b > d) printf "%.2f", (a - d) / (b - d); else print "-"}')
  [ "$s" = direct ] && ratio=-
  printf '%-8s %12s %14s %10s %12s %12s %7s %9s\n' "$s" "$raw" "$net" "$ratio" \
    "$(of "$s" server_own | median)" "$(of "$s" server_sleeps_per_s | median)" \
    "$(of "$s" drops | sort -n | tail -1)" "$(of "$s" loss_pct | sort -n | tail -1)"
done
