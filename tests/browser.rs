//! A real browser relays through veil: headless Chromium (Debian's `chromium`) driven by
//! playwright-core (npm, `tests/browser/`), two RTCPeerConnections in one page that may use only
//! veil (`iceTransportPolicy: "relay"`), a data channel between them, over `turn:` UDP, `turn:`
//! TCP and `turns:`, with and without shaping (padding, 20 ms slots, cover), and `turns:` on a
//! port shared with a real site (nginx behind veil), whose page the same profile loads.
//!
//! Chromium, the relays and the page server run inside a network namespace that has only `lo`,
//! so none of Chromium's background services can reach anything. Needs root (`ip netns`),
//! Debian's chromium, Node.js and `npm ci --prefix tests/browser`; `.ci/run` provides them. A
//! missing piece fails the test with what to install.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Value, json};

const MESSAGES: u64 = 50;
const SECRET: &str = "browser-secret-0123456789abcdef";

/// A network namespace with only `lo`, deleted (with whatever runs in it) on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("veil-browser-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("iproute2's `ip` is required")
            .success();
        assert!(
            ok,
            "`ip netns add` failed: this test needs root (CI runs as root)"
        );
        let ns = Netns(name);
        assert!(
            ns.cmd(&["ip", "link", "set", "lo", "up"])
                .status()
                .unwrap()
                .success()
        );
        ns
    }

    fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(argv);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require(cond: bool, what: &str) {
    assert!(cond, "{what} (.ci/run installs it)");
}

/// A certificate for `localhost`, and the base64 SHA-256 of its public key: Chromium is told to
/// trust exactly that key (`--ignore-certificate-errors-spki-list`), nothing else.
fn certificate(dir: &Path) -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let spki = ck.key_pair.public_key_der();
    let hash = ring::digest::digest(&ring::digest::SHA256, &spki);
    base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
}

/// Starts `veil relay` inside the namespace on UDP+TCP `turn`, TLS `tls`, with the secrets and
/// the certificate of `dir`.
fn relay(ns: &Netns, dir: &Path, (turn, tls): (u16, u16), ports: &str, extra: &[&str]) -> Killed {
    let secrets = dir.join("secrets");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (udp, tcp, tls) = (
        format!("127.0.0.1:{turn}"),
        format!("127.0.0.1:{turn}"),
        format!("127.0.0.1:{tls}"),
    );
    let mut argv = vec![
        env!("CARGO_BIN_EXE_veil"),
        "relay",
        "--listen",
        &udp,
        "--listen-tcp",
        &tcp,
        "--listen-tls",
        &tls,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--auth-secret-file",
        secrets.to_str().unwrap(),
        "--allow-peer",
        "127.0.0.0/8",
        "--port-range",
        ports,
        "--workers",
        "2",
    ];
    argv.extend_from_slice(extra);
    let child = ns
        .cmd(&argv)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("veil starts in the namespace");
    // Up when its TLS port (bound last) accepts, as seen from inside the namespace.
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{}",
        tls.rsplit(':').next().unwrap()
    );
    while !ns
        .cmd(&["bash", "-c", &probe])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "relay on {tls} not up in 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Killed(child)
}

fn scenarios(turn: u16, tls: u16, user: &str, pass: &str, tag: &str) -> Vec<Value> {
    [
        ("udp", format!("turn:127.0.0.1:{turn}?transport=udp")),
        ("tcp", format!("turn:127.0.0.1:{turn}?transport=tcp")),
        ("tls", format!("turns:localhost:{tls}?transport=tcp")),
    ]
    .into_iter()
    .map(|(proto, url)| {
        json!({
            "name": format!("{tag}/{proto}"),
            "iceServers": [{"urls": [url], "username": user, "credential": pass}],
        })
    })
    .collect()
}

