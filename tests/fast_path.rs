//! The kernel fast path (issue 24), through the real binary in network namespaces of its own
//! joined by veth, with XDP attached natively: its deployment (attach, report, detach when the
//! relay dies; `xdp` refuses, `auto` falls back, a relay without the capabilities serves
//! everything); clients we did not write relaying through it (coturn's uclient over channels,
//! Send indications, DONT-FRAGMENT, padding and IPv6; aioice; headless Chromium) with zero loss
//! and the kernel carrying what it may; and the core's authority (bindings leaving the maps on
//! expiry, deletion, a reload's deny and a revocation; unpermitted peers; the caps). Needs root,
//! iproute2 and a build with the program (clang-19 and libbpf-dev: .ci/run installs them); it
//! fails without them.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mesh::Netns;

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A namespace with a veth pair (fpa, fpb), both up.
fn namespace(tag: &str) -> Netns {
    common::require("ip");
    let ns = Netns::new(tag);
    ns.ip(&["link", "add", "fpa", "type", "veth", "peer", "name", "fpb"]);
    ns.ip(&["link", "set", "fpa", "up"]);
    ns.ip(&["link", "set", "fpb", "up"]);
    ns
}

fn relay(ns: &Netns, dir: &std::path::Path, fast_path: &str) -> Child {
    let secrets = dir.join("secrets");
    std::fs::write(&secrets, format!("{}\n", common::SECRET)).unwrap();
    Command::new("ip")
        .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_veil"), "relay"])
        .args(["--listen", "127.0.0.1:3478", "--port-range", "40000-40099"])
        .args(["--workers", "1", "--admin", "127.0.0.1:9478"])
        .arg("--auth-secret-file")
        .arg(&secrets)
        .args(["--set", &format!("fast_path={fast_path}")])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("veil runs")
}

/// What `ip -d link show dev fpa` says of an XDP program on it.
fn xdp_on(ns: &Netns) -> Option<String> {
    xdp_on_interface(ns, "fpa")
}

/// What `ip -d link show dev <dev>` says of an XDP program on it.
fn xdp_on_interface(ns: &Netns, dev: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", &ns.0, "-d", "link", "show", "dev", dev])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find(|l| l.trim_start().starts_with("prog/xdp"))
        .map(|l| l.trim().to_string())
}

fn metrics(ns: &Netns) -> Option<String> {
    let admin: SocketAddr = "127.0.0.1:9478".parse().unwrap();
    ns.run(|| {
        std::net::TcpStream::connect(admin)
            .ok()
            .map(|_| common::http_get(admin, "/metrics").1)
    })
}

