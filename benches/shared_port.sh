#!/usr/bin/env bash
# The cost of sharing the TLS port with a website (tls.site), run by hand:
#
#   cargo build --release && benches/shared_port.sh [N]
#
# Debian's nginx serves a page on 127.0.0.1:28443 (plain TLS) and :28444 (behind PROXY v2);
# veil (one worker) listens on :24443 with tls.site pointing at :28444, and another veil on
# :24444 with no site. Reports, as medians of N sequential curl requests: the time to the first
# byte of the page and to the end of the TLS handshake, from nginx directly and through veil;
# and veil's CPU per connection handed to the site (its handshake, the upstream TLS handshake,
# the proxying) against per TLS handshake on a listener without a site.
set -euo pipefail
N=${1:-200}
V=${VEIL:-$(dirname "$0")/../target/release/veil}
command -v nginx >/dev/null && command -v curl >/dev/null && command -v openssl >/dev/null
D=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$D"' EXIT
mkdir -p "$D/www" && echo '<h1>the site</h1>' > "$D/www/index.html"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$D/key.pem" \
  -out "$D/cert.pem" -days 1 -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1" 2>/dev/null
cat > "$D/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $D/nginx.pid; error_log $D/error.log;
events {}
http {
  access_log off; client_body_temp_path $D/b; proxy_temp_path $D/p; fastcgi_temp_path $D/f;
  uwsgi_temp_path $D/u; scgi_temp_path $D/s;
  ssl_certificate $D/cert.pem; ssl_certificate_key $D/key.pem;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets off;
  server { listen 127.0.0.1:28443 ssl http2; root $D/www; }
  server { listen 127.0.0.1:28444 ssl http2 proxy_protocol; root $D/www; }
}
CONF
nginx -c "$D/nginx.conf" -p "$D" &
# One client address making hundreds of connections a second: lift the per-address rates.
common=(--tls-cert "$D/cert.pem" --tls-key "$D/key.pem" --tls12 --static-user dev:dev
  --user-quota 10 --workers 1 --set streams.new_per_ip_per_second=100000
  --set streams.new_per_second=100000)
"$V" relay --listen 127.0.0.1:24478 --listen-tls 127.0.0.1:24443 --port-range 24000-24099 \
  "${common[@]}" --set "tls.site={upstream: '127.0.0.1:28444', proxy_protocol: v2}" 2>"$D/veil.log" &
P1=$!
"$V" relay --listen 127.0.0.1:24479 --listen-tls 127.0.0.1:24444 --port-range 24100-24199 \
  "${common[@]}" 2>"$D/veil2.log" &
P2=$!
sleep 1.5
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
med() { sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]*1000}'; }
times() { for _ in $(seq "$N"); do curl -sk -o /dev/null -w "%{$2}\n" "https://$1/index.html" || true; done; }
c0=$(cpu $P1); t_veil=$(times 127.0.0.1:24443 time_starttransfer | med); c1=$(cpu $P1)
t_site=$(times 127.0.0.1:28443 time_starttransfer | med)
h_veil=$(times 127.0.0.1:24443 time_appconnect | med)
h_site=$(times 127.0.0.1:28443 time_appconnect | med)
c2=$(cpu $P2); times 127.0.0.1:24444 time_appconnect >/dev/null 2>&1; c3=$(cpu $P2)
tick=$(getconf CLK_TCK)
grep -iE "error|invalid" "$D/veil.log" || true
echo "first byte, median of $N (ms): nginx direct $t_site, through veil $t_veil"
echo "TLS handshake done, median (ms): nginx direct $h_site, veil $h_veil"
awk -v a=$((c1 - c0)) -v b=$((c3 - c2)) -v n="$N" -v t="$tick" 'BEGIN {
  printf "veil CPU per connection (ms): to the site %.3f, a handshake on a plain TLS listener %.3f\n",
    a * 1000 / t / n, b * 1000 / t / n }'