#[test]
fn chromium_relays_data_channels_through_veil_over_udp_tcp_and_tls() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    require(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is required: apt-get install chromium",
    );
    require(
        Command::new("node").arg("--version").output().is_ok(),
        "Node.js is required",
    );
    require(
        here.join("node_modules/playwright-core").exists(),
        "playwright-core is required: npm ci --prefix tests/browser",
    );
    let dir = std::env::temp_dir().join(format!("veil-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = common::TempDir(dir.clone());
    std::fs::write(dir.join("secrets"), format!("{SECRET}\n")).unwrap();
    let spki = certificate(&dir);

    let ns = Netns::new();
    let _plain = relay(&ns, &dir, (3478, 5349), "20000-20999", &[]);
    let _shaped = relay(&ns, &dir, (3479, 5350), "21000-21999", &common::shaped(&[]));
    // A real site behind veil's TLS port 5351: nginx on 8444 (after PROXY v2), same certificate.
    require(
        Command::new("nginx").arg("-v").output().is_ok(),
        "Debian's nginx is required",
    );
    let site_dir = dir.join("site");
    std::fs::create_dir_all(&site_dir).unwrap();
    let conf = common::site::nginx_conf(
        &site_dir,
        (&dir.join("cert.pem"), &dir.join("key.pem")),
        "127.0.0.1:8443",
        "127.0.0.1:8444",
        "",
    );
    let _nginx = Killed(
        ns.cmd(&[
            "nginx",
            "-c",
            conf.to_str().unwrap(),
            "-p",
            site_dir.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("nginx starts in the namespace"),
    );
    let _shared = relay(
        &ns,
        &dir,
        (3480, 5351),
        "22000-22999",
        &[
            "--set",
            "tls.site={upstream: '127.0.0.1:8444', proxy_protocol: v2}",
        ],
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (user, pass) = veil_relay::proto::auth::mint(SECRET.as_bytes(), now + 600, Some("browser"));
    let mut all = scenarios(3478, 5349, &user, &pass, "plain");
    all.extend(scenarios(3479, 5350, &user, &pass, "shaped"));
    // turns: on the port shared with the site.
    all.push(scenarios(3480, 5351, &user, &pass, "site").remove(2));
    let config = json!({
        "messages": MESSAGES,
        "scenarios": all,
        "chromiumArgs": [format!("--ignore-certificate-errors-spki-list={spki}")],
        // The same profile loads the site from the same port.
        "visit": "https://localhost:5351/index.html",
    });
    let out = ns
        .cmd(&[
            "node",
            here.join("run.mjs").to_str().unwrap(),
            &config.to_string(),
        ])
        .env("HOME", &dir)
        .stdin(Stdio::null())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run.mjs failed:\n{stdout}\n{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let visit = lines
        .iter()
        .find(|l| l["visit"].is_string())
        .unwrap_or_else(|| panic!("no visit:\n{stdout}\n{stderr}"));
    assert_eq!(visit["status"], 200, "{visit}");
    assert_eq!(
        visit["body"],
        common::site::INDEX,
        "the site's page: {visit}"
    );
    let results: Vec<&Value> = lines.iter().filter(|l| l["scenario"].is_string()).collect();
    assert_eq!(
        results.len(),
        7,
        "one result per scenario:\n{stdout}\n{stderr}"
    );
    for r in &results {
        let name = r["scenario"].as_str().unwrap();
        assert!(r["error"].is_null(), "{name}: {}", r["error"]);
        assert_eq!(
            r["received"], MESSAGES,
            "{name}: every message arrived: {r}"
        );
        assert_eq!(r["inOrder"], true, "{name}: {r}");
        assert_eq!(r["pairState"], "succeeded", "{name}: {r}");
        assert_eq!(r["local"]["candidateType"], "relay", "{name}: {r}");
        assert_eq!(
            r["remote"]["candidateType"], "relay",
            "{name}: relay to relay: {r}"
        );
        // The candidate line says udp whatever the client leg; relayProtocol tells the leg.
        let proto = name.rsplit('/').next().unwrap();
        assert_eq!(r["local"]["relayProtocol"], proto, "{name}: {r}");
        assert_eq!(r["local"]["protocol"], "udp", "{name}: {r}");
    }
}
