//! The kernel fast path's deployment (issue 24 §2), through the real binary in a network
//! namespace of its own with a veth pair: `fast_path.mode: xdp` attaches the XDP program in
//! native (driver) mode and says so in `/metrics`; the program leaves the interface when the
//! relay exits, even killed; `xdp` on an interface that cannot take it refuses to start with the
//! reason, `auto` runs without it and says so. Needs root, iproute2 and a build with the
//! program (clang-19 and libbpf-dev: .ci/run installs them); it fails without them.

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
    let out = Command::new("ip")
        .args(["-n", &ns.0, "-d", "link", "show", "dev", "fpa"])
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

#[test]
fn uclient_relays_through_the_kernel_with_zero_loss() {
    common::require("turnutils_uclient");
    common::require("turnutils_peer");
    let t = topology("fpu");
    let dir =
        common::TempDir(std::env::temp_dir().join(format!("veil-fpu-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let secrets = dir.0.join("secrets");
    std::fs::write(&secrets, format!("{}\n", common::SECRET)).unwrap();
    let _relay = Relay(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &t.relay.0,
                env!("CARGO_BIN_EXE_veil"),
                "relay",
            ])
            .args(["--listen", "10.77.0.1:3478", "--relay-ip", "10.77.0.1"])
            .args(["--port-range", "40000-40999", "--workers", "2"])
            .args(["--admin", "127.0.0.1:9478", "--allow-peer", "10.77.0.0/24"])
            .args(["--user-quota", "1000", "--source-quota", "0"])
            .arg("--auth-secret-file")
            .arg(&secrets)
            .args(["--set", "fast_path={mode: xdp, interfaces: [r0]}"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("veil runs"),
    );
    wait_until("the relay's metrics", Duration::from_secs(20), || {
        metrics(&t.relay)
    });
    let _peer = Relay(
        Command::new("ip")
            .args(["netns", "exec", &t.callers.0, "turnutils_peer"])
            .args(["-L", "10.77.0.3", "-p", "5000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.callers.0,
            "timeout",
            "120",
            "turnutils_uclient",
        ])
        .args(["-L", "10.77.0.2", "-W", common::SECRET, "-u", "fast"])
        .args(["-m", "10", "-n", "50", "-e", "10.77.0.3", "-r", "5000"])
        .args(["-p", "3478", "10.77.0.1"])
        .output()
        .expect("uclient runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let m = metrics(&t.relay).expect("metrics");
    let fast = |a: &str| {
        common::metric(
            &m,
            &format!("veil_relay_fast_path_packets_total{{action=\"{a}\"}}"),
        )
        .unwrap_or(-1.0)
    };
    eprintln!(
        "to_peer {} to_client {} passed {} installs {:?}",
        fast("to_peer"),
        fast("to_client"),
        fast("passed"),
        common::metric(&m, "veil_relay_fast_path_installs_total")
    );
    assert!(text.contains("Total lost packets 0 "), "{text}");
    assert!(
        fast("to_peer") > 0.0 && fast("to_client") > 0.0,
        "both legs in the kernel: {m}"
    );
    let installs = common::metric(&m, "veil_relay_fast_path_installs_total").unwrap_or(0.0);
    assert!(
        installs >= 10.0,
        "a binding per client at least: {installs}"
    );
}
