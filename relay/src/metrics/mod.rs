//! Prometheus metrics of a relay node, in the text exposition format.
//!
//! Nothing on the forwarding path touches shared memory for metrics: each worker counts in its
//! own plain integers and publishes a snapshot once per timer tick (at most a second old); a
//! scrape sums the snapshots. Labels never carry an IP address, a username or a call id.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::counters::Accumulate;
use crate::proto::server::{Occupancy, Refusal, Shared, Stats, Transport};
use crate::shaping::ShapingStats;

mod signals;

veil_proto::counters! {
    /// What the driver counts per worker.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct IoStats {
        /// Datagrams and payload bytes from clients forwarded to peers.
        pub client_to_peer_packets: u64,
        /// Payload bytes relayed client → peer.
        pub client_to_peer_bytes: u64,
        /// Datagrams and bytes (as framed for the client) from peers forwarded to clients.
        pub peer_to_client_packets: u64,
        /// Bytes sent peer → client (framed).
        pub peer_to_client_bytes: u64,
        /// Sends the kernel refused (buffer full, unreachable).
        pub dropped_sends: u64,
        /// Relayed sockets open on this worker.
        pub relayed_sockets: u64,
        /// Frames for a TCP/TLS client dropped because its send queue was full (a slow reader).
        pub stream_drops: u64,
        /// TCP and TLS connections open now.
        pub connections: [u64; 2],
        /// Connections refused by the total or per-IP cap.
        pub connections_refused: u64,
        /// Connections closed at accept, before any TLS, over a new-connection rate (per
        /// client prefix, or the worker's).
        pub connections_rate_limited: u64,
        /// Connections closed for garbage, a failed TLS handshake or a timeout.
        pub stream_errors: u64,
        /// Connections of a port shared with a website handed to the site.
        pub to_site: u64,
        /// Connections of a port shared with a website that were TURN.
        pub to_turn: u64,
        /// Datagrams handed to a link of the mesh.
        pub mesh_sent: u64,
        /// Datagrams for a link whose queue was full.
        pub mesh_full: u64,
        /// Datagrams to or from a linked relay dropped while its link was down
        /// (`mesh.fallback: refuse`).
        pub mesh_refused: u64,
        /// Datagrams from one allocation of this node to another, delivered in-process.
        pub local_delivered: u64,
        /// Datagrams to a relayed address of this node that no allocation holds (or whose
        /// worker's inbox was full).
        pub local_undelivered: u64,
        /// Bindings installed (or updated) in the fast path's maps.
        pub fast_installs: u64,
        /// Bindings in the fast path's maps now (a gauge).
        pub fast_bindings: u64,
    }
}

veil_proto::counters! {
    /// One worker's published counters.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct WorkerReport {
        /// The core's counters.
        pub core: Stats,
        /// What the worker holds.
        pub occupancy: Occupancy,
        /// The shaper's counters.
        pub shaping: ShapingStats,
        /// The driver's counters.
        pub io: IoStats,
    }
}

/// The latest report of every worker, and the node's configuration reloads.
#[derive(Debug, Default)]
pub struct Reports {
    workers: Vec<Mutex<WorkerReport>>,
    /// The kernel fast path's counters while it is attached (None: it is not).
    fast_path: Mutex<Option<crate::fastpath::FastPathCounts>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload_ok_unix: AtomicU64,
    /// The audit trail: whether the node writes one, records in it (its head's seq + 1),
    /// appends that failed.
    audit_on: std::sync::atomic::AtomicBool,
    audit_records: AtomicU64,
    audit_errors: AtomicU64,
}

impl Reports {
    /// Room for `workers` reports.
    pub fn new(workers: usize) -> Self {
        Reports {
            workers: (0..workers).map(|_| Mutex::default()).collect(),
            ..Reports::default()
        }
    }

