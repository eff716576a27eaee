//! The relay node's configuration: YAML (every field optional, defaults below), validated at start
//! with errors that name the field. `relay/relay.example.yaml` lists every field with its default
//! and a test keeps the two in step.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::proto::auth::Credentials;
use crate::proto::limiter::{BandwidthCaps, Caps};
use crate::proto::peer_filter::{Cidr, PeerFilter};
use crate::proto::server::{RelayAddr, ServerConfig};
use crate::shaping::{Cover, Padding, Policy, Timing};

/// The example configuration shipped in the repository: every field at its default.
pub const EXAMPLE: &str = include_str!("../relay.example.yaml");

/// A relayed port range, written `49152-65535`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port (inclusive).
    pub end: u16,
}

impl PortRange {
    /// Ports in the range.
    pub fn len(&self) -> usize {
        (self.end as usize + 1).saturating_sub(self.start as usize)
    }
    /// True if the range holds no port.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// True if the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a port range like 49152-65535");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let start: u16 = a.trim().parse().map_err(|_| bad())?;
        let end: u16 = b.trim().parse().map_err(|_| bad())?;
        Ok(PortRange { start, end })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

veil_proto::serde_via_str!(PortRange);

/// Credentials: TURN REST API secrets (several at once for rotation) and, for local development
/// only, fixed users; how long what they admit may last, and who is revoked.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Files holding REST API secrets, one per line (`#` comments and blank lines ignored).
    pub secret_files: Vec<PathBuf>,
    /// Secrets written inline. Prefer `secret_files` (or a Kubernetes Secret mounted as one).
    pub secrets: Vec<String>,
    /// Fixed username/password pairs. For local development only: a leaked password stays
    /// valid until the config changes.
    pub static_users: Vec<StaticUser>,
    /// User ids (the `<id>` of `<expiry>:<id>`, before any claim) refused from now on; a reload
    /// that lists one ends its allocations at once.
    pub revoked_users: Vec<String>,
    /// Seconds an allocation may live past its REST credential's expiry (refreshes are granted
    /// up to there); null for no bound.
    pub max_session: Option<u32>,
    /// When a reload removes a secret, the allocations it admitted end this many seconds later;
    /// null: they go on (a routine rotation removes the old secret while calls continue).
    pub removed_secret_grace: Option<u32>,
    /// The furthest ahead of now, in seconds, a REST credential's expiry may be; a later one
    /// is refused with 401 as a bad credential (a minter writing "never expires"). null: no
    /// bound.
    pub max_validity: Option<u32>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret_files: Vec::new(),
            secrets: Vec::new(),
            static_users: Vec::new(),
            revoked_users: Vec::new(),
            max_session: Some(DEFAULT_MAX_SESSION),
            removed_secret_grace: None,
            max_validity: Some(DEFAULT_MAX_VALIDITY),
        }
    }
}

/// Thirty days: far longer than any minter of call credentials asks (the allocator hands out
/// at most a day), far shorter than "never".
pub const DEFAULT_MAX_VALIDITY: u32 = 30 * 86_400;

/// Four hours past the credential's expiry: the longest call of a credential minted at its
/// start with a one-hour TTL is then five hours; a stolen credential holds a relay no longer.
pub const DEFAULT_MAX_SESSION: u32 = 4 * 3600;

/// Never prints a secret or a password (a `Resolved` keeps its source configuration, and
/// nothing may turn it into a log line with the secrets in it).
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret_files", &self.secret_files)
            .field("secrets", &self.secrets.len())
            .field("static_users", &self.static_users)
            .field("revoked_users", &self.revoked_users.len())
            .field("max_session", &self.max_session)
            .field("removed_secret_grace", &self.removed_secret_grace)
            .field("max_validity", &self.max_validity)
            .finish()
    }
}

impl fmt::Debug for StaticUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticUser")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A fixed development user.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    /// USERNAME.
    pub username: String,
    /// Its password.
    pub password: String,
}

/// Lifetimes in seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lifetimes {
    /// Seconds granted when a client asks for none.
    pub default_allocation: u32,
    /// Longest lifetime granted, seconds.
    pub max_allocation: u32,
    /// Permission lifetime, seconds.
    pub permission: u32,
    /// Channel binding lifetime, seconds.
    pub channel: u32,
    /// How long a nonce stays valid, seconds.
    pub nonce: u32,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            default_allocation: 600,
            max_allocation: 3600,
            permission: 300,
            channel: 600,
            nonce: 3600,
        }
    }
}

/// Allocation quotas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Allocations one user (the id part of a REST username) may hold at once; 486 beyond. A
    /// credential may claim another quota for its id (`q=<n>`: the allocator's network ids).
    pub per_user: u32,
    /// Allocations one source (an IPv4 address, an IPv6 /64) may hold at once over UDP, TCP and
    /// TLS together, whatever credentials it presents; 486 beyond. 0: no cap.
    pub per_source: u32,
    /// Allocations this node holds at once; 508 beyond.
    pub total: u32,
    /// Peer IPs one allocation may hold permissions for; 508 beyond.
    pub permissions: u32,
    /// Channel bindings one allocation may hold; 508 beyond.
    pub channels: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            per_user: 10,
            per_source: 200,
            total: 100_000,
            permissions: 64,
            channels: 64,
        }
    }
}

/// Rate limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Replies to unauthenticated UDP requests per source prefix, Bindings aside.
    pub unauthenticated: PrefixRate,
    /// Binding responses per source prefix.
    pub binding: BindingRate,
    /// Bandwidth caps for credentials without a shaping profile of their own caps.
    pub bandwidth: Bandwidth,
}

/// Bandwidth caps, each direction (client to peer, peer to client) metered on its own; excess
/// is dropped and counted (`veil_relay_bandwidth_dropped_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bandwidth {
    /// Each allocation.
    pub allocation: Cap,
    /// All of one user's (REST id's) allocations on one worker together.
    pub user: Cap,
}

/// Bytes and packets per second (0: no cap on that one), with a second's worth of burst.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cap {
    /// Payload bytes per second.
    pub bytes_per_second: u64,
    /// Packets per second.
    pub packets_per_second: u64,
}

impl Default for Bandwidth {
    /// 10 Mbit/s and 2000 packets/s per allocation and direction: a 1080p call (2.5–5 Mbit/s
    /// with simulcast and FEC, ~600 packets/s) has twice the room; 20 Mbit/s and 4000 packets/s
    /// per user, so that a stolen credential's ten allocations are not ten times that.
    fn default() -> Self {
        Bandwidth {
            allocation: Cap {
                bytes_per_second: 1_250_000,
                packets_per_second: 2000,
            },
            user: Cap {
                bytes_per_second: 2_500_000,
                packets_per_second: 4000,
            },
        }
    }
}

