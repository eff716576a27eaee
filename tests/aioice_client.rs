//! aioice (PyPI, a client we did not write) relays through veil: its TURN client alone over
//! UDP, TCP and TLS (channel data both ways, Data indications from a peer port without a
//! channel), and two of its ICE agents limited to relay candidates, connecting through veil;
//! each against a plain relay and one running the default of `--shaping` (padded frames,
//! 20 ms slots, cover frames it must skip). The client side is `tests/aioice/turn_check.py`;
//! it needs `python3` with `aioice` (`.ci/run` installs the pinned version) and fails loudly
//! without it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const COUNT: u64 = 64;

/// Runs the script in `mode` against `server` with `creds`; its one JSON line.
fn run(
    mode: &str,
    transport: &str,
    server: SocketAddr,
    cafile: &Path,
    creds: &(String, String),
) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aioice/turn_check.py");
    let port = server.port().to_string();
    let count = COUNT.to_string();
    let out = Command::new("python3")
        .arg(&script)
        .args([mode, "--transport", transport, "--port", &port])
        .args([
            "--count",
            &count,
            "--user",
            &creds.0,
            "--password",
            &creds.1,
        ])
        .arg("--cafile")
        .arg(cafile)
        // The ICE agent verifies `turns:` with the default trust store.
        .env("SSL_CERT_FILE", cafile)
        .output()
        .expect("python3 runs");
    common::json_result(&out, &format!("{mode}/{transport}"))
}

/// A result that must not be an error.
fn ok(v: Value) -> Value {
    assert!(
        v["error"].is_null(),
        "{}/{}: {v}",
        v["mode"],
        v["transport"]
    );
    v
}

fn relay_cases(tag: &str, ports: &str, extra: &[&str]) {
    let base = ["--allow-peer", "127.0.0.0/8"];
    let args: Vec<&str> = base.iter().chain(extra).copied().collect();
    let (relay, tcp, tls) = common::start_stream_relay(ports, &args);
    let cert = common::stream_relay_cert(ports);
    let creds = common::credential("aioice");
    for (transport, server) in [("udp", relay.addr), ("tcp", tcp), ("tls", tls)] {
        let name = format!("{tag}/{transport}");
        let v = ok(run("echo", transport, server, &cert, &creds));
        assert_eq!(v["received"], COUNT, "{name}: every echo came back: {v}");
        assert_eq!(v["corrupt"], 0, "{name}: {v}");
        assert_eq!(v["errors"], Value::Array(vec![]), "{name}: {v}");
        assert_eq!(
            v["indications"], COUNT,
            "{name}: Data indications from a port without a channel: {v}"
        );
        // The peer saw the relayed address only, never the client's.
        assert_eq!(
            v["peer_saw"],
            Value::Array(vec![v["relayed"].clone()]),
            "{name}: {v}"
        );
        assert_ne!(v["relayed"], v["mapped"], "{name}: {v}");
        assert_eq!(v["relayed"][0], "127.0.0.1", "{name}: {v}");

        let v = ok(run("ice", transport, server, &cert, &creds));
        assert_eq!(
            v["received"],
            serde_json::json!([COUNT, COUNT]),
            "{name} ICE: {v}"
        );
        assert_eq!(v["corrupt"], 0, "{name} ICE: {v}");
        assert_eq!(
            v["local_types"],
            serde_json::json!([["relay"], ["relay"]]),
            "{name} ICE: relay candidates only: {v}"
        );
    }
    // A wrong password is refused: the allocation fails, so the checks above can fail.
    let bad = (creds.0.clone(), "not-the-password".to_string());
    let v = run("echo", "udp", relay.addr, &cert, &bad);
    let err = v["error"].as_str().unwrap_or_default();
    assert!(err.contains("401"), "{tag}: a wrong password gets 401: {v}");
}

#[test]
fn aioice_relays_over_udp_tcp_and_tls_plain() {
    common::require_aioice();
    relay_cases("plain", "14000-14099", &[]);
}

#[test]
fn aioice_relays_over_udp_tcp_and_tls_shaped() {
    common::require_aioice();
    relay_cases("shaped", "14100-14199", &common::SHAPING);
}
