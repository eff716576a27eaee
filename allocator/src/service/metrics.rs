//! The allocator's counters and their Prometheus text: no address, user or call id.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::App;
use crate::audit::counter;

/// The allocator's counters (requests are not a per-packet path: a mutex is fine).
#[derive(Default)]
pub(super) struct Metrics {
    /// Placements by zone.
    pub(super) placed: BTreeMap<String, u64>,
    /// Requests no allowed zone could serve.
    pub(super) refused: u64,
    /// Requests refused because the DB cannot place the client (`unknown: refuse`).
    pub(super) unplaceable: u64,
    /// Lookups whose continent / coordinates came from the embedded table.
    pub(super) filled_continent: u64,
    pub(super) filled_coords: u64,
    /// Calls placed as calls (`/v1/calls` or a join), by outcome.
    pub(super) calls_shared_zone: u64,
    pub(super) calls_cross_zone: u64,
    /// Placement latency histogram buckets (seconds), and sum.
    pub(super) latency: [u64; 6],
    pub(super) latency_sum: f64,
    /// Credentials handed out.
    pub(super) minted: u64,
    /// Times the signing secret changed on disk and was taken up.
    pub(super) secret_reloads: u64,
    /// Requests refused with 429 (a key over its rate).
    pub(super) rate_limited: u64,
    /// Requests refused with 429 (one caller network over its rate under a key).
    pub(super) caller_rate_limited: u64,
}

pub(super) const LATENCY_BOUNDS: [f64; 5] = [0.000_1, 0.000_5, 0.001, 0.005, 0.025];