impl Bandwidth {
    fn caps(&self) -> BandwidthCaps {
        let c = |c: &Cap| Caps {
            bytes_per_second: c.bytes_per_second,
            packets_per_second: c.packets_per_second,
        };
        BandwidthCaps {
            allocation: c(&self.allocation),
            user: c(&self.user),
        }
    }
}

/// A rate per source prefix (/32 IPv4, /64 IPv6) and worker, in a fixed-size table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefixRate {
    /// Replies per second; 0 turns the limit off.
    pub per_second: u32,
    /// Replies a prefix may draw at once.
    pub burst: u32,
}

impl Default for PrefixRate {
    fn default() -> Self {
        PrefixRate {
            per_second: 20,
            burst: 40,
        }
    }
}

/// Binding responses per source prefix and worker: 200/s, a burst of 400 (see
/// [`crate::proto::server::ServerConfig::binding_rate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BindingRate {
    /// Responses per second; 0 turns the limit off.
    pub per_second: u32,
    /// Responses a prefix may draw at once.
    pub burst: u32,
}

impl Default for BindingRate {
    fn default() -> Self {
        BindingRate {
            per_second: 200,
            burst: 400,
        }
    }
}

/// Which peers clients may reach, on top of the built-in deny list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Peers {
    /// Ranges carved out of the deny list (e.g. an SFU on a private network).
    pub allow: Vec<Cidr>,
    /// Extra denied ranges, e.g. the other relays of the cluster; they win over `allow`.
    pub deny: Vec<Cidr>,
    /// Allocations may reach each other's relayed addresses on this node (both parties of a
    /// call on one relay with relay-only ICE need it); the listeners stay denied.
    pub relay_to_relay: bool,
    /// Ports outside the relayed range on the node's own IPs are reachable: only for
    /// development peers on the relay's one address (`::1`). It exposes the host's other UDP
    /// services; never in production. The listeners stay denied.
    pub host_peers: bool,
}

impl Default for Peers {
    fn default() -> Self {
        Peers {
            allow: vec![],
            deny: vec![],
            relay_to_relay: true,
            host_peers: false,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Text or JSON.
    pub format: LogFormat,
    /// Log client IPs, peer addresses and usernames in the clear. Off by default: logs then
    /// carry only keyed hashes whose key rotates daily.
    pub personal_data: bool,
}

/// Traffic shaping of the relay → client leg (see the README for what each mode protects).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapingConfig {
    /// Off by default: shaping costs bytes and latency. On, the defaults below are the ones
    /// measured against flow-matching observers (README: Traffic-analysis resistance).
    pub enabled: bool,
    /// `flow:128,256,512,1200` (default: one size per flow, the largest bucket it needed
    /// recently), a per-frame bucket list `128,256,512,1200` (leaks talk spurts in the byte
    /// volume), `multiple:N` or `off`; sizes are multiples of 4.
    pub padding: Padding,
    /// `off`, `slots:INTERVAL` (default `slots:20ms`: fixed grid, one frame per flow per slot,
    /// under two intervals of delay) or `jitter:MAX`.
    pub timing: Timing,
    /// Cover traffic `RATE` (default 50: fillers at the flow's size) or `RATE:SIZE`: once a flow
    /// carries media, keep at least RATE frames/s going to its client, filling silences with
    /// ignorable filler, until 15 s after its last real frame; `null` for none.
    pub cover: Option<Cover>,
    /// Named profiles a credential selects with the claim in a REST username `<expiry>:<id>;s=<profile>`
    /// (`veil credentials --profile NAME`), whatever `enabled` says; unset fields are off.
    pub profiles: std::collections::BTreeMap<String, ShapingProfile>,
    /// Frames one worker holds for re-clocking at most (2 KiB each); over it the frame due
    /// soonest is dropped and counted.
    pub queue_limit: usize,
}

impl Default for ShapingConfig {
    fn default() -> Self {
        ShapingConfig {
            enabled: false,
            padding: Padding::Flow(vec![128, 256, 512, 1200]),
            timing: Timing::Slots(std::time::Duration::from_millis(20)),
            cover: Some(Cover {
                interval: std::time::Duration::from_millis(20),
                size: None,
            }),
            profiles: Default::default(),
            queue_limit: 4096,
        }
    }
}

/// A named shaping profile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapingProfile {
    /// Padding of this profile.
    pub padding: Padding,
    /// Timing of this profile.
    pub timing: Timing,
    /// Cover traffic of this profile.
    pub cover: Option<Cover>,
    /// Bandwidth caps of this profile's credentials (e.g. more for video than for voice);
    /// unset: `limits.bandwidth`.
    pub bandwidth: Option<Bandwidth>,
    /// Only over TLS: an Allocate with this profile over UDP or TCP gets 403, and the
    /// allocator hands its credentials out with `turns:` URIs only. On plain UDP a TURN-aware
    /// observer reads ChannelData lengths and tells cover from media; inside TLS it sees only
    /// records of one size.
    pub require_tls: bool,
}

/// The relay node's configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// UDP addresses clients reach the node on.
    pub listen: Vec<SocketAddr>,
    /// TCP addresses for TURN over TCP; none by default.
    pub listen_tcp: Vec<SocketAddr>,
    /// TLS addresses for TURN over TLS (`turns:`), e.g. 5349 and 443; they need `tls`.
    pub listen_tls: Vec<SocketAddr>,
    /// The certificate for `listen_tls`.
    pub tls: TlsConfig,
    /// TCP/TLS connection limits.
    pub streams: StreamConfig,
    /// IPs relayed sockets bind to. Empty: the listen IPs. Several of a family multiply the
    /// allocations the node can hold (each IP has the whole port range); allocations go to
    /// the least used.
    pub relay_ips: Vec<IpAddr>,
    /// IPs advertised to clients instead of the relay IPs (1:1 NAT): none, or per family as
    /// many as relay IPs, paired in order.
    pub external_ips: Vec<IpAddr>,
    /// Ports of relayed sockets.
    pub port_range: PortRange,
    /// REALM of challenges and long-term keys.
    pub realm: String,
    /// The residency zone this node serves (allocator policy). When set, REST credentials must
    /// carry the claim `z=<zone>` or get 403; none by default.
    pub zone: Option<String>,
    /// Credentials.
    pub auth: AuthConfig,
    /// Lifetimes.
    pub lifetimes: Lifetimes,
    /// Allocation quotas.
    pub quotas: Quotas,
    /// Rate limits.
    pub limits: Limits,
    /// Which peers clients may reach.
    pub peers: Peers,
    /// Traffic shaping of the relay → client leg.
    pub shaping: ShapingConfig,
    /// Worker threads, each with its own sockets and allocations. 0: one per CPU.
    pub workers: usize,
    /// Admin HTTP endpoint (`/healthz`, `/readyz`, `/status`) for probes and the allocator;
    /// off by default. Bind it to a private address.
    pub admin: Option<SocketAddr>,
    /// SOFTWARE attribute sent in responses; none by default.
    pub software: Option<String>,
    /// Logging.
    pub log: LogConfig,
    /// Shutdown and reload.
    pub lifecycle: Lifecycle,
}

