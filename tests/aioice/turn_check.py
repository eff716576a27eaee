"""aioice (PyPI) as a TURN client of veil: what `tests/aioice_client.rs` runs and judges.

Prints one JSON line with what it saw; the Rust test asserts on it. Two modes:

  echo  aioice's TURN client alone (`aioice.turn.create_turn_endpoint`) over udp, tcp or tls:
        it allocates, binds a channel to a UDP peer on 127.0.0.2 that echoes, and sends COUNT
        messages of sizes from 1 to 1200 bytes; reports what came back and what the peer saw.
  ice   two aioice ICE agents (`aioice.Connection`) in this process (each on its own relay with
        --port-b) that may use only the relay
        (`TransportPolicy.RELAY`): gather, exchange candidates, check, then COUNT messages each
        way over the nominated pair (relay to relay).

Only loopback is ever addressed (the relay on 127.0.0.1, the peer on 127.0.0.2; the relay-only
policy gathers no host candidates), or the addresses a test gives in network namespaces of its
own (--host, --peer-host).
"""

import argparse
import asyncio
import json
import socket
import ssl
import sys

import aioice
from aioice import turn

SIZES = [1, 20, 100, 160, 172, 500, 1000, 1200]


def message(i: int) -> bytes:
    """Message `i`: its number, then a pattern that shows any corruption, of a size from SIZES."""
    size = SIZES[i % len(SIZES)]
    head = i.to_bytes(4, "big")
    body = bytes((i * 7 + k) & 0xFF for k in range(max(0, size - 4)))
    return (head + body)[:size] if size < 4 else head + body


MESSAGES = [message(i) for i in range(4096)]


def number(data: bytes) -> int:
    if len(data) < 4:
        return -1
    return int.from_bytes(data[:4], "big")


def tls_context(cafile):
    """Verifies the relay's certificate against CAFILE (the test's self-signed certificate)."""
    if cafile is None:
        return None
    return ssl.create_default_context(cafile=cafile)


class Echo(asyncio.DatagramProtocol):
    """The peer: echoes every datagram, records who sent it."""

    def __init__(self):
        self.sources = set()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.sources.add(addr)
        self.transport.sendto(data, addr)


class Collect(asyncio.DatagramProtocol):
    """The client application behind aioice's TURN transport."""

    def __init__(self, want: int):
        self.got = {}
        self.corrupt = 0
        self.errors = []
        self.from_addrs = set()
        self.data_from = []
        self.peer = None
        self.want = want
        self.done = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        self.from_addrs.add(addr)
        if addr != self.peer:
            if data in MESSAGES[: self.want]:
                self.data_from.append(addr)
            else:
                self.corrupt += 1
            return
        i = number(data)
        if len(data) < 4 or i >= self.want:
            # Messages shorter than their number come back as they went: match by content.
            matches = [j for j in range(self.want) if message(j) == data]
            if not matches:
                self.corrupt += 1
                return
            i = next((j for j in matches if j not in self.got), matches[0])
        elif data != message(i):
            self.corrupt += 1
            return
        self.got[i] = True
        if len(self.got) >= self.want and not self.done.done():
            self.done.set_result(True)

    def error_received(self, exc):
        self.errors.append(repr(exc))