fn wait_until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn xdp_attaches_natively_reports_itself_and_leaves_with_the_relay() {
    let ns = namespace("fpx");
    let dir = common::TempDir(std::env::temp_dir().join(format!("veil-fp-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    assert_eq!(xdp_on(&ns), None, "nothing attached before");
    let mut r = Relay(relay(&ns, &dir.0, "{mode: xdp, interfaces: [fpa]}"));
    let m = wait_until("the relay's metrics", Duration::from_secs(20), || {
        if let Ok(Some(status)) = r.0.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            let _ = r.0.stderr.take().unwrap().read_to_string(&mut err);
            panic!("the relay exited with {status}: {err}");
        }
        metrics(&ns)
    });
    assert_eq!(
        common::metric(&m, "veil_relay_fast_path_up"),
        Some(1.0),
        "{m}"
    );
    assert!(
        m.contains("veil_relay_fast_path_packets_total{action=\"passed\"}"),
        "{m}"
    );
    common::promtool_check(&m);
    let prog = xdp_on(&ns).expect("an XDP program on fpa");
    // `ip` prints the attach mode on the interface's first line ("xdp" native, "xdpgeneric").
    let link = Command::new("ip")
        .args(["-n", &ns.0, "link", "show", "dev", "fpa"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout).to_string();
    assert!(
        link.contains(" xdp "),
        "native (driver) mode on veth: {link}"
    );
    assert!(!link.contains("xdpgeneric"), "{link}");
    assert!(prog.contains("id "), "{prog}");

    // Killed outright: the program goes with the process (a BPF link, not a netlink attach).
    let _ = r.0.kill();
    let _ = r.0.wait();
    wait_until(
        "fpa without XDP after the relay died",
        Duration::from_secs(5),
        || xdp_on(&ns).is_none().then_some(()),
    );
}

#[test]
fn xdp_refuses_to_start_where_it_cannot_attach_and_auto_runs_without() {
    let ns = namespace("fpr");
    let dir =
        common::TempDir(std::env::temp_dir().join(format!("veil-fpr-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let refused = relay(&ns, &dir.0, "{mode: xdp, interfaces: [nosuch0]}");
    let out = refused.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "xdp on a missing interface must not start"
    );
    assert!(
        err.contains("fast_path.mode xdp") && err.contains("nosuch0"),
        "the reason is given: {err}"
    );

    let r = Relay(relay(&ns, &dir.0, "{mode: auto, interfaces: [nosuch0]}"));
    let m = wait_until("the relay's metrics", Duration::from_secs(20), || {
        metrics(&ns)
    });
    assert_eq!(
        common::metric(&m, "veil_relay_fast_path_up"),
        Some(0.0),
        "{m}"
    );
    assert!(!m.contains("veil_relay_fast_path_packets_total"), "{m}");
    drop(r);
}

/// Two namespaces joined by a veth pair: the relay's (r0, 10.77.0.1) and the callers' (c0,
/// with a client address 10.77.0.2 and a peer address 10.77.0.3).
struct Topology {
    relay: Netns,
    callers: Netns,
}

fn topology(tag: &str) -> Topology {
    common::require("ip");
    let relay = Netns::new(&format!("{tag}r"));
    let callers = Netns::new(&format!("{tag}c"));
    relay.ip(&[
        "link", "add", "r0", "type", "veth", "peer", "name", "c0", "netns", &callers.0,
    ]);
    relay.ip(&["addr", "add", "10.77.0.1/24", "dev", "r0"]);
    relay.ip(&["link", "set", "r0", "up"]);
    callers.ip(&["addr", "add", "10.77.0.2/24", "dev", "c0"]);
    callers.ip(&["addr", "add", "10.77.0.3/24", "dev", "c0"]);
    callers.ip(&["link", "set", "c0", "up"]);
    relay.ip(&["-6", "addr", "add", "fd00:77::1/64", "dev", "r0", "nodad"]);
    for ip in ["fd00:77::2/64", "fd00:77::3/64"] {
        callers.ip(&["-6", "addr", "add", ip, "dev", "c0", "nodad"]);
    }
    // What the relay's XDP_TX sends back out of r0 reaches c0 only while c0 runs NAPI, as a
    // router's interface does: an XDP program that passes everything (GRO alone did not
    // deliver XDP_TX frames on this kernel). Built here with the same clang as the relay's.
    let dir = std::env::temp_dir().join(format!("veil-xdp-pass-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("pass.c");
    std::fs::write(
        &src,
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n\
         SEC(\"xdp\") int pass(struct xdp_md *ctx) { return XDP_PASS; }\n\
         char LICENSE[] SEC(\"license\") = \"Apache-2.0\";\n",
    )
    .unwrap();
    let obj = dir.join("pass.o");
    let ok = Command::new("clang-19")
        .args([
            "-O2",
            "-target",
            "bpf",
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .expect("clang-19 runs (Debian: clang-19 libbpf-dev)");
    assert!(ok.success(), "an XDP_PASS program for c0");
    callers.ip(&[
        "link",
        "set",
        "dev",
        "c0",
        "xdp",
        "obj",
        obj.to_str().unwrap(),
        "sec",
        "xdp",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    Topology { relay, callers }
}

/// The relay in `t`'s relay namespace on 10.77.0.1 and fd00:77::1, XDP asked for on r0 in
/// `mode`, run under `prefix` (e.g. setpriv dropping capabilities).
fn fast_relay(t: &Topology, dir: &std::path::Path, mode: &str, prefix: &[&str]) -> Relay {
    let secrets = dir.join("secrets");
    std::fs::write(&secrets, format!("{}\n", common::SECRET)).unwrap();
    let relay = Relay(
        Command::new("ip")
            .args(["netns", "exec", &t.relay.0])
            .args(prefix)
            .args([env!("CARGO_BIN_EXE_veil"), "relay"])
            .args(["--listen", "10.77.0.1:3478", "--relay-ip", "10.77.0.1"])
            .args(["--listen", "[fd00:77::1]:3478", "--relay-ip", "fd00:77::1"])
            .args(["--port-range", "40000-40999", "--workers", "2"])
            .args(["--admin", "127.0.0.1:9478", "--allow-peer", "10.77.0.0/24"])
            .args(["--allow-peer", "fd00:77::/64"])
            .args(["--user-quota", "1000", "--source-quota", "0"])
            .arg("--auth-secret-file")
            .arg(&secrets)
            .args([
                "--set",
                &format!("fast_path={{mode: {mode}, interfaces: [r0]}}"),
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("veil runs"),
    );
    wait_until("the relay's metrics", Duration::from_secs(20), || {
        metrics(&t.relay)
    });
    relay
}

/// coturn's uclient with `args` from the callers' side (client `client`, peer `peer` where
/// turnutils_peer listens on port 5000) against the relay at `server`; its output, and what the
/// kernel carried meanwhile (to the peer, to the client).
fn uclient(
    t: &Topology,
    client: &str,
    peer: &str,
    server: &str,
    args: &[&str],
) -> (String, [f64; 2]) {
    let _peer = Relay(
        Command::new("ip")
            .args(["netns", "exec", &t.callers.0, "turnutils_peer"])
            .args(["-L", peer, "-p", "5000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let run = || {
        let before = kernel(t);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &t.callers.0,
                "timeout",
                "120",
                "turnutils_uclient",
            ])
            .args(["-L", client, "-W", common::SECRET, "-u", "fast"])
            .args(["-e", peer, "-r", "5000", "-p", "3478"])
            .args(args)
            .arg(server)
            .output()
            .expect("uclient runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (before, out, text)
    };
    let (mut before, mut out, mut text) = run();
    if common::uclient_collided(&out, &text) {
        (before, out, text) = run();
    }
    let _ = &out;
    let after = kernel(t);
    let carried = [after[0] - before[0], after[1] - before[1]];
    eprintln!("uclient {args:?}: the kernel carried {carried:?}");
    (text, carried)
}

#[test]
fn uclient_relays_through_the_kernel_with_zero_loss() {
    common::require("turnutils_uclient");
    common::require("turnutils_peer");
    let t = topology("fpu");
    let dir =
        common::TempDir(std::env::temp_dir().join(format!("veil-fpu-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let _relay = fast_relay(&t, &dir.0, "xdp", &[]);
    let v4 = |args: &[&str]| uclient(&t, "10.77.0.2", "10.77.0.3", "10.77.0.1", args);

    // Channels: both legs in the kernel.
    let (text, carried) = v4(&["-m", "10", "-n", "50"]);
    assert!(text.contains("Total lost packets 0 "), "{text}");
    // 500 each way; the first of each client's may precede its binding's install.
    assert!(
        carried[0] >= 450.0 && carried[1] >= 450.0,
        "both legs in the kernel: {carried:?}"
    );
    let installs = common::metric(
        &metrics(&t.relay).unwrap(),
        "veil_relay_fast_path_installs_total",
    )
    .unwrap_or(0.0);
    assert!(
        installs >= 10.0,
        "a binding per client at least: {installs}"
    );
    // The program judges what it carries as the core judges what user space relays: uclient's
    // payloads (its message number's low byte, then filler) are not media, so each of its 10
    // allocations counts once each way, though the kernel carried nearly all of them.
    let judged = |m: &str, dir: &str| {
        (
            common::metric(
                m,
                &format!("veil_relay_payloads_total{{direction=\"{dir}\",class=\"other\"}}"),
            )
            .unwrap_or(0.0),
            common::metric(
                m,
                &format!("veil_relay_non_media_allocations_total{{direction=\"{dir}\"}}"),
            )
            .unwrap_or(0.0),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = metrics(&t.relay).unwrap();
        let done = ["client_to_peer", "peer_to_client"]
            .iter()
            .all(|d| judged(&m, d) == (500.0, 10.0));
        if done || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    for dir in ["client_to_peer", "peer_to_client"] {
        assert_eq!(judged(&m, dir), (500.0, 10.0), "{dir}");
    }

    // Send indications with DONT-FRAGMENT, and padded ChannelData (pjnath's habit): the
    // user-space path, no loss.
    let (text, carried) = v4(&["-m", "5", "-n", "50", "-s", "-g"]);
    assert!(text.contains("Total lost packets 0 "), "{text}");
    assert_eq!(carried[0], 0.0, "Send indications are not the kernel's");
    let (text, carried) = v4(&["-m", "5", "-n", "50", "-D", "-l", "101"]);
    assert!(text.contains("Total lost packets 0 "), "{text}");
    assert_eq!(carried[0], 0.0, "padded ChannelData is not the kernel's");

    // IPv6 clients and peers: the program passes them up, the user-space path relays them.
    let (text, carried) = uclient(
        &t,
        "fd00:77::2",
        "fd00:77::3",
        "fd00:77::1",
        &["-m", "5", "-n", "50", "-x"],
    );
    assert!(text.contains("Total lost packets 0 "), "{text}");
    assert_eq!(carried, [0.0, 0.0], "IPv6 is not the kernel's");
}

/// The relay with `mode: auto` where the fast path cannot attach (the capabilities it needs
/// dropped, as in a container without them): it says so and serves everything on the
/// user-space path.
#[test]
fn a_relay_without_the_privilege_for_xdp_serves_everything_without_it() {
    common::require("turnutils_uclient");
    common::require("turnutils_peer");
    common::require("setpriv");
    let t = topology("fpn");
    let dir =
        common::TempDir(std::env::temp_dir().join(format!("veil-fpn-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let drop = [
        "setpriv",
        "--inh-caps=-all",
        "--bounding-set=-bpf,-net_admin,-sys_admin,-perfmon",
        "--",
    ];
    let _relay = fast_relay(&t, &dir.0, "auto", &drop);
    let m = metrics(&t.relay).unwrap();
    assert_eq!(
        common::metric(&m, "veil_relay_fast_path_up"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(xdp_on_interface(&t.relay, "r0"), None, "nothing attached");
    let (text, _) = uclient(
        &t,
        "10.77.0.2",
        "10.77.0.3",
        "10.77.0.1",
        &["-m", "5", "-n", "50"],
    );
    assert!(text.contains("Total lost packets 0 "), "{text}");
    let (text, _) = uclient(
        &t,
        "10.77.0.2",
        "10.77.0.3",
        "10.77.0.1",
        &["-m", "5", "-n", "50", "-s"],
    );
    assert!(text.contains("Total lost packets 0 "), "{text}");
}

/// One caller of the removal test: a TURN client on the callers' side with its relayed address.
struct Caller {
    turn: common::RawTurn,
    relayed: SocketAddr,
}

const CH: u16 = 0x4000;

impl Caller {
    fn new(t: &Topology, id: &str) -> Caller {
        let server: SocketAddr = "10.77.0.1:3478".parse().unwrap();
        let mut turn = t
            .callers
            .run(|| common::RawTurn::rest("10.77.0.2:0", server, id));
        let relayed = turn.allocate();
        Caller { turn, relayed }
    }

    /// Binds (or refreshes) channel CH to `peer`.
    fn bind(&mut self, peer: SocketAddr) {
        use common::Attr;
        use veil_relay::proto::stun::{attr, method};
        let r = self.turn.request(
            method::CHANNEL_BIND,
            &[
                Attr::Raw(attr::CHANNEL_NUMBER, vec![0x40, 0x00, 0, 0]),
                Attr::Peer(peer),
            ],
        );
        assert_eq!(common::error_code(&r), None, "ChannelBind");
    }

    /// Sends `n` unpadded ChannelData messages of 100 bytes on `channel`.
    fn send(&self, channel: u16, n: usize) {
        for i in 0..n {
            let mut m = channel.to_be_bytes().to_vec();
            m.extend_from_slice(&100u16.to_be_bytes());
            m.extend_from_slice(&[i as u8; 100]);
            self.turn.sock.send_to(&m, self.turn.server).unwrap();
        }
    }

    /// ChannelData on CH received within `wait` (stops early once `want` came).
    fn received(&self, want: usize, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        let mut got = 0;
        let mut buf = [0u8; 2048];
        while got < want && Instant::now() < deadline {
            if let Ok((n, _)) = self.turn.sock.recv_from(&mut buf)
                && n >= 4
                && u16::from_be_bytes([buf[0], buf[1]]) == CH
            {
                got += 1;
            }
        }
        got
    }
}

/// Datagrams `sock` receives within `wait` (stops early once `want` came).
fn arrived(sock: &std::net::UdpSocket, want: usize, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut got = 0;
    let mut buf = [0u8; 2048];
    while got < want && Instant::now() < deadline {
        if sock.recv_from(&mut buf).is_ok() {
            got += 1;
        }
    }
    got
}

fn peer_socket(t: &Topology, ip: &str) -> std::net::UdpSocket {
    let s = t
        .callers
        .run(|| std::net::UdpSocket::bind(format!("{ip}:0")).unwrap());
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s
}

/// The fast path's counters: [to_peer, to_client, passed, bindings]. The relay reads the
/// kernel's counters every 250 ms: this waits that long first.
fn kernel(t: &Topology) -> [f64; 4] {
    std::thread::sleep(Duration::from_millis(300));
    let m = metrics(&t.relay).expect("metrics");
    let f = |s: &str| common::metric(&m, s).unwrap_or(-1.0);
    [
        f("veil_relay_fast_path_packets_total{action=\"to_peer\"}"),
        f("veil_relay_fast_path_packets_total{action=\"to_client\"}"),
        f("veil_relay_fast_path_packets_total{action=\"passed\"}"),
        f("veil_relay_fast_path_bindings"),
    ]
}

/// Relays `n` datagrams each way between `c` and `peer`; how many arrived each way, and how
/// many of them the kernel carried each way.
fn both_ways(t: &Topology, c: &Caller, peer: &std::net::UdpSocket, n: usize) -> [usize; 4] {
    let before = kernel(t);
    c.send(CH, n);
    let up = arrived(peer, n, Duration::from_secs(2));
    for i in 0..n {
        peer.send_to(&[i as u8; 100], c.relayed).unwrap();
    }
    let down = c.received(n, Duration::from_secs(2));
    let after = kernel(t);
    [
        up,
        down,
        (after[0] - before[0]) as usize,
        (after[1] - before[1]) as usize,
    ]
}

/// Nothing passes either way between `c` and `peer` and the kernel carries nothing: what
/// the relay does without the fast path for a binding that ended.
fn nothing_passes(t: &Topology, c: &Caller, peer: &std::net::UdpSocket, what: &str) {
    assert_eq!(
        both_ways(t, c, peer, 10)[..],
        [0, 0, 0, 0],
        "{what}: [to peer, to client, kernel to peer, kernel to client]"
    );
}

fn wait_bindings(t: &Topology, want: f64, what: &str) {
    wait_until(what, Duration::from_secs(5), || {
        (kernel(t)[3] == want).then_some(())
    });
}

/// Issue 24's tests of the core's authority, through the real binary with XDP attached: a
/// binding relays in the kernel, and leaves the kernel's maps when its permission expires, its
/// allocation is deleted, a reload denies its peer and its user is revoked; after each, packets
/// either way are dropped as without the fast path. A peer without a permission and a channel
/// not bound get nothing through. The bandwidth caps hold with the kernel carrying: each
/// direction within a second's burst plus the rate.
#[test]
fn bindings_leave_the_kernel_when_the_core_ends_them_and_the_caps_hold() {
    let t = topology("fpb");
    for ip in ["10.77.0.4/24", "10.77.0.5/24"] {
        t.callers.ip(&["addr", "add", ip, "dev", "c0"]);
    }
    let dir =
        common::TempDir(std::env::temp_dir().join(format!("veil-fpb-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let secrets = dir.0.join("secrets");
    std::fs::write(&secrets, format!("{}\n", common::SECRET)).unwrap();
    let config = dir.0.join("relay.yaml");
    let write_config = |deny: &str, revoked: &str| {
        std::fs::write(
            &config,
            format!(
                "fast_path: {{mode: xdp, interfaces: [r0]}}\n\
                 lifetimes: {{permission: 8}}\n\
                 peers: {{allow: [10.77.0.0/24], deny: [{deny}]}}\n\
                 auth: {{revoked_users: [{revoked}]}}\n\
                 limits: {{bandwidth: {{allocation: {{bytes_per_second: 0, packets_per_second: 100}}, \
                 user: {{bytes_per_second: 0, packets_per_second: 0}}}}}}\n"
            ),
        )
        .unwrap()
    };
    write_config("", "");
    let _relay = Relay(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &t.relay.0,
                env!("CARGO_BIN_EXE_veil"),
                "relay",
            ])
            .arg("--config")
            .arg(&config)
            .args(["--watch-interval", "1"])
            .args(["--listen", "10.77.0.1:3478", "--relay-ip", "10.77.0.1"])
            .args(["--port-range", "40000-40999", "--workers", "1"])
            .args(["--admin", "127.0.0.1:9478", "--source-quota", "0"])
            .arg("--auth-secret-file")
            .arg(&secrets)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("veil runs"),
    );
    wait_until("the relay's metrics", Duration::from_secs(20), || {
        metrics(&t.relay)
    });
    let p = peer_socket(&t, "10.77.0.3");
    let q = peer_socket(&t, "10.77.0.4");
    let d = peer_socket(&t, "10.77.0.5");
    let (pa, da) = (p.local_addr().unwrap(), d.local_addr().unwrap());

    // Alice's binding relays in the kernel both ways.
    let mut alice = Caller::new(&t, "alice");
    alice.bind(pa);
    let alice_bound = Instant::now();
    wait_bindings(&t, 1.0, "alice's binding in the maps");
    assert_eq!(both_ways(&t, &alice, &p, 20), [20, 20, 20, 20], "alice");
    // A peer without a permission: nothing reaches alice, the kernel passes it up.
    let before = kernel(&t);
    for _ in 0..10 {
        q.send_to(b"not permitted", alice.relayed).unwrap();
    }
    assert_eq!(alice.received(1, Duration::from_millis(500)), 0);
    let after = kernel(&t);
    assert_eq!(after[1], before[1], "nothing to alice in the kernel");
    assert!(
        after[2] >= before[2] + 10.0,
        "passed up: {before:?} {after:?}"
    );
    // A channel not bound: nothing reaches the peer.
    alice.send(0x4001, 10);
    assert_eq!(arrived(&p, 1, Duration::from_millis(500)), 0);
    assert_eq!(kernel(&t)[0], after[0]);
    // Alice's permission (8 s) expires: her binding leaves the maps.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(alice_bound.elapsed()));
    wait_bindings(
        &t,
        0.0,
        "alice's binding out of the maps after its permission expired",
    );
    nothing_passes(&t, &alice, &p, "alice after her permission expired");

    // Bob deletes his allocation (Refresh 0): his binding leaves the maps.
    let mut bob = Caller::new(&t, "bob");
    bob.bind(pa);
    wait_bindings(&t, 1.0, "bob's binding in the maps");
    assert_eq!(both_ways(&t, &bob, &p, 20), [20, 20, 20, 20], "bob");
    {
        use common::Attr;
        use veil_relay::proto::stun::{attr, method};
        let r = bob.turn.request(
            method::REFRESH,
            &[Attr::Raw(attr::LIFETIME, 0u32.to_be_bytes().to_vec())],
        );
        assert_eq!(common::error_code(&r), None, "Refresh 0");
    }
    wait_bindings(&t, 0.0, "bob's binding out of the maps");
    nothing_passes(&t, &bob, &p, "bob after his deletion");

    // A reload denies carol's peer and revokes mallory: both leave the maps.
    let mut carol = Caller::new(&t, "carol");
    carol.bind(da);
    let mut mallory = Caller::new(&t, "mallory");
    mallory.bind(pa);
    wait_bindings(&t, 2.0, "carol's and mallory's bindings in the maps");
    assert_eq!(both_ways(&t, &carol, &d, 20), [20, 20, 20, 20], "carol");
    assert_eq!(both_ways(&t, &mallory, &p, 20), [20, 20, 20, 20], "mallory");
    // Refreshed just before the reload, so that no permission expires before the checks.
    carol.bind(da);
    mallory.bind(pa);
    write_config("10.77.0.5/32", "mallory");
    wait_bindings(&t, 0.0, "carol's and mallory's bindings out of the maps");
    nothing_passes(&t, &carol, &d, "carol after the reload denied her peer");
    nothing_passes(&t, &mallory, &p, "mallory after her revocation");

    // Dave floods past his cap (100 datagrams/s, a second's burst) both ways, at ~1 000/s for
    // about a second: what arrives fits the cap, and some of it went through the kernel.
    let mut dave = Caller::new(&t, "dave");
    dave.bind(pa);
    wait_bindings(&t, 1.0, "dave's binding in the maps");
    let before = kernel(&t);
    let start = Instant::now();
    for _ in 0..100 {
        dave.send(CH, 10);
        for i in 0..10u8 {
            p.send_to(&[i; 100], dave.relayed).unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let up = arrived(&p, 1000, Duration::from_millis(500));
    let down = dave.received(1000, Duration::from_millis(500));
    let secs = start.elapsed().as_secs_f64();
    let after = kernel(&t);
    let most = 100.0 + 100.0 * secs;
    eprintln!(
        "cap: {up} to the peer, {down} to dave in {secs:.2} s (at most {most:.0}); kernel \
         carried {} and {}",
        after[0] - before[0],
        after[1] - before[1]
    );
    for (what, n) in [("to the peer", up), ("to dave", down)] {
        assert!(n as f64 <= most, "{what}: {n} over the cap's {most:.0}");
        assert!(n >= 100, "{what}: at least the burst, {n}");
    }
    assert!(
        after[0] > before[0] && after[1] > before[1],
        "the kernel carried part of it: {before:?} {after:?}"
    );
}

/// aioice's TURN client (a client we did not write) relays with XDP attached: its channel data
/// both ways in the kernel (all but what precedes the binding's install), and a peer port
/// without a channel through Data indications on the user-space path; nothing lost.
#[test]
fn aioice_relays_with_the_fast_path_attached() {
    common::require_aioice();
    let t = topology("fpa");
    let dir =
        common::TempDir(std::env::temp_dir().join(format!("veil-fpai-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let _relay = fast_relay(&t, &dir.0, "xdp", &[]);
    let (user, pass) = common::credential("aioice");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aioice/turn_check.py");
    let before = kernel(&t);
    let out = Command::new("ip")
        .args(["netns", "exec", &t.callers.0, "timeout", "60", "python3"])
        .arg(&script)
        .args([
            "echo",
            "--transport",
            "udp",
            "--host",
            "10.77.0.1",
            "--port",
            "3478",
        ])
        .args(["--peer-host", "10.77.0.3", "--count", "64"])
        .args(["--user", &user, "--password", &pass])
        .output()
        .expect("python3 runs");
    let after = kernel(&t);
    let v = common::json_result(&out, "aioice");
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(v["received"], 64, "every echo came back: {v}");
    assert_eq!(v["corrupt"], 0, "{v}");
    assert_eq!(
        v["indications"], 64,
        "Data indications from a port without a channel: {v}"
    );
    assert_eq!(v["relayed"][0], "10.77.0.1", "{v}");
    let carried = [after[0] - before[0], after[1] - before[1]];
    eprintln!("aioice: the kernel carried {carried:?}");
    assert!(
        carried[0] > 0.0 && carried[1] > 0.0,
        "part of aioice's channel data in the kernel both ways: {carried:?}"
    );
}

/// Headless Chromium (libwebrtc, driven by playwright-core as in tests/browser.rs) relays a data
/// channel with XDP attached: one RTCPeerConnection may use only veil, the other has no TURN
/// server and answers from its host address, so veil's peer is outside the relay (two parties
/// on one relay would meet inside it, never crossing the interface). The browser runs in the
/// callers' namespace; the kernel carries the call both ways.
#[test]
fn chromium_relays_a_data_channel_through_the_kernel() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists()
            && here.join("node_modules/playwright-core").exists(),
        "Debian's chromium, Node.js and `npm ci --prefix tests/browser` are required (.ci/run)"
    );
    let t = topology("fpc");
    let dir =
        common::TempDir(std::env::temp_dir().join(format!("veil-fpc-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let _relay = fast_relay(&t, &dir.0, "xdp", &[]);
    let (user, pass) = common::credential("browser");
    let config = serde_json::json!({
        "messages": 50,
        "scenarios": [{
            "name": "xdp/udp",
            "iceServers": [{
                "urls": ["turn:10.77.0.1:3478?transport=udp"],
                "username": user,
                "credential": pass,
            }],
            "iceServersB": [],
            "policyB": "all",
        }],
        // Host candidates as addresses, not mDNS names nobody here resolves.
        // and a fake microphone granted, so that host candidates are gathered on c0.
        "chromiumArgs": [
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
        ],
    });
    let before = kernel(&t);
    let out = Command::new("ip")
        .args(["netns", "exec", &t.callers.0, "timeout", "120", "node"])
        .arg(here.join("run.mjs"))
        .arg(config.to_string())
        .env("HOME", &dir.0)
        .stdin(Stdio::null())
        .output()
        .expect("node runs");
    let after = kernel(&t);
    let r = common::json_result(&out, "chromium");
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(r["received"], 50, "every message arrived: {r}");
    assert_eq!(r["inOrder"], true, "{r}");
    assert_eq!(r["local"]["candidateType"], "relay", "{r}");
    assert_eq!(r["remote"]["candidateType"], "host", "{r}");
    let carried = [after[0] - before[0], after[1] - before[1]];
    eprintln!("chromium: the kernel carried {carried:?}");
    assert!(
        carried[0] > 0.0 && carried[1] > 0.0,
        "the call in the kernel both ways: {carried:?}"
    );
}