impl App {
    /// The allocator's metrics in the Prometheus text format: no address, user or call id.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP veil_allocator_placements_total Clients placed, by zone."
        );
        let _ = writeln!(o, "# TYPE veil_allocator_placements_total counter");
        for zone in self.policy.zones().keys() {
            let _ = writeln!(
                o,
                "veil_allocator_placements_total{{zone=\"{zone}\"}} {}",
                m.placed.get(zone).unwrap_or(&0)
            );
        }
        let _ = writeln!(
            o,
            "# HELP veil_allocator_residency_refusals_total Requests no relay of an allowed zone could serve."
        );
        let _ = writeln!(o, "# TYPE veil_allocator_residency_refusals_total counter");
        let _ = writeln!(o, "veil_allocator_residency_refusals_total {}", m.refused);
        counter(
            &mut o,
            "veil_allocator_unplaceable_total",
            "Requests refused because the geo DB cannot place the client (policy unknown: refuse).",
            [("", m.unplaceable)],
        );
        counter(
            &mut o,
            "veil_allocator_location_filled_total",
            "Lookups whose continent or coordinates came from the embedded country table, not the DB.",
            [
                ("fact=\"continent\"", m.filled_continent),
                ("fact=\"coordinates\"", m.filled_coords),
            ],
        );
        counter(
            &mut o,
            "veil_allocator_calls_total",
            "Calls placed as calls (/v1/calls or a join token), by whether both parties share a zone.",
            [
                ("placement=\"same_zone\"", m.calls_shared_zone),
                ("placement=\"cross_zone\"", m.calls_cross_zone),
            ],
        );
        let _ = writeln!(
            o,
            "# HELP veil_allocator_credentials_minted_total TURN credentials handed out."
        );
        let _ = writeln!(o, "# TYPE veil_allocator_credentials_minted_total counter");
        let _ = writeln!(o, "veil_allocator_credentials_minted_total {}", m.minted);
        let _ = writeln!(
            o,
            "# HELP veil_allocator_secret_reloads_total Times a changed signing secret was taken up."
        );
        let _ = writeln!(o, "# TYPE veil_allocator_secret_reloads_total counter");
        let _ = writeln!(
            o,
            "veil_allocator_secret_reloads_total {}",
            m.secret_reloads
        );
        counter(
            &mut o,
            "veil_allocator_rate_limited_total",
            "Requests refused with 429, by what was over its rate: the API key, or one caller \
             network (an IPv4 address, an IPv6 /64) under its key.",
            [
                ("limit=\"key\"", m.rate_limited),
                ("limit=\"caller\"", m.caller_rate_limited),
            ],
        );
        let conns = &self.conns;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(o, "# HELP veil_allocator_connections API connections open.");
        let _ = writeln!(o, "# TYPE veil_allocator_connections gauge");
        let _ = writeln!(o, "veil_allocator_connections {}", conns.open());
        counter(
            &mut o,
            "veil_allocator_connections_refused_total",
            "API connections refused with 503 before a byte was read: their source (an IPv4 \
             address, an IPv6 /64) held connections.max_per_source, or the listener \
             connections.max_total.",
            [
                ("reason=\"per_source\"", load(&conns.refused[0])),
                ("reason=\"total\"", load(&conns.refused[1])),
            ],
        );
        counter(
            &mut o,
            "veil_allocator_connections_timed_out_total",
            "API connections closed for a request head not sent within \
             connections.request_timeout, or no byte moved within connections.idle_timeout.",
            [("", load(&conns.timed_out))],
        );
        let _ = writeln!(
            o,
            "# HELP veil_allocator_placement_duration_seconds Time to answer a placement request."
        );
        let _ = writeln!(
            o,
            "# TYPE veil_allocator_placement_duration_seconds histogram"
        );
        let mut cum = 0;
        for (i, le) in ["0.0001", "0.0005", "0.001", "0.005", "0.025", "+Inf"]
            .iter()
            .enumerate()
        {
            cum += m.latency[i];
            let _ = writeln!(
                o,
                "veil_allocator_placement_duration_seconds_bucket{{le=\"{le}\"}} {cum}"
            );
        }
        let _ = writeln!(
            o,
            "veil_allocator_placement_duration_seconds_sum {}",
            m.latency_sum
        );
        let _ = writeln!(o, "veil_allocator_placement_duration_seconds_count {cum}");
        drop(m);
        let relays = self.relays.read().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            o,
            "# HELP veil_allocator_relay_up Whether the allocator places on a relay (1) or not (0)."
        );
        let _ = writeln!(o, "# TYPE veil_allocator_relay_up gauge");
        for t in relays.iter() {
            let up = u8::from(t.view.healthy && !t.view.draining);
            let _ = writeln!(
                o,
                "veil_allocator_relay_up{{relay=\"{}\",zone=\"{}\"}} {up}",
                metric_name(&t.view.name),
                t.view.zone
            );
        }
        let _ = writeln!(
            o,
            "# HELP veil_allocator_relay_load_ratio Allocations in use over capacity, per relay."
        );
        let _ = writeln!(o, "# TYPE veil_allocator_relay_load_ratio gauge");
        for t in relays.iter() {
            let ratio = if t.view.capacity == 0 {
                0.0
            } else {
                t.view.load as f64 / t.view.capacity as f64
            };
            let _ = writeln!(
                o,
                "veil_allocator_relay_load_ratio{{relay=\"{}\",zone=\"{}\"}} {ratio}",
                metric_name(&t.view.name),
                t.view.zone
            );
        }
        drop(relays);
        self.audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .render(&mut o);
        let audit = self.trail.count();
        if audit.on.load(Ordering::Relaxed) {
            let _ = writeln!(
                o,
                "# HELP veil_allocator_audit_records Records in the audit trail (its newest \
                 record's seq + 1): kept off the node, it shows a trail whose newest records \
                 were removed.\n# TYPE veil_allocator_audit_records gauge\nveil_allocator_audit_records {}",
                audit.records.load(Ordering::Relaxed)
            );
            counter(
                &mut o,
                "veil_allocator_audit_errors_total",
                "Audit records that could not be written (a full or read-only disk).",
                [("", audit.errors.load(Ordering::Relaxed))],
            );
        }
        veil_ops::prometheus::process(&mut o);
        o
    }
}

/// A relay's name for metric labels: DNS-discovered relays (`<pool>/<ip>`) are labelled by a
/// hash of their address, as no label may carry an IP.
pub(super) fn metric_name(name: &str) -> String {
    match name.split_once('/') {
        Some((pool, addr)) => {
            let h = addr.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            });
            format!("{pool}/{:08x}", h as u32)
        }
        None => name.to_string(),
    }
}
