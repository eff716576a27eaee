//! End-to-end: `veil allocator` with three relays in two zones on loopback, the embedded demo geo
//! DB (127.0.1.0/24 is DE, 127.0.2.0/24 is US), and the webrtc-rs client using what it hands out.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{Allocator, http, json};
use common::{Relay, start_relay};
use webrtc_util::Conn;

const KEY: &str = "backend-key-0123456789";
const WEB_KEY: &str = "browser-key-0123456789";
/// A key allowed 3 requests per second, for the rate limit.
const SLOW_KEY: &str = "slow-key-0123456789abc";

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn zoned_relay(ports: &str, zone: &str) -> (Relay, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let relay = start_relay(
        ports,
        &[
            "--zone",
            zone,
            "--admin",
            &admin.to_string(),
            "--allow-peer",
            "127.0.0.0/8",
        ],
    );
    (relay, admin)
}

/// Asks for ICE servers for a client at `ip`; (status, body).
fn ice(alloc: SocketAddr, ip: &str, call: Option<&str>) -> (u16, serde_json::Value) {
    let call = call.map_or(String::new(), |c| format!(",\"call_id\":\"{c}\""));
    let (st, body) = http(
        alloc,
        "POST",
        "/v1/ice-servers",
        Some(KEY),
        &format!("{{\"client_ip\":\"{ip}\"{call}}}"),
    );
    (st, json(&body))
}

/// The username and credential of an ICE answer.
fn credential(answer: &serde_json::Value) -> (String, String) {
    let s = &answer["iceServers"][0];
    let text = |k: &str| {
        s[k].as_str()
            .unwrap_or_else(|| panic!("no {k}: {answer}"))
            .to_string()
    };
    (text("username"), text("credential"))
}

/// Which relay (by name) the first URI of an answer points at.
fn relay_of(answer: &serde_json::Value, relays: &[(&str, u16)]) -> String {
    let url = answer["iceServers"][0]["urls"][0]
        .as_str()
        .unwrap()
        .to_string();
    let port: u16 = url
        .rsplit(':')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    relays
        .iter()
        .find(|(_, p)| *p == port)
        .map(|(n, _)| n.to_string())
        .unwrap_or(url)
}