/// The certificate for `listen_tls`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Also accept TLS 1.2 (TLS 1.3 only by default).
    pub allow_tls12: bool,
    /// Host name in the `turns:` URIs the node advertises (it must match the certificate);
    /// none: the advertised IP.
    pub name: Option<String>,
}

/// Limits of TCP and TLS connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Seconds from accept for the TLS handshake and the first whole TURN message together
    /// (a client trickling bytes does not restart it).
    pub handshake_timeout: u32,
    /// Seconds a connection without an allocation may stay silent.
    pub idle_timeout: u32,
    /// Connections the node holds at once.
    pub max_connections: usize,
    /// Connections one client may hold at once: one IPv4 address, one IPv6 /64.
    pub max_connections_per_ip: usize,
    /// Bytes queued for one slow client before frames for it are dropped.
    pub send_buffer: usize,
    /// New connections one client (an IPv4 address, an IPv6 /64) may open per second on each
    /// worker, a burst of twice as many; checked at accept, before any TLS. 0: no limit.
    pub new_per_ip_per_second: u32,
    /// New connections each worker accepts per second from everyone, a burst of as many; what
    /// bounds the handshake CPU a worker that also serves UDP can be made to spend. 0: none.
    pub new_per_second: u32,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            handshake_timeout: 10,
            idle_timeout: 60,
            max_connections: 20_000,
            max_connections_per_ip: 200,
            send_buffer: 256 * 1024,
            new_per_ip_per_second: 20,
            new_per_second: 200,
        }
    }
}

/// [`StreamConfig`], resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Deadline for the TLS handshake and the first message.
    pub handshake_timeout: std::time::Duration,
    /// How long a connection without an allocation may stay silent.
    pub idle_timeout: std::time::Duration,
    /// Connections the node holds at once.
    pub max_connections: usize,
    /// Connections one client may hold at once: one IPv4 address, one IPv6 /64.
    pub max_connections_per_ip: usize,
    /// Bytes queued for one slow client.
    pub send_buffer: usize,
    /// New connections per second per client prefix and worker (0: no limit).
    pub new_per_ip_per_second: u32,
    /// New connections per second per worker (0: no limit).
    pub new_per_second: u32,
}

/// Shutdown and reload behaviour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lifecycle {
    /// Seconds a SIGTERM'd node keeps relaying for existing allocations (new ones are refused)
    /// before it exits; it exits sooner when the last allocation ends.
    pub drain_timeout: u32,
    /// Seconds between checks of the config file and secret files for changes, which reload
    /// them as SIGHUP does; 0: SIGHUP only.
    pub watch_interval: u32,
    /// Seconds a worker may go without turning its loop (its timer runs at least once a
    /// second) before the node counts it as stalled: not ready at once, then exit non-zero.
    pub worker_stall: u32,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            drain_timeout: 300,
            watch_interval: 5,
            worker_stall: 10,
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 3478))],
            listen_tcp: vec![],
            listen_tls: vec![],
            tls: TlsConfig::default(),
            streams: StreamConfig::default(),
            relay_ips: vec![],
            external_ips: vec![],
            port_range: PortRange {
                start: 49152,
                end: 65535,
            },
            realm: "veil".into(),
            zone: None,
            auth: AuthConfig::default(),
            lifetimes: Lifetimes::default(),
            quotas: Quotas::default(),
            limits: Limits::default(),
            peers: Peers::default(),
            shaping: ShapingConfig::default(),
            workers: 0,
            admin: None,
            software: None,
            log: LogConfig::default(),
            lifecycle: Lifecycle::default(),
        }
    }
}

pub use veil_ops::ConfigError;

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// Everything a node needs to start, checked.
#[derive(Debug)]
pub struct Resolved {
    /// UDP listeners.
    pub listen: Vec<SocketAddr>,
    /// TCP listeners.
    pub listen_tcp: Vec<SocketAddr>,
    /// TLS listeners.
    pub listen_tls: Vec<SocketAddr>,
    /// The certificate and TLS settings, when `listen_tls` is set.
    pub tls: Option<std::sync::Arc<crate::tls::TlsState>>,
    /// Host name of `turns:` URIs.
    pub tls_name: Option<String>,
    /// TCP/TLS connection limits.
    pub streams: StreamLimits,
    /// What the protocol core needs.
    pub server: ServerConfig,
    /// Credentials in force.
    pub credentials: Credentials,
    /// The peer filter in force.
    pub filter: PeerFilter,
    /// Bandwidth caps per shaping profile (`[0]` the node's), as `ServerConfig::bandwidth`.
    pub bandwidth: Vec<BandwidthCaps>,
    /// Relayed ports.
    pub port_range: PortRange,
    /// Worker threads.
    pub workers: usize,
    /// Logging.
    pub log: LogConfig,
    /// Shaping policies: `[0]` the node's, then the named profiles in `server.shaping_profiles`
    /// order.
    pub shaping: Vec<Policy>,
    /// Admin HTTP endpoint.
    pub admin: Option<SocketAddr>,
    /// How long a SIGTERM'd node drains.
    pub drain_timeout: std::time::Duration,
    /// How often to look for changed files (None: SIGHUP only).
    pub watch_interval: Option<std::time::Duration>,
    /// How long a worker may go without turning its loop before the node fails.
    pub worker_stall: std::time::Duration,
    /// The secret files read, which a reload reads again.
    pub secret_files: Vec<PathBuf>,
    /// Things an operator should know at start (not errors).
    pub warnings: Vec<String>,
    /// The configuration it was resolved from (file and flags), to tell what a reload changed.
    pub source: RelayConfig,
}

