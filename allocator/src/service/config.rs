//! The allocator's configuration (`allocator.yaml`): relays, API keys, secrets, timings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use veil_geo::policy::{DistanceModel, PolicyConfig};

/// One relay the allocator knows of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayEntry {
    /// Its name in the policy's zones.
    pub name: String,
    /// Its admin endpoint, `host:port`.
    pub admin: String,
    /// `admin` is a DNS name that resolves to every relay of a pool (a Kubernetes headless
    /// service): each address is polled as a relay named `<name>/<ip>`, in `name`'s zone.
    #[serde(default)]
    pub dns: bool,
    /// Where it is, for distance.
    #[serde(default)]
    pub latitude: Option<f64>,
    /// Longitude, with `latitude`.
    #[serde(default)]
    pub longitude: Option<f64>,
}

/// A key callers present in `Authorization: Bearer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The key.
    pub key: String,
    /// A backend may pass the end user's `client_ip` and `user`, place calls and read the audit
    /// record.
    #[serde(default)]
    pub backend: bool,
    /// Requests per second this key may make (a burst of as many is allowed); beyond it, 429.
    #[serde(default = "default_rate")]
    pub requests_per_second: u32,
    /// Requests per second one caller network (the address the allocator sees a request from:
    /// an IPv4 address, an IPv6 /64) may make with this key, a burst of twice as many, checked
    /// before the key's own budget is spent, so one address cannot spend it for everyone;
    /// beyond it, 429. 0: no per-caller limit. Unset: 10 for a browser key, 0 for a backend
    /// key (its requests come from the backend's own addresses).
    #[serde(default)]
    pub client_requests_per_second: Option<u32>,
    /// For a browser (non-backend) key: the allocations one caller network's credentials may
    /// hold on a relay at once. Its credentials carry one user id per network (a keyed hash of
    /// the /32 or /64, so minting more adds nothing) and this quota as a claim.
    #[serde(default = "default_client_allocations")]
    pub client_allocations: u32,
}

pub(super) fn default_rate() -> u32 {
    100
}

/// A browser key's callers per network: one address of a carrier-grade NAT stands for
/// hundreds of phones, a call takes one to three allocations per party (Chromium allocates one
/// per TURN URI), so 64 is about twenty calls at once from one address on one relay.
pub(super) fn default_client_allocations() -> u32 {
    64
}

/// Browser keys' per-caller rate when unset: a call needs one or two requests; 10/s (burst 20)
/// is calls starting every tenth of a second behind one NAT address.
pub const DEFAULT_CLIENT_RATE: u32 = 10;

impl ApiKey {
    /// Requests per second one caller network may make with this key; 0: no limit.
    pub fn client_rate(&self) -> u32 {
        self.client_requests_per_second.unwrap_or(if self.backend {
            0
        } else {
            DEFAULT_CLIENT_RATE
        })
    }
}

/// The largest request body read (after the key is checked): a request is a few hundred bytes.
pub const MAX_BODY: usize = 4096;

/// `allocator.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocatorConfig {
    /// Where the API listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where `/metrics` is served without a key, for Prometheus (bind it to a private address).
    /// Unset: `/metrics` is on the API listener and needs a backend key.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Keys that may call the API.
    pub api_keys: Vec<ApiKey>,
    /// Files of the relays' TURN REST secrets (one per line; the first one signs).
    pub secret_files: Vec<PathBuf>,
    /// Credential lifetime in seconds (a request may ask for less).
    #[serde(default = "default_ttl")]
    pub ttl: u64,
    /// MaxMind DB file; none: the embedded demo DB (loopback ranges only).
    #[serde(default)]
    pub geo_db: Option<PathBuf>,
    /// The residency policy.
    pub policy: PolicyConfig,
    /// How distance is scored.
    #[serde(default)]
    pub distance: DistanceModel,
    /// The relays to poll.
    pub relays: Vec<RelayEntry>,
    /// Proxies whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// How often each relay's `/status` is polled.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Missed polls before a relay is down, good ones before it is up again.
    #[serde(default = "default_down")]
    pub down_after: u32,
    /// Good polls before a down relay is up again.
    #[serde(default = "default_up")]
    pub up_after: u32,
    /// Deadlines and caps of the API's connections.
    #[serde(default)]
    pub connections: super::ConnectionLimits,
    /// Hours of hourly audit buckets kept in memory for `/v1/audit` (Prometheus keeps the
    /// running totals for as long as it retains data).
    #[serde(default = "default_audit_hours")]
    pub audit_retention_hours: u64,
    /// The audit trail of operator actions (README: The audit trail): off by default.
    #[serde(default)]
    pub audit: veil_trail::Settings,
}

/// The shortest credential lifetime handed out (a request asking for less gets this).
pub const MIN_TTL: u64 = 60;

pub(super) fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8480))
}
pub(super) fn default_ttl() -> u64 {
    600
}
pub(super) fn default_poll_ms() -> u64 {
    1000
}
pub(super) fn default_down() -> u32 {
    3
}
pub(super) fn default_up() -> u32 {
    2
}
pub(super) fn default_audit_hours() -> u64 {
    168
}

/// What is wrong with the allocator's configuration: the relay's error type, so both name the
/// field the same way.
pub use veil_ops::ConfigError;

impl AllocatorConfig {
    /// Reads and parses the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        serde_saphyr::from_str(&text).map_err(|e| ConfigError::yaml(path.display().to_string(), &e))
    }
}