async fn allocate_with(relay: &Relay, user: &str, pass: &str) -> Result<(), String> {
    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = common::turn_client_over(Arc::new(conn), relay.addr, user, pass).await;
    let r = match client.allocate().await {
        Ok(c) => {
            c.close().await.unwrap();
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    };
    client.close().await.unwrap();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocator_places_by_residency_and_relays_enforce_it() {
    let (eu1, eu1_admin) = zoned_relay("20500-20599", "eu");
    let (eu2, eu2_admin) = zoned_relay("20600-20699", "eu");
    let (us1, us1_admin) = zoned_relay("20700-20799", "us");
    let names = [
        ("eu-1", eu1.addr.port()),
        ("eu-2", eu2.addr.port()),
        ("us-1", us1.addr.port()),
    ];
    let alloc: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let cfg = eu1.dir.0.join("allocator.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: {alloc}\n\
             api_keys: [{{key: {KEY}, backend: true}}, {{key: {WEB_KEY}}}, {{key: {SLOW_KEY}, requests_per_second: 3}}]\n\
             secret_files: [{secrets}]\n\
             ttl: 600\n\
             poll_interval_ms: 200\n\
             down_after: 2\n\
             up_after: 1\n\
             policy:\n  zones: {{eu: {{relays: [eu-1, eu-2]}}, us: {{relays: [us-1]}}}}\n  \
             rules: [{{match: {{continent: EU}}, zones: [eu]}}, {{match: {{country: US}}, zones: [us]}}]\n  default: [us]\n\
             relays:\n  - {{name: eu-1, admin: \"{eu1_admin}\", latitude: 50.1, longitude: 8.7}}\n  \
             - {{name: eu-2, admin: \"{eu2_admin}\", latitude: 48.9, longitude: 2.4}}\n  \
             - {{name: us-1, admin: \"{us1_admin}\", latitude: 39.0, longitude: -77.5}}\n",
            secrets = eu1.dir.0.join("secrets").display()
        ),
    )
    .unwrap();
    let _allocator = Allocator(
        Command::new(env!("CARGO_BIN_EXE_veil"))
            .args(["allocator", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Ready when a German client gets an answer (the relays' first poll has come back).
    let deadline = Instant::now() + Duration::from_secs(15);
    let de = loop {
        if TcpStream::connect(alloc).is_ok() {
            let (st, body) = ice(alloc, "127.0.1.5", None);
            if st == 200 {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "allocator not ready in 15 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(de["zone"], "eu");
    assert_eq!(de["iceTransportPolicy"], "relay");
    let de_relay = relay_of(&de, &names);
    assert!(de_relay.starts_with("eu-"), "{de}");
    let (user, pass) = credential(&de);
    assert!(user.ends_with(";z=eu"), "{user}");

    // The credential works on its zone's relay and is refused by the other zone's.
    let home = if de_relay == "eu-1" { &eu1 } else { &eu2 };
    allocate_with(home, &user, &pass)
        .await
        .expect("works on the EU relay");
    let e = allocate_with(&us1, &user, &pass)
        .await
        .expect_err("refused by the US relay");
    assert!(e.contains("403"), "{e}");

    let (st, us) = ice(alloc, "127.0.2.9", None);
    assert_eq!((st, us["zone"].as_str()), (200, Some("us")));
    assert_eq!(relay_of(&us, &names), "us-1");

    // Both parties of a call share a relay.
    let (_, a) = ice(alloc, "127.0.1.20", Some("call-42"));
    let (_, b) = ice(alloc, "127.0.7.20", Some("call-42"));
    assert_eq!(
        relay_of(&a, &names),
        relay_of(&b, &names),
        "a DE and a FR party of one call"
    );

    // API errors are JSON with a code; bad input is refused, not a crash.
    let (st, body) = http(alloc, "POST", "/v1/ice-servers", None, "{}");
    assert_eq!(
        (st, json(&body)["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (st, body) = http(
        alloc,
        "POST",
        "/v1/ice-servers",
        Some(WEB_KEY),
        "{\"client_ip\":\"127.0.1.1\"}",
    );
    assert_eq!(
        (st, json(&body)["code"].as_str()),
        (403, Some("forbidden")),
        "only backends pass client_ip"
    );
    // Only a backend names the user (whose relay quota a credential counts against).
    for (method, path, body) in [
        ("POST", "/v1/ice-servers", "{\"user\":\"mallory\"}"),
        ("GET", "/turn?service=turn&username=mallory", ""),
    ] {
        let (st, b) = http(alloc, method, path, Some(WEB_KEY), body);
        assert_eq!(
            (st, json(&b)["code"].as_str()),
            (403, Some("forbidden")),
            "{path}"
        );
    }
    // The key is checked before the body is read: a caller without one who announces a large
    // body and sends none is answered at once (before, the server waited for the body).
    {
        let mut s = TcpStream::connect(alloc).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(
            b"POST /v1/ice-servers HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\
              Content-Type: application/json\r\n\r\n",
        )
        .unwrap();
        let mut out = vec![0u8; 512];
        let n = s.read(&mut out).expect("an answer without the body");
        let head = String::from_utf8_lossy(&out[..n]);
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    }
    // With a key, a body is at most 4 KiB.
    let big = format!("{{\"call_id\":\"{}\"}}", "x".repeat(5000));
    let (st, b) = http(alloc, "POST", "/v1/ice-servers", Some(KEY), &big);
    assert_eq!((st, json(&b)["code"].as_str()), (413, Some("too_large")));
    // Per-key rate: a burst of 10 from a 3/s key gets at most 3 (+1 for refill) answers, the
    // rest 429; other keys are not affected.
    let codes: Vec<u16> = (0..10)
        .map(|_| http(alloc, "POST", "/v1/ice-servers", Some(SLOW_KEY), "").0)
        .collect();
    let limited = codes.iter().filter(|c| **c == 429).count();
    assert!(limited >= 6 && codes[0] != 429, "{codes:?}");
    assert_ne!(
        ice(alloc, "127.0.1.1", None).0,
        429,
        "the backend key has its own bucket"
    );
    let (st, body) = http(
        alloc,
        "POST",
        "/v1/ice-servers",
        Some(KEY),
        "{\"client_ip\":\"not-an-ip\"}",
    );
    assert_eq!(
        (st, json(&body)["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (st, _) = http(alloc, "POST", "/v1/ice-servers", Some(KEY), "{not json");
    assert_eq!(st, 400);
    let (st, body) = ice(alloc, "127.0.1.1", Some(&"c".repeat(129)));
    assert_eq!(
        (st, body["code"].as_str()),
        (400, Some("bad_request")),
        "call_id bounded"
    );

    // The TURN REST API draft's shape.
    let (st, body) = http(
        alloc,
        "GET",
        "/turn?service=turn&username=bob&client_ip=127.0.2.1",
        Some(KEY),
        "",
    );
    let t = json(&body);
    assert_eq!(st, 200, "{body}");
    assert!(t["username"].as_str().unwrap().contains(":bob;z=us"));
    assert!(t["ttl"].as_u64().unwrap() > 500);
    assert!(
        t["uris"][0]
            .as_str()
            .unwrap()
            .starts_with("turn:127.0.0.1:")
    );

    // A call as a call: a German party may only use eu, a US party only us: each in its own
    // zone, and the call counted as cross-zone.
    let (st, body) = http(
        alloc,
        "POST",
        "/v1/calls",
        Some(KEY),
        "{\"parties\":[{\"client_ip\":\"127.0.1.30\"},{\"client_ip\":\"127.0.2.30\"}]}",
    );
    assert_eq!(st, 200, "{body}");
    let call = json(&body);
    assert_eq!(call["crossZone"], true, "{call}");
    assert_eq!(call["zones"], serde_json::json!(["eu", "us"]));
    // Two German parties: one relay.
    let (st, body) = http(
        alloc,
        "POST",
        "/v1/calls",
        Some(KEY),
        "{\"parties\":[{\"client_ip\":\"127.0.1.31\"},{\"client_ip\":\"127.0.7.31\"}]}",
    );
    let call = json(&body);
    assert_eq!((st, &call["crossZone"]), (200, &serde_json::json!(false)));
    assert_eq!(
        call["parties"][0]["iceServers"][0]["urls"][0],
        call["parties"][1]["iceServers"][0]["urls"][0]
    );
    let (st, body) = http(
        alloc,
        "POST",
        "/v1/calls",
        Some(WEB_KEY),
        "{\"parties\":[]}",
    );
    assert_eq!((st, json(&body)["code"].as_str()), (403, Some("forbidden")));
    let (st, body) = http(
        alloc,
        "POST",
        "/v1/calls",
        Some(KEY),
        "{\"parties\":[{\"client_ip\":\"127.0.1.31\"}]}",
    );
    assert_eq!(
        (st, json(&body)["code"].as_str()),
        (400, Some("bad_request"))
    );

    // Audit: counts per (client country, zone) and cross-zone calls, nothing else.
    let (st, body) = http(alloc, "GET", "/v1/audit", Some(KEY), "");
    assert_eq!(st, 200);
    let report = json(&body);
    let rows = report["placements"].as_array().unwrap().clone();
    let count = |country: &str, zone: &str| {
        rows.iter()
            .filter(|f| f["country"] == country && f["zone"] == zone)
            .filter_map(|f| f["count"].as_u64())
            .sum::<u64>()
    };
    assert!(
        count("DE", "eu") >= 4 && count("US", "us") >= 3 && count("FR", "eu") >= 2,
        "{rows:?}"
    );
    assert_eq!(
        count("DE", "us"),
        0,
        "no German client was ever placed in the US"
    );
    assert_eq!(
        report["cross_zone_calls"],
        serde_json::json!([{"hour": report["cross_zone_calls"][0]["hour"], "zone_a": "eu", "zone_b": "us", "count": 1}]),
        "the split call, counted once"
    );
    assert!(
        !body.contains("127.0."),
        "the audit holds no address: {body}"
    );
    let (st, body) = http(alloc, "GET", "/v1/audit", Some(WEB_KEY), "");
    assert_eq!(
        (st, json(&body)["code"].as_str()),
        (403, Some("forbidden")),
        "a browser key cannot read the record"
    );
    let (st, csv) = http(alloc, "GET", "/v1/audit?format=csv", Some(KEY), "");
    assert_eq!(st, 200);
    assert!(
        csv.starts_with("hour_start,kind,country,zone,other_zone,count\n"),
        "{csv}"
    );
    assert!(csv.contains(",cross_zone_call,,eu,us,1\n"), "{csv}");
    // The same report through `veil audit`.
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args([
            "audit",
            "--allocator",
            &format!("http://{alloc}"),
            "--key",
            KEY,
            "--from",
            "1h",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), csv);
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args([
            "audit",
            "--allocator",
            &format!("http://{alloc}"),
            "--key",
            "wrong-key-0123456789",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // Metrics: placements by zone, relays up, promtool-clean, no addresses.
    // On the API listener they need a backend key: the counts say where callers are.
    assert_eq!(http(alloc, "GET", "/metrics", None, "").0, 401);
    assert_eq!(http(alloc, "GET", "/metrics", Some(WEB_KEY), "").0, 403);
    let (st, metrics) = http(alloc, "GET", "/metrics", Some(KEY), "");
    assert_eq!(st, 200);
    assert!(
        metrics.contains("veil_allocator_relay_up{relay=\"eu-1\",zone=\"eu\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("veil_allocator_placements_total{zone=\"eu\"} 0"),
        "{metrics}"
    );
    assert!(!metrics.contains("127.0."), "{metrics}");
    common::promtool_check(&metrics);

    // A relay goes down: German placements move to the other EU relay within
    // down_after x poll interval (2 x 200 ms) plus a poll, never to the US.
    let (gone, other) = if de_relay == "eu-1" {
        (eu1, eu2)
    } else {
        (eu2, eu1)
    };
    drop(gone);
    let started = Instant::now();
    loop {
        let (st, body) = ice(alloc, "127.0.1.5", None);
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["zone"], "eu");
        if relay_of(&body, &names) != de_relay {
            assert_eq!(
                relay_of(&body, &names),
                if de_relay == "eu-1" { "eu-2" } else { "eu-1" }
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "placements did not move in 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let moved_after = started.elapsed();
    assert!(
        moved_after < Duration::from_secs(2),
        "moved after {moved_after:?}"
    );

    // The whole EU zone down: a clear error, never a US relay.
    drop(other);
    let started = Instant::now();
    loop {
        let (st, body) = ice(alloc, "127.0.1.5", None);
        if st == 503 {
            assert_eq!(body["code"], "no_relay");
            break;
        }
        assert_eq!(body["zone"], "eu", "never placed outside the allowed zone");
        assert!(started.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (st, body) = ice(alloc, "127.0.2.9", None);
    assert_eq!(
        (st, body["zone"].as_str()),
        (200, Some("us")),
        "other zones unaffected"
    );
    drop(us1);
}

/// `veil dev` as a newcomer meets it: the commands its banner prints are run as printed (the
/// curl lines, coturn's peer and uclient with the ICE config's credential, `veil audit`). The
/// German client's credential relays through the eu relay and is refused by the us relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veil_dev_runs_a_working_cluster() {
    use std::io::BufRead;
    common::require("turnutils_uclient");
    common::require("turnutils_peer");
    common::require("curl");
    let turn = loop {
        let p = common::free_udp_port();
        if p < 65000 && (1..3).all(|i| std::net::UdpSocket::bind(("127.0.0.1", p + i)).is_ok()) {
            break p;
        }
    };
    let (admin, api) = loop {
        let a = free_tcp_port();
        if a < 65000 && (1..3).all(|i| TcpListener::bind(("127.0.0.1", a + i)).is_ok()) {
            break (a, free_tcp_port());
        }
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args([
            "dev",
            "--turn-port",
            &turn.to_string(),
            "--admin-port",
            &admin.to_string(),
            "--api-port",
            &api.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let dev = Allocator(child);
    // The printed commands and the machine-readable lines.
    let mut vars = std::collections::HashMap::new();
    let mut commands = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some((k, v)) = line.split_once('=').filter(|(k, _)| k.starts_with("VEIL_")) {
            vars.insert(k.to_string(), v.to_string());
        }
        for tool in [
            "curl ",
            "turnutils_peer ",
            "turnutils_uclient ",
            env!("CARGO_BIN_EXE_veil"),
        ] {
            if let Some(cmd) = line.strip_prefix("  ").filter(|l| l.starts_with(tool)) {
                commands.push(cmd.to_string());
            }
        }
        if line.starts_with("VEIL_SECRET_FILE=") {
            break;
        }
    }
    let key = vars["VEIL_API_KEY"].clone();
    assert_eq!(
        vars["VEIL_ALLOCATOR_URL"],
        format!("http://127.0.0.1:{api}")
    );
    assert_eq!(vars["VEIL_RELAY_URIS"].split(',').count(), 3, "three zones");
    assert_eq!(
        vars["VEIL_METRICS_URLS"].split(',').count(),
        4,
        "three relays and the allocator"
    );
    let peer: u16 = vars["VEIL_PEER_PORT"].parse().unwrap();
    assert!(
        !(turn..turn + 3).contains(&peer) && !(turn..turn + 3).contains(&(peer + 1)),
        "the example peer port {peer} is not a TURN port of the cluster"
    );
    let find = |prefix: &str| {
        commands
            .iter()
            .filter(|c| c.starts_with(prefix))
            .cloned()
            .collect::<Vec<_>>()
    };
    let sh = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    std::path::Path::new(env!("CARGO_BIN_EXE_veil"))
                        .parent()
                        .unwrap()
                        .display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .output()
            .unwrap()
    };

    // The first curl line: an ICE config for a German client (retried until the first poll).
    let curls = find("curl ");
    assert_eq!(curls.len(), 3, "{commands:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let out = sh(&curls[0]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            && v["zone"] == "eu"
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no placement in 10 s: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        answer["iceServers"][0]["urls"][0],
        format!("turn:127.0.0.1:{turn}?transport=udp")
    );
    let (user, pass) = credential(&answer);
    assert!(user.ends_with(";z=eu"), "{user}");
    // The second: a call between DE and JP, no zone allowed for both.
    let call: serde_json::Value = serde_json::from_slice(&sh(&curls[1]).stdout).unwrap();
    assert_eq!(call["crossZone"], true, "{call}");
    assert_eq!(call["zones"], serde_json::json!(["eu", "apac"]));
    // `veil call` as printed: that call's two parties, on eu and apac, over their relays' link.
    let veil_call = find(&format!("{} call", env!("CARGO_BIN_EXE_veil")));
    assert_eq!(veil_call.len(), 1, "{commands:?}");
    let out = sh(&veil_call[0]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let delivered: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(": ")?.1.split_once(" delivered").map(|d| d.0))
        .collect();
    assert_eq!(delivered.len(), 2, "{text}");
    // The link never queues a datagram past its delay bound (5 ms): on a loaded machine one
    // may be dropped, and counted; the call itself must go through.
    for d in &delivered {
        let (got, sent) = d.split_once('/').unwrap();
        let (got, sent): (u32, u32) = (got.parse().unwrap(), sent.parse().unwrap());
        assert!(got * 100 >= sent * 95, "the datagrams both ways: {text}");
    }
    // The metrics line: the media crossed eu -> apac on the link.
    let metrics = String::from_utf8_lossy(&sh(&curls[2]).stdout).to_string();
    let crossed = metrics
        .lines()
        .filter(|l| l.starts_with("veil_relay_mesh_media_datagrams_total{"))
        .filter(|l| l.contains("direction=\"out\"") && l.contains("remote_zone=\"apac\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    // At least what the callee got went out over the link.
    let got: f64 = delivered[0].split_once('/').unwrap().0.parse().unwrap();
    assert!(crossed >= got, "{crossed} < {got}: {metrics}");
    assert!(
        metrics.contains("veil_relay_mesh_link_up{link="),
        "{metrics}"
    );

    // The webrtc-rs client with that credential.
    let fake = Relay {
        child: Command::new("true").spawn().unwrap(),
        addr: format!("127.0.0.1:{turn}").parse().unwrap(),
        dir: common::TempDir(std::env::temp_dir().join("veil-dev-test-unused")),
    };
    allocate_with(&fake, &user, &pass)
        .await
        .expect("the dev cluster relays");

    // coturn's peer and uclient, as printed, with the ICE config's username and credential.
    let peer_cmd = find("turnutils_peer ");
    assert_eq!(peer_cmd.len(), 1);
    let peer_cmd = peer_cmd[0].trim_end_matches('&').trim().to_string();
    let args: Vec<&str> = peer_cmd.split_whitespace().collect();
    let _peer = Allocator(
        Command::new(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let uclients = find("turnutils_uclient ");
    assert_eq!(uclients.len(), 2, "{commands:?}");
    let with_answer = uclients[0]
        .replace("<username>", &user)
        .replace("<credential>", &pass);
    let run = |cmd: &str| {
        let out = sh(&format!("timeout 60 {cmd}"));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = run(&with_answer);
    assert!(ok, "{with_answer}\n{text}");
    assert!(text.contains("Total lost packets 0"), "{text}");
    // The same credential on the us relay: refused.
    let on_us = with_answer.replace(&format!("-p {turn} "), &format!("-p {} ", turn + 1));
    assert_ne!(on_us, with_answer);
    let (ok, text) = run(&on_us);
    assert!(
        !ok && text.contains("error 403 (Forbidden)"),
        "{on_us}\n{text}"
    );
    // The -W line mints its own eu credential.
    let (ok, text) = run(&uclients[1]);
    assert!(ok, "{}\n{text}", uclients[1]);

    // `veil audit` as printed: the cross-border report, and the allocator's audit trail.
    let audit = find(&format!("{} audit", env!("CARGO_BIN_EXE_veil")));
    assert_eq!(audit.len(), 2, "{audit:?}");
    let verify = audit.iter().find(|c| c.contains(" audit verify ")).unwrap();
    let out = sh(verify);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{verify}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("start: 1"),
        "the allocator's start is recorded: {text}"
    );
    let report = audit.iter().find(|c| c.contains(" --allocator ")).unwrap();
    let out = sh(report);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.contains(",placement,DE,eu,,"), "{csv}");
    // The curl's call and the one `veil call` placed (in one hour's row, or two).
    let calls: u64 = csv
        .lines()
        .filter_map(|l| {
            l.split_once(",cross_zone_call,,apac,eu,")?
                .1
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(calls, 2, "{csv}");
    assert!(!key.is_empty());
    drop(dev);
}
