//! Clients we did not write, each party on its own relay of a mesh, relay-only: two aioice ICE
//! agents, and headless Chromium with two RTCPeerConnections each given a different relay. The
//! call connects and carries data both ways, and a capture shows no datagram between the two
//! relays' relayed addresses: what crossed rode the link. Needs root (captures, a namespace),
//! python3 with aioice, Debian's chromium, Node.js and `npm ci --prefix tests/browser`
//! (`.ci/run` provides them); a missing piece fails with what to install.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use common::mesh::{MeshNode, Netns, certs, start_pair, udp_between};
use common::wire::Capture;
use common::{SECRET, TempDir};
use serde_json::{Value, json};

/// A REST credential for `node`'s zone.
fn credential(id: &str, zone: &str) -> (String, String) {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let user = format!("{exp}:{id};z={zone}");
    let pass = veil_relay::proto::auth::rest_password(SECRET.as_bytes(), user.as_bytes());
    (user, String::from_utf8(pass.to_vec()).unwrap())
}

fn cert_dir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("veil-mesh-clients-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    certs(&d, &["relay-a", "relay-b"]);
    TempDir(d)
}

/// What crossed the link from `a`, both directions, once each is at least `min`.
fn crossed(a: &MeshNode, min: f64) -> (f64, f64) {
    let s = |dir: &str| {
        format!(
            "veil_relay_mesh_media_datagrams_total{{link=\"relay-b\",direction=\"{dir}\",\
             local_zone=\"relay-a-zone\",remote_zone=\"relay-b-zone\"}}"
        )
    };
    let out = a.wait_for(&s("out"), 5, |v| v >= min);
    let inn = a.wait_for(&s("in"), 5, |v| v >= min);
    (out, inn)
}

#[test]
fn two_aioice_agents_on_two_relays_connect_over_the_link() {
    let ok = Command::new("python3")
        .args(["-c", "import aioice"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with aioice is required: pip install 'aioice==0.13.0' (.ci/run installs it)"
    );
    let certs = cert_dir("aioice");
    let (a, b) = start_pair(
        &certs.0,
        ("127.0.0.81", "12000-12049"),
        ("127.0.0.82", "12050-12099"),
        "",
    );
    let (ua, pa) = credential("aioice-a", "relay-a-zone");
    let (ub, pb) = credential("aioice-b", "relay-b-zone");
    let cap = Capture::start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aioice/turn_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["ice", "--transport", "udp", "--count", "64"])
        .args([
            "--port",
            &a.relay.addr.port().to_string(),
            "--user",
            &ua,
            "--password",
            &pa,
        ])
        .args([
            "--port-b",
            &b.relay.addr.port().to_string(),
            "--user-b",
            &ub,
            "--password-b",
            &pb,
        ])
        .output()
        .expect("python3 runs");
    let packets = cap.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| {
            panic!(
                "no result: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(v["received"], json!([64, 64]), "{v}");
    assert_eq!(v["corrupt"], 0, "{v}");
    assert_eq!(v["local_types"], json!([["relay"], ["relay"]]), "{v}");
    assert_eq!(
        v["local_hosts"],
        json!([["127.0.0.81"], ["127.0.0.82"]]),
        "each on its own relay: {v}"
    );
    assert_eq!(
        udp_between(&packets, "127.0.0.81", "127.0.0.82"),
        0,
        "nothing outside the link"
    );
    let (out, inn) = crossed(&a, 64.0);
    assert!(out >= 64.0 && inn >= 64.0, "{out} {inn}");
}

#[test]
fn chromium_with_each_peer_connection_on_its_own_relay_connects_over_the_link() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is required (.ci/run installs it)"
    );
    assert!(
        here.join("node_modules/playwright-core").exists(),
        "playwright-core is required: npm ci --prefix tests/browser"
    );
    let certs = cert_dir("chromium");
    let home = certs.0.join("home");
    std::fs::create_dir_all(&home).unwrap();
    // Chromium's background services must reach nothing: a namespace with only `lo`.
    let ns = Netns::new("mesh-chromium");
    ns.run(|| {
        let (a, b) = start_pair(
            &certs.0,
            ("127.0.0.91", "12100-12149"),
            ("127.0.0.92", "12150-12199"),
            "",
        );
        let (ua, pa) = credential("browser-a", "relay-a-zone");
        let (ub, pb) = credential("browser-b", "relay-b-zone");
        let server = |node: &MeshNode, proto: &str, u: &str, p: &str| {
            json!([{"urls": [format!("turn:127.0.0.1:{}?transport={proto}", node.relay.addr.port())],
                    "username": u, "credential": p}])
        };
        let scenarios: Vec<Value> = ["udp"]
            .iter()
            .map(|proto| {
                json!({"name": format!("mesh/{proto}"),
                       "iceServers": server(&a, proto, &ua, &pa),
                       "iceServersB": server(&b, proto, &ub, &pb)})
            })
            .collect();
        let config = json!({"messages": 50, "scenarios": scenarios});
        let cap = Capture::start();
        let out = Command::new("node")
            .arg(here.join("run.mjs"))
            .arg(config.to_string())
            .env("HOME", &home)
            .stdin(Stdio::null())
            .output()
            .expect("node runs");
        let packets = cap.stop();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let results: Vec<Value> = stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(results.len(), 1, "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        for r in &results {
            let name = r["scenario"].as_str().unwrap();
            assert!(r["error"].is_null(), "{name}: {}", r["error"]);
            assert_eq!(r["received"], 50, "{name}: {r}");
            assert_eq!(r["inOrder"], true, "{name}: {r}");
            assert_eq!(r["local"]["candidateType"], "relay", "{name}: {r}");
            assert_eq!(r["remote"]["candidateType"], "relay", "{name}: {r}");
            assert_eq!(r["local"]["address"], "127.0.0.91", "{name}: {r}");
            assert_eq!(r["remote"]["address"], "127.0.0.92", "{name}: {r}");
        }
        assert_eq!(udp_between(&packets, "127.0.0.91", "127.0.0.92"), 0, "nothing outside the link");
        let (out, inn) = crossed(&a, 50.0);
        assert!(out >= 50.0 && inn >= 1.0, "{out} {inn}");
    });
}
