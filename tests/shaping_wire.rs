//! Shaping on the wire: DTX voice through the real `veil relay` binary to webrtc-rs `turn`
//! clients over UDP and over TLS, both legs captured on `lo` (root), with the flow-matching
//! observer of `tests/common/observe.rs`. What must always hold is asserted here; how well the
//! observer does against each mode is the bench's to report (`benches/shaping_wire.rs`).

mod common;

use std::time::Duration;

use common::observe::{By, top1};
use common::wire::{self, Outcome, Spec};

const FLOWS: usize = 6;

async fn drive(ports: &str, extra: &[&str], seed: u64) -> Outcome {
    let mut args = vec![
        "--allow-peer",
        "127.0.0.0/8",
        "--set",
        "limits.unauthenticated.per_second=0",
    ];
    args.extend_from_slice(extra);
    let (relay, _tcp, tls) = common::start_stream_relay(ports, &args);
    let cert = common::stream_relay_cert(ports);
    let spec = Spec {
        udp_flows: FLOWS,
        tls_flows: FLOWS,
        duration: Duration::from_secs(12),
        seed,
    };
    let out = wire::run(spec, relay.addr, tls, &cert, common::SECRET).await;
    drop(relay);
    out
}

/// Every frame the peers sent reached the client application: nothing lost, and no cover
/// frame ended a client's receive loop.
fn assert_all_delivered(out: &Outcome, what: &str) {
    for (i, f) in out.flows.iter().enumerate() {
        assert!(f.sent > 100, "{what} flow {i}: the peer sent {}", f.sent);
        assert_eq!(
            f.received, f.sent,
            "{what} flow {i} (tls: {}): the client received {} of {}",
            f.tls, f.received, f.sent
        );
    }
}

/// The observer is validated on unshaped flows (so these tests can fail): it matches them by
/// bytes per 100 ms on both legs' transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unshaped_flows_are_matched_on_the_wire_by_the_observer() {
    let out = drive("13600-13699", &[], 1).await;
    assert_all_delivered(&out, "off");
    for tls in [false, true] {
        let flows = out.of(tls);
        let ins: Vec<_> = flows.iter().map(|f| f.peer_leg.clone()).collect();
        let outs: Vec<_> = flows.iter().map(|f| f.client_leg.clone()).collect();
        let acc = top1(&ins, &outs, By::Bytes, 100_000, out.from_us, out.to_us);
        assert!(
            acc >= 5.0 / 6.0,
            "tls: {tls}: the observer matched only {acc} of unshaped flows"
        );
    }
}

/// Under the default of `--shaping`, every datagram (UDP) and every TLS record a client gets
/// once its flow has started has the flow's one size, media and cover alike; clients keep
/// receiving everything; on plain UDP the cover is told apart from media by its first byte
/// (the README says so), which the TLS leg does not show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_shaping_gives_every_datagram_and_record_its_flows_size() {
    let out = drive("13700-13799", &["--shaping"], 2).await;
    assert_all_delivered(&out, "--shaping");
    let buckets = [128usize, 256, 512, 1200];
    for f in &out.flows {
        let mut sizes = f.steady_sizes.clone();
        sizes.sort_unstable();
        sizes.dedup();
        assert!(
            f.steady_sizes.len() > 400,
            "cover fills silences: {}",
            f.steady_sizes.len()
        );
        if f.tls {
            // TLS 1.3 records: the plaintext (one bucket) plus its content type and 16-byte tag.
            assert_eq!(sizes.len(), 1, "one record size per TLS flow: {sizes:?}");
            assert!(buckets.contains(&(sizes[0] - 17)), "{sizes:?}");
        } else {
            assert_eq!(sizes.len(), 1, "one datagram size per UDP flow: {sizes:?}");
            assert!(buckets.contains(&sizes[0]), "{sizes:?}");
            let media = f.client_turn.len();
            assert!(
                media < f.client_leg.len(),
                "a TURN-aware observer sees cover apart from ChannelData"
            );
        }
    }
}
