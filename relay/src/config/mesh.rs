//! The `mesh:` section: links to the other relays of the cluster (QUIC, mutual TLS from a
//! cluster CA), what they carry and how; resolved into [`crate::mesh::MeshConfig`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};
use crate::mesh::Congestion;
use crate::mesh::routes::Fallback;
use crate::mesh::{MeshConfig, PeerConfig};
use crate::proto::mesh::announce::RelayRange;
use crate::proto::mesh::breaker::BreakerConfig;
use crate::proto::mesh::sched::{LinkConfig, default_rates};

/// Links to the other relays of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSettings {
    /// UDP address the link endpoint (QUIC) listens and dials from. Keep it off client-facing
    /// addresses and load balancers: only the other relays need it.
    pub listen: SocketAddr,
    /// This relay's name in the mesh: its certificate must be valid for it (a DNS name in its
    /// subjectAltName), and the other relays list it under `peers`.
    pub name: String,
    /// Certificates: this relay's chain and key, and the cluster CA that signs every relay's.
    pub tls: MeshTls,
    /// What a datagram for a linked relay does while the link is down: `udp` (plain relayed
    /// UDP, as without a mesh) or `refuse` (dropped and counted, both ways).
    pub fallback: Fallback,
    /// The other relays. Of each pair, the relay whose name sorts first dials; both must list
    /// each other.
    pub peers: Vec<MeshPeer>,
    /// The ladder of cell rates (cells of 1 200 bytes per second), ascending; a link starts
    /// on the first and moves rarely (see `step_up_after`, `step_down_after`).
    pub rates: Vec<u32>,
    /// Milliseconds a datagram may wait for a cell beyond one cell interval before it is
    /// dropped.
    pub max_delay_ms: u32,
    /// Seconds the load must stay above 85 % of the rate before the link steps up.
    pub step_up_after: u32,
    /// Seconds the load must stay below 60 % of the rung beneath before it steps down.
    pub step_down_after: u32,
    /// Seconds without a packet from the other side before a link is down.
    pub idle_timeout: u32,
    /// QUIC's congestion response: `fixed` (a fixed window; the scheduler sets the rate and the
    /// breaker stops a path that cannot carry it) or `quinn` (quinn's defaults: Cubic and a
    /// 1 MiB datagram buffer, under which the visible rate follows congestion and congestion
    /// becomes delay). `quinn` is kept to measure the difference (`benches/mesh.rs`).
    pub congestion: Congestion,
    /// The circuit breaker: a link losing more than `max_loss_percent` of its packets for
    /// `seconds` seconds in a row is closed (and redialled).
    pub breaker: MeshBreaker,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 3479)),
            name: String::new(),
            tls: MeshTls::default(),
            fallback: Fallback::Udp,
            peers: vec![],
            rates: default_rates(),
            max_delay_ms: 5,
            step_up_after: 3,
            step_down_after: 300,
            idle_timeout: 3,
            congestion: Congestion::Fixed,
            breaker: MeshBreaker::default(),
        }
    }
}

/// The mesh's certificate files (PEM), read again on reload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshTls {
    /// This relay's certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
    /// The cluster CA: the only issuer whose relays may link.
    pub ca: Option<PathBuf>,
}

/// One other relay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshPeer {
    /// Its name (its certificate must be valid for it).
    pub name: String,
    /// Where its link endpoint is, `host:port`; a DNS name is resolved again at each dial.
    pub link: String,
    /// Relayed ranges it owns (`ip:first-last`), known before its link is first up, so that
    /// `fallback: refuse` holds from the start; what it announces must lie inside them. None:
    /// learnt from its announcement.
    pub relay_ranges: Vec<RangeSpec>,
}

/// The breaker's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshBreaker {
    /// Percent of packets lost above which a second counts as bad.
    pub max_loss_percent: u32,
    /// Bad seconds in a row that close the link.
    pub seconds: u32,
    /// Milliseconds the RTT may stand above the least the link has seen before a second counts
    /// as bad (a queue at a bottleneck with a deep buffer: delay rather than loss).
    pub max_queueing_ms: u32,
    /// Seconds a link its breaker closed stays down (media takes the fallback path), doubled
    /// at each trip in a row up to eight times.
    pub hold_seconds: u32,
}

impl Default for MeshBreaker {
    fn default() -> Self {
        MeshBreaker {
            max_loss_percent: 20,
            seconds: 3,
            max_queueing_ms: 100,
            hold_seconds: 60,
        }
    }
}

/// A relayed range, written `203.0.113.7:49152-65535` or `[2001:db8::7]:49152-65535`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeSpec(pub RelayRange);

