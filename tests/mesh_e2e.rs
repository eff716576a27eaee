//! The relay mesh through the real binary, on loopback: a call whose parties sit on two relays
//! rides the link (and nothing else crosses between the relays), both parties on one relay are
//! delivered in-process, and the link refuses who must be refused. Needs root (the captures).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::mesh::{certs, party, start_pair, udp_between};
use common::wire::Capture;
use common::{RawTurn, TempDir};

fn cert_dir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("veil-mesh-certs-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    certs(&d, &["relay-a", "relay-b", "relay-c", "relay-0"]);
    TempDir(d)
}

/// Sends `n` datagrams from `from` to `to_addr` and counts what `to` receives from
/// `from_addr`, with the exact payloads.
fn exchange(
    from: &mut RawTurn,
    from_addr: SocketAddr,
    to: &RawTurn,
    to_addr: SocketAddr,
    n: usize,
) -> usize {
    let mut got = 0;
    for i in 0..n {
        let payload = format!("media {i} {from_addr}");
        from.send_indication(to_addr, payload.as_bytes());
        if let Some((peer, data)) = to.data_indication(Duration::from_secs(2)) {
            assert_eq!(
                peer, from_addr,
                "the peer is the other party's relayed address"
            );
            assert_eq!(data, payload.as_bytes());
            got += 1;
        }
    }
    got
}

#[test]
fn a_call_across_two_relays_rides_the_link_and_nothing_else_crosses() {
    let certs = cert_dir("call");
    let (a, b) = start_pair(
        &certs.0,
        ("127.0.0.21", "11300-11349"),
        ("127.0.0.22", "11350-11399"),
        "",
    );
    let cap = Capture::start();
    let (mut x, xa) = party(&a, "caller");
    let (mut y, ya) = party(&b, "callee");
    assert_eq!(xa.ip().to_string(), "127.0.0.21");
    assert_eq!(ya.ip().to_string(), "127.0.0.22");
    assert_eq!(x.permit(ya), None);
    assert_eq!(y.permit(xa), None);
    let n = 40;
    assert_eq!(exchange(&mut x, xa, &y, ya, n), n, "caller → callee");
    assert_eq!(exchange(&mut y, ya, &x, xa, n), n, "callee → caller");
    std::thread::sleep(Duration::from_millis(300));
    let packets = cap.stop();
    // Between the relays' relayed addresses: nothing. Everything went through the link.
    assert_eq!(udp_between(&packets, "127.0.0.21", "127.0.0.22"), 0);
    let link: Vec<_> = packets
        .iter()
        .filter(|p| !p.tcp && (p.src.port() == a.mesh_port || p.src.port() == b.mesh_port))
        .collect();
    assert!(link.len() > 100, "the link carried cells: {}", link.len());
    let sizes: std::collections::BTreeSet<usize> = link.iter().map(|p| p.len).collect();
    assert_eq!(sizes.len(), 1, "one datagram size on the link: {sizes:?}");
    assert_eq!(*sizes.first().unwrap(), 1280);
    // The data-plane record of what crossed, per zone pair and direction.
    let out = "veil_relay_mesh_media_datagrams_total{link=\"relay-b\",direction=\"out\",local_zone=\"relay-a-zone\",remote_zone=\"relay-b-zone\"}";
    let inn = "veil_relay_mesh_media_datagrams_total{link=\"relay-b\",direction=\"in\",local_zone=\"relay-a-zone\",remote_zone=\"relay-b-zone\"}";
    assert_eq!(a.wait_for(out, 5, |v| v >= n as f64), n as f64);
    assert_eq!(a.wait_for(inn, 5, |v| v >= n as f64), n as f64);
    for node in [&a, &b] {
        let m = node.metrics();
        for reason in ["stale", "overflow", "bad_source", "no_allocation", "cut"] {
            let peer = if std::ptr::eq(node, &a) {
                "relay-b"
            } else {
                "relay-a"
            };
            let s =
                format!("veil_relay_mesh_link_drops_total{{link=\"{peer}\",reason=\"{reason}\"}}");
            assert_eq!(common::metric(&m, &s), Some(0.0), "{s}");
        }
    }
    // /status lists the link.
    let (_, status) = common::http_get(a.admin, "/status");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["links"][0]["name"], "relay-b");
    assert_eq!(v["links"][0]["state"], "up");
    assert_eq!(v["links"][0]["remote_zone"], "relay-b-zone");
}

#[test]
fn two_parties_on_one_relay_are_delivered_in_process() {
    let certs = cert_dir("local");
    let (a, _b) = start_pair(
        &certs.0,
        ("127.0.0.23", "11400-11449"),
        ("127.0.0.24", "11450-11499"),
        "",
    );
    let cap = Capture::start();
    let (mut x, xa) = party(&a, "one");
    let (mut y, ya) = party(&a, "two");
    assert_eq!(x.permit(ya), None);
    assert_eq!(y.permit(xa), None);
    let n = 30;
    assert_eq!(exchange(&mut x, xa, &y, ya, n), n);
    assert_eq!(exchange(&mut y, ya, &x, xa, n), n);
    let packets = cap.stop();
    // Never through a socket: no UDP from a relayed port to a relayed port.
    let relayed_to_relayed = packets
        .iter()
        .filter(|p| {
            !p.tcp
                && p.src.ip().to_string() == "127.0.0.23"
                && p.dst.ip().to_string() == "127.0.0.23"
        })
        .count();
    assert_eq!(relayed_to_relayed, 0);
    assert_eq!(
        a.wait_for("veil_relay_local_delivered_total", 5, |v| v >= 60.0),
        60.0
    );
    // A permission still gates it: a third allocation without one gets nothing.
    let (mut z, za) = party(&a, "three");
    x.send_indication(za, b"unpermitted");
    assert_eq!(z.data_indication(Duration::from_millis(500)), None);
    let _ = z.permit(xa);
}