/// The settings a reload puts in force while allocations go on; every other setting of the
/// file is fixed for the life of the process (sockets, workers and allocations depend on it),
/// so a new setting needs a restart unless it is listed here, next to where it is applied
/// (`src/lifecycle.rs`). A path names a field of the file and everything under it; `*` stands
/// for one map key (a profile's policy reloads; adding or removing a profile does not).
pub const RELOADABLE: &[&str] = &[
    // Secrets, secret files and static users: `Live::credentials`.
    "auth",
    // The peer filter: `Live::filter`.
    "peers",
    // Bandwidth caps: `Live::bandwidth` (a profile's, under `shaping.profiles.*`).
    "limits.bandwidth",
    // Shaping policies: `Node::reload_shaping`.
    "shaping.enabled",
    "shaping.padding",
    "shaping.timing",
    "shaping.cover",
    "shaping.queue_limit",
    "shaping.profiles.*",
];

impl Resolved {
    /// The settings that differ in `new` but only take effect at a restart: every changed
    /// field of the file outside [`RELOADABLE`], by its path (`quotas.total`, `listen`).
    pub fn restart_needed(&self, new: &Resolved) -> Vec<String> {
        let (Ok(a), Ok(b)) = (
            serde_json::to_value(&self.source),
            serde_json::to_value(&new.source),
        ) else {
            return vec!["(configuration not comparable)".into()];
        };
        let mut changed = Vec::new();
        diff_paths(&a, &b, &mut Vec::new(), &mut changed);
        // A profile's policy reloads; whether it requires TLS does not (allocations were
        // admitted by their transport).
        changed
            .retain(|path| !is_reloadable(path) || path.last().is_some_and(|l| l == "require_tls"));
        changed.into_iter().map(|p| p.join(".")).collect()
    }

    /// Whether `new` names other shaping profiles (their policies cannot be swapped then:
    /// allocations hold profiles by index).
    pub fn profiles_renamed(&self, new: &Resolved) -> bool {
        self.server.shaping_profiles != new.server.shaping_profiles
            || self.server.tls_only_profiles != new.server.tls_only_profiles
    }
}

/// A YAML scalar where the setting is a string (a zone named `5`, `50:256`) is taken as that
/// string, and one value where it is a list as a list of one: `--set peers.deny=10.0.0.0/8`.
fn coerce_like(old: &serde_json::Value, new: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (old, new) {
        (Value::String(_) | Value::Null, Value::Number(n)) => Value::String(n.to_string()),
        (Value::String(_) | Value::Null, Value::Bool(b)) if old.is_string() => {
            Value::String(b.to_string())
        }
        (Value::Array(_), Value::String(s)) => Value::Array(vec![Value::String(s)]),
        (_, v) => v,
    }
}

/// Collects the paths where two serialized configurations differ: a leaf or list that changed,
/// or a map whose keys changed.
fn diff_paths(
    a: &serde_json::Value,
    b: &serde_json::Value,
    at: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) if x.keys().eq(y.keys()) => {
            for (k, v) in x {
                at.push(k.clone());
                diff_paths(v, &y[k], at, out);
                at.pop();
            }
        }
        _ if a != b => out.push(at.clone()),
        _ => {}
    }
}

fn is_reloadable(path: &[String]) -> bool {
    RELOADABLE.iter().any(|pattern| {
        let pat: Vec<&str> = pattern.split('.').collect();
        pat.len() <= path.len() && pat.iter().zip(path).all(|(p, seg)| *p == "*" || p == seg)
    })
}

