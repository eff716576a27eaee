//! The mesh's Prometheus series. Labels are bounded and carry no caller: `link` is a configured
//! peer's name, `local_zone` / `remote_zone` the zones the relays serve, `reason` and `le` fixed
//! lists.

use veil_ops::prometheus::{family, label_value, sample};

use super::status::{LinkCounters, LinkSnapshot, LinkState, MeshStatus};
use crate::metrics::IoStats;
use crate::proto::mesh::cell::CELL_SIZE;
use crate::proto::mesh::sched::DELAY_BUCKETS_US;

/// Appends the mesh's series (the links', and the workers' routing counters in `io`).
pub fn render(o: &mut String, mesh: Option<&MeshStatus>, io: &IoStats) {
    let counter = |o: &mut String, name: &str, help: &str, v: u64| {
        let name = format!("{name}_total");
        family(o, &name, "counter", help);
        sample(o, &name, "", v);
    };
    counter(
        o,
        "veil_relay_local_delivered",
        "Datagrams from one allocation of this node to another, delivered in-process (never \
         through a socket).",
        io.local_delivered,
    );
    counter(
        o,
        "veil_relay_local_undelivered",
        "Datagrams to a relayed address of this node that no allocation held (or whose \
         worker's inbox was full).",
        io.local_undelivered,
    );
    let Some(mesh) = mesh else {
        return;
    };
    counter(
        o,
        "veil_relay_mesh_queued",
        "Datagrams the workers handed to a link of the mesh.",
        io.mesh_sent,
    );
    counter(
        o,
        "veil_relay_mesh_link_queue_full",
        "Datagrams for a link dropped because its queue from the workers was full.",
        io.mesh_full,
    );
    counter(
        o,
        "veil_relay_mesh_refused",
        "Datagrams to or from a linked relay dropped while its link was down (fallback: refuse).",
        io.mesh_refused,
    );
    let name = "veil_relay_mesh_refusals_total";
    family(
        o,
        name,
        "counter",
        "Connections and links the mesh refused, by reason (unknown_source: not a peer's \
         address, no answer sent; handshake: TLS failed, e.g. no certificate, another CA's, \
         expired; unknown_peer; announce; overlap: claimed another relay's ranges; duplicate).",
    );
    for (r, v) in mesh.refusals() {
        sample(o, name, &format!("reason=\"{}\"", r.label()), v);
    }
    let links = mesh.links();
    let local = label_value(&mesh.zone);
    let lbl = |l: &LinkSnapshot| format!("link=\"{}\"", label_value(&l.name));
    type Gauge = (&'static str, &'static str, fn(&LinkSnapshot) -> f64);
    let gauges: [Gauge; 4] = [
        (
            "veil_relay_mesh_link_up",
            "1 while the link to this relay carries cells, else 0.",
            |l| f64::from(u8::from(l.state == LinkState::Up)),
        ),
        (
            "veil_relay_mesh_link_rtt_seconds",
            "The link's smoothed round-trip time.",
            |l| l.rtt.as_secs_f64(),
        ),
        (
            "veil_relay_mesh_link_cell_rate",
            "Cells per second the link sends now (its rung of the ladder), with media or cover.",
            |l| f64::from(l.rate),
        ),
        (
            "veil_relay_mesh_link_loss_ratio",
            "Fraction of the link's packets lost in the breaker's last interval.",
            |l| l.loss,
        ),
    ];
    for (name, help, f) in gauges {
        family(o, name, "gauge", help);
        for l in &links {
            sample(o, name, &lbl(l), f(l));
        }
    }
    let name = "veil_relay_mesh_link_breaker_trips_total";
    family(
        o,
        name,
        "counter",
        "Times a circuit breaker (this relay's or the peer's) closed the link: loss or a \
         standing queue beyond mesh.breaker; it stays down for mesh.breaker.hold_seconds.",
    );
    for l in &links {
        sample(o, name, &lbl(l), l.breaker_trips);
    }
    family(
        o,
        "veil_relay_mesh_link_cell_bytes",
        "gauge",
        "Bytes of every cell of every link (the QUIC datagram payload).",
    );
    sample(o, "veil_relay_mesh_link_cell_bytes", "", CELL_SIZE);
    let totals: Vec<_> = links.iter().map(|l| (l, l.totals())).collect();
    type Get = fn(&LinkCounters) -> u64;
    let counters: [(&str, &str, Get); 7] = [
        (
            "veil_relay_mesh_link_media_cells_total",
            "Cells sent that carried media.",
            |c| c.tx.media_cells,
        ),
        (
            "veil_relay_mesh_link_cover_cells_total",
            "Cells sent that carried none (cover).",
            |c| c.tx.cover_cells,
        ),
        (
            "veil_relay_mesh_link_udp_datagrams_total",
            "UDP datagrams the link's QUIC connection sent (cells, and its own ACKs, probes and \
             handshake).",
            |c| c.udp_tx_datagrams,
        ),
        (
            "veil_relay_mesh_link_udp_bytes_total",
            "Their bytes.",
            |c| c.udp_tx_bytes,
        ),
        (
            "veil_relay_mesh_link_lost_packets_total",
            "Packets the link's QUIC connection declared lost.",
            |c| c.lost_packets,
        ),
        (
            "veil_relay_mesh_link_unsent_cells_total",
            "Cells that never left: QUIC's send buffer was full (this relay's egress is backed \
             up). The breaker counts them as lost.",
            |c| c.unsent_cells,
        ),
        (
            "veil_relay_mesh_link_rate_steps_total",
            "Times the link's cell rate changed.",
            |c| c.tx.steps,
        ),
    ];
    for (name, help, f) in counters {
        family(o, name, "counter", help);
        for (l, c) in &totals {
            sample(o, name, &lbl(l), f(c));
        }
    }
    let name = "veil_relay_mesh_link_drops_total";
    family(
        o,
        name,
        "counter",
        "Datagrams the link dropped, by reason: stale (waited past max_delay), overflow (queue \
         full: the oldest of the heaviest flow), too_large, no_route (no announced range names \
         it), bad_source (the peer named a source outside its announced ranges), \
         bad_destination, no_allocation, inbox_full, cut (a lost cell carried part of it).",
    );
    type Drop = (&'static str, Get);
    let reasons: [Drop; 9] = [
        ("stale", |c| c.tx.stale),
        ("overflow", |c| c.tx.overflow),
        ("too_large", |c| c.tx.too_large),
        ("no_route", |c| c.routed.no_route),
        ("bad_source", |c| c.routed.bad_source),
        ("bad_destination", |c| c.routed.bad_destination),
        ("no_allocation", |c| c.routed.no_allocation),
        ("inbox_full", |c| c.routed.inbox_full),
        ("cut", |c| c.rx.cut_datagrams),
    ];
    for (l, c) in &totals {
        for (reason, f) in reasons {
            sample(o, name, &format!("{},reason=\"{reason}\"", lbl(l)), f(c));
        }
    }
    let name = "veil_relay_mesh_link_queue_delay_seconds";
    family(
        o,
        name,
        "histogram",
        "How long datagrams waited in the link's queue before their first byte left.",
    );
    for (l, c) in &totals {
        let mut cum = 0;
        for (i, b) in DELAY_BUCKETS_US.iter().enumerate() {
            cum += c.tx.delay_buckets[i];
            let le = *b as f64 / 1e6;
            sample(
                o,
                &format!("{name}_bucket"),
                &format!("{},le=\"{le}\"", lbl(l)),
                cum,
            );
        }
        cum += c.tx.delay_buckets[DELAY_BUCKETS_US.len()];
        sample(
            o,
            &format!("{name}_bucket"),
            &format!("{},le=\"+Inf\"", lbl(l)),
            cum,
        );
        sample(
            o,
            &format!("{name}_sum"),
            &lbl(l),
            c.tx.delay_sum_us as f64 / 1e6,
        );
        sample(o, &format!("{name}_count"), &lbl(l), cum);
    }
    // Cross-border media on the data plane: what crossed between zones, per link.
    for (name, help, f) in [
        (
            "veil_relay_mesh_media_bytes_total",
            "Media payload bytes that crossed a link, by direction (out: from this relay's zone \
             to the remote one) and the two zones: the data-plane record of cross-border media.",
            (|c| (c.routed.tx_bytes, c.routed.rx_bytes)) as fn(&LinkCounters) -> (u64, u64),
        ),
        (
            "veil_relay_mesh_media_datagrams_total",
            "Media datagrams that crossed a link, by direction and the two zones.",
            |c| (c.routed.tx_datagrams, c.routed.rx_datagrams),
        ),
    ] {
        family(o, name, "counter", help);
        for (l, c) in &totals {
            let remote = label_value(&l.remote_zone);
            let (out, inn) = f(c);
            for (dir, v) in [("out", out), ("in", inn)] {
                sample(
                    o,
                    name,
                    &format!(
                        "{},direction=\"{dir}\",local_zone=\"{local}\",remote_zone=\"{remote}\"",
                        lbl(l)
                    ),
                    v,
                );
            }
        }
    }
}
