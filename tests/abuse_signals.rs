//! Issue 25 against the real binary: each abuse pattern, driven through a relay on loopback,
//! moves exactly the counters it should and no others, and the monitoring mixin's alerts,
//! evaluated by `promtool test rules` on the series recorded from that run, fire exactly the
//! alert written for it; normal traffic from clients we did not write (coturn's uclient,
//! aioice's ICE agents) fires nothing it should not. No id or address appears in `/metrics`.
//!
//! The patterns: a credential used from many networks at once (a stolen one), permission
//! bursts to many peers, payloads that are not media, a heavy allocation, 401 and 438 storms.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::rules::{firing, recorded};
use common::{Attr, RawTurn, free_tcp_addr, start_relay};
use veil_relay::proto::stun::{Class, attr, method};

/// A relay on `ports` with its admin endpoint, relaying to loopback peers.
fn relay(ports: &str, extra: &[&str]) -> (common::Relay, SocketAddr) {
    let admin = free_tcp_addr();
    let a = admin.to_string();
    let mut args = vec!["--admin", &a, "--allow-peer", "127.0.0.0/8"];
    args.extend_from_slice(extra);
    (start_relay(ports, &args), admin)
}

fn scrape(admin: SocketAddr) -> String {
    // Workers publish their counters at every timer tick, at most a second apart.
    std::thread::sleep(Duration::from_millis(1200));
    let (status, m) = common::http_get(admin, "/metrics");
    assert_eq!(status, 200);
    m
}

/// The value of `series` (0 when absent).
fn v(m: &str, series: &str) -> f64 {
    common::metric(m, series).unwrap_or(0.0)
}

/// The abuse signals' counters that a pattern may move, with their value in `m`.
fn signals(m: &str) -> Vec<(&'static str, f64)> {
    [
        "veil_relay_credentials_spread{networks=\"8\"}",
        "veil_relay_peers_permitted_total",
        "veil_relay_permission_bursts_total",
        "veil_relay_non_media_allocations_total{direction=\"client_to_peer\"}",
        "veil_relay_non_media_allocations_total{direction=\"peer_to_client\"}",
        "veil_relay_heavy_allocations_total",
        "veil_relay_auth_failures_total{reason=\"bad_credentials\"}",
    ]
    .into_iter()
    .map(|s| (s, v(m, s)))
    .collect()
}