impl RelayConfig {
    /// Sets one setting by its path in the file: `streams.idle_timeout=30`,
    /// `peers.allow=[10.0.0.0/8]`, `shaping.cover=50:256`. The value is YAML, checked as the
    /// file's would be; every setting of the file can be set this way, with no flag of its own.
    pub fn set(&mut self, assignment: &str) -> Result<(), ConfigError> {
        // Named by its path only: the value may be a secret (`--set auth.secrets=[…]`).
        let origin = format!(
            "--set {}",
            assignment.split_once('=').map_or("", |(p, _)| p.trim())
        );
        let bad = |message: String| ConfigError::parse(origin.clone(), &message);
        let (path, value) = assignment
            .split_once('=')
            .ok_or_else(|| bad("expected PATH=VALUE, e.g. streams.idle_timeout=30".into()))?;
        let value: serde_json::Value = if value.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_saphyr::from_str(value).map_err(|e| ConfigError::yaml(origin.clone(), &e))?
        };
        let mut tree = serde_json::to_value(&*self).map_err(|e| bad(e.to_string()))?;
        let mut at = &mut tree;
        for key in path.trim().split('.') {
            at = at
                .as_object_mut()
                .and_then(|o| o.get_mut(key))
                .ok_or_else(|| bad(format!("no setting `{}` in the configuration", path.trim())))?;
        }
        // As written first; a scalar where the setting is a string (or a list) second.
        let coerced = coerce_like(at, value.clone());
        *at = value;
        let first = match serde_json::from_value::<RelayConfig>(tree.clone()) {
            Ok(c) => {
                *self = c;
                return Ok(());
            }
            Err(e) => e,
        };
        let mut at = &mut tree;
        for key in path.trim().split('.') {
            at = at.get_mut(key).expect("the path was walked above");
        }
        *at = coerced;
        *self = serde_json::from_value(tree).map_err(|_| bad(first.to_string()))?;
        Ok(())
    }

    /// Parses YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        serde_saphyr::from_str(text).map_err(|e| ConfigError::yaml(origin, &e))
    }

    /// Reads and parses a YAML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Validates the configuration, reads secret files and works out the node's addresses.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let mut warnings = Vec::new();
        if self.listen.is_empty() {
            return Err(invalid("listen", "at least one address is needed"));
        }
        if self.listen.iter().any(|l| l.port() == 0) {
            return Err(invalid(
                "listen",
                "port 0 is not a TURN port; name one (3478 is standard)",
            ));
        }
        for (field, list) in [
            ("listen_tcp", &self.listen_tcp),
            ("listen_tls", &self.listen_tls),
        ] {
            if list.iter().any(|l| l.port() == 0) {
                return Err(invalid(field, "port 0 is not a TURN port"));
            }
        }
        let tls = match (&self.tls.cert, &self.tls.key, self.listen_tls.is_empty()) {
            (_, _, true) => None,
            (Some(cert), Some(key), false) => Some(
                crate::tls::TlsState::new(cert, key, self.tls.allow_tls12)
                    .map_err(|e| invalid("tls", e))?,
            ),
            _ => {
                return Err(invalid(
                    "tls",
                    "listen_tls needs tls.cert and tls.key (--tls-cert, --tls-key)",
                ));
            }
        };
        let st = &self.streams;
        if st.handshake_timeout == 0 || st.idle_timeout == 0 {
            return Err(invalid("streams", "timeouts must be >= 1 s"));
        }
        if !(2..=3600).contains(&self.lifecycle.worker_stall) {
            return Err(invalid(
                "lifecycle.worker_stall",
                "between 2 and 3600 seconds (a worker's timer turns every second)",
            ));
        }
        if st.max_connections == 0 || st.max_connections_per_ip == 0 {
            return Err(invalid("streams", "connection caps must be >= 1"));
        }
        if st.send_buffer < 70_000 {
            return Err(invalid(
                "streams.send_buffer",
                "at least 70000 bytes (one frame of the largest size)",
            ));
        }
        let pr = self.port_range;
        if pr.start > pr.end || pr.start < 1024 {
            return Err(invalid(
                "port_range",
                format!("{pr}: need 1024 <= start <= end"),
            ));
        }
        if self.realm.is_empty() {
            return Err(invalid("realm", "must not be empty"));
        }
        let l = &self.lifetimes;
        if l.max_allocation < 60
            || l.default_allocation == 0
            || l.default_allocation > l.max_allocation
        {
            return Err(invalid(
                "lifetimes",
                "need 0 < default_allocation <= max_allocation, max_allocation >= 60",
            ));
        }
        if l.permission == 0 || l.channel == 0 || l.nonce < 30 {
            return Err(invalid(
                "lifetimes",
                "permission and channel must be > 0, nonce >= 30",
            ));
        }
        if self.quotas.per_user == 0 || self.quotas.total == 0 {
            return Err(invalid("quotas", "per_user and total must be >= 1"));
        }
        // RFC 8656 clients need at least one of each; more than a few thousand per allocation
        // is state no call needs (and a channel number space of 16 384).
        if !(1..=4096).contains(&self.quotas.permissions)
            || !(1..=4096).contains(&self.quotas.channels)
        {
            return Err(invalid(
                "quotas",
                "permissions and channels must be 1..=4096",
            ));
        }
        let u = &self.limits.unauthenticated;
        if u.per_second > 0 && u.burst == 0 {
            return Err(invalid(
                "limits.unauthenticated",
                "burst must be >= 1 when per_second is set (per_second 0 turns the limit off)",
            ));
        }
        let b = &self.limits.binding;
        if b.per_second > 0 && b.burst == 0 {
            return Err(invalid(
                "limits.binding",
                "burst must be >= 1 when per_second is set (per_second 0 turns the limit off)",
            ));
        }

        // Relay IPs: configured, else the listen IPs.
        let relay_ips: Vec<IpAddr> = if self.relay_ips.is_empty() {
            let mut v: Vec<IpAddr> = Vec::new();
            for l in &self.listen {
                if l.ip().is_unspecified() {
                    return Err(invalid(
                        "relay_ips",
                        "required when a listen address is unspecified (0.0.0.0 or ::)",
                    ));
                }
                if !v.iter().any(|ip| ip.is_ipv4() == l.ip().is_ipv4()) {
                    v.push(l.ip());
                }
            }
            v
        } else {
            self.relay_ips.clone()
        };
        let pick =
            |ips: &[IpAddr], v4: bool, field: &'static str| -> Result<Vec<IpAddr>, ConfigError> {
                let of: Vec<IpAddr> = ips
                    .iter()
                    .copied()
                    .filter(|ip| ip.is_ipv4() == v4)
                    .collect();
                if of.iter().any(|ip| ip.is_unspecified()) {
                    return Err(invalid(field, "must be specific addresses"));
                }
                if of.iter().enumerate().any(|(i, ip)| of[..i].contains(ip)) {
                    return Err(invalid(field, "lists an address twice"));
                }
                Ok(of)
            };
        let mut relays: [Vec<RelayAddr>; 2] = [Vec::new(), Vec::new()];
        for (i, v4) in [true, false].into_iter().enumerate() {
            let binds = pick(&relay_ips, v4, "relay_ips")?;
            let ext = pick(&self.external_ips, v4, "external_ips")?;
            if !ext.is_empty() && ext.len() != binds.len() {
                return Err(invalid(
                    "external_ips",
                    "give none, or one per relay IP of the same family (paired in order)",
                ));
            }
            relays[i] = binds
                .iter()
                .enumerate()
                .map(|(k, &bind)| RelayAddr {
                    bind,
                    advertise: ext.get(k).copied().unwrap_or(bind),
                })
                .collect();
        }

        // Secrets.
        let mut secrets: Vec<Vec<u8>> = Vec::new();
        for path in &self.auth.secret_files {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let before = secrets.len();
            secrets.extend(parse_secrets(&text));
            if secrets.len() == before {
                return Err(invalid(
                    "auth.secret_files",
                    format!("{} holds no secret", path.display()),
                ));
            }
        }
        for s in &self.auth.secrets {
            if s.trim().is_empty() {
                return Err(invalid("auth.secrets", "empty secret"));
            }
            secrets.push(s.trim().as_bytes().to_vec());
        }
        if secrets.iter().any(|s| s.len() < 16) {
            warnings
                .push("a REST secret is shorter than 16 bytes; use a long random secret".into());
        }
        let static_users: Vec<(String, String)> = self
            .auth
            .static_users
            .iter()
            .map(|u| (u.username.clone(), u.password.clone()))
            .collect();
        if secrets.is_empty() && static_users.is_empty() {
            return Err(invalid(
                "auth",
                "no credentials: set auth.secret_files (or --auth-secret-file) or, for development, auth.static_users",
            ));
        }
        if !static_users.is_empty() {
            warnings.push("auth.static_users is for local development only".into());
        }
        if let Some(eph) = kernel_ephemeral_ports()
            && eph.overlaps(&pr)
        {
            warnings.push(format!(
                "port_range {pr} overlaps the kernel's ephemeral ports {eph} \
                 (/proc/sys/net/ipv4/ip_local_port_range): outgoing sockets will collide with relayed ports"
            ));
        }

        let listeners: Vec<SocketAddr> = self
            .listen
            .iter()
            .chain(&self.listen_tcp)
            .chain(&self.listen_tls)
            .chain(&self.admin)
            .copied()
            .collect();
        let mut own_ips: Vec<IpAddr> = relays
            .iter()
            .flatten()
            .flat_map(|r| [r.bind, r.advertise])
            .collect();
        // A socket bound to an unspecified address answers on every address of the host.
        if listeners
            .iter()
            .map(|l| l.ip())
            .chain(own_ips.iter().copied())
            .any(|ip| ip.is_unspecified())
        {
            own_ips.extend(crate::sys::interface_addresses());
        }
        // Our listeners, also as reached through the advertised (external) IPs.
        let mut own_sockets = listeners.clone();
        for l in &listeners {
            own_sockets.extend(own_ips.iter().map(|ip| SocketAddr::new(*ip, l.port())));
        }
        let filter = PeerFilter::new(&self.peers.deny, &self.peers.allow)
            .with_own_addresses(&own_sockets, &own_ips, (pr.start, pr.end))
            .relay_to_relay(self.peers.relay_to_relay)
            .host_peers(self.peers.host_peers);
        // Profile i + 1 is the i-th name of shaping.profiles (a BTreeMap: name order).
        let bandwidth: Vec<BandwidthCaps> = std::iter::once(self.limits.bandwidth.caps())
            .chain(
                self.shaping
                    .profiles
                    .values()
                    .map(|p| p.bandwidth.unwrap_or(self.limits.bandwidth).caps()),
            )
            .collect();
        let server = ServerConfig {
            realm: self.realm.clone(),
            software: self.software.clone().filter(|s| !s.is_empty()),
            relays,
            default_lifetime: l.default_allocation,
            max_lifetime: l.max_allocation,
            permission_lifetime: l.permission,
            channel_lifetime: l.channel,
            nonce_lifetime: l.nonce,
            user_quota: self.quotas.per_user,
            source_quota: self.quotas.per_source,
            unauthenticated_rate: self.limits.unauthenticated.per_second,
            unauthenticated_burst: self.limits.unauthenticated.burst,
            binding_rate: self.limits.binding.per_second,
            binding_burst: self.limits.binding.burst,
            max_permissions: self.quotas.permissions,
            max_channels: self.quotas.channels,
            total_quota: self.quotas.total,
            shaping_profiles: self.shaping.profiles.keys().cloned().collect(),
            tls_only_profiles: self
                .shaping
                .profiles
                .values()
                .map(|p| p.require_tls)
                .collect(),
            bandwidth: bandwidth.clone(),
            zone: self.zone.clone().filter(|z| !z.is_empty()),
        };
        let workers = if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        };
        let sh = &self.shaping;
        if !(1..=1_000_000).contains(&sh.queue_limit) {
            return Err(invalid("shaping.queue_limit", "between 1 and 1000000"));
        }
        let mut shaping = vec![if sh.enabled {
            Policy {
                padding: sh.padding.clone(),
                timing: sh.timing,
                cover: sh.cover,
                queue_limit: sh.queue_limit,
            }
        } else {
            Policy {
                queue_limit: sh.queue_limit,
                ..Policy::default()
            }
        }];
        if sh.profiles.len() > 32 {
            return Err(invalid("shaping.profiles", "at most 32 profiles"));
        }
        for (name, p) in &sh.profiles {
            let ok = !name.is_empty()
                && name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(invalid(
                    "shaping.profiles",
                    format!("`{name}`: names are 1-32 of [A-Za-z0-9_-]"),
                ));
            }
            if p.require_tls && self.listen_tls.is_empty() {
                return Err(invalid(
                    "shaping.profiles",
                    format!("`{name}`: require_tls needs a listen_tls address"),
                ));
            }
            shaping.push(Policy {
                padding: p.padding.clone(),
                timing: p.timing,
                cover: p.cover,
                queue_limit: sh.queue_limit,
            });
        }
        if workers > 256 {
            return Err(invalid("workers", "at most 256"));
        }
        Ok(Resolved {
            listen: self.listen.clone(),
            listen_tcp: self.listen_tcp.clone(),
            listen_tls: self.listen_tls.clone(),
            tls,
            tls_name: self.tls.name.clone().filter(|n| !n.is_empty()),
            streams: StreamLimits {
                handshake_timeout: std::time::Duration::from_secs(st.handshake_timeout as u64),
                idle_timeout: std::time::Duration::from_secs(st.idle_timeout as u64),
                max_connections: st.max_connections,
                max_connections_per_ip: st.max_connections_per_ip,
                new_per_ip_per_second: st.new_per_ip_per_second,
                new_per_second: st.new_per_second,
                send_buffer: st.send_buffer,
            },
            server,
            credentials: Credentials {
                secrets,
                static_users,
                revoked_users: self
                    .auth
                    .revoked_users
                    .iter()
                    .map(|u| u.as_str().into())
                    .collect(),
                max_session: self.auth.max_session,
                removed_secret_grace: self.auth.removed_secret_grace,
                max_validity: self.auth.max_validity,
            },
            filter,
            bandwidth,
            port_range: pr,
            workers,
            log: self.log.clone(),
            shaping,
            admin: self.admin,
            drain_timeout: std::time::Duration::from_secs(self.lifecycle.drain_timeout as u64),
            watch_interval: (self.lifecycle.watch_interval > 0)
                .then(|| std::time::Duration::from_secs(self.lifecycle.watch_interval as u64)),
            worker_stall: std::time::Duration::from_secs(self.lifecycle.worker_stall as u64),
            secret_files: self.auth.secret_files.clone(),
            warnings,
            source: self.clone(),
        })
    }
}

