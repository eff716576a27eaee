//! The link on the wire, as an observer who knows the design. Relay A is linked to B and C;
//! callers on A call callees on B (even callers) or C (odd ones) with DTX voice (and one video
//! flow), sent by Send indications through the real binary on loopback, captured on `lo`.
//!
//! * With 0, 1, 8 and 32 voice flows (+ video) each link carries one datagram size and the
//!   same packet rate.
//! * The observer sees every caller's uplink and A's links, and guesses for each caller which
//!   relay its callee is on (the link whose byte series correlates best with the caller's,
//!   lags 0-100 ms): at chance (1/2) through the mesh, and — the same traffic through the same
//!   relays without a mesh (plain relayed UDP to the callee's relay) — near certainty, so the
//!   observer is one that would catch a leak. Needs root (the capture).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::RawTurn;
use common::mesh::{MeshNode, NodeSpec, certs, party, start_node};
use common::observe::{By, Flow, Rng, dtx_voice, pearson, series};
use common::wire::{Capture, Packet, now_us};

/// Cells per second of every link in this test (one rung: the rate cannot move mid-test).
const RATE: &str = "  rates: [600]\n";

struct Trio {
    a: MeshNode,
    b: MeshNode,
    c: MeshNode,
}

fn trio(
    certs_dir: &std::path::Path,
    ips: [&'static str; 3],
    ports: [&'static str; 3],
    mesh: bool,
) -> Trio {
    let mut sa = NodeSpec::new("relay-a", ips[0], ports[0], certs_dir);
    let mut sb = NodeSpec::new("relay-b", ips[1], ports[1], certs_dir);
    let mut sc = NodeSpec::new("relay-c", ips[2], ports[2], certs_dir);
    sa.peers = vec![
        ("relay-b", format!("127.0.0.1:{}", sb.mesh_port)),
        ("relay-c", format!("127.0.0.1:{}", sc.mesh_port)),
    ];
    sb.peers = vec![("relay-a", format!("127.0.0.1:{}", sa.mesh_port))];
    sc.peers = vec![("relay-a", format!("127.0.0.1:{}", sa.mesh_port))];
    for s in [&mut sa, &mut sb, &mut sc] {
        s.mesh_extra = RATE;
        s.no_mesh = !mesh;
    }
    let t = Trio {
        a: start_node(&sa),
        b: start_node(&sb),
        c: start_node(&sc),
    };
    if mesh {
        for (n, p) in [
            (&t.a, "relay-b"),
            (&t.a, "relay-c"),
            (&t.b, "relay-a"),
            (&t.c, "relay-a"),
        ] {
            let s = format!("veil_relay_mesh_link_up{{link=\"{p}\"}}");
            assert_eq!(n.wait_for(&s, 10, |v| v == 1.0), 1.0, "{p} up");
        }
    }
    t
}

/// Callers on A, each with a callee on B (even) or C (odd), permitted both ways.
fn calls(t: &Trio, n: usize) -> Vec<(RawTurn, SocketAddr, RawTurn)> {
    let mut out = Vec::new();
    for i in 0..n {
        let (mut x, xa) = party(&t.a, &format!("caller{i}"));
        let callee_node = if i % 2 == 0 { &t.b } else { &t.c };
        let (mut y, ya) = party(callee_node, &format!("callee{i}"));
        assert_eq!(x.permit(ya), None);
        assert_eq!(y.permit(xa), None);
        // The callee's socket is kept open with its allocation: closed, its ephemeral port
        // could be handed to the next callee's socket, whose Allocate would meet the same
        // 5-tuple under another user (441; seen once in CI).
        out.push((x, ya, y));
    }
    out
}

/// Sends each caller's schedule (µs from `start`, bytes) to its callee; `video` adds a ~1 Mbit/s
/// flow (30 frames/s of 4 × 1 100 bytes) from the last caller.
fn drive(callers: &mut [(RawTurn, SocketAddr, RawTurn)], seconds: u64, seed: u64, video: bool) {
    let mut events: Vec<(u64, usize, usize)> = Vec::new();
    for (i, _) in callers.iter().enumerate() {
        let mut rng = Rng::new(seed + i as u64);
        for (t, n) in dtx_voice(&mut rng, seconds * 1_000_000) {
            events.push((t, i, n));
        }
    }
    if video && !callers.is_empty() {
        let last = callers.len() - 1;
        for f in 0..seconds * 30 {
            for k in 0..4 {
                events.push((f * 33_333 + k * 200, last, 1100));
            }
        }
    }
    events.sort_unstable();
    let start = Instant::now();
    for (t, i, n) in events {
        let due = start + Duration::from_micros(t);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let (c, to, _) = &mut callers[i];
        let to = *to;
        c.send_indication(to, &vec![0x55; n]);
    }
    if let Some(d) = (start + Duration::from_secs(seconds)).checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

fn link_packets<'a>(packets: &'a [Packet], from: &MeshNode, to: &MeshNode) -> Vec<&'a Packet> {
    packets
        .iter()
        .filter(|p| !p.tcp && p.src.port() == from.mesh_port && p.dst.port() == to.mesh_port)
        .collect()
}

/// Packets per second and the distinct sizes of A's two links over `[from, to)` µs.
fn link_shape(packets: &[Packet], t: &Trio, from: u64, to: u64) -> Vec<(f64, Vec<usize>)> {
    [&t.b, &t.c]
        .iter()
        .map(|peer| {
            let l: Vec<_> = link_packets(packets, &t.a, peer)
                .into_iter()
                .filter(|p| p.t_us >= from && p.t_us < to)
                .collect();
            let mut sizes: Vec<usize> = l.iter().map(|p| p.len).collect();
            sizes.sort_unstable();
            sizes.dedup();
            (l.len() as f64 / ((to - from) as f64 / 1e6), sizes)
        })
        .collect()
}

/// The observer: for each caller, the flow between relays whose byte series correlates best
/// with its uplink (lags 0-100 ms, 20 ms bins), and so the relay that flow goes to (0: B, 1: C);
/// the share of callers it places right. Through the mesh the flows between relays are the two
/// links; without it, each call's own 5-tuple.
fn place(uplinks: &[Flow], candidates: &[(Flow, usize)], from: u64, to: u64) -> f64 {
    let bin = 20_000;
    let bins = ((to - from) / bin) as usize;
    let max_lag = 5;
    let targets: Vec<(Vec<f64>, usize)> = candidates
        .iter()
        .map(|(f, r)| (series(f, By::Bytes, from, bin, bins), *r))
        .collect();
    let mut hits = 0;
    for (i, up) in uplinks.iter().enumerate() {
        let s = series(up, By::Bytes, from, bin, bins);
        let score = |t: &Vec<f64>| {
            (0..=max_lag)
                .map(|lag| pearson(&t[lag..], &s[..bins - lag]))
                .fold(f64::MIN, f64::max)
        };
        let guess = targets
            .iter()
            .map(|(t, r)| (score(t), *r))
            .fold((f64::MIN, 0), |a, b| if b.0 > a.0 { b } else { a })
            .1;
        if guess == i % 2 {
            hits += 1;
        }
    }
    hits as f64 / uplinks.len() as f64
}

fn uplinks(
    packets: &[Packet],
    callers: &[(RawTurn, SocketAddr, RawTurn)],
    a: &MeshNode,
) -> Vec<Flow> {
    callers
        .iter()
        .map(|(c, _, _)| {
            let me = c.sock.local_addr().unwrap();
            packets
                .iter()
                .filter(|p| {
                    !p.tcp && SocketAddr::V4(p.src) == me && SocketAddr::V4(p.dst) == a.relay.addr
                })
                .map(|p| (p.t_us, p.len))
                .collect()
        })
        .collect()
}

#[test]
fn the_link_shows_one_size_one_rate_and_matches_callers_at_chance() {
    let dir = std::env::temp_dir().join(format!("veil-mesh-observer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _d = common::TempDir(dir.clone());
    certs(&dir, &["relay-a", "relay-b", "relay-c"]);

    // Through the mesh.
    let t = trio(
        &dir,
        ["127.0.0.101", "127.0.0.102", "127.0.0.103"],
        ["12200-12299", "12300-12399", "12400-12499"],
        true,
    );
    let mut callers = calls(&t, 32);
    let cap = Capture::start();
    let mut phases = Vec::new();
    for (flows, secs) in [(0usize, 2u64), (1, 2), (8, 2), (32, 8)] {
        let from = now_us();
        drive(&mut callers[..flows], secs, 7 + flows as u64, flows == 32);
        phases.push((flows, from + 300_000, now_us()));
    }
    std::thread::sleep(Duration::from_millis(200));
    let packets = cap.stop();
    let shapes: Vec<_> = phases
        .iter()
        .map(|&(n, from, to)| (n, link_shape(&packets, &t, from, to)))
        .collect();
    let rate0 = shapes[0].1[0].0;
    for (n, links) in &shapes {
        for (rate, sizes) in links {
            assert_eq!(
                sizes,
                &vec![1280],
                "{n} flows: one datagram size on the link"
            );
            // Within 5 %: on this 2-core machine under the test's own load (three relays, 33
            // senders, the capture) a run measured 32 flows at 579.6/s against 600: a clock
            // thread descheduled for more than four cell intervals skips cells rather than
            // bursting them (counted as late), and the capture may miss packets. A rate that
            // followed the calls would move by a rung (1.5x).
            assert!(
                (rate - rate0).abs() / rate0 < 0.05,
                "{n} flows: the same rate ({rate:.1}/s against {rate0:.1}/s with none)"
            );
        }
    }
    assert!((rate0 - 600.0).abs() < 30.0, "the configured rate: {rate0}");
    let (_, from, to) = phases[3];
    let up = uplinks(&packets, &callers, &t.a);
    let lb: Flow = link_packets(&packets, &t.a, &t.b)
        .iter()
        .map(|p| (p.t_us, p.len))
        .collect();
    let lc: Flow = link_packets(&packets, &t.a, &t.c)
        .iter()
        .map(|p| (p.t_us, p.len))
        .collect();
    let mesh_acc = place(&up, &[(lb, 0), (lc, 1)], from, to);
    drop(callers);
    drop(t);

    // The same traffic, the same relays, no mesh: the plain relayed UDP toward each relay.
    let t = trio(
        &dir,
        ["127.0.0.104", "127.0.0.105", "127.0.0.106"],
        ["12500-12599", "12600-12699", "12700-12799"],
        false,
    );
    let mut callers = calls(&t, 32);
    let cap = Capture::start();
    let from = now_us() + 300_000;
    drive(&mut callers, 8, 7 + 32, true);
    let to = now_us();
    let packets = cap.stop();
    let up = uplinks(&packets, &callers, &t.a);
    // Every flow from A's relayed IP to B's or C's, by 5-tuple.
    let mut flows: std::collections::BTreeMap<(SocketAddr, SocketAddr), (Flow, usize)> =
        Default::default();
    for p in packets
        .iter()
        .filter(|p| !p.tcp && p.src.ip().to_string() == "127.0.0.104")
    {
        let relay = match p.dst.ip().to_string().as_str() {
            "127.0.0.105" => 0,
            "127.0.0.106" => 1,
            _ => continue,
        };
        flows
            .entry((SocketAddr::V4(p.src), SocketAddr::V4(p.dst)))
            .or_insert_with(|| (Vec::new(), relay))
            .0
            .push((p.t_us, p.len));
    }
    assert_eq!(flows.len(), 32, "one flow per call between the relays");
    let candidates: Vec<(Flow, usize)> = flows.into_values().collect();
    let plain_acc = place(&up, &candidates, from, to);
    eprintln!(
        "observer placing 32 callers on the callee's relay: mesh {mesh_acc:.2}, plain UDP {plain_acc:.2} (chance 0.50)"
    );
    assert!(
        plain_acc >= 0.9,
        "the observer works on plain UDP: {plain_acc}"
    );
    // Binomial(32, 1/2): above 0.75 (24 of 32) by luck once in ~300 runs.
    assert!(mesh_acc <= 0.75, "through the mesh, at chance: {mesh_acc}");
}
