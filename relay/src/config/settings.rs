//! The settings of `relay.yaml`, section by section, with their defaults: what the file (and
//! `--set`) may say. What they resolve to, and the checks, are the parent module's.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::proto::limiter::{BandwidthCaps, Caps};
use crate::proto::peer_filter::Cidr;
use crate::shaping::{Cover, Padding, Timing};

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

/// Thresholds of the abuse signals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Signals {
    /// An allocation that relayed, both ways together, more than this many bytes per second
    /// of its life (past its first minute) counts once in `veil_relay_heavy_allocations_total`;
    /// 0: never.
    pub heavy_bytes_per_second: u64,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            heavy_bytes_per_second: crate::proto::server::HEAVY_BYTES_PER_SECOND,
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
    pub(super) fn caps(&self) -> BandwidthCaps {
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
    /// Thresholds of the abuse signals (README: Seeing abuse).
    pub signals: Signals,
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
    /// The audit trail of operator actions (README: The audit trail): off by default.
    pub audit: veil_trail::Settings,
    /// Links to the other relays of the cluster (QUIC with mutual TLS): calls whose parties
    /// sit on two relays cross between them in fixed-size cells at a constant rate. Off (null)
    /// by default.
    pub mesh: Option<super::mesh::MeshSettings>,
    /// The kernel fast path for relayed UDP media (XDP): off by default.
    pub fast_path: FastPathSettings,
    /// Microseconds a worker rests after a round of UDP work before it looks again (0: never),
    /// so that what arrives meanwhile is read in one batch instead of waking the worker once
    /// per datagram: at call rates (tens of datagrams per second per flow) each wakeup is what
    /// costs (README: Performance). Adds up to this much delay per hop. Not while the node
    /// shapes (its slots keep their own time).
    pub batch_wait_us: u32,
}

/// The kernel fast path (README: The kernel fast path).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FastPathSettings {
    /// `off`; `xdp`: attach or refuse to start; `auto`: attach where possible, else run
    /// without it (a warning and `veil_relay_fast_path_up 0` say so).
    pub mode: FastPathMode,
    /// The interfaces clients and peers reach the relay on (e.g. `[eth0]`).
    pub interfaces: Vec<String>,
}

/// Whether the fast path is wanted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FastPathMode {
    /// No fast path.
    #[default]
    Off,
    /// The fast path or nothing: a relay that cannot attach it does not start.
    Xdp,
    /// The fast path where the kernel, the interface and the privileges allow it.
    Auto,
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
    /// A website sharing the TLS port (README: One port for TURN and a website): veil serves
    /// its certificate (`cert`, `key`) and ALPN list, and hands every connection that does not
    /// start with a STUN message to `upstream`.
    pub site: Option<SiteSettings>,
}

/// The website behind `listen_tls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteSettings {
    /// The site's own server, `host:port` (e.g. nginx on 127.0.0.1:8443).
    pub upstream: String,
    /// Whether the upstream speaks TLS; it must present the certificate of `tls.cert`.
    pub tls: bool,
    /// `v2`: a PROXY protocol v2 header before each connection, so the site logs the real
    /// client (nginx: `listen … proxy_protocol`); `none`.
    pub proxy_protocol: ProxyProtocol,
    /// ALPN protocols offered, as the site offers them.
    pub alpn: Vec<String>,
    /// Server names whose connections go to the upstream untouched (veil holds no key for
    /// them and never decrypts them).
    pub passthrough: Vec<String>,
    /// `compat` (default): every STUN message is TURN's, so any TURN client works (browsers
    /// too), and a prober who speaks TURN gets a 401 challenge. `strict`: only a first request
    /// signed with a REST credential and the nonce issued with it (the allocator's `nativeAuth`)
    /// is TURN's; everything else, a bare Binding included, goes to the site, and `stun.turn`
    /// is never selected. For native apps only: browsers cannot send a nonce first.
    pub mode: SiteMode,
    /// TLS 1.3 session tickets sent after each handshake veil terminates (0-8). 0 (default):
    /// none, so a client's connections cannot be linked by resumption; a site that sends them
    /// (nginx with OpenSSL: 2 while `ssl_session_tickets` is on) is told from veil by that
    /// count, so set what the site sends to remove the tell, at that price.
    pub tls13_tickets: usize,
}

/// Who may reach TURN on a port shared with a site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteMode {
    /// Any STUN message.
    #[default]
    Compat,
    /// A first request signed with a credential and its issued nonce.
    Strict,
}

impl Default for SiteSettings {
    fn default() -> Self {
        SiteSettings {
            upstream: String::new(),
            tls: true,
            proxy_protocol: ProxyProtocol::None,
            alpn: vec!["h2".into(), "http/1.1".into()],
            passthrough: vec![],
            mode: SiteMode::Compat,
            tls13_tickets: 0,
        }
    }
}

/// The PROXY protocol toward a site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// None: the site sees veil's address.
    #[default]
    None,
    /// Version 2 (binary).
    V2,
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
            signals: Signals::default(),
            peers: Peers::default(),
            shaping: ShapingConfig::default(),
            workers: 0,
            admin: None,
            software: None,
            log: LogConfig::default(),
            lifecycle: Lifecycle::default(),
            audit: veil_trail::Settings::default(),
            mesh: None,
            fast_path: FastPathSettings::default(),
            batch_wait_us: 100,
        }
    }
}