pub use crate::proto::auth::parse_secrets;

/// The kernel's ephemeral port range, if readable.
pub fn kernel_ephemeral_ports() -> Option<PortRange> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>());
    match (it.next(), it.next()) {
        (Some(Ok(start)), Some(Ok(end))) => Some(PortRange { start, end }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_secrets_or_passwords() {
        let mut c = RelayConfig::default();
        c.auth.secrets = vec!["inline-secret-0123456789".into()];
        c.auth.static_users = vec![StaticUser {
            username: "dev".into(),
            password: "dev-password-42".into(),
        }];
        let r = c.resolve().unwrap();
        let text = format!("{c:?} {r:?}");
        assert!(!text.contains("inline-secret-0123456789"), "{text}");
        assert!(!text.contains("dev-password-42"), "{text}");
        assert!(text.contains("dev"), "the user name is shown");
    }

    #[test]
    fn every_setting_can_be_set_by_its_path() {
        let mut c = RelayConfig::default();
        c.set("streams.idle_timeout=30").unwrap();
        c.set("port_range=40000-40999").unwrap();
        c.set("peers.allow=[10.0.0.0/8, 192.168.0.0/16]").unwrap();
        c.set("zone=eu").unwrap();
        c.set("peers.deny=10.0.0.0/8").unwrap();
        assert_eq!(c.peers.deny.len(), 1);
        c.set("shaping.cover=50:256").unwrap();
        c.set("admin=127.0.0.1:9000").unwrap();
        assert_eq!(c.streams.idle_timeout, 30);
        assert_eq!(
            c.port_range,
            PortRange {
                start: 40000,
                end: 40999
            }
        );
        assert_eq!(c.peers.allow.len(), 2);
        assert_eq!(c.zone.as_deref(), Some("eu"));
        assert!(c.shaping.cover.is_some());
        assert!(c.admin.is_some());
        c.set("zone=").unwrap();
        assert_eq!(c.zone, None, "an empty value clears an optional setting");
        for (bad, says) in [
            ("streams.idle_timeout", "PATH=VALUE"),
            (
                "streams.idel_timeout=3",
                "--set streams.idel_timeout: no setting",
            ),
            ("streams.idle_timeout=soon", "idle_timeout"),
            ("port_range=1-", "port range"),
        ] {
            let e = c.clone().set(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(
            c.streams.idle_timeout, 30,
            "a refused assignment changes nothing"
        );
    }

    #[test]
    fn restart_needed_names_fixed_settings_only() {
        let base = RelayConfig {
            auth: AuthConfig {
                secrets: vec!["a-secret-of-sixteen-bytes".into()],
                ..AuthConfig::default()
            },
            ..RelayConfig::default()
        };
        let a = base.resolve().unwrap();
        // What a reload applies: secrets, peers, shaping policies.
        let mut live = base.clone();
        live.auth.secrets.push("another-secret-0123456789".into());
        live.peers.deny.push("192.0.2.0/24".parse().unwrap());
        live.shaping.enabled = true;
        assert!(a.restart_needed(&live.resolve().unwrap()).is_empty());
        // What needs a restart.
        let mut fixed = base.clone();
        fixed.realm = "elsewhere".into();
        fixed.quotas.total = 5;
        fixed.port_range = PortRange {
            start: 40000,
            end: 40999,
        };
        fixed
            .shaping
            .profiles
            .insert("voice".into(), Default::default());
        let b = fixed.resolve().unwrap();
        assert_eq!(
            a.restart_needed(&b),
            ["port_range", "quotas.total", "realm", "shaping.profiles"]
        );
        assert!(a.profiles_renamed(&b));
        // A profile's policy reloads; a changed certificate path does not (the running node
        // rereads the files it started with).
        let mut with_profile = base.clone();
        with_profile
            .shaping
            .profiles
            .insert("voice".into(), Default::default());
        let p = with_profile.resolve().unwrap();
        let mut retuned = with_profile.clone();
        retuned.shaping.profiles.get_mut("voice").unwrap().padding = Padding::Multiple(64);
        assert!(p.restart_needed(&retuned.resolve().unwrap()).is_empty());
        let mut moved = base.clone();
        moved.tls.cert = Some("/elsewhere/cert.pem".into());
        moved.streams.idle_timeout = 5;
        assert_eq!(
            a.restart_needed(&moved.resolve().unwrap()),
            ["streams.idle_timeout", "tls.cert"]
        );
    }

    #[test]
    fn example_file_is_exactly_the_defaults() {
        let parsed =
            RelayConfig::from_yaml(EXAMPLE, "relay.example.yaml").expect("the example parses");
        assert_eq!(parsed, RelayConfig::default());
    }

    #[test]
    fn example_with_a_secret_resolves() {
        let mut c = RelayConfig::from_yaml(EXAMPLE, "example").unwrap();
        c.auth.secrets = vec!["0123456789abcdef0123".into()];
        let r = c.resolve().unwrap();
        assert_eq!(
            r.server.relays[0][0].bind,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(r.server.default_lifetime, 600);
        assert_eq!(r.server.max_lifetime, 3600);
        assert!(r.server.software.is_none());
        assert!(r.workers >= 1);
    }

    fn err_of(yaml: &str) -> String {
        match RelayConfig::from_yaml(yaml, "test.yaml").and_then(|c| c.resolve().map(|_| ())) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("{yaml} should be rejected"),
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                "listen: [127.0.0.1:3478]\nrealmm: x\n",
                "did you mean `realm`?), expected one of",
            ),
            (
                "port_range: 60000-50000\nauth: {secrets: [s]}\n",
                "port_range",
            ),
            (
                "port_range: nope\n",
                "is not a port range like 49152-65535 at line 1",
            ),
            (
                "lifetimes: {default_allocation: 7200}\nauth: {secrets: [s]}\n",
                "lifetimes",
            ),
            ("quotas: {per_user: 0}\nauth: {secrets: [s]}\n", "quotas"),
            (
                "peers: {allow: [10.0.0.0/99]}\n",
                "is not an address or address/prefix (e.g. 10.0.0.0/8, fc00::/7) at line 1, column 17",
            ),
            (
                "listen: [0.0.0.0:3478]\nauth: {secrets: [s]}\n",
                "relay_ips",
            ),
            (
                "relay_ips: [127.0.0.1, 127.0.0.1]\nauth: {secrets: [s]}\n",
                "relay_ips",
            ),
            (
                "relay_ips: [127.0.0.1, 127.0.0.2]\nexternal_ips: [203.0.113.1]\nauth: {secrets: [s]}\n",
                "external_ips",
            ),
            ("listen: [127.0.0.1:3478]\n", "auth"),
            (
                "auth: {secret_files: [/nonexistent/veil-secrets]}\n",
                "/nonexistent/veil-secrets",
            ),
            ("lifetimes: {permision: 5}\n", "did you mean `permission`"),
            ("workers: many\n", "at line 1, column 10"),
            ("shaping: {padding: \"130,260\"}\n", "multiple of 4"),
            ("shaping: {timing: slots:0ms}\n", "at line 1, column 19"),
            (
                "shaping: {enabled: true, queue_limit: 0}\nauth: {secrets: [s]}\n",
                "shaping.queue_limit",
            ),
        ];
        for (yaml, needle) in cases {
            let e = err_of(yaml);
            assert!(
                e.contains(needle),
                "error for {yaml:?} should name {needle}: {e}"
            );
        }
    }

    #[test]
    fn secret_files_hold_several_secrets() {
        let dir = std::env::temp_dir().join(format!("veil-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secrets");
        std::fs::write(
            &f,
            "# rotation: newest first\nnew-secret-0123456789\n\nold-secret-0123456789\n",
        )
        .unwrap();
        let c = RelayConfig {
            auth: AuthConfig {
                secret_files: vec![f.clone()],
                ..Default::default()
            },
            ..Default::default()
        };
        let r = c.resolve().unwrap();
        assert_eq!(
            r.credentials.secrets,
            vec![
                b"new-secret-0123456789".to_vec(),
                b"old-secret-0123456789".to_vec()
            ]
        );
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(
            c.resolve()
                .unwrap_err()
                .to_string()
                .contains("holds no secret")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn several_relay_ips_pair_with_external_ips_in_order_per_family() {
        let c = RelayConfig::from_yaml(
            "relay_ips: [10.0.0.1, '::1', 10.0.0.2]\n\
             external_ips: [203.0.113.1, 203.0.113.2]\n\
             auth: {secrets: [0123456789abcdef]}\n",
            "test",
        )
        .unwrap();
        let r = c.resolve().unwrap();
        let pairs = |f: usize| -> Vec<(String, String)> {
            r.server.relays[f]
                .iter()
                .map(|a| (a.bind.to_string(), a.advertise.to_string()))
                .collect()
        };
        assert_eq!(
            pairs(0),
            [("10.0.0.1", "203.0.113.1"), ("10.0.0.2", "203.0.113.2")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(pairs(1), [("::1".to_string(), "::1".to_string())]);
        // Every relay IP and advertised IP is the node's own: its listener is denied on each.
        for ip in ["10.0.0.2", "203.0.113.2"] {
            assert!(
                r.filter
                    .check(format!("{ip}:3478").parse().unwrap())
                    .is_err()
            );
        }
    }

    #[test]
    fn external_ip_is_advertised_and_denied_as_a_peer() {
        let c = RelayConfig {
            listen: vec!["127.0.0.1:3478".parse().unwrap()],
            external_ips: vec!["93.184.216.1".parse().unwrap()],
            port_range: PortRange {
                start: 20000,
                end: 20999,
            },
            auth: AuthConfig {
                secrets: vec!["0123456789abcdef".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let r = c.resolve().unwrap();
        let v4 = r.server.relays[0][0];
        assert_eq!(v4.advertise, "93.184.216.1".parse::<IpAddr>().unwrap());
        // The listener through the external IP is ours: denied.
        assert!(
            r.filter
                .check("93.184.216.1:3478".parse().unwrap())
                .is_err()
        );
        // Another allocation's relayed address on this node: reachable (relay_to_relay)...
        assert!(
            r.filter
                .check("93.184.216.1:20500".parse().unwrap())
                .is_ok()
        );
        // ...unless the operator turns it off.
        let mut c = c.clone();
        c.peers.relay_to_relay = false;
        let r = c.resolve().unwrap();
        assert!(
            r.filter
                .check("93.184.216.1:20500".parse().unwrap())
                .is_err()
        );
        // Outside the relayed range the external IP is the host's other services: never.
        for p in ["93.184.216.1:21000", "93.184.216.1:22", "127.0.0.1:9100"] {
            assert!(r.filter.check(p.parse().unwrap()).is_err(), "{p}");
        }
        let mut c = c.clone();
        c.peers.host_peers = true;
        let r = c.resolve().unwrap();
        assert!(
            r.filter
                .check("93.184.216.1:21000".parse().unwrap())
                .is_ok()
        );
        assert!(
            r.filter
                .check("93.184.216.1:3478".parse().unwrap())
                .is_err()
        );
    }

    /// A listener on an unspecified address answers on every interface address, so each is
    /// the node's own: the loopback address is, outside the relayed range, whatever `allow`
    /// says; an address no interface holds is not.
    #[test]
    fn unspecified_listeners_make_every_interface_address_own() {
        let ifaces = crate::sys::interface_addresses();
        assert!(
            ifaces.contains(&"127.0.0.1".parse().unwrap()),
            "getifaddrs lists loopback: {ifaces:?}"
        );
        let c = RelayConfig {
            listen: vec!["0.0.0.0:3478".parse().unwrap()],
            relay_ips: vec!["127.0.0.1".parse().unwrap()],
            admin: Some("127.0.0.1:9000".parse().unwrap()),
            external_ips: vec!["93.184.216.1".parse().unwrap()],
            peers: Peers {
                allow: vec!["127.0.0.0/8".parse().unwrap()],
                ..Default::default()
            },
            auth: AuthConfig {
                secrets: vec!["0123456789abcdef".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let r = c.resolve().unwrap();
        let f = &r.filter;
        assert!(f.check("127.0.0.1:5000".parse().unwrap()).is_err());
        assert!(!f.admits("127.0.0.1:5000".parse().unwrap()));
        assert!(
            f.admits("127.0.0.2:9000".parse().unwrap()),
            "no interface holds 127.0.0.2"
        );
        assert!(
            f.check("127.0.0.1:9000".parse().unwrap()).is_err(),
            "the admin port"
        );
        assert!(
            f.check("127.0.0.77:3478".parse().unwrap()).is_err(),
            "an unspecified listener's port"
        );
        assert!(f.check("127.0.0.77:5000".parse().unwrap()).is_ok());
        // Every address the host's interfaces hold (::1 too, which no relay IP names).
        for ip in &ifaces {
            assert_eq!(
                f.check(SocketAddr::new(*ip, 5000)),
                Err(crate::proto::peer_filter::Denied::OwnAddress),
                "{ip}"
            );
        }
    }

    #[test]
    fn shaping_profiles_resolve_in_name_order_after_the_node_policy() {
        let yaml = "auth: {secrets: [0123456789abcdef]}\nshaping:\n  profiles:\n    voice: {padding: \"128,256\", timing: slots:20ms, cover: \"50:128\"}\n    bulk: {padding: multiple:64}\n";
        let r = RelayConfig::from_yaml(yaml, "t")
            .unwrap()
            .resolve()
            .unwrap();
        assert!(
            r.shaping[0].is_off(),
            "not enabled: the node default is off"
        );
        assert_eq!(
            r.server.shaping_profiles,
            vec!["bulk".to_string(), "voice".to_string()]
        );
        assert_eq!(r.shaping[1].padding, Padding::Multiple(64));
        assert_eq!(
            r.shaping[2].timing,
            Timing::Slots(std::time::Duration::from_millis(20))
        );
        assert!(r.shaping[2].cover.is_some());
        let bad = "auth: {secrets: [s]}\nshaping: {profiles: {\"a b\": {}}}\n";
        assert!(
            RelayConfig::from_yaml(bad, "t")
                .unwrap()
                .resolve()
                .unwrap_err()
                .to_string()
                .contains("shaping.profiles")
        );
    }

    #[test]
    fn port_range_overlap() {
        let a = PortRange {
            start: 32768,
            end: 60999,
        };
        assert!(a.overlaps(&PortRange {
            start: 49152,
            end: 65535
        }));
        assert!(!a.overlaps(&PortRange {
            start: 20000,
            end: 29999
        }));
        assert_eq!(PortRange { start: 10, end: 19 }.len(), 10);
    }
}