    /// Counts a configuration reload; `unix` is when it happened.
    pub fn count_reload(&self, ok: bool, unix: u64) {
        if ok {
            self.reloads_ok.fetch_add(1, Ordering::Relaxed);
            self.last_reload_ok_unix.store(unix, Ordering::Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an append to the audit trail: the record's seq when it was written, None when
    /// it failed.
    pub fn count_audit(&self, seq: Option<u64>) {
        self.audit_on.store(true, Ordering::Relaxed);
        match seq {
            Some(s) => self
                .audit_records
                .store(s.saturating_add(1), Ordering::Relaxed),
            None => {
                self.audit_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stores worker `i`'s snapshot.
    pub fn publish(&self, i: usize, report: WorkerReport) {
        if let Some(slot) = self.workers.get(i) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = report;
        }
    }

    /// Notes the fast path's counters now, or that it is not attached.
    pub fn publish_fast_path(&self, counts: Option<crate::fastpath::FastPathCounts>) {
        *self.fast_path.lock().unwrap_or_else(|e| e.into_inner()) = counts;
    }

    /// Every worker's counters, summed.
    pub fn sum(&self) -> WorkerReport {
        let mut t = WorkerReport::default();
        for w in &self.workers {
            t.accumulate(&w.lock().unwrap_or_else(|e| e.into_inner()));
        }
        t
    }
}

pub use veil_ops::prometheus::{family, label_value, sample};

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
    family(
        &mut o,
        "veil_relay_info",
        "gauge",
        "Always 1; labels: the zone the node serves (empty: none) and the version. Join on it to \
         sum other series by zone.",
    );
    sample(
        &mut o,
        "veil_relay_info",
        &format!(
            "zone=\"{}\",version=\"{}\"",
            label_value(core.config.zone.as_deref().unwrap_or("")),
            env!("CARGO_PKG_VERSION")
        ),
        1,
    );
    g(
        &mut o,
        "veil_relay_draining",
        "1 while the node drains for shutdown (refuses new allocations), else 0.",
        u64::from(core.draining()),
    );
    let fam = ["family=\"ipv4\"", "family=\"ipv6\""];
    for (name, help, v) in [
        (
            "veil_relay_relayed_addresses",
            "Relayed transport addresses held by allocations, by client transport and family.",
            t.occupancy.relayed,
        ),
        (
            "veil_relay_permissions",
            "Permissions installed, by client transport and peer address family.",
            t.occupancy.permissions,
        ),
        (
            "veil_relay_channels",
            "Channel bindings, by client transport and peer address family.",
            t.occupancy.channels,
        ),
    ] {
        family(&mut o, name, "gauge", help);
        for (t, per_family) in [Transport::Udp, Transport::Tcp, Transport::Tls]
            .into_iter()
            .zip(v)
        {
            for (f, v) in fam.iter().zip(per_family) {
                sample(&mut o, name, &format!("transport=\"{}\",{f}", t.label()), v);
            }
        }
    }
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
    sample(
        &mut o,
        "veil_relay_allocations_ended_total",
        "reason=\"revoked\"",
        t.core.allocations_revoked,
    );
    c(
        &mut o,
        "veil_relay_allocations_created",
        "Allocations created.",
        t.core.allocations_created,
    );
    family(
        &mut o,
        "veil_relay_allocations_refused_total",
        "counter",
        "Authenticated Allocate requests refused, by reason.",
    );
    for r in Refusal::ALL {
        sample(
            &mut o,
            "veil_relay_allocations_refused_total",
            &format!("reason=\"{}\"", r.label()),
            t.core.allocations_refused[r as usize],
        );
    }
    family(
        &mut o,
        "veil_relay_auth_failures_total",
        "counter",
        "Requests answered 401, by reason: an expired REST credential, one whose expiry lies \
         beyond auth.max_validity, or a bad one (wrong password or secret, unknown user, \
         USERHASH).",
    );
    sample(
        &mut o,
        "veil_relay_auth_failures_total",
        "reason=\"expired\"",
        t.core.auth_expired,
    );
    sample(
        &mut o,
        "veil_relay_auth_failures_total",
        "reason=\"expiry_too_far\"",
        t.core.auth_expiry_too_far,
    );
    sample(
        &mut o,
        "veil_relay_auth_failures_total",
        "reason=\"bad_credentials\"",
        t.core
            .auth_failures
            .saturating_sub(t.core.auth_expired)
            .saturating_sub(t.core.auth_expiry_too_far),
    );
    c(
        &mut o,
        "veil_relay_peers_denied",
        "Permissions and channel bindings refused by the peer filter.",
        t.core.peers_denied,
    );
    c(
        &mut o,
        "veil_relay_peer_sends_denied",
        "Send indications dropped: they named one of the node's own addresses.",
        t.core.peer_sends_denied,
    );
    family(
        &mut o,
        "veil_relay_bandwidth_dropped_total",
        "counter",
        "Packets dropped over a bandwidth cap (per allocation or per user), by direction.",
    );
    for (dir, n) in ["to_peer", "to_client"]
        .iter()
        .zip(t.core.bandwidth_dropped)
    {
        sample(
            &mut o,
            "veil_relay_bandwidth_dropped_total",
            &format!("direction=\"{dir}\""),
            n,
        );
    }
    signals::render(&mut o, core, reports, &t);
    c(
        &mut o,
        "veil_relay_permissions_refused",
        "CreatePermission and ChannelBind refused (508): the allocation holds its cap.",
        t.core.permissions_refused,
    );
    c(
        &mut o,
        "veil_relay_unauthenticated_suppressed",
        "Replies to unauthenticated UDP requests not sent: their source prefix was over its rate.",
        t.core.unauthenticated_suppressed,
    );
    c(
        &mut o,
        "veil_relay_malformed_datagrams",
        "Datagrams that were neither valid STUN nor ChannelData.",
        t.core.malformed,
    );
    // What the kernel fast path relayed counts as relayed: the totals stay true with it on.
    let fast = *reports.fast_path.lock().unwrap_or_else(|e| e.into_inner());
    let k = fast.unwrap_or_default();
    family(
        &mut o,
        "veil_relay_packets_total",
        "counter",
        "Datagrams relayed, by direction (the kernel fast path's included).",
    );
    sample(
        &mut o,
        "veil_relay_packets_total",
        "direction=\"client_to_peer\"",
        t.io.client_to_peer_packets.saturating_add(k.to_peer),
    );
    sample(
        &mut o,
        "veil_relay_packets_total",
        "direction=\"peer_to_client\"",
        t.io.peer_to_client_packets.saturating_add(k.to_client),
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
        t.io.client_to_peer_bytes.saturating_add(k.to_peer_bytes),
    );
    sample(
        &mut o,
        "veil_relay_bytes_total",
        "direction=\"peer_to_client\"",
        // (Framed: each carried a 4-byte ChannelData header.)
        t.io.peer_to_client_bytes
            .saturating_add(k.to_client_bytes)
            .saturating_add(k.to_client.saturating_mul(4)),
    );
    family(
        &mut o,
        "veil_relay_connections",
        "gauge",
        "TCP and TLS client connections open, by transport.",
    );
    for (t, v) in ["tcp", "tls"].iter().zip(t.io.connections) {
        sample(
            &mut o,
            "veil_relay_connections",
            &format!("transport=\"{t}\""),
            v,
        );
    }
    c(
        &mut o,
        "veil_relay_connections_refused",
        "Connections refused by the total or per-IP cap.",
        t.io.connections_refused,
    );
    c(
        &mut o,
        "veil_relay_connections_rate_limited",
        "Connections closed at accept, before any TLS, over the new-connection rate of their \
         client (streams.new_per_ip_per_second) or of the worker (streams.new_per_second).",
        t.io.connections_rate_limited,
    );
    c(
        &mut o,
        "veil_relay_stream_errors",
        "Connections closed for garbage, a failed TLS handshake, a missed deadline or a stalled write.",
        t.io.stream_errors,
    );
    g(
        &mut o,
        "veil_relay_fast_path_up",
        "1 while the XDP fast path is attached (fast_path), 0 when off or not attached.",
        u64::from(fast.is_some()),
    );
    if let Some(f) = fast {
        let name = "veil_relay_fast_path_packets_total";
        family(
            &mut o,
            name,
            "counter",
            "Datagrams the XDP fast path handled: sent on to peers, to clients, or passed to \
             the kernel's stack (the user-space path).",
        );
        sample(&mut o, name, "action=\"to_peer\"", f.to_peer);
        sample(&mut o, name, "action=\"to_client\"", f.to_client);
        sample(&mut o, name, "action=\"passed\"", f.passed);
        c(
            &mut o,
            "veil_relay_fast_path_installs",
            "Bindings the core handed to the fast path's maps (installed or updated).",
            t.io.fast_installs,
        );
        g(
            &mut o,
            "veil_relay_fast_path_bindings",
            "Bindings in the fast path's maps now (client channel and peer pairs).",
            t.io.fast_bindings,
        );
    }
    let name = "veil_relay_shared_port_connections_total";
    family(
        &mut o,
        name,
        "counter",
        "Connections of a TLS port shared with a website (tls.site), by where they went: \
         turn, or the site.",
    );
    sample(&mut o, name, "route=\"turn\"", t.io.to_turn);
    sample(&mut o, name, "route=\"site\"", t.io.to_site);
    c(
        &mut o,
        "veil_relay_stream_drops",
        "Frames for TCP/TLS clients dropped because the client did not read (send queue full).",
        t.io.stream_drops,
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
        "veil_relay_shaping_late_frames",
        "Frames that left later than their timing's bound (two slots, or the jitter maximum) because the worker woke late; they leave at once when it wakes.",
        t.shaping.late_frames,
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
    family(
        &mut o,
        "veil_relay_config_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP or file change), by result.",
    );
    sample(
        &mut o,
        "veil_relay_config_reloads_total",
        "result=\"success\"",
        reports.reloads_ok.load(Ordering::Relaxed),
    );
    sample(
        &mut o,
        "veil_relay_config_reloads_total",
        "result=\"failure\"",
        reports.reloads_failed.load(Ordering::Relaxed),
    );
    g(
        &mut o,
        "veil_relay_config_last_reload_success_timestamp_seconds",
        "When the configuration was last reloaded successfully (0: never).",
        reports.last_reload_ok_unix.load(Ordering::Relaxed),
    );
    if reports.audit_on.load(Ordering::Relaxed) {
        g(
            &mut o,
            "veil_relay_audit_records",
            "Records in the audit trail (its newest record's seq + 1): kept off the node, it shows \
             a trail whose newest records were removed.",
            reports.audit_records.load(Ordering::Relaxed),
        );
        c(
            &mut o,
            "veil_relay_audit_errors",
            "Audit records that could not be written (a full or read-only disk): the actions \
             happened, unrecorded.",
            reports.audit_errors.load(Ordering::Relaxed),
        );
    }
    process(&mut o);
    o
}

pub use veil_ops::prometheus::process;

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
        a.core.allocations_refused[Refusal::Draining as usize] = 2;
        a.core.auth_failures = 5;
        a.core.auth_expired = 1;
        a.occupancy.channels = [[3, 1], [0, 0], [0, 0]];
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
        assert!(text.contains("veil_relay_allocations_refused_total{reason=\"draining\"} 4\n"));
        assert!(text.contains("veil_relay_allocations_refused_total{reason=\"ports\"} 0\n"));
        assert!(text.contains("veil_relay_auth_failures_total{reason=\"expired\"} 2\n"));
        assert!(text.contains("veil_relay_auth_failures_total{reason=\"bad_credentials\"} 8\n"));
        assert!(
            text.contains("veil_relay_channels{transport=\"udp\",family=\"ipv6\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("veil_relay_draining 0\n"));
        shared.set_draining(true);
        r.count_reload(true, 1_700_000_000);
        r.count_reload(false, 1_700_000_001);
        let text = render(&shared, &r, 1000);
        assert!(text.contains("veil_relay_draining 1\n"));
        assert!(text.contains("veil_relay_config_reloads_total{result=\"failure\"} 1\n"));
        assert!(
            text.contains("veil_relay_config_last_reload_success_timestamp_seconds 1700000000\n")
        );
        // Process metrics come from /proc: this test process has memory and open files.
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let started = value("process_start_time_seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            started > now - 3600.0 && started <= now + 1.0,
            "{started} vs {now}"
        );
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
