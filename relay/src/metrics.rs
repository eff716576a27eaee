//! Prometheus metrics of a relay node, in the text exposition format.
//!
//! Nothing on the forwarding path touches shared memory for metrics: each worker counts in its
//! own plain integers and publishes a snapshot once per timer tick (at most a second old); a
//! scrape sums the snapshots. Labels never carry an IP address, a username or a call id.

use std::fmt::Write;
use std::sync::Mutex;

use crate::proto::server::{Shared, Stats};
use crate::shaping::ShapingStats;

/// What the driver counts per worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Datagrams and payload bytes from clients forwarded to peers.
    pub client_to_peer_packets: u64,
    pub client_to_peer_bytes: u64,
    /// Datagrams and bytes (as framed for the client) from peers forwarded to clients.
    pub peer_to_client_packets: u64,
    pub peer_to_client_bytes: u64,
    /// Sends the kernel refused (buffer full, unreachable).
    pub dropped_sends: u64,
    /// Relayed sockets open on this worker.
    pub relayed_sockets: u64,
}

/// One worker's published counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerReport {
    pub core: Stats,
    pub shaping: ShapingStats,
    pub io: IoStats,
}

/// The latest report of every worker.
#[derive(Debug, Default)]
pub struct Reports {
    workers: Vec<Mutex<WorkerReport>>,
}

impl Reports {
    pub fn new(workers: usize) -> Self {
        Reports {
            workers: (0..workers).map(|_| Mutex::default()).collect(),
        }
    }