impl FromStr for RangeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not ip:first-last (e.g. 203.0.113.7:49152-65535)");
        let (ip, ports) = s.rsplit_once(':').ok_or_else(bad)?;
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let (lo, hi) = ports.split_once('-').ok_or_else(bad)?;
        let lo: u16 = lo.parse().map_err(|_| bad())?;
        let hi: u16 = hi.parse().map_err(|_| bad())?;
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(RangeSpec(RelayRange {
            ip,
            ports: (lo, hi),
        }))
    }
}

impl fmt::Display for RangeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        match r.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}-{}", r.ports.0, r.ports.1),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}-{}", r.ports.0, r.ports.1),
        }
    }
}

crate::proto::serde_via_str!(RangeSpec);

/// Whether `name` can be a certificate's DNS name (and a link's identity).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && rustls::pki_types::ServerName::try_from(name)
            .is_ok_and(|n| matches!(n, rustls::pki_types::ServerName::DnsName(_)))
}

impl MeshSettings {
    /// Checks the section and resolves it.
    pub(super) fn resolve(&self) -> Result<MeshConfig, ConfigError> {
        if !valid_name(&self.name) {
            return Err(invalid(
                "mesh.name",
                "a DNS name this relay's certificate is valid for (e.g. eu-1.veil.internal)",
            ));
        }
        let (Some(cert), Some(key), Some(ca)) = (&self.tls.cert, &self.tls.key, &self.tls.ca)
        else {
            return Err(invalid(
                "mesh.tls",
                "the mesh needs tls.cert, tls.key and tls.ca (the cluster CA)",
            ));
        };
        let mut peers: Vec<PeerConfig> = Vec::new();
        for p in &self.peers {
            if !valid_name(&p.name) {
                return Err(invalid(
                    "mesh.peers",
                    "each peer needs a DNS name as `name`",
                ));
            }
            if p.name == self.name {
                return Err(invalid("mesh.peers", "a relay does not link to itself"));
            }
            if peers.iter().any(|q| q.name == p.name) {
                return Err(invalid(
                    "mesh.peers",
                    format!("`{}` is listed twice", p.name),
                ));
            }
            let Some((host, port)) = p.link.rsplit_once(':') else {
                return Err(invalid(
                    "mesh.peers",
                    format!("`{}`: link must be host:port", p.name),
                ));
            };
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(invalid(
                    "mesh.peers",
                    format!("`{}`: link must be host:port", p.name),
                ));
            }
            peers.push(PeerConfig {
                name: p.name.clone(),
                link: p.link.clone(),
                pinned: p.relay_ranges.iter().map(|r| r.0).collect(),
            });
        }
        if self.rates.is_empty()
            || self.rates.iter().any(|&r| !(10..=100_000).contains(&r))
            || self.rates.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(invalid(
                "mesh.rates",
                "ascending cell rates, each between 10 and 100000 per second",
            ));
        }
        if !(1..=1000).contains(&self.max_delay_ms) {
            return Err(invalid("mesh.max_delay_ms", "between 1 and 1000"));
        }
        if !(1..=300).contains(&self.idle_timeout) {
            return Err(invalid("mesh.idle_timeout", "between 1 and 300 seconds"));
        }
        if self.breaker.max_loss_percent > 100
            || self.breaker.seconds == 0
            || self.breaker.max_queueing_ms == 0
            || !(1..=86_400).contains(&self.breaker.hold_seconds)
        {
            return Err(invalid(
                "mesh.breaker",
                "max_loss_percent at most 100, seconds and max_queueing_ms at least 1, \
                 hold_seconds between 1 and 86400",
            ));
        }
        Ok(MeshConfig {
            listen: self.listen,
            name: self.name.clone(),
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
            fallback: self.fallback,
            peers,
            link: LinkConfig {
                rates: self.rates.clone(),
                max_delay: Duration::from_millis(u64::from(self.max_delay_ms)),
                up_after: Duration::from_secs(u64::from(self.step_up_after)),
                down_after: Duration::from_secs(u64::from(self.step_down_after)),
                ..LinkConfig::default()
            },
            breaker: BreakerConfig {
                max_loss: f64::from(self.breaker.max_loss_percent) / 100.0,
                trip_after: self.breaker.seconds,
                max_queueing: Duration::from_millis(u64::from(self.breaker.max_queueing_ms)),
                hold: Duration::from_secs(u64::from(self.breaker.hold_seconds)),
                ..BreakerConfig::default()
            },
            idle_timeout: Duration::from_secs(u64::from(self.idle_timeout)),
            congestion: self.congestion,
        })
    }
}
