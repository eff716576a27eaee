#!/usr/bin/env python3
"""UDP service on a relay worker under a TLS handshake flood (issue 21 §5), run by hand.

    benches/handshake_flood.py [seconds] [flood threads] [source addresses] [limits, e.g. 200,0]
                                                        (defaults: 15 6 64; as root, loopback only)

Starts a release relay with ONE worker (so the worker that serves UDP is the one doing the
handshakes) with an RSA-2048 certificate (the costlier kind: ~1 ms a handshake), then measures
the round trip of STUN Binding requests (100/s from one socket, under the Binding budget) twice:
alone, and while flood threads complete TLS handshakes as fast as they can from many loopback
source addresses (127.0.N.M: the per-address rate then never binds, only the worker's
`streams.new_per_second`). Prints, per phase, the Binding round trip p50/p99/max and the
handshakes completed per second; again with the worker's limit off, for comparison.
Needs openssl (the certificate) and a release build (made here).
"""
import os
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

SECS = float(sys.argv[1]) if len(sys.argv) > 1 else 15
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 6
SOURCES = int(sys.argv[3]) if len(sys.argv) > 3 else 64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
VEIL = os.path.join(ROOT, "target", "release", "veil")
tmp = tempfile.mkdtemp(prefix="veil-flood-")
cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
               check=True, capture_output=True)
with open(os.path.join(tmp, "secret"), "w") as f:
    f.write("flood-secret-0123456789\n")


def binding_rtts(addr, stop, out):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    n = 0
    while not stop.is_set():
        n += 1
        txid = struct.pack(">I", n) + os.urandom(8)
        req = struct.pack(">HHI", 0x0001, 0, 0x2112A442) + txid
        t0 = time.perf_counter()
        s.sendto(req, addr)
        try:
            while True:
                d, _ = s.recvfrom(2048)
                if d[8:20] == txid:
                    out.append((time.perf_counter() - t0) * 1000)
                    break
        except socket.timeout:
            out.append(float("inf"))
        time.sleep(0.01)


def flood(addr, stop, i, done):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    k = i
    while not stop.is_set():
        k += THREADS
        src = ("127.0.%d.%d" % (10 + (k % SOURCES) // 200, 1 + (k % SOURCES) % 200), 0)
        try:
            raw = socket.create_connection(addr, timeout=2, source_address=src)
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                done[i] += 1
        except OSError:
            pass


def phase(udp, tls, flooding):
    stop, rtts, done = threading.Event(), [], [0] * THREADS
    ts = [threading.Thread(target=binding_rtts, args=(udp, stop, rtts))]
    if flooding:
        ts += [threading.Thread(target=flood, args=(tls, stop, i, done)) for i in range(THREADS)]
    for t in ts:
        t.start()
    time.sleep(SECS)
    stop.set()
    for t in ts:
        t.join()
    ok = sorted(r for r in rtts if r != float("inf"))
    lost = len(rtts) - len(ok)
    q = lambda p: ok[min(len(ok) - 1, int(len(ok) * p))] if ok else float("nan")
    return "binding rtt p50 %.2f ms p99 %.2f ms max %.2f ms (%d samples, %d unanswered); " \
           "handshakes %.0f/s" % (q(0.5), q(0.99), ok[-1] if ok else float("nan"), len(rtts),
                                  lost, sum(done) / SECS)


for limit in sys.argv[4].split(",") if len(sys.argv) > 4 else ["200", "0"]:
    relay = subprocess.Popen(
        [VEIL, "relay", "--workers", "1", "--listen", "127.0.0.1:3495", "--listen-tls",
         "127.0.0.1:5395", "--tls-cert", cert, "--tls-key", key, "--port-range", "21000-21999",
         "--auth-secret-file", os.path.join(tmp, "secret"), "--watch-interval", "0",
         "--set", "streams.new_per_second=" + limit],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    try:
        udp, tls = ("127.0.0.1", 3495), ("127.0.0.1", 5395)
        print("new_per_second=%s, alone:    %s" % (limit, phase(udp, tls, False)))
        print("new_per_second=%s, flooded:  %s" % (limit, phase(udp, tls, True)))
    finally:
        relay.kill()
        relay.wait()