    /// Stores worker `i`'s snapshot.
    pub fn publish(&self, i: usize, report: WorkerReport) {
        if let Some(slot) = self.workers.get(i) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = report;
        }
    }

    fn sum(&self) -> WorkerReport {
        let mut t = WorkerReport::default();
        for w in &self.workers {
            let r = *w.lock().unwrap_or_else(|e| e.into_inner());
            let (c, s, i) = (&mut t.core, &mut t.shaping, &mut t.io);
            c.allocations_created += r.core.allocations_created;
            c.allocations_expired += r.core.allocations_expired;
            c.allocations_deleted += r.core.allocations_deleted;
            c.auth_failures += r.core.auth_failures;
            c.peers_denied += r.core.peers_denied;
            c.malformed += r.core.malformed;
            s.padded_frames += r.shaping.padded_frames;
            s.padding_bytes += r.shaping.padding_bytes;
            s.delayed_frames += r.shaping.delayed_frames;
            s.queue_drops += r.shaping.queue_drops;
            s.oversize_unshaped += r.shaping.oversize_unshaped;
            s.cover_frames += r.shaping.cover_frames;
            s.cover_bytes += r.shaping.cover_bytes;
            s.delay_us_sum += r.shaping.delay_us_sum;
            for (a, b) in s.delay_ms_hist.iter_mut().zip(r.shaping.delay_ms_hist) {
                *a += b;
            }
            i.client_to_peer_packets += r.io.client_to_peer_packets;
            i.client_to_peer_bytes += r.io.client_to_peer_bytes;
            i.peer_to_client_packets += r.io.peer_to_client_packets;
            i.peer_to_client_bytes += r.io.peer_to_client_bytes;
            i.dropped_sends += r.io.dropped_sends;
            i.relayed_sockets += r.io.relayed_sockets;
        }
        t
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, v: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {v}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

/// Renders the node's metrics.
pub fn render(core: &Shared, reports: &Reports, port_range_len: usize) -> String {
    let t = reports.sum();
    let mut o = String::with_capacity(4096);
    let g = |o: &mut String, name: &str, help: &str, v: u64| {
        family(o, name, "gauge", help);
        sample(o, name, "", v);
    };
    // Text format 0.0.4: a counter's family is named with its `_total` suffix.
    let c = |o: &mut String, name: &str, help: &str, v: u64| {
        let name = format!("{name}_total");
        family(o, &name, "counter", help);
        sample(o, &name, "", v);
    };
    g(
        &mut o,
        "veil_relay_allocations",
        "Allocations alive on this node.",
        core.allocations() as u64,
    );
    g(
        &mut o,
        "veil_relay_allocation_capacity",
        "Allocations this node accepts at most.",
        core.config.total_quota as u64,
    );
    g(
        &mut o,
        "veil_relay_relayed_sockets",
        "Relayed sockets open.",
        t.io.relayed_sockets,
    );
    g(
        &mut o,
        "veil_relay_port_range_size",
        "Ports in the relayed port range (per address family).",
        port_range_len as u64,
    );
    family(
        &mut o,
        "veil_relay_allocations_ended_total",
        "counter",
        "Allocations ended, by reason.",
    );
    sample(
        &mut o,
        "veil_relay_allocations_ended_total",
        "reason=\"expired\"",
        t.core.allocations_expired,
    );
    sample(
        &mut o,
        "veil_relay_allocations_ended_total",
        "reason=\"deleted\"",
        t.core.allocations_deleted,
    );
    c(
        &mut o,
        "veil_relay_allocations_created",
        "Allocations created.",
        t.core.allocations_created,
    );
    c(
        &mut o,
        "veil_relay_auth_failures",
        "Requests refused for bad or expired credentials.",
        t.core.auth_failures,
    );
    c(
        &mut o,
        "veil_relay_peers_denied",
        "Permissions and channel bindings refused by the peer filter.",
        t.core.peers_denied,
    );
    c(
        &mut o,
        "veil_relay_malformed_datagrams",
        "Datagrams that were neither valid STUN nor ChannelData.",
        t.core.malformed,
    );
    family(
        &mut o,
        "veil_relay_packets_total",
        "counter",
        "Datagrams relayed, by direction.",
    );
    sample(
        &mut o,
        "veil_relay_packets_total",
        "direction=\"client_to_peer\"",
        t.io.client_to_peer_packets,
    );
    sample(
        &mut o,
        "veil_relay_packets_total",
        "direction=\"peer_to_client\"",
        t.io.peer_to_client_packets,
    );
    family(
        &mut o,
        "veil_relay_bytes_total",
        "counter",
        "Bytes relayed, by direction (client leg framed size for peer_to_client).",
    );
    sample(
        &mut o,
        "veil_relay_bytes_total",
        "direction=\"client_to_peer\"",
        t.io.client_to_peer_bytes,
    );
    sample(
        &mut o,
        "veil_relay_bytes_total",
        "direction=\"peer_to_client\"",
        t.io.peer_to_client_bytes,
    );
    c(
        &mut o,
        "veil_relay_dropped_sends",
        "Sends the kernel refused.",
        t.io.dropped_sends,
    );
    c(
        &mut o,
        "veil_relay_shaping_padding_bytes",
        "Bytes of padding added to frames for clients.",
        t.shaping.padding_bytes,
    );
    c(
        &mut o,
        "veil_relay_shaping_delayed_frames",
        "Frames held back for re-clocking.",
        t.shaping.delayed_frames,
    );
    c(
        &mut o,
        "veil_relay_shaping_queue_drops",
        "Frames dropped because the shaping queue was full.",
        t.shaping.queue_drops,
    );
    c(
        &mut o,
        "veil_relay_shaping_cover_frames",
        "Cover frames sent.",
        t.shaping.cover_frames,
    );
    c(
        &mut o,
        "veil_relay_shaping_cover_bytes",
        "Bytes of cover frames sent.",
        t.shaping.cover_bytes,
    );
    family(
        &mut o,
        "veil_relay_shaping_delay_seconds",
        "histogram",
        "Delay added by re-clocking.",
    );
    let mut cum = 0;
    for (i, le) in ["0.001", "0.005", "0.01", "0.02", "0.04", "+Inf"]
        .iter()
        .enumerate()
    {
        cum += t.shaping.delay_ms_hist[i];
        sample(
            &mut o,
            "veil_relay_shaping_delay_seconds_bucket",
            &format!("le=\"{le}\""),
            cum,
        );
    }
    sample(
        &mut o,
        "veil_relay_shaping_delay_seconds_sum",
        "",
        t.shaping.delay_us_sum as f64 / 1e6,
    );
    sample(&mut o, "veil_relay_shaping_delay_seconds_count", "", cum);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_sum_and_render_without_personal_data() {
        let r = Reports::new(2);
        let mut a = WorkerReport::default();
        a.core.allocations_created = 3;
        a.io.client_to_peer_bytes = 100;
        a.shaping.delay_ms_hist = [1, 2, 0, 0, 0, 1];
        let mut b = a;
        b.core.allocations_created = 4;
        r.publish(0, a);
        r.publish(1, b);
        r.publish(7, a); // no such worker: ignored
        let shared = crate::proto::server::Shared::new(
            Default::default(),
            Default::default(),
            crate::proto::auth::NonceKey::new(b"k"),
            Default::default(),
            crate::privacy::Redactor::with_secret(b"r", false),
        );
        let text = render(&shared, &r, 1000);
        assert!(
            text.contains("veil_relay_allocations_created_total 7\n"),
            "{text}"
        );
        assert!(text.contains("veil_relay_bytes_total{direction=\"client_to_peer\"} 200\n"));
        assert!(text.contains("veil_relay_shaping_delay_seconds_bucket{le=\"0.005\"} 6\n"));
        assert!(text.contains("veil_relay_shaping_delay_seconds_count 8\n"));
        // Every sample line is `name{labels} value` with a number, every family has HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let v = line.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
        assert_eq!(
            text.matches("# HELP").count(),
            text.matches("# TYPE").count()
        );
    }
}
