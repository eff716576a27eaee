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
