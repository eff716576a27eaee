//! The mesh when a link fails, through the real binary, each case in a network namespace of its
//! own (so its loopback can lose the link's addresses while everything else works): the link
//! cut mid-call under `fallback: udp` (the call goes on over plain relayed UDP) and
//! `fallback: refuse` (nothing crosses, counted), the link back, and a restarted relay that
//! rejoins. Needs root.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::mesh::{
    MeshNode, Netns, certs, pair_specs, party, start_node, start_specs, udp_between,
};
use common::wire::Capture;
use common::{RawTurn, TempDir};

/// Sends `n` datagrams each way; how many arrived each way.
fn call(
    x: &mut RawTurn,
    xa: SocketAddr,
    y: &mut RawTurn,
    ya: SocketAddr,
    n: usize,
) -> (usize, usize) {
    let mut got = (0, 0);
    for i in 0..n {
        x.send_indication(ya, format!("x{i}").as_bytes());
        if y.data_indication(Duration::from_millis(400))
            .is_some_and(|(p, _)| p == xa)
        {
            got.0 += 1;
        }
        y.send_indication(xa, format!("y{i}").as_bytes());
        if x.data_indication(Duration::from_millis(400))
            .is_some_and(|(p, _)| p == ya)
        {
            got.1 += 1;
        }
    }
    got
}

fn up(n: &MeshNode, peer: &str, want: bool, secs: u64) -> bool {
    let s = format!("veil_relay_mesh_link_up{{link=\"{peer}\"}}");
    let w = if want { 1.0 } else { 0.0 };
    n.wait_for(&s, secs, |v| v == w) == w
}

fn cut_mid_call(fallback: &str) {
    let ns = Netns::new(&format!("cut-{fallback}"));
    ns.allow_cuts();
    let certs_dir =
        std::env::temp_dir().join(format!("veil-mesh-fail-{}-{fallback}", std::process::id()));
    std::fs::create_dir_all(&certs_dir).unwrap();
    let _certs = TempDir(certs_dir.clone());
    certs(&certs_dir, &["relay-a", "relay-b"]);
    let extra = format!("  fallback: {fallback}\n  idle_timeout: 1\n");
    ns.run(|| {
        let (sa, sb) = pair_specs(
            &certs_dir,
            ("127.0.0.61", "11700-11749", "127.0.0.71"),
            ("127.0.0.62", "11750-11799", "127.0.0.72"),
            &extra,
        );
        let (a, b) = start_specs(&sa, &sb);
        let (mut x, xa) = party(&a, "caller");
        let (mut y, ya) = party(&b, "callee");
        assert_eq!(x.permit(ya), None);
        assert_eq!(y.permit(xa), None);
        assert_eq!(call(&mut x, xa, &mut y, ya, 10), (10, 10), "over the link");

        // The link's addresses become unreachable; the relayed ones stay.
        ns.cut("127.0.0.71", true);
        ns.cut("127.0.0.72", true);
        assert!(
            up(&a, "relay-b", false, 6),
            "the link is down within the idle timeout"
        );
        let cap = Capture::start();
        let got = call(&mut x, xa, &mut y, ya, 10);
        let packets = cap.stop();
        let plain = udp_between(&packets, "127.0.0.61", "127.0.0.62");
        match fallback {
            "udp" => {
                assert_eq!(got, (10, 10), "the call goes on over plain UDP");
                assert_eq!(plain, 20, "as plain relayed UDP between the relays");
            }
            _ => {
                assert_eq!(got, (0, 0), "nothing crosses unprotected");
                assert_eq!(plain, 0);
                let refused = a.metric("veil_relay_mesh_refused_total");
                assert!(refused >= 10.0, "counted: {refused}");
            }
        }

        // The link comes back (redialled with backoff) and carries the call again.
        ns.cut("127.0.0.71", false);
        ns.cut("127.0.0.72", false);
        assert!(up(&a, "relay-b", true, 20), "the link is back");
        assert!(up(&b, "relay-a", true, 5));
        let cap = Capture::start();
        assert_eq!(call(&mut x, xa, &mut y, ya, 10), (10, 10));
        let packets = cap.stop();
        assert_eq!(udp_between(&packets, "127.0.0.61", "127.0.0.62"), 0);
    });
}

#[test]
fn a_link_cut_mid_call_falls_back_to_plain_udp() {
    cut_mid_call("udp");
}

#[test]
fn a_link_cut_mid_call_under_refuse_carries_nothing_unprotected() {
    cut_mid_call("refuse");
}

