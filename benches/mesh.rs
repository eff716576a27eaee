//! The relay mesh against plain relayed UDP, on a fair topology, run by hand (root):
//!
//!     cargo bench --bench mesh            # ~4 minutes
//!
//! Two network namespaces, one per relay, joined by a veth pair (10.77.0.1 ↔ 10.77.0.2): the
//! relays relay and link over it; each relay's clients sit on its namespace's loopback. Callers
//! on A send voice-like datagrams (50 per second, 160 bytes, a send timestamp inside) to callees
//! on B through the real binary, as Send indications; the same traffic runs through the same
//! two relays without a mesh (plain relayed UDP over the veth) and with it. Per number of flows:
//!
//! * one-way delay caller → callee, p50 and p99, and what the mesh adds to plain UDP;
//! * wire bytes between the relays over media bytes (UDP payloads: the link's 1 280-byte
//!   packets against the datagrams' payloads);
//! * the relays' CPU per relayed datagram (both processes, user + system, from /proc), mesh
//!   against plain;
//!
//! then an overload (a link held to its first rung, offered 5x what it carries) and a
//! bottleneck below the link's rate (tbf on the veth): the fixed window with its breaker
//! against quinn's defaults (`mesh.congestion: quinn`).
//!
//! What the observer matches through the link is measured by `tests/mesh_observer.rs`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::RawTurn;
use common::mesh::{MeshNode, Netns, NodeSpec, certs, start_node};
use veil_relay::proto::stun::{Class, Message, attr, method};

const PAYLOAD: usize = 160;
const PPS: u64 = 50;

struct Bed {
    na: Netns,
    nb: Netns,
}

fn sh(args: &[&str]) {
    let ok = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(ok.success(), "{args:?}");
}