/// Signed requests answered 401 and 438, over every worker.
fn rejections(m: &str, code: &str) -> f64 {
    m.lines()
        .filter(|l| {
            l.starts_with("veil_relay_worker_auth_rejections_total{")
                && l.contains(&format!("code=\"{code}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Asserts that, between `before` and `after`, the signals named in `moved` changed by the
/// given amounts and every other one did not change.
fn moved_exactly(before: &str, after: &str, moved: &[(&str, f64)]) {
    for ((name, a), (_, b)) in signals(after).into_iter().zip(signals(before)) {
        let want = moved
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0.0, |(_, d)| *d);
        assert_eq!(a - b, want, "{name} moved by {}", a - b);
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Counters whose alerts are about a rate: replayed at the run's rate.
const RATES: &[&str] = &[
    "veil_relay_worker_auth_rejections_total",
    "veil_relay_allocations_refused_total",
    "veil_relay_udp_receive_buffer_errors_total",
];

/// No id or address of the run in `/metrics`.
fn nothing_personal(m: &str, needles: &[&str]) {
    for needle in needles {
        assert!(!m.contains(needle), "{needle} in /metrics");
    }
    common::promtool_check(m);
}

#[test]
fn a_credential_used_from_many_networks_is_counted_never_named_and_alerted() {
    let (relay, admin) = relay("13800-13899", &[]);
    let before = scrape(admin);
    let t0 = Instant::now();
    let mut clients = Vec::new();
    // A stolen credential: nine networks (/24s) within seconds. Loopback is 127/8, so each
    // 127.N.0.1 is its own /24.
    for n in 1..=9 {
        let mut c = RawTurn::rest(&format!("127.{n}.0.1:0"), relay.addr, "thief42");
        c.allocate();
        clients.push(c);
    }
    // A caller moving from one network to another, and one at home with two allocations.
    for local in ["127.10.0.1:0", "127.11.0.1:0"] {
        let mut c = RawTurn::rest(local, relay.addr, "mover42");
        c.allocate();
        clients.push(c);
    }
    for local in ["127.0.0.1:0", "127.0.0.2:0"] {
        let mut c = RawTurn::rest(local, relay.addr, "home42");
        c.allocate();
        clients.push(c);
    }
    let m = scrape(admin);
    let at_least = |n: u32| {
        v(
            &m,
            &format!("veil_relay_credentials_spread{{networks=\"{n}\"}}"),
        )
    };
    assert_eq!(at_least(2), 2.0, "thief42 and mover42: {m}");
    assert_eq!(at_least(4), 1.0, "thief42 only");
    assert_eq!(at_least(8), 1.0, "thief42 only");
    assert_eq!(v(&m, "veil_relay_credentials_spread_untracked_total"), 0.0);
    moved_exactly(
        &before,
        &m,
        &[("veil_relay_credentials_spread{networks=\"8\"}", 1.0)],
    );
    nothing_personal(
        &m,
        &[
            "thief42",
            "mover42",
            "home42",
            "127.1.0",
            "127.10.0",
            "127.0.0.2",
        ],
    );
    let series = recorded(&before, &m, t0.elapsed().as_secs_f64(), RATES);
    assert_eq!(firing(&series, "14m"), set(&["VeilRelayCredentialSpread"]));
}

#[test]
fn a_permission_burst_to_many_peers_is_counted_and_alerted() {
    let (relay, admin) = relay("14200-14299", &[]);
    let before = scrape(admin);
    let t0 = Instant::now();
    // Three allocations, each permitting 20 new peers in a few requests: a scan.
    for a in 0..3u8 {
        let mut c = RawTurn::rest("127.0.0.1:0", relay.addr, &format!("scan{a}"));
        c.allocate();
        for chunk in 0..4u8 {
            let peers: Vec<Attr> = (0..5u8)
                .map(|i| {
                    let ip = format!("127.42.{a}.{}", chunk * 5 + i + 1);
                    Attr::Peer(format!("{ip}:9").parse().unwrap())
                })
                .collect();
            let r = c.request(method::CREATE_PERMISSION, &peers);
            assert_eq!(common::error_code(&r), None);
        }
    }
    // A call: one allocation, three candidates of its peer.
    let mut call = RawTurn::rest("127.0.0.1:0", relay.addr, "caller");
    call.allocate();
    for ip in ["127.43.0.1:9", "127.43.0.2:9", "127.43.0.3:9"] {
        assert_eq!(call.permit(ip.parse().unwrap()), None);
    }
    let m = scrape(admin);
    moved_exactly(
        &before,
        &m,
        &[
            ("veil_relay_peers_permitted_total", 63.0),
            ("veil_relay_permission_bursts_total", 3.0),
        ],
    );
    nothing_personal(&m, &["scan0", "caller", "127.42.", "127.43."]);
    let series = recorded(&before, &m, t0.elapsed().as_secs_f64(), RATES);
    assert_eq!(firing(&series, "14m"), set(&["VeilRelayPermissionBursts"]));
}

/// Receives up to `n` datagrams on `peer` within `wait`; how many.
fn receive(peer: &UdpSocket, n: usize, wait: Duration) -> usize {
    peer.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    let mut got = 0;
    while got < n && Instant::now() < deadline {
        if peer.recv_from(&mut buf).is_ok() {
            got += 1;
        }
    }
    got
}

/// An RTP packet (version 2, Opus payload type), `len` bytes.
fn rtp(seq: u16, len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 111];
    p.extend(seq.to_be_bytes());
    p.resize(len.max(12), 0x55);
    p
}

#[test]
fn payloads_that_are_not_media_are_counted_and_alerted() {
    let (relay, admin) = relay("14300-14399", &[]);
    let peer = UdpSocket::bind("127.0.0.2:0").unwrap();
    let to = peer.local_addr().unwrap();
    let before = scrape(admin);
    let t0 = Instant::now();
    // Three allocations speaking HTTP through the relay: a tunnel.
    for a in 0..3 {
        let mut c = RawTurn::rest("127.0.0.1:0", relay.addr, &format!("tunnel{a}"));
        c.allocate();
        assert_eq!(c.permit(to), None);
        for i in 0..40 {
            c.send_indication(
                to,
                format!("GET /beacon/{i} HTTP/1.1\r\nHost: c2\r\n\r\n").as_bytes(),
            );
        }
    }
    // A call's audio: RTP.
    let mut call = RawTurn::rest("127.0.0.1:0", relay.addr, "caller");
    call.allocate();
    assert_eq!(call.permit(to), None);
    for i in 0..40 {
        call.send_indication(to, &rtp(i, 172));
    }
    assert_eq!(receive(&peer, 160, Duration::from_secs(5)), 160);
    let m = scrape(admin);
    moved_exactly(
        &before,
        &m,
        &[
            ("veil_relay_peers_permitted_total", 4.0),
            (
                "veil_relay_non_media_allocations_total{direction=\"client_to_peer\"}",
                3.0,
            ),
        ],
    );
    let payloads = |class: &str| {
        v(
            &m,
            &format!("veil_relay_payloads_total{{direction=\"client_to_peer\",class=\"{class}\"}}"),
        )
    };
    assert_eq!((payloads("other"), payloads("media")), (120.0, 40.0));
    nothing_personal(&m, &["tunnel0", "caller", &to.port().to_string()]);
    let series = recorded(&before, &m, t0.elapsed().as_secs_f64(), RATES);
    assert_eq!(firing(&series, "14m"), set(&["VeilRelayNonMediaRelaying"]));
}

#[test]
fn an_allocation_moving_far_more_than_a_call_is_counted_and_alerted() {
    // 1 kB/s is the threshold here (8 Mbit/s by default), and no bandwidth cap stands between.
    let (relay, admin) = relay(
        "14400-14499",
        &[
            "--set",
            "signals.heavy_bytes_per_second=1000",
            "--set",
            "limits.bandwidth={allocation: {bytes_per_second: 0, packets_per_second: 0}, user: {bytes_per_second: 0, packets_per_second: 0}}",
        ],
    );
    let peer = UdpSocket::bind("127.0.0.2:0").unwrap();
    let to = peer.local_addr().unwrap();
    let before = scrape(admin);
    let t0 = Instant::now();
    let mut c = RawTurn::rest("127.0.0.1:0", relay.addr, "bulk");
    c.allocate();
    assert_eq!(c.permit(to), None);
    // 1.1 MB in about a second, as RTP-looking datagrams (heavy is about volume alone).
    let drain = std::thread::spawn(move || receive(&peer, 1000, Duration::from_secs(10)));
    for i in 0..1000 {
        c.send_indication(to, &rtp(i, 1100));
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(drain.join().unwrap() > 900);
    let m = scrape(admin);
    moved_exactly(
        &before,
        &m,
        &[
            ("veil_relay_peers_permitted_total", 1.0),
            ("veil_relay_heavy_allocations_total", 1.0),
        ],
    );
    nothing_personal(&m, &["bulk"]);
    let series = recorded(&before, &m, t0.elapsed().as_secs_f64(), RATES);
    assert_eq!(firing(&series, "14m"), set(&["VeilRelayHeavyAllocations"]));
}

/// The NONCE of the 401 an unsigned Allocate from `c` draws.
fn challenge_nonce(c: &mut RawTurn) -> Vec<u8> {
    let txid = c.txid();
    let m = c.build(
        method::ALLOCATE,
        Class::Request,
        txid,
        &[Attr::Raw(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        false,
    );
    c.sock.send_to(&m, c.server).unwrap();
    let r = c.response(&txid).expect("a challenge");
    veil_relay::proto::stun::find_attr(&r, attr::NONCE)
        .expect("a nonce")
        .to_vec()
}

#[test]
fn storms_of_401_and_438_are_counted_per_worker_and_alerted() {
    let (relay, admin) = relay("14500-14599", &[]);
    let before = scrape(admin);
    let t0 = Instant::now();
    let req = |c: &mut RawTurn| {
        let txid = c.txid();
        c.build(
            method::ALLOCATE,
            Class::Request,
            txid,
            &[Attr::Raw(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            true,
        )
    };
    // A guesser: a nonce from a challenge, then 300 signed Allocates with a wrong password.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut guess = RawTurn::with(
        "127.0.0.1:0",
        relay.addr,
        format!("{exp}:victim"),
        "wrong-password".into(),
    );
    guess.nonce = challenge_nonce(&mut guess);
    // A replayer: a valid credential, and a nonce that was issued to another 5-tuple.
    let mut replay = RawTurn::rest("127.0.0.1:0", relay.addr, "replayer");
    replay.nonce = guess.nonce.clone();
    for i in 0..300 {
        for who in [&mut guess, &mut replay] {
            let m = req(who);
            who.sock.send_to(&m, relay.addr).unwrap();
        }
        if i % 20 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = scrape(admin);
        if (rejections(&m, "401") >= 300.0 && rejections(&m, "438") >= 300.0)
            || Instant::now() > deadline
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(rejections(&m, "401") - rejections(&before, "401"), 300.0);
    assert_eq!(rejections(&m, "438") - rejections(&before, "438"), 300.0);
    moved_exactly(
        &before,
        &m,
        &[(
            "veil_relay_auth_failures_total{reason=\"bad_credentials\"}",
            300.0,
        )],
    );
    nothing_personal(&m, &["victim", "replayer"]);
    let series = recorded(&before, &m, t0.elapsed().as_secs_f64(), RATES);
    assert_eq!(
        firing(&series, "14m"),
        set(&["VeilRelayAuthFailureStorm", "VeilRelayStaleNonceStorm"])
    );
}

/// A child process killed when dropped.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Normal traffic from clients we did not write: aioice's two ICE agents exchanging data over
/// their relayed candidates fire nothing; coturn's uclient fires exactly the tunnel alert, and
/// rightly: its payloads (a message number, then filler bytes) are not media, and to a relay
/// that is what a tunnel looks like.
#[test]
fn normal_clients_fire_nothing_but_what_their_payloads_are() {
    common::require_aioice();
    common::require("turnutils_uclient");
    common::require("turnutils_peer");
    let (relay, admin) = relay("14600-14699", &["--user-quota", "100"]);
    let before = scrape(admin);
    let t0 = Instant::now();
    let creds = common::credential("aioice");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aioice/turn_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "ice",
            "--transport",
            "udp",
            "--port",
            &relay.addr.port().to_string(),
        ])
        .args(["--count", "50", "--user", &creds.0, "--password", &creds.1])
        .output()
        .expect("python3 runs");
    let r = common::json_result(&out, "ice/udp");
    assert_eq!(r["received"], serde_json::json!([50, 50]), "{r}");
    let m = scrape(admin);
    let series = recorded(&before, &m, t0.elapsed().as_secs_f64(), RATES);
    assert_eq!(firing(&series, "14m"), BTreeSet::new(), "aioice ICE");
    // Its data messages (a number, then a pattern) are not media: one allocation each way
    // per agent at most, which the alert leaves alone.
    for dir in ["client_to_peer", "peer_to_client"] {
        let k = format!("veil_relay_non_media_allocations_total{{direction=\"{dir}\"}}");
        assert!(v(&m, &k) - v(&before, &k) <= 2.0, "{k}");
    }
    for k in [
        "veil_relay_permission_bursts_total",
        "veil_relay_heavy_allocations_total",
    ] {
        assert_eq!(v(&m, k), v(&before, k), "{k}");
    }

    let port = common::free_udp_port();
    let _peer = Kill(
        Command::new("turnutils_peer")
            .args(["-L", "127.0.0.2", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer starts"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let run = || {
        let before = scrape(admin);
        let t0 = Instant::now();
        let out = Command::new("timeout")
            .args(["120", "turnutils_uclient", "-W", common::SECRET])
            .args(["-u", "uclient", "-m", "10", "-n", "50", "-e", "127.0.0.2"])
            .args([
                "-r",
                &port.to_string(),
                "-p",
                &relay.addr.port().to_string(),
            ])
            .arg("127.0.0.1")
            .output()
            .expect("turnutils_uclient runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (before, t0, out, text)
    };
    let (mut before, mut t0, mut out, mut text) = run();
    if common::uclient_collided(&out, &text) {
        (before, t0, out, text) = run();
    }
    let _ = &out;
    assert!(text.contains("Total lost packets 0 "), "{text}");
    let m = scrape(admin);
    assert_eq!(
        v(
            &m,
            "veil_relay_non_media_allocations_total{direction=\"client_to_peer\"}"
        ) - v(
            &before,
            "veil_relay_non_media_allocations_total{direction=\"client_to_peer\"}"
        ),
        10.0,
        "each of uclient's 10 allocations"
    );
    for k in [
        "veil_relay_permission_bursts_total",
        "veil_relay_heavy_allocations_total",
    ] {
        assert_eq!(v(&m, k), v(&before, k), "{k}");
    }
    assert_eq!(rejections(&m, "401"), 0.0);
    nothing_personal(&m, &["uclient", "aioice", "127.0.0.2"]);
    let series = recorded(&before, &m, t0.elapsed().as_secs_f64(), RATES);
    assert_eq!(
        firing(&series, "14m"),
        set(&["VeilRelayNonMediaRelaying"]),
        "uclient"
    );
}
