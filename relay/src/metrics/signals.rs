//! The abuse signals' metrics (issue 25): patterns, never identities. Every family here counts
//! allocations, credentials or datagrams node-wide (or per worker, a bounded label); none names
//! a user, an address, a peer or a call.

use super::{Reports, WorkerReport, family, sample};
use crate::proto::server::{BYTES_BUCKETS, Shared};

/// Writes the signals' families.
pub(super) fn render(o: &mut String, core: &Shared, reports: &Reports, t: &WorkerReport) {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let spread = core.spread_counts(unix);
    let name = "veil_relay_credentials_spread";
    family(
        o,
        name,
        "gauge",
        "Credentials (REST ids) that allocated from at least this many networks (IPv4 /24, IPv6 \
         /48) in the last 10 minutes: a credential used from many networks at once is likely \
         stolen. Counts only; which credentials and networks is never kept.",
    );
    for (n, at) in spread.at_least.iter().zip(veil_proto::spread::THRESHOLDS) {
        sample(o, name, &format!("networks=\"{at}\""), *n);
    }
    counter(
        o,
        "veil_relay_credentials_spread_untracked_total",
        "Credentials not tracked by veil_relay_credentials_spread because its table was full.",
        spread.untracked,
    );
    let s = &t.core;
    counter(
        o,
        "veil_relay_peers_permitted_total",
        "Peer addresses newly permitted by CreatePermission and ChannelBind.",
        s.peers_permitted,
    );
    counter(
        o,
        "veil_relay_permission_bursts_total",
        &format!(
            "Allocations that permitted {} or more new peer addresses within {} s (a scan or a \
             tunnel fanning out; a call's ICE agent permits a handful), once per allocation and \
             window.",
            crate::proto::server::BURST_PEERS,
            crate::proto::server::BURST_WINDOW_MS / 1000
        ),
        s.permission_bursts,
    );
    let name = "veil_relay_payloads_total";
    family(
        o,
        name,
        "counter",
        "Relayed payloads by direction and by whether their first bytes look like media (STUN, \
         ZRTP, DTLS, ChannelData, RTP/RTCP: RFC 7983) or other (the kernel fast path's included, \
         judged by its program alike).",
    );
    for (i, dir) in DIRECTIONS.iter().enumerate() {
        sample(
            o,
            name,
            &format!("direction=\"{dir}\",class=\"media\""),
            s.payloads_media[i],
        );
        sample(
            o,
            name,
            &format!("direction=\"{dir}\",class=\"other\""),
            s.payloads_other[i],
        );
    }
    let name = "veil_relay_non_media_allocations_total";
    family(
        o,
        name,
        "counter",
        &format!(
            "Allocations whose relayed payloads in a direction were more than a quarter not \
             media-like, judged after {} of them (a tunnel rather than a call), once per \
             allocation and direction.",
            crate::proto::server::INSPECT_MIN
        ),
    );
    for (i, dir) in DIRECTIONS.iter().enumerate() {
        sample(
            o,
            name,
            &format!("direction=\"{dir}\""),
            s.non_media_allocations[i],
        );
    }
    counter(
        o,
        "veil_relay_heavy_allocations_total",
        "Allocations that relayed, both ways together, more than signals.heavy_bytes_per_second \
         over their life past its first minute, once each.",
        s.heavy_allocations,
    );
    let name = "veil_relay_allocation_relayed_bytes";
    family(
        o,
        name,
        "histogram",
        "Bytes an allocation relayed both ways over its life, observed when it ends.",
    );
    let mut cum = 0u64;
    for (i, n) in s.allocation_bytes_hist.iter().enumerate() {
        cum = cum.saturating_add(*n);
        let le = BYTES_BUCKETS
            .get(i)
            .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
        sample(o, &format!("{name}_bucket"), &format!("le=\"{le}\""), cum);
    }
    sample(o, &format!("{name}_sum"), "", s.allocation_bytes_sum);
    sample(o, &format!("{name}_count"), "", cum);
    let name = "veil_relay_worker_auth_rejections_total";
    family(
        o,
        name,
        "counter",
        "Signed requests rejected, per worker: 401 (wrong key, unknown or expired credential) and \
         438 (stale or foreign nonce). Challenges to unsigned requests are not counted.",
    );
    for (i, w) in reports.workers.iter().enumerate() {
        let c = w.lock().unwrap_or_else(|e| e.into_inner()).core;
        sample(
            o,
            name,
            &format!("worker=\"{i}\",code=\"401\""),
            c.auth_failures,
        );
        sample(
            o,
            name,
            &format!("worker=\"{i}\",code=\"438\""),
            c.stale_nonces,
        );
    }
    let live = core.live();
    gauge(
        o,
        "veil_relay_revoked_users",
        "User ids on the revocation list in force (auth.revoked_users): relays of one pool \
         that disagree have not all taken up a revocation.",
        live.credentials.revoked_users.len() as u64,
    );
    gauge(
        o,
        "veil_relay_auth_secrets",
        "REST secrets in force (auth.secrets and auth.secret_files): relays of one pool that \
         disagree have not all taken up a rotation or a removal.",
        live.credentials.secrets.len() as u64,
    );
    if let Some(n) = udp_receive_buffer_errors() {
        counter(
            o,
            "veil_relay_udp_receive_buffer_errors_total",
            "UDP datagrams the kernel dropped because a socket's receive buffer was full, IPv4 \
             and IPv6, in the relay's network namespace (every socket in it: the host's with \
             hostNetwork), from /proc/net/snmp and snmp6.",
            n,
        );
    }
}

const DIRECTIONS: [&str; 2] = ["client_to_peer", "peer_to_client"];

fn gauge(o: &mut String, name: &str, help: &str, v: u64) {
    family(o, name, "gauge", help);
    sample(o, name, "", v);
}

fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    family(o, name, "counter", help);
    sample(o, name, "", v);
}

/// `RcvbufErrors` of UDP over IPv4 and IPv6 in this network namespace; None where /proc has
/// neither.
fn udp_receive_buffer_errors() -> Option<u64> {
    let v4 = std::fs::read_to_string("/proc/net/snmp")
        .ok()
        .and_then(|t| snmp_field(&t, "Udp:", "RcvbufErrors"));
    let v6 = std::fs::read_to_string("/proc/net/snmp6")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some("Udp6RcvbufErrors")).then(|| f.next()?.parse().ok())?
            })
        });
    match (v4, v6) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

/// A field of /proc/net/snmp's two-line tables (`Udp: InDatagrams …` then `Udp: 12 …`).
fn snmp_field(text: &str, table: &str, field: &str) -> Option<u64> {
    let mut rows = text.lines().filter(|l| l.starts_with(table));
    let names = rows.next()?;
    let values = rows.next()?;
    let at = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_tables_are_read_by_field_name() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 100 2 7 90 5 0\nUdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 9\n";
        assert_eq!(snmp_field(text, "Udp:", "RcvbufErrors"), Some(5));
        assert_eq!(snmp_field(text, "Udp:", "NoSuchField"), None);
        assert_eq!(snmp_field(text, "Tcp:", "RcvbufErrors"), None);
        // On this machine /proc has the table (the relay's tests run on Linux).
        assert!(udp_receive_buffer_errors().is_some());
    }
}