impl Bed {
    fn new() -> Bed {
        let na = Netns::new("bench-a");
        let nb = Netns::new("bench-b");
        sh(&[
            "ip", "link", "add", "vbench-a", "netns", &na.0, "type", "veth", "peer", "name",
            "vbench-b", "netns", &nb.0,
        ]);
        na.ip(&["addr", "add", "10.77.0.1/24", "dev", "vbench-a"]);
        nb.ip(&["addr", "add", "10.77.0.2/24", "dev", "vbench-b"]);
        na.ip(&["link", "set", "vbench-a", "up"]);
        nb.ip(&["link", "set", "vbench-b", "up"]);
        Bed { na, nb }
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

struct Pair {
    a: MeshNode,
    b: MeshNode,
}

fn pair(
    bed: &Bed,
    certs_dir: &std::path::Path,
    mesh_extra: &'static str,
    mesh: bool,
    ports: (&'static str, &'static str),
) -> Pair {
    let mut sa = NodeSpec::new("relay-a", "10.77.0.1", ports.0, certs_dir);
    let mut sb = NodeSpec::new("relay-b", "10.77.0.2", ports.1, certs_dir);
    for s in [&mut sa, &mut sb] {
        s.mesh_extra = mesh_extra;
        s.no_mesh = !mesh;
        s.allow = "10.77.0.0/24, 127.0.0.0/8";
        // Every client of the bench shares 127.0.0.1: lift the per-address limits.
        s.top_extra = "limits: {unauthenticated: {per_second: 100000, burst: 100000}}\nquotas: {per_source: 100000}\n";
    }
    sa.mesh_ip = "10.77.0.1";
    sb.mesh_ip = "10.77.0.2";
    sa.peers = vec![("relay-b", format!("10.77.0.2:{}", sb.mesh_port))];
    sb.peers = vec![("relay-a", format!("10.77.0.1:{}", sa.mesh_port))];
    let a = bed.na.run(|| start_node(&sa));
    let b = bed.nb.run(|| start_node(&sb));
    if mesh {
        let up = bed.na.run(|| {
            a.wait_for("veil_relay_mesh_link_up{link=\"relay-b\"}", 15, |v| {
                v == 1.0
            })
        });
        assert_eq!(up, 1.0, "the link comes up");
    }
    Pair { a, b }
}

fn client(node: &MeshNode, id: &str) -> (RawTurn, SocketAddr) {
    let mut c = RawTurn::rest(
        "127.0.0.1:0",
        node.relay.addr,
        &format!(
            "{id};z={}-zone",
            if id.starts_with('x') {
                "relay-a"
            } else {
                "relay-b"
            }
        ),
    );
    let relayed = c.allocate();
    (c, relayed)
}

/// N calls: callers on A (made in A's namespace), callees on B, permitted both ways.
fn calls(bed: &Bed, p: &Pair, n: usize) -> (Vec<(RawTurn, SocketAddr)>, Vec<RawTurn>) {
    let callees: Vec<(RawTurn, SocketAddr)> = bed
        .nb
        .run(|| (0..n).map(|i| client(&p.b, &format!("y{i}"))).collect());
    let callers: Vec<(RawTurn, SocketAddr)> = bed
        .na
        .run(|| (0..n).map(|i| client(&p.a, &format!("x{i}"))).collect());
    let mut out = Vec::new();
    let mut ys = Vec::new();
    for ((mut x, xa), (mut y, ya)) in callers.into_iter().zip(callees) {
        assert_eq!(x.permit(ya), None);
        assert_eq!(y.permit(xa), None);
        out.push((x, ya));
        ys.push(y);
    }
    (out, ys)
}

struct Run {
    sent: u64,
    delays_us: Vec<u64>,
}

/// Every caller sends `pps` datagrams of `size` bytes per second for `secs`; the callees'
/// one-way delays.
fn drive(
    callers: &mut [(RawTurn, SocketAddr)],
    callees: &[RawTurn],
    secs: u64,
    pps: u64,
    size: usize,
) -> Run {
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let delays = Arc::new(Mutex::new(Vec::new()));
    let socks: Vec<_> = callees
        .iter()
        .map(|c| c.sock.try_clone().unwrap())
        .collect();
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    let rx = {
        let (stop, delays) = (stop.clone(), delays.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            let mut local = Vec::new();
            loop {
                let mut any = false;
                for s in &socks {
                    while let Ok((n, _)) = s.recv_from(&mut buf) {
                        any = true;
                        if let Ok(m) = Message::decode(&buf[..n])
                            && m.method == method::DATA
                            && m.class == Class::Indication
                            && let Some(d) = m.get(attr::DATA)
                            && d.len() >= 8
                        {
                            let sent = u64::from_be_bytes(d[..8].try_into().unwrap());
                            let now = t0.elapsed().as_micros() as u64;
                            local.push(now.saturating_sub(sent));
                        }
                    }
                }
                if !any {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            delays.lock().unwrap().extend(local);
        })
    };
    let mut sent = 0;
    let n = callers.len() as u64;
    let period = Duration::from_micros(1_000_000 / pps.max(1));
    let ticks = secs * pps;
    let mut payload = vec![0x55u8; size];
    let mut rng = common::observe::Rng::new(secs * pps + n);
    for k in 0..ticks {
        for (i, (c, to)) in callers.iter_mut().enumerate() {
            // Callers' clocks spread over the period, as independent calls are, and each
            // datagram up to 1 ms late (the jitter of a caller's access network), so that no
            // flow sits at one phase of the cell clock for a whole run.
            let jitter = Duration::from_micros(rng.next() % 1000);
            let due = t0 + period * k as u32 + period * i as u32 / n as u32 + jitter;
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            payload[..8].copy_from_slice(&(t0.elapsed().as_micros() as u64).to_be_bytes());
            c.send_indication(*to, &payload);
            sent += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    rx.join().unwrap();
    let mut d = delays.lock().unwrap().clone();
    d.sort_unstable();
    Run { sent, delays_us: d }
}

fn pct(v: &[u64], p: f64) -> f64 {
    common::observe::percentile(v, p) as f64 / 1000.0
}

struct Point {
    delivered: f64,
    p50: f64,
    p99: f64,
    wire_over_media: f64,
    cpu_us_per_datagram: f64,
    rate: f64,
}

/// What one measurement offers: `flows` calls, each sending `pps` datagrams of `size` bytes,
/// for `warm` seconds unmeasured and then `secs` measured.
#[derive(Clone, Copy)]
struct Load {
    flows: usize,
    warm: u64,
    secs: u64,
    pps: u64,
    size: usize,
}

impl Load {
    fn voice(flows: usize, warm: u64, secs: u64) -> Load {
        Load {
            flows,
            warm,
            secs,
            pps: PPS,
            size: PAYLOAD,
        }
    }
}

fn measure(bed: &Bed, p: &Pair, load: Load, mesh: bool) -> Point {
    let Load {
        flows: n,
        warm,
        secs,
        pps,
        size,
    } = load;
    let (mut callers, callees) = calls(bed, p, n);
    if warm > 0 {
        drive(&mut callers, &callees, warm, pps, size);
    }
    let metric = |ns: &Netns, node: &MeshNode, s: &str| {
        ns.run(|| common::metric(&node.metrics(), s).unwrap_or(0.0))
    };
    let wire = "veil_relay_mesh_link_udp_bytes_total{link=\"relay-b\"}";
    let media = "veil_relay_mesh_media_bytes_total{link=\"relay-b\",direction=\"out\",local_zone=\"relay-a-zone\",remote_zone=\"relay-b-zone\"}";
    std::thread::sleep(Duration::from_millis(300));
    let (w0, m0) = if mesh {
        (metric(&bed.na, &p.a, wire), metric(&bed.na, &p.a, media))
    } else {
        (0.0, 0.0)
    };
    let c0 = cpu_ticks(p.a.relay.child.id()) + cpu_ticks(p.b.relay.child.id());
    let r = drive(&mut callers, &callees, secs, pps, size);
    let c1 = cpu_ticks(p.a.relay.child.id()) + cpu_ticks(p.b.relay.child.id());
    std::thread::sleep(Duration::from_millis(300));
    let (w1, m1) = if mesh {
        (metric(&bed.na, &p.a, wire), metric(&bed.na, &p.a, media))
    } else {
        (0.0, 0.0)
    };
    let rate = if mesh {
        metric(
            &bed.na,
            &p.a,
            "veil_relay_mesh_link_cell_rate{link=\"relay-b\"}",
        )
    } else {
        0.0
    };
    // Deallocate, so that a later run's sockets (the kernel may reuse a port) start afresh.
    let lifetime0 = [common::Attr::Raw(attr::LIFETIME, vec![0, 0, 0, 0])];
    for (c, _) in &mut callers {
        c.request(method::REFRESH, &lifetime0);
    }
    let mut callees = callees;
    for c in &mut callees {
        c.request(method::REFRESH, &lifetime0);
    }
    let ticks_per_s = 100.0;
    Point {
        delivered: r.delays_us.len() as f64 / r.sent.max(1) as f64,
        p50: pct(&r.delays_us, 0.5),
        p99: pct(&r.delays_us, 0.99),
        wire_over_media: if mesh && m1 > m0 {
            (w1 - w0) / (m1 - m0)
        } else {
            1.0
        },
        cpu_us_per_datagram: (c1 - c0) as f64 / ticks_per_s * 1e6 / r.sent.max(1) as f64,
        rate,
    }
}

fn main() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "run as root: network namespaces"
    );
    let dir = std::env::temp_dir().join(format!("veil-bench-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _d = common::TempDir(dir.clone());
    certs(&dir, &["relay-a", "relay-b"]);
    let bed = Bed::new();
    // VEIL_BENCH_FLOWS=8,32 runs those only.
    let flows: Vec<usize> = std::env::var("VEIL_BENCH_FLOWS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 32, 128]);
    let secs = 8;

    // VEIL_BENCH_ONLY=table runs the table only, =congestion the overload and bottleneck only.
    let only = std::env::var("VEIL_BENCH_ONLY").unwrap_or_default();
    if only != "congestion" {
        println!(
            "flows | plain p50/p99 ms | mesh p50/p99 ms | added p50/p99 ms | mesh rate cells/s | wire/media | CPU us/datagram plain, mesh (ratio) | delivered plain, mesh"
        );
        let plain = pair(&bed, &dir, "", false, ("13000-13499", "13500-13999"));
        let mut plain_pts = Vec::new();
        for &n in &flows {
            plain_pts.push(measure(&bed, &plain, Load::voice(n, 0, secs), false));
        }
        drop(plain);
        // VEIL_BENCH_MESH='  rates: [750, 1125]' tries another ladder (any lines of `mesh:`).
        let ladder: &'static str = std::env::var("VEIL_BENCH_MESH")
            .map(|v| &*format!("{v}\n").leak())
            .unwrap_or("");
        let mesh = pair(&bed, &dir, ladder, true, ("14000-14499", "14500-14999"));
        for (i, &n) in flows.iter().enumerate() {
            // 4 s first, so the ladder settles (it steps up after 3 s of load).
            let m = measure(&bed, &mesh, Load::voice(n, 4, secs), true);
            let p = &plain_pts[i];
            println!(
                "{n:>5} | {:.2} / {:.2} | {:.2} / {:.2} | {:+.2} / {:+.2} | {:.0} | {:.2} | {:.1}, {:.1} ({:.2}) | {:.3}, {:.3}",
                p.p50,
                p.p99,
                m.p50,
                m.p99,
                m.p50 - p.p50,
                m.p99 - p.p99,
                m.rate,
                m.wire_over_media,
                p.cpu_us_per_datagram,
                m.cpu_us_per_datagram,
                m.cpu_us_per_datagram / p.cpu_us_per_datagram.max(1e-9),
                p.delivered,
                m.delivered
            );
        }
        drop(mesh);
    }
    if only == "table" {
        return;
    }

    // Overload: a link held to 500 cells/s (0.6 MB/s) offered 64 flows of 1 000-byte datagrams
    // at 50/s (3.2 MB/s).
    let over = pair(
        &bed,
        &dir,
        "  rates: [500]\n",
        true,
        ("15000-15499", "15500-15999"),
    );
    let m = measure(
        &bed,
        &over,
        Load {
            flows: 64,
            warm: 0,
            secs: 6,
            pps: 50,
            size: 1000,
        },
        true,
    );
    let drops = |reason: &str| {
        bed.na.run(|| {
            common::metric(
                &over.a.metrics(),
                &format!(
                    "veil_relay_mesh_link_drops_total{{link=\"relay-b\",reason=\"{reason}\"}}"
                ),
            )
            .unwrap_or(0.0)
        })
    };
    println!(
        "overload (5.3x the link): delivered {:.3}, delay p50 {:.2} ms p99 {:.2} ms, drops stale {} overflow {}",
        m.delivered,
        m.p50,
        m.p99,
        drops("stale"),
        drops("overflow")
    );
    drop(over);

    // A bottleneck below the link's first rung (tbf at 4 Mbit/s on A's side of the veth):
    // the fixed window (its breaker trips; media falls back to plain UDP, which fits) against
    // quinn's Cubic and 1 MiB buffer.
    bed.na.ip(&["link", "set", "vbench-a", "down"]);
    bed.na.ip(&["link", "set", "vbench-a", "up"]);
    let tbf = |on: bool| {
        let argv: Vec<&str> = if on {
            vec![
                "netns", "exec", &bed.na.0, "tc", "qdisc", "add", "dev", "vbench-a", "root", "tbf",
                "rate", "4mbit", "burst", "16kb", "latency", "2s",
            ]
        } else {
            vec![
                "netns", "exec", &bed.na.0, "tc", "qdisc", "del", "dev", "vbench-a", "root",
            ]
        };
        let _ = Command::new("ip").args(argv).status();
    };
    // The breaker off, to see each congestion response alone, then the default.
    let off = "  breaker: {max_loss_percent: 100, max_queueing_ms: 1000000}\n";
    for (name, extra, ports) in [
        (
            "quinn defaults (Cubic, 1 MiB), no breaker",
            format!("  congestion: quinn\n{off}"),
            ("16000-16499", "16500-16999"),
        ),
        (
            "fixed window, no breaker",
            format!("  congestion: fixed\n{off}"),
            ("17000-17499", "17500-17999"),
        ),
        (
            "fixed window + breaker (default)",
            String::new(),
            ("18000-18499", "18500-18999"),
        ),
    ] {
        let extra: &'static str = extra.leak();
        let p = pair(&bed, &dir, extra, true, ports);
        tbf(true);
        let m = measure(&bed, &p, Load::voice(8, 0, 10), true);
        let (up, trips) = bed.na.run(|| {
            let m = p.a.metrics();
            let get = |s: &str| common::metric(&m, s).unwrap_or(0.0);
            (
                get("veil_relay_mesh_link_up{link=\"relay-b\"}"),
                get("veil_relay_mesh_link_breaker_trips_total{link=\"relay-b\"}"),
            )
        });
        tbf(false);
        println!(
            "bottleneck 4 Mbit/s, {name}: delivered {:.3}, delay p50 {:.1} ms p99 {:.1} ms, link up at the end: {up}, breaker trips: {trips}",
            m.delivered, m.p50, m.p99
        );
        drop(p);
    }
}