async def echo(args) -> dict:
    loop = asyncio.get_running_loop()
    peer_transport, peer = await loop.create_datagram_endpoint(
        Echo, local_addr=(args.peer_host, 0)
    )
    peer_addr = peer_transport.get_extra_info("sockname")
    transport, app = await turn.create_turn_endpoint(
        lambda: Collect(args.count),
        server_addr=(args.host, args.port),
        username=args.user,
        password=args.password,
        ssl=tls_context(args.cafile) if args.transport == "tls" else None,
        transport="tcp" if args.transport in ("tcp", "tls") else "udp",
    )
    app.peer = peer_addr
    relayed = transport.get_extra_info("sockname")
    mapped = transport.get_extra_info("related_address")
    for i in range(args.count):
        transport.sendto(message(i), peer_addr)
        await asyncio.sleep(0.005)
    try:
        await asyncio.wait_for(app.done, timeout=10)
    except asyncio.TimeoutError:
        pass
    # Stay a while: cover and padding keep arriving, and must not break the receive loop.
    await asyncio.sleep(args.linger)
    late = len(app.got)
    # Another port of the peer's address, which has a permission but no channel: the relay
    # sends its datagrams as Data indications (padded, when shaping), which aioice accepts.
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind((args.peer_host, 0))
    other_addr = other.getsockname()
    for i in range(args.count):
        other.sendto(message(i), tuple(relayed))
        await asyncio.sleep(0.005)
    await asyncio.sleep(1.0)
    indications = sum(1 for a in app.data_from if a == other_addr)
    other.close()
    transport.close()
    await asyncio.sleep(0.3)
    peer_transport.close()
    return {
        "mode": "echo",
        "transport": args.transport,
        "relayed": list(relayed),
        "mapped": list(mapped),
        "sent": args.count,
        "received": late,
        "corrupt": app.corrupt,
        "errors": app.errors,
        "peer_saw": sorted(list(a) for a in peer.sources),
        "indications": indications,
        "from_addrs": sorted(list(a) for a in app.from_addrs),
    }


async def ice(args) -> dict:
    kind = "tcp" if args.transport in ("tcp", "tls") else "udp"
    # Agent b may use a relay of its own (--port-b): the two parties on two relays of a mesh.
    servers = [
        (True, args.port, args.user, args.password),
        (False, args.port_b or args.port, args.user_b or args.user, args.password_b or args.password),
    ]
    agents = [
        aioice.Connection(
            ice_controlling=controlling,
            turn_server=(args.host, port),
            turn_username=user,
            turn_password=password,
            turn_ssl=args.transport == "tls",
            turn_transport=kind,
            use_ipv6=False,
            transport_policy=aioice.TransportPolicy.RELAY,
        )
        for controlling, port, user, password in servers
    ]
    a, b = agents
    await asyncio.gather(a.gather_candidates(), b.gather_candidates())
    for me, other in ((a, b), (b, a)):
        for c in other.local_candidates:
            await me.add_remote_candidate(c)
        await me.add_remote_candidate(None)
        me.remote_username = other.local_username
        me.remote_password = other.local_password
    await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), timeout=15)
    received = {0: 0, 1: 0}
    corrupt = 0

    async def pump(src, dst, side):
        nonlocal corrupt
        for i in range(args.count):
            await src.send(message(i))
            data = await asyncio.wait_for(dst.recv(), timeout=5)
            if data == message(i):
                received[side] += 1
            else:
                corrupt += 1

    await pump(a, b, 0)
    await pump(b, a, 1)
    out = {
        "mode": "ice",
        "transport": args.transport,
        "local_types": [[c.type for c in x.local_candidates] for x in agents],
        "local_hosts": [[c.host for c in x.local_candidates] for x in agents],
        "sent": args.count,
        "received": [received[0], received[1]],
        "corrupt": corrupt,
    }
    await asyncio.gather(a.close(), b.close())
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["echo", "ice"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--peer-host", default="127.0.0.2", help="the echo peer's address (echo)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--transport", choices=["udp", "tcp", "tls"], default="udp")
    p.add_argument("--cafile")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--port-b", type=int, help="agent b's relay (default: --port)")
    p.add_argument("--user-b")
    p.add_argument("--password-b")
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--linger", type=float, default=0.5)
    args = p.parse_args()
    run = echo if args.mode == "echo" else ice
    try:
        out = asyncio.run(run(args))
    except Exception as e:  # reported, so the test says what failed
        error = f"{type(e).__name__}: {e}"
        out = {"mode": args.mode, "transport": args.transport, "error": error}
    out["aioice"] = aioice.__version__ if hasattr(aioice, "__version__") else "?"
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
