//! The relay node's configuration: YAML (every field optional, defaults below), validated at start
//! with errors that name the field. `relay/relay.example.yaml` lists every field with its default
//! and a test keeps the two in step.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::proto::auth::Credentials;
use crate::proto::limiter::BandwidthCaps;
use crate::proto::peer_filter::PeerFilter;
use crate::proto::server::{RelayAddr, ServerConfig};
use crate::shaping::Policy;

mod mesh;
mod settings;

pub use mesh::{MeshBreaker, MeshPeer, MeshSettings, MeshTls, RangeSpec};

pub use settings::*;

/// The example configuration shipped in the repository: every field at its default.
pub const EXAMPLE: &str = include_str!("../../relay.example.yaml");

pub use veil_ops::ConfigError;

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

impl settings::SiteSettings {
    /// Checks what needs no file: the upstream's form, the ALPN ids, the ticket count.
    pub fn check(&self) -> Result<(), ConfigError> {
        let port_ok = self
            .upstream
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(invalid(
                "tls.site.upstream",
                "host:port of the site's own server",
            ));
        }
        if self.alpn.iter().any(|a| a.is_empty() || a.len() > 255) {
            return Err(invalid("tls.site.alpn", "protocol ids of 1 to 255 bytes"));
        }
        if self.tls13_tickets > 8 {
            return Err(invalid("tls.site.tls13_tickets", "0 to 8"));
        }
        Ok(())
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
    /// The website sharing `listen_tls`.
    pub site: Option<std::sync::Arc<crate::site::Site>>,
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
    /// The links to other relays, if any.
    pub mesh: Option<crate::mesh::MeshConfig>,
    /// The kernel fast path wanted.
    pub fast_path: settings::FastPathSettings,
    /// How long a worker rests after a round of UDP work (`batch_wait_us`; zero: never).
    pub batch_wait: std::time::Duration,
    /// The audit trail's settings (opened by the binary, which writes the records).
    pub audit: veil_trail::Settings,
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
        self.changed(new)
            .into_iter()
            .filter(|(_, reloads)| !reloads)
            .map(|(p, _)| p)
            .collect()
    }

    /// Every setting of the file that differs in `new`, by its path, and whether a reload puts
    /// it in force. Paths only, never values: the audit trail records these.
    pub fn changed(&self, new: &Resolved) -> Vec<(String, bool)> {
        let (Ok(a), Ok(b)) = (
            serde_json::to_value(&self.source),
            serde_json::to_value(&new.source),
        ) else {
            return vec![("(configuration not comparable)".into(), false)];
        };
        let mut changed = Vec::new();
        diff_paths(&a, &b, &mut Vec::new(), &mut changed);
        // A profile's policy reloads; whether it requires TLS does not (allocations were
        // admitted by their transport).
        changed
            .into_iter()
            .map(|path| {
                let reloads =
                    is_reloadable(&path) && path.last().is_none_or(|l| l != "require_tls");
                (path.join("."), reloads)
            })
            .collect()
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
        if let Err((field, message)) = self.audit.check() {
            return Err(invalid(field, message));
        }
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
        let site_alpn: Vec<Vec<u8>> = match &self.tls.site {
            Some(s) => {
                s.check()?;
                s.alpn.iter().map(|a| a.as_bytes().to_vec()).collect()
            }
            None => vec![],
        };
        let strict = self
            .tls
            .site
            .as_ref()
            .is_some_and(|s| s.mode == settings::SiteMode::Strict);
        let tickets = self.tls.site.as_ref().map_or(0, |s| s.tls13_tickets);
        let tls = match (&self.tls.cert, &self.tls.key, self.listen_tls.is_empty()) {
            (_, _, true) => None,
            (Some(cert), Some(key), false) => Some(
                crate::tls::TlsState::new(
                    cert,
                    key,
                    crate::tls::Options {
                        tls12: self.tls.allow_tls12,
                        site_alpn: &site_alpn,
                        turn_alpn: !strict,
                        tickets,
                    },
                )
                .map_err(|e| invalid("tls", e))?,
            ),
            _ => {
                return Err(invalid(
                    "tls",
                    "listen_tls needs tls.cert and tls.key (--tls-cert, --tls-key)",
                ));
            }
        };
        let site = match (&self.tls.site, &tls) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "tls.site",
                    "needs listen_tls, tls.cert and tls.key",
                ));
            }
            (Some(s), Some(tls)) => {
                let cfg = crate::site::SiteConfig {
                    upstream: s.upstream.clone(),
                    tls: s.tls,
                    proxy_v2: s.proxy_protocol == settings::ProxyProtocol::V2,
                    alpn: site_alpn.clone(),
                    strict,
                    passthrough: s
                        .passthrough
                        .iter()
                        .map(|n| n.to_ascii_lowercase())
                        .collect(),
                };
                Some(std::sync::Arc::new(
                    crate::site::Site::new(cfg, tls).map_err(|e| invalid("tls.site", e))?,
                ))
            }
        };
        let fp = &self.fast_path;
        if fp.mode != settings::FastPathMode::Off && fp.interfaces.is_empty() {
            return Err(invalid(
                "fast_path.interfaces",
                "name the interfaces clients and peers reach the relay on (e.g. [eth0])",
            ));
        }
        if fp
            .interfaces
            .iter()
            .any(|i| i.is_empty() || i.len() > 15 || i.contains(['/', ' ']))
        {
            return Err(invalid(
                "fast_path.interfaces",
                "interface names of 1 to 15 characters",
            ));
        }
        let st = &self.streams;
        if st.handshake_timeout == 0 || st.idle_timeout == 0 {
            return Err(invalid("streams", "timeouts must be >= 1 s"));
        }
        if self.batch_wait_us > 2000 {
            return Err(invalid(
                "batch_wait_us",
                "at most 2000 (2 ms of delay per hop); 0 turns it off",
            ));
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
            heavy_bytes_per_second: self.signals.heavy_bytes_per_second,
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
            site,
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
            mesh: self.mesh.as_ref().map(|m| m.resolve()).transpose()?,
            fast_path: self.fast_path.clone(),
            batch_wait: std::time::Duration::from_micros(self.batch_wait_us.into()),
            audit: self.audit.clone(),
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
mod tests;