#[test]
fn a_restarted_relay_rejoins() {
    let ns = Netns::new("restart");
    let certs_dir = std::env::temp_dir().join(format!("veil-mesh-restart-{}", std::process::id()));
    std::fs::create_dir_all(&certs_dir).unwrap();
    let _certs = TempDir(certs_dir.clone());
    certs(&certs_dir, &["relay-a", "relay-b"]);
    ns.run(|| {
        let (sa, sb) = pair_specs(
            &certs_dir,
            ("127.0.0.63", "11800-11849", "127.0.0.1"),
            ("127.0.0.64", "11850-11899", "127.0.0.1"),
            "  idle_timeout: 1\n",
        );
        let (a, b) = start_specs(&sa, &sb);
        drop(b);
        assert!(
            up(&a, "relay-b", false, 6),
            "the link is down once B is gone"
        );
        let b = start_node(&sb);
        assert!(up(&a, "relay-b", true, 20), "B rejoins");
        assert!(up(&b, "relay-a", true, 5));
        let (mut x, xa) = party(&a, "caller");
        let (mut y, ya) = party(&b, "callee");
        assert_eq!(x.permit(ya), None);
        assert_eq!(y.permit(xa), None);
        assert_eq!(call(&mut x, xa, &mut y, ya, 10), (10, 10));
        let out = "veil_relay_mesh_media_datagrams_total{link=\"relay-b\",direction=\"out\",\
                   local_zone=\"relay-a-zone\",remote_zone=\"relay-b-zone\"}";
        assert_eq!(a.wait_for(out, 5, |v| v >= 10.0), 10.0, "over the link");
    });
}

/// A bottleneck below the link's rate, with a deep buffer (tbf on the namespace's loopback:
/// 4 Mbit/s against the link's 7.7, up to 300 ms queued): the link would lose little and delay
/// everything; its breaker sees the standing queue (or the loss once the buffer is full),
/// closes it and holds it down, the call goes on as plain relayed UDP, which the path carries,
/// and once the path is wide again the link comes back after its hold.
#[test]
fn a_path_that_cannot_carry_the_rate_trips_the_breaker_and_the_call_goes_on() {
    let ns = Netns::new("breaker");
    let certs_dir = std::env::temp_dir().join(format!("veil-mesh-breaker-{}", std::process::id()));
    std::fs::create_dir_all(&certs_dir).unwrap();
    let _certs = TempDir(certs_dir.clone());
    certs(&certs_dir, &["relay-a", "relay-b"]);
    let tbf = |on: bool| {
        let mut c = std::process::Command::new("tc");
        c.args(["-n", &ns.0, "qdisc", if on { "add" } else { "del" }]);
        c.args(["dev", "lo", "root"]);
        if on {
            // A burst of 128 KB lets loopback's 64 KB TCP segments (the admin endpoint) through.
            c.args(["tbf", "rate", "4mbit", "burst", "128kb", "latency", "300ms"]);
        }
        assert!(c.status().expect("tc (iproute2)").success(), "tc {on}");
    };
    ns.run(|| {
        let (sa, sb) = pair_specs(
            &certs_dir,
            ("127.0.0.65", "11900-11949", "127.0.0.1"),
            ("127.0.0.66", "11950-11999", "127.0.0.1"),
            "  breaker: {hold_seconds: 8}\n",
        );
        let (a, b) = start_specs(&sa, &sb);
        let (mut x, xa) = party(&a, "caller");
        let (mut y, ya) = party(&b, "callee");
        assert_eq!(x.permit(ya), None);
        assert_eq!(y.permit(xa), None);
        assert_eq!(call(&mut x, xa, &mut y, ya, 5), (5, 5), "over the link");
        let trips = "veil_relay_mesh_link_breaker_trips_total{link=\"relay-b\"}";
        assert_eq!(a.metric(trips), 0.0);

        tbf(true);
        // A counts its own breaker's trips and B's (by the close code).
        assert_eq!(
            a.wait_for(trips, 15, |v| v >= 1.0),
            1.0,
            "the breaker trips"
        );
        assert!(up(&a, "relay-b", false, 2), "and the link is down");
        let (_, status) = common::http_get(a.admin, "/status");
        assert!(status.contains("circuit breaker"), "{status}");
        // Held down: the call goes on as plain relayed UDP.
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(call(&mut x, xa, &mut y, ya, 10), (10, 10), "over plain UDP");
        assert_eq!(
            a.metric("veil_relay_mesh_link_up{link=\"relay-b\"}"),
            0.0,
            "still held"
        );

        tbf(false);
        assert!(up(&a, "relay-b", true, 20), "back after its hold");
        assert_eq!(call(&mut x, xa, &mut y, ya, 5), (5, 5));
        assert_eq!(
            a.metric(trips),
            1.0,
            "no trip on a path that carries the rate"
        );
    });
}
