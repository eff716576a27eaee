//! The allocator service: configuration, the relay registry (health polling) and the HTTP API.
//!
//! * `POST /v1/ice-servers` `{call_id?, ttl?, user?, client_ip?, join?}` → an
//!   `RTCConfiguration`-shaped answer: `{"iceServers": [{urls, username, credential}],
//!   "iceTransportPolicy": "relay", "expiresAt", "zone", "joinToken"}`; with `join` (another
//!   party's `joinToken`) also `crossZone`.
//! * `POST /v1/calls` `{call_id?, ttl?, parties: [{client_ip, user?}, {client_ip, user?}]}` (backend
//!   keys) → `{"crossZone", "zones", "parties": [answer, answer]}`: one relay allowed for both
//!   parties when there is one, else each in its own zones.
//! * `GET /turn?service=turn&username=U` → the TURN REST API draft's `{username, password, ttl,
//!   uris}`.
//! * `GET /v1/audit?from=&to=&format=json|csv` (backend keys) → placements per (client country,
//!   zone) and cross-zone calls per zone pair, per hour: counts only.
//! * `GET /healthz`, `GET /metrics`.
//!
//! A client the geo DB cannot place gets `451 location_unknown` when the policy says
//! `unknown: refuse`; no relay of an allowed zone available is `503 no_relay`.
//!
//! Callers authenticate with a bearer API key. The client address is the connection's; a backend
//! key may pass `client_ip` for its user, and `X-Forwarded-For` is honoured only from configured
//! trusted proxies. Client addresses are used for the decision and forgotten: never logged, never
//! stored.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use veil_geo::policy::{DistanceModel, Policy, PolicyConfig};
use veil_geo::{GeoDb, Location, ReloadingGeo};

use crate::audit::{AuditLog, counter, country_label};
use crate::join::{self, JoinClaims};
use crate::request::{self, CallRequest, IceRequest};
use veil_ops::Status;
use veil_proto::auth;
use veil_proto::limiter::TokenBucket;

use crate::placement::{
    CallPlacement, ClientFacts, Joined, Placement, PlacementError, RelayView, Scoring, place,
    place_call, place_joining,
};

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
}

fn default_rate() -> u32 {
    100
}

/// The largest request body read (after the key is checked): a request is a few hundred bytes.
pub const MAX_BODY: usize = 4096;

/// A token bucket of one API key.
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
    /// Hours of hourly audit buckets kept in memory for `/v1/audit` (Prometheus keeps the
    /// running totals for as long as it retains data).
    #[serde(default = "default_audit_hours")]
    pub audit_retention_hours: u64,
}

/// The shortest credential lifetime handed out (a request asking for less gets this).
pub const MIN_TTL: u64 = 60;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8480))
}
fn default_ttl() -> u64 {
    600
}
fn default_poll_ms() -> u64 {
    1000
}
fn default_down() -> u32 {
    3
}
fn default_up() -> u32 {
    2
}
fn default_audit_hours() -> u64 {
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
        serde_saphyr::from_str(&text).map_err(|e| ConfigError::Yaml {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
}

#[derive(Clone, Debug)]
struct Tracked {
    entry: RelayEntry,
    view: RelayView,
    uris: Vec<String>,
    /// Profiles the relay admits only over TLS (from its `/status`).
    tls_only: Vec<String>,
    good: u32,
    bad: u32,
}

impl Tracked {
    /// It can serve a client of `profile`: the profile is not TLS-only here, or it offers TLS.
    fn serves(&self, profile: Option<&str>) -> bool {
        let tls_only = profile.is_some_and(|p| self.tls_only.iter().any(|x| x == p));
        !tls_only || self.uris.iter().any(|u| u.starts_with("turns:"))
    }

    fn new(name: String, entry: RelayEntry, policy: &Policy) -> Tracked {
        Tracked {
            view: RelayView {
                name,
                zone: policy.zone_of(&entry.name).unwrap_or_default().to_string(),
                healthy: false,
                draining: false,
                load: 0,
                capacity: 0,
                location: Location {
                    coords: entry.latitude.zip(entry.longitude),
                    ..Location::default()
                },
            },
            entry,
            uris: Vec::new(),
            tls_only: Vec::new(),
            good: 0,
            bad: 0,
        }
    }
}

/// The running service's state.
pub struct App {
    cfg: AllocatorConfig,
    policy: Policy,
    geo: ReloadingGeo,
    /// The signing secret: the first of `secret_files`, read again at every registry poll so a
    /// rotated Secret takes effect without a restart.
    secret: RwLock<Vec<u8>>,
    /// The signing secret before the last rotation: join tokens it signed stay valid.
    previous_secret: RwLock<Option<Vec<u8>>>,
    relays: RwLock<Vec<Tracked>>,
    audit: Mutex<AuditLog>,
    metrics: Mutex<Metrics>,
    /// One bucket per API key, in `cfg.api_keys` order (a fixed set: nobody can grow it).
    buckets: Vec<Mutex<TokenBucket>>,
    /// The origin of the buckets' milliseconds.
    epoch: std::time::Instant,
}

/// The allocator's counters (requests are not a per-packet path: a mutex is fine).
#[derive(Default)]
struct Metrics {
    /// Placements by zone.
    placed: BTreeMap<String, u64>,
    /// Requests no allowed zone could serve.
    refused: u64,
    /// Requests refused because the DB cannot place the client (`unknown: refuse`).
    unplaceable: u64,
    /// Lookups whose continent / coordinates came from the embedded table.
    filled_continent: u64,
    filled_coords: u64,
    /// Calls placed as calls (`/v1/calls` or a join), by outcome.
    calls_shared_zone: u64,
    calls_cross_zone: u64,
    /// Placement latency histogram buckets (seconds), and sum.
    latency: [u64; 6],
    latency_sum: f64,
    /// Credentials handed out.
    minted: u64,
    /// Times the signing secret changed on disk and was taken up.
    secret_reloads: u64,
    /// Requests refused with 429 (a key over its rate).
    rate_limited: u64,
}

/// Checks that the policy can match with a DB: the DB's notes, or the reason it cannot.
fn check_policy_against(policy: &Policy, db: &GeoDb) -> Result<Vec<String>, String> {
    policy
        .check_db(&db.survey(8), db.origin())
        .map_err(|e| e.to_string())
}

/// The first secret of the first file that holds one.
fn signing_secret(files: &[PathBuf]) -> Result<Vec<u8>, ConfigError> {
    for p in files {
        let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
            path: p.display().to_string(),
            source,
        })?;
        if let Some(s) = auth::parse_secrets(&text).into_iter().next() {
            return Ok(s);
        }
    }
    Err(ConfigError::Invalid {
        field: "secret_files",
        message: "no secret found".into(),
    })
}

const LATENCY_BOUNDS: [f64; 5] = [0.000_1, 0.000_5, 0.001, 0.005, 0.025];

/// An API error: JSON `{code, message}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, &'static str, String);

impl From<request::RequestError> for ApiError {
    fn from(e: request::RequestError) -> Self {
        match e {
            request::RequestError::BadRequest(m) => {
                ApiError(StatusCode::BAD_REQUEST, "bad_request", m)
            }
            request::RequestError::Forbidden(m) => {
                ApiError(StatusCode::FORBIDDEN, "forbidden", m.into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(serde_json::json!({"code": self.1, "message": self.2})),
        )
            .into_response()
    }
}

impl App {
    /// Checks the configuration and builds the service state.
    pub fn new(cfg: AllocatorConfig) -> Result<Arc<App>, ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid { field, message };
        let policy =
            Policy::new(cfg.policy.clone()).map_err(|e| invalid("policy", e.to_string()))?;
        if cfg.api_keys.iter().any(|k| k.key.len() < 16) || cfg.api_keys.is_empty() {
            return Err(invalid(
                "api_keys",
                "at least one key, each at least 16 characters".into(),
            ));
        }
        let secret = signing_secret(&cfg.secret_files)?;
        for r in &cfg.relays {
            if policy.zone_of(&r.name).is_none() {
                return Err(invalid(
                    "relays",
                    format!("`{}` is in no zone of the policy", r.name),
                ));
            }
        }
        // Every field is checked here, so that no accepted configuration fails later: a ttl
        // below the shortest credential a request may ask for made every request panic.
        if !(MIN_TTL..=86_400).contains(&cfg.ttl) {
            return Err(invalid(
                "ttl",
                format!("between {MIN_TTL} and 86400 seconds"),
            ));
        }
        if cfg.metrics_listen == Some(cfg.listen) {
            return Err(invalid(
                "metrics_listen",
                "another address than `listen` (or unset: /metrics on the API with a key)".into(),
            ));
        }
        for (field, v) in [("down_after", cfg.down_after), ("up_after", cfg.up_after)] {
            if !(1..=1000).contains(&v) {
                return Err(invalid(field, "between 1 and 1000 polls".into()));
            }
        }
        if !(100..=3_600_000).contains(&cfg.poll_interval_ms) {
            return Err(invalid(
                "poll_interval_ms",
                "between 100 and 3600000 milliseconds".into(),
            ));
        }
        let d = &cfg.distance;
        let usable = |v: f64| v.is_finite() && v >= 0.0;
        if !usable(d.ms_per_km) || !usable(d.unknown_ms) {
            return Err(invalid(
                "distance",
                "ms_per_km and unknown_ms are finite and not negative".into(),
            ));
        }
        for r in &cfg.relays {
            let lat_ok = r.latitude.is_none_or(|v| (-90.0..=90.0).contains(&v));
            let lon_ok = r.longitude.is_none_or(|v| (-180.0..=180.0).contains(&v));
            if !lat_ok || !lon_ok || r.latitude.is_some() != r.longitude.is_some() {
                return Err(invalid(
                    "relays",
                    format!(
                        "`{}`: latitude (-90..90) and longitude (-180..180) come together",
                        r.name
                    ),
                ));
            }
        }
        let geo = match &cfg.geo_db {
            Some(p) => ReloadingGeo::open(p).map_err(|e| invalid("geo_db", e.to_string()))?,
            None => {
                ReloadingGeo::fixed(GeoDb::demo().map_err(|e| invalid("geo_db", e.to_string()))?)
            }
        };
        {
            let db = geo.get();
            let notes = check_policy_against(&policy, &db).map_err(|e| invalid("policy", e))?;
            for n in notes {
                tracing::info!(db = db.origin(), "{n}");
            }
        }
        if cfg.audit_retention_hours == 0 || cfg.audit_retention_hours > 24 * 366 {
            return Err(invalid(
                "audit_retention_hours",
                "between 1 and 8784 hours".into(),
            ));
        }
        let relays = cfg
            .relays
            .iter()
            .filter(|e| !e.dns)
            .map(|e| Tracked::new(e.name.clone(), e.clone(), &policy))
            .collect();
        if cfg
            .api_keys
            .iter()
            .any(|k| !(1..=1_000_000).contains(&k.requests_per_second))
        {
            return Err(invalid(
                "api_keys",
                "requests_per_second between 1 and 1000000".into(),
            ));
        }
        let buckets = cfg
            .api_keys
            .iter()
            .map(|k| Mutex::new(TokenBucket::full(k.requests_per_second as u64, 0)))
            .collect();
        let audit = Mutex::new(AuditLog::new(cfg.audit_retention_hours));
        Ok(Arc::new(App {
            cfg,
            policy,
            geo,
            secret: RwLock::new(secret),
            previous_secret: RwLock::new(None),
            relays: RwLock::new(relays),
            audit,
            metrics: Mutex::default(),
            buckets,
            epoch: std::time::Instant::now(),
        }))
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<&ApiKey, ApiError> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a bearer API key is required".into(),
                )
            })?;
        let (i, key) = self
            .cfg
            .api_keys
            .iter()
            .enumerate()
            .find(|(_, k)| veil_proto::stun::ct_eq(k.key.as_bytes(), token.as_bytes()))
            .ok_or_else(|| {
                ApiError(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "unknown API key".into(),
                )
            })?;
        if !self.admit(i, key.requests_per_second) {
            self.metrics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .rate_limited += 1;
            return Err(ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this key may make {} requests per second",
                    key.requests_per_second
                ),
            ));
        }
        Ok(key)
    }

    /// Takes one request from key `i`'s bucket (refilled at `rate` per second, up to `rate`).
    fn admit(&self, i: usize, rate: u32) -> bool {
        let Some(b) = self.buckets.get(i) else {
            return false;
        };
        let ms = self.epoch.elapsed().as_millis() as u64;
        let rate = rate as u64;
        let mut b = b.lock().unwrap_or_else(|e| e.into_inner());
        b.take(ms, rate, rate, 1)
    }

    /// The client's address: a backend's `client_ip`, else `X-Forwarded-For`'s last hop before
    /// our trusted proxies, else the connection's peer.
    fn client_ip(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
        key: &ApiKey,
        given: Option<&str>,
    ) -> Result<IpAddr, ApiError> {
        if let Some(ip) = given {
            if !key.backend {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "only backend keys may pass client_ip".into(),
                ));
            }
            return ip.parse().map_err(|_| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "client_ip is not an IP address".into(),
                )
            });
        }
        let trusted = |ip: &IpAddr| self.cfg.trusted_proxies.iter().any(|n| n.contains(ip));
        let mut ip = peer.ip();
        if trusted(&ip)
            && let Some(xff) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())
        {
            for hop in xff.rsplit(',').map(str::trim) {
                match hop.parse::<IpAddr>() {
                    Ok(h) if trusted(&h) => ip = h,
                    Ok(h) => return Ok(h),
                    Err(_) => break,
                }
            }
        }
        Ok(ip)
    }

    fn allocate(&self, ip: IpAddr, req: &IceRequest) -> Result<IceAnswer, ApiError> {
        self.timed(|| self.allocate_inner(ip, req))
    }

    /// Runs a placement, recording its latency and why it was refused.
    fn timed<T>(&self, f: impl FnOnce() -> Result<T, ApiError>) -> Result<T, ApiError> {
        let started = std::time::Instant::now();
        let result = f();
        let secs = started.elapsed().as_secs_f64();
        let mut m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Err(ApiError(_, "no_relay", _)) => m.refused += 1,
            Err(ApiError(_, "location_unknown", _)) => m.unplaceable += 1,
            _ => {}
        }
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        m.latency[i] += 1;
        m.latency_sum += secs;
        result
    }

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
            "Requests refused with 429 because their API key was over its rate.",
            [("", m.rate_limited)],
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
        veil_ops::prometheus::process(&mut o);
        o
    }

    /// Geolocates a client (counting what came from the embedded table).
    fn locate(&self, ip: IpAddr) -> Location {
        let location = self.geo.get().lookup(ip);
        if location.filled.continent || location.filled.coords {
            let mut m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
            m.filled_continent += u64::from(location.filled.continent);
            m.filled_coords += u64::from(location.filled.coords);
        }
        location
    }

    fn scoring(&self) -> Scoring {
        Scoring {
            distance: self.cfg.distance.clone(),
            ..Scoring::default()
        }
    }

    fn allocate_inner(&self, ip: IpAddr, req: &IceRequest) -> Result<IceAnswer, ApiError> {
        let now = unix_now();
        let joined = match &req.join {
            Some(token) => Some(self.verify_join(token, now)?),
            None => None,
        };
        let location = self.locate(ip);
        let relays = self.relays.read().unwrap_or_else(|e| e.into_inner());
        let profiles = [req.profile.as_deref()];
        let views = views_for(&relays, &profiles);
        let facts = ClientFacts {
            ip,
            location,
            call_id: req.call_id.as_deref(),
        };
        let scoring = self.scoring();
        let (placement, cross) = match &joined {
            Some(j) => {
                let hint = Joined {
                    call: &j.call,
                    zone: &j.zone,
                    relay: &j.relay,
                };
                let go = |v: &[RelayView]| place_joining(&facts, &hint, v, &self.policy, &scoring);
                let (p, cross) = go(&views)
                    .map_err(|e| placement_error(e, go(&all_views(&relays)).is_ok(), &profiles))?;
                (p, Some(cross))
            }
            None => {
                let go = |v: &[RelayView]| place(&facts, v, &self.policy, &scoring);
                let p = go(&views)
                    .map_err(|e| placement_error(e, go(&all_views(&relays)).is_ok(), &profiles))?;
                (p, None)
            }
        };
        let call = match (&joined, &req.call_id) {
            (Some(j), _) => j.call.clone(),
            (None, Some(c)) => c.clone(),
            (None, None) => random_id(),
        };
        let mint = Mint {
            ttl: req.ttl,
            user: req.user.as_deref(),
            profile: req.profile.as_deref(),
        };
        let mut answer = self.answer(&relays, placement, &location, mint, &call, now)?;
        drop(relays);
        if let (Some(j), Some(cross)) = (&joined, cross) {
            answer.cross_zone = Some(cross);
            self.record_call(now, &j.zone, &answer.zone);
        }
        Ok(answer)
    }

    /// Counts a call whose parties were placed in zones `a` and `b`.
    fn record_call(&self, now: u64, a: &str, b: &str) {
        let mut m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        if a == b {
            m.calls_shared_zone += 1;
        } else {
            m.calls_cross_zone += 1;
            drop(m);
            self.audit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cross_zone_call(now, a, b);
        }
    }

    fn verify_join(&self, token: &str, now: u64) -> Result<JoinClaims, ApiError> {
        let current = self
            .secret
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let previous = self
            .previous_secret
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let secrets = std::iter::once(current.as_slice()).chain(previous.as_deref());
        join::verify(secrets, token, now)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_join_token", e.to_string()))
    }

    /// Places both parties of a call.
    fn place_call(&self, ips: [IpAddr; 2], req: &CallRequest) -> Result<CallAnswer, ApiError> {
        let now = unix_now();
        let locations = ips.map(|ip| self.locate(ip));
        let relays = self.relays.read().unwrap_or_else(|e| e.into_inner());
        let profiles: Vec<Option<&str>> =
            req.parties.iter().map(|p| p.profile.as_deref()).collect();
        let views = [0, 1].map(|i| views_for(&relays, &[profiles.get(i).copied().flatten()]));
        let facts = |i: usize| ClientFacts {
            ip: ips[i],
            location: locations[i],
            call_id: None,
        };
        let scoring = self.scoring();
        let go = |v: [&[RelayView]; 2]| place_call(&facts(0), &facts(1), v, &self.policy, &scoring);
        let placed = go([&views[0], &views[1]]).map_err(|e| {
            let all = all_views(&relays);
            placement_error(e, go([&all, &all]).is_ok(), &profiles)
        })?;
        let (pa, pb) = match placed {
            CallPlacement::Shared(p) => (p, p),
            CallPlacement::Split(a, b) => (a, b),
        };
        let call = req.call_id.clone().unwrap_or_else(random_id);
        let parties = [(pa, 0), (pb, 1)]
            .into_iter()
            .map(|(p, i)| {
                let mint = Mint {
                    ttl: req.ttl,
                    user: req.parties[i].user.as_deref(),
                    profile: req.parties[i].profile.as_deref(),
                };
                self.answer(&relays, p, &locations[i], mint, &call, now)
            })
            .collect::<Result<Vec<_>, _>>()?;
        drop(relays);
        let zones = [parties[0].zone.clone(), parties[1].zone.clone()];
        self.record_call(now, &zones[0], &zones[1]);
        Ok(CallAnswer {
            cross_zone: zones[0] != zones[1],
            zones,
            parties,
        })
    }

    /// Mints the credential and the answer for one placed party, and records the placement.
    fn answer(
        &self,
        relays: &[Tracked],
        placement: Placement,
        location: &Location,
        mint: Mint,
        call: &str,
        now: u64,
    ) -> Result<IceAnswer, ApiError> {
        let Mint { ttl, user, profile } = mint;
        let primary = &relays[placement.primary];
        let zone = primary.view.zone.clone();
        let ttl = ttl
            .unwrap_or(self.cfg.ttl)
            .clamp(MIN_TTL.min(self.cfg.ttl), self.cfg.ttl);
        let user = match user {
            Some(u)
                if !u.is_empty()
                    && u.len() <= 64
                    && u.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                u.to_string()
            }
            Some(_) => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "user: 1-64 of [A-Za-z0-9_-]".into(),
                ));
            }
            None => random_id(),
        };
        let mut claims = vec![("z", zone.as_str())];
        if let Some(p) = profile {
            claims.push(("s", p));
        }
        let username = auth::username_with_claims(now + ttl, &user, &claims);
        let secret = self
            .secret
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (username, password) = auth::mint_username(&secret, username);
        let join_token = join::issue(
            &secret,
            &JoinClaims {
                exp: now + ttl,
                call: call.to_string(),
                zone: zone.clone(),
                relay: primary.view.name.clone(),
            },
        );
        // A profile the relay admits only over TLS: its `turns:` URIs only (the others would
        // draw 403, or worse, a client's fallback onto a leg the profile cannot protect).
        let uris_of = |t: &Tracked| -> Vec<String> {
            let tls_only = profile.is_some_and(|p| t.tls_only.iter().any(|x| x == p));
            t.uris
                .iter()
                .filter(|u| !tls_only || u.starts_with("turns:"))
                .cloned()
                .collect()
        };
        let mut urls = uris_of(primary);
        if let Some(b) = placement.backup
            && relays[b].view.zone == zone
        {
            // A backup in the same zone accepts the same credential.
            urls.extend(uris_of(&relays[b]));
        }
        if urls.is_empty() {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_tls",
                "the profile requires TLS and the placed relay offers no turns: URI".into(),
            ));
        }
        self.audit.lock().unwrap_or_else(|e| e.into_inner()).placed(
            now,
            &country_label(location),
            &zone,
        );
        let mut m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        *m.placed.entry(zone.clone()).or_insert(0) += 1;
        m.minted += 1;
        drop(m);
        Ok(IceAnswer {
            ice_servers: vec![IceServer {
                urls,
                username,
                credential: password,
            }],
            ice_transport_policy: "relay",
            expires_at: now + ttl,
            zone,
            join_token,
            cross_zone: None,
        })
    }

    /// Resolves DNS pools into relays: new addresses join (down until polled), vanished ones
    /// leave. A pool whose lookup fails keeps its relays; their polls decide.
    async fn discover(&self) {
        let mut targets: Vec<(String, RelayEntry)> = Vec::new();
        let mut failed_pools: Vec<String> = Vec::new();
        for e in self.cfg.relays.iter().filter(|e| e.dns) {
            match tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::lookup_host(e.admin.as_str()),
            )
            .await
            {
                Ok(Ok(addrs)) => {
                    for a in addrs {
                        let entry = RelayEntry {
                            admin: a.to_string(),
                            dns: false,
                            ..e.clone()
                        };
                        targets.push((format!("{}/{}", e.name, a.ip()), entry));
                    }
                }
                _ => failed_pools.push(e.name.clone()),
            }
        }
        let mut relays = self.relays.write().unwrap_or_else(|e| e.into_inner());
        relays.retain(|t| {
            let from_pool = self
                .cfg
                .relays
                .iter()
                .any(|e| e.dns && e.name == t.entry.name);
            !from_pool
                || failed_pools.contains(&t.entry.name)
                || targets.iter().any(|(n, _)| *n == t.view.name)
        });
        for (name, entry) in targets {
            if !relays.iter().any(|t| t.view.name == name) {
                tracing::info!(relay = %name, "relay discovered");
                relays.push(Tracked::new(name, entry, &self.policy));
            }
        }
    }

    /// Reads the signing secret again; a change takes effect for the next credential. A file
    /// that cannot be read or holds no secret leaves the current one in force.
    pub fn reload_secret(&self) {
        match signing_secret(&self.cfg.secret_files) {
            Ok(new) => {
                let mut cur = self.secret.write().unwrap_or_else(|e| e.into_inner());
                if *cur != new {
                    let old = std::mem::replace(&mut *cur, new);
                    drop(cur);
                    *self
                        .previous_secret
                        .write()
                        .unwrap_or_else(|e| e.into_inner()) = Some(old);
                    self.metrics
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .secret_reloads += 1;
                    tracing::info!("signing secret changed on disk: new credentials use it");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the signing secret; keeping the current one")
            }
        }
    }

    /// Polls every relay's `/status` once and updates its health.
    pub async fn poll_once(&self) {
        self.reload_secret();
        self.discover().await;
        let targets: Vec<(String, String)> = self
            .relays
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|t| (t.view.name.clone(), t.entry.admin.clone()))
            .collect();
        for (name, admin) in targets {
            let status = fetch_status(&admin).await;
            let mut relays = self.relays.write().unwrap_or_else(|e| e.into_inner());
            let Some(t) = relays.iter_mut().find(|t| t.view.name == name) else {
                continue;
            };
            match status {
                Some(s) if s.zone.as_deref() == Some(t.view.zone.as_str()) => {
                    t.good += 1;
                    t.bad = 0;
                    t.view.load = s.allocations;
                    t.view.capacity = s.capacity;
                    t.view.draining = s.draining || !s.ready;
                    t.uris = s.uris;
                    t.tls_only = s.tls_only_profiles;
                    if !t.view.healthy && t.good >= self.cfg.up_after {
                        tracing::info!(relay = %t.view.name, "relay up");
                        t.view.healthy = true;
                    }
                }
                other => {
                    if other.is_some() {
                        tracing::warn!(relay = %t.view.name, "relay reports another zone than the policy's; not used");
                        t.view.healthy = false;
                    }
                    t.bad += 1;
                    t.good = 0;
                    if t.view.healthy && t.bad >= self.cfg.down_after {
                        tracing::warn!(relay = %t.view.name, "relay down");
                        t.view.healthy = false;
                    }
                }
            }
        }
        match self
            .geo
            .reload_if_changed_checked(|db| check_policy_against(&self.policy, db).map(drop))
        {
            Ok(true) => tracing::info!(db = self.geo.get().origin(), "geo DB reloaded"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "geo DB reload refused; keeping the previous one"),
        }
    }
}

/// A relay's name for metric labels: DNS-discovered relays (`<pool>/<ip>`) are labelled by a
/// hash of their address, as no label may carry an IP.
fn metric_name(name: &str) -> String {
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The relays as placement sees them for a request whose parties ask for `profiles`: a relay
/// that admits one of them only over TLS and offers no `turns:` URI is no candidate (a place there
/// could only be answered with a leg the profile refuses).
fn views_for(relays: &[Tracked], profiles: &[Option<&str>]) -> Vec<RelayView> {
    relays
        .iter()
        .map(|t| {
            let mut v = t.view.clone();
            v.healthy &= profiles.iter().all(|p| t.serves(*p));
            v
        })
        .collect()
}

/// The relays as they are, whatever the profile.
fn all_views(relays: &[Tracked]) -> Vec<RelayView> {
    relays.iter().map(|t| t.view.clone()).collect()
}

/// The API's answer to a placement that cannot be made; `unconstrained` says whether it would
/// have succeeded had no profile required TLS, in which case TLS is what is missing.
fn placement_error(e: PlacementError, unconstrained: bool, profiles: &[Option<&str>]) -> ApiError {
    match e {
        PlacementError::LocationUnknown => ApiError(
            StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
            "location_unknown",
            e.to_string(),
        ),
        _ if unconstrained => {
            let names: Vec<&str> = profiles.iter().flatten().copied().collect();
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_tls",
                format!(
                    "profile {} requires TLS and no relay the caller may use offers a turns: URI",
                    names.join(", ")
                ),
            )
        }
        e => ApiError(StatusCode::SERVICE_UNAVAILABLE, "no_relay", e.to_string()),
    }
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// GETs `http://{admin}/status` with a 1 s budget. A tiny HTTP/1.1 client: the admin endpoint is
/// plain HTTP on a private network and this is all the allocator asks of it.
async fn fetch_status(admin: &str) -> Option<Status> {
    let go = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        let req = format!("GET /status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(1024);
        (&mut s).take(64 * 1024).read_to_end(&mut buf).await.ok()?;
        let text = std::str::from_utf8(&buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_str::<Status>(body).ok()
    };
    tokio::time::timeout(Duration::from_secs(1), go)
        .await
        .ok()
        .flatten()
}

/// What a credential is minted with besides its zone.
#[derive(Clone, Copy)]
struct Mint<'a> {
    ttl: Option<u64>,
    user: Option<&'a str>,
    profile: Option<&'a str>,
}

/// The answer to `POST /v1/calls`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallAnswer {
    /// The parties were placed in different zones (no relay allowed for both was available).
    pub cross_zone: bool,
    /// The zone of each party.
    pub zones: [String; 2],
    /// Each party's ICE configuration.
    pub parties: Vec<IceAnswer>,
}

/// One `RTCIceServer`.
#[derive(Debug, Serialize)]
pub struct IceServer {
    /// `turn:`/`turns:` URIs.
    pub urls: Vec<String>,
    /// The REST username.
    pub username: String,
    /// Its password.
    pub credential: String,
}

/// The answer to `POST /v1/ice-servers`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IceAnswer {
    /// For `RTCPeerConnection`'s `iceServers`.
    pub ice_servers: Vec<IceServer>,
    /// `relay`: media only through the relays.
    pub ice_transport_policy: &'static str,
    /// When the credential expires, unix seconds.
    pub expires_at: u64,
    /// The zone the client was placed in.
    pub zone: String,
    /// Pass as `join` with another party's request to place it with this one.
    pub join_token: String,
    /// With `join`: whether this party had to be placed in another zone than the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_zone: Option<bool>,
}

/// Reads a request body of at most [`MAX_BODY`] bytes; called only once the key is checked, so
/// an unauthenticated caller never has its body read.
async fn read_body(body: axum::body::Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a request body is at most {MAX_BODY} bytes"),
        )
    })
}

async fn ice_servers(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<IceAnswer>, ApiError> {
    let key = app.authorize(&headers)?;
    let body = read_body(body).await?;
    let req = request::ice(&body, key.backend)?;
    let ip = app.client_ip(peer, &headers, key, req.client_ip.as_deref())?;
    app.allocate(ip, &req).map(Json)
}

async fn calls(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<CallAnswer>, ApiError> {
    let key = app.authorize(&headers)?;
    if !key.backend {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only backend keys may place calls (they name both parties' addresses)".into(),
        ));
    }
    let body = read_body(body).await?;
    let (req, ips) = request::call(&body)?;
    app.timed(|| app.place_call(ips, &req)).map(Json)
}

#[derive(Debug, Deserialize)]
struct TurnQuery {
    service: Option<String>,
    username: Option<String>,
    client_ip: Option<String>,
}

async fn turn_rest(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<TurnQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = app.authorize(&headers)?;
    if q.service.as_deref() != Some("turn") {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "service=turn is required".into(),
        ));
    }
    request::check_user(key.backend, q.username.as_deref())?;
    let ip = app.client_ip(peer, &headers, key, q.client_ip.as_deref())?;
    let req = IceRequest {
        user: q.username,
        ..IceRequest::default()
    };
    let a = app.allocate(ip, &req)?;
    let s = &a.ice_servers[0];
    let ttl = a.expires_at.saturating_sub(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    Ok(Json(
        serde_json::json!({"username": s.username, "password": s.credential, "ttl": ttl, "uris": s.urls}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    from: Option<u64>,
    to: Option<u64>,
    format: Option<String>,
}

async fn audit(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    if !app.authorize(&headers)?.backend {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only backend keys may read the audit record".into(),
        ));
    }
    let (from, to) = (q.from.unwrap_or(0), q.to.unwrap_or(u64::MAX));
    let report = app
        .audit
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .report(from, to);
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(report).into_response()),
        Some("csv") => Ok((
            [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            report.to_csv(),
        )
            .into_response()),
        Some(_) => Err(ApiError(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "format: json or csv".into(),
        )),
    }
}

/// `/metrics` on the API listener: a backend key's (the counts say where callers are).
async fn metrics_with_key(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !app.authorize(&headers)?.backend {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only backend keys may read the metrics on the API listener (or set metrics_listen)"
                .into(),
        ));
    }
    Ok(metrics(State(app)).await.into_response())
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.render_metrics(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint".into(),
    )
}

/// The allocator's HTTP API.
pub fn router(app: Arc<App>) -> Router {
    let r = Router::new()
        .route("/v1/ice-servers", post(ice_servers))
        .route("/v1/calls", post(calls))
        .route("/turn", get(turn_rest))
        .route("/v1/audit", get(audit))
        .route("/healthz", get(healthz));
    let r = match app.cfg.metrics_listen {
        Some(_) => r,
        None => r.route("/metrics", get(metrics_with_key)),
    };
    r.fallback(not_found).with_state(app)
}

/// The metrics listener's routes: `/metrics` and `/healthz`, no key.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(app)
}

/// Runs the allocator until `shutdown` resolves.
pub async fn run(
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(app.cfg.listen).await?;
    let metrics = match app.cfg.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await?;
            let router = metrics_router(app.clone());
            Some(tokio::spawn(async move { axum::serve(l, router).await }))
        }
        None => None,
    };
    tracing::info!(listen = %app.cfg.listen, relays = app.cfg.relays.len(), "allocator ready");
    let poller = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_millis(app.cfg.poll_interval_ms.max(100)));
            loop {
                tick.tick().await;
                app.poll_once().await;
            }
        })
    };
    let r = axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    poller.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_its_policy_is_valid() {
        let cfg: AllocatorConfig =
            serde_saphyr::from_str(include_str!("../allocator.example.yaml"))
                .expect("the example parses");
        assert_eq!(cfg.listen, default_listen());
        assert_eq!(
            (cfg.ttl, cfg.poll_interval_ms, cfg.down_after, cfg.up_after),
            (600, 1000, 3, 2)
        );
        assert_eq!(cfg.audit_retention_hours, 168);
        assert_eq!(cfg.policy.unknown, None, "unset: the default zones");
        assert!(cfg.policy.groups.is_empty());
        let policy = Policy::new(cfg.policy.clone()).expect("the example policy is valid");
        for r in &cfg.relays {
            assert!(policy.zone_of(&r.name).is_some(), "{} is in a zone", r.name);
        }
    }

    /// A DNS pool (`localhost` resolves to loopback here) is expanded into relays polled by
    /// address, in the pool's zone; an in-process relay admin endpoint answers.
    #[tokio::test]
    async fn dns_pools_become_relays() {
        use veil_proto::auth::{Credentials, NonceKey};
        use veil_relay::admin::{AdminState, router};
        use veil_relay::proto::peer_filter::PeerFilter;
        use veil_relay::proto::server::{ServerConfig, Shared};

        let shared = Arc::new(Shared::new(
            ServerConfig {
                zone: Some("us".into()),
                ..ServerConfig::default()
            },
            Credentials::default(),
            NonceKey::new(b"k"),
            PeerFilter::new(&[], &[]),
            veil_relay::privacy::Redactor::with_secret(b"r", false),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoints = veil_relay::admin::Endpoints {
            udp: vec!["127.0.0.1:3478".parse().unwrap()],
            ..Default::default()
        };
        let state = AdminState::new(shared, &endpoints, None);
        tokio::spawn(async move { axum::serve(listener, router(state)).await });

        let dir = std::env::temp_dir().join(format!("veil-alloc-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s"), "secret-0123456789abcdef\n").unwrap();
        let mut cfg: AllocatorConfig =
            serde_saphyr::from_str(include_str!("../allocator.example.yaml")).unwrap();
        cfg.secret_files = vec![dir.join("s")];
        cfg.policy.zones.insert(
            "us".into(),
            veil_geo::policy::Zone {
                relays: vec!["us-pool".into()],
            },
        );
        cfg.relays = vec![RelayEntry {
            name: "us-pool".into(),
            admin: format!("localhost:{port}"),
            dns: true,
            latitude: None,
            longitude: None,
        }];
        cfg.up_after = 1;
        let app = App::new(cfg).unwrap();
        app.poll_once().await;
        let relays = app.relays.read().unwrap().clone();
        let v4 = relays
            .iter()
            .find(|t| t.view.name == "us-pool/127.0.0.1")
            .expect("discovered by address");
        assert_eq!(v4.view.zone, "us");
        assert!(v4.view.healthy, "its /status answered in the right zone");
        assert_eq!(
            v4.uris,
            vec!["turn:127.0.0.1:3478?transport=udp".to_string()]
        );
        let a = app
            .allocate("127.0.2.1".parse().unwrap(), &IceRequest::default())
            .unwrap();
        assert_eq!(a.zone, "us");
        let m = app.render_metrics();
        assert!(
            m.contains("veil_allocator_placements_total{zone=\"us\"} 1\n"),
            "{m}"
        );
        assert!(!m.contains("127.0.0.1"), "no address in labels: {m}");
        assert!(
            m.contains("veil_allocator_credentials_minted_total 1\n"),
            "{m}"
        );
        assert!(m.contains("\nprocess_resident_memory_bytes "), "{m}");

        // Secret rotation: a changed file signs the next credential; an emptied one is ignored.
        let verify = |a: &IceAnswer, secret: &[u8]| {
            let s = &a.ice_servers[0];
            auth::mint_username(secret, s.username.clone()).1 == s.credential
        };
        assert!(verify(&a, b"secret-0123456789abcdef"));
        std::fs::write(
            dir.join("s"),
            "rotated-0123456789abcdef\nsecret-0123456789abcdef\n",
        )
        .unwrap();
        app.poll_once().await;
        let b = app
            .allocate("127.0.2.1".parse().unwrap(), &IceRequest::default())
            .unwrap();
        assert!(
            verify(&b, b"rotated-0123456789abcdef"),
            "signed with the new first secret"
        );
        std::fs::write(dir.join("s"), "# emptied by mistake\n").unwrap();
        app.poll_once().await;
        let c = app
            .allocate("127.0.2.1".parse().unwrap(), &IceRequest::default())
            .unwrap();
        assert!(
            verify(&c, b"rotated-0123456789abcdef"),
            "the last good secret stays"
        );
        let m = app.render_metrics();
        assert!(m.contains("veil_allocator_secret_reloads_total 1\n"), "{m}");
        assert!(
            m.contains("veil_allocator_credentials_minted_total 3\n"),
            "{m}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An app on the demo DB (127.0.1.x DE, 127.0.2.x US, 127.0.3.x JP) with relays marked up
    /// by hand, no polling.
    fn app_with(policy: &str, relays: &[(&str, &str)]) -> Result<Arc<App>, ConfigError> {
        let dir =
            std::env::temp_dir().join(format!("veil-alloc-{}-{}", std::process::id(), random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s"), "secret-0123456789abcdef\n").unwrap();
        let mut cfg: AllocatorConfig =
            serde_saphyr::from_str(include_str!("../allocator.example.yaml")).unwrap();
        cfg.secret_files = vec![dir.join("s")];
        cfg.policy = serde_saphyr::from_str(policy).unwrap();
        cfg.relays = relays
            .iter()
            .map(|(name, _)| RelayEntry {
                name: name.to_string(),
                admin: "127.0.0.1:9".into(),
                dns: false,
                latitude: None,
                longitude: None,
            })
            .collect();
        let app = App::new(cfg)?;
        std::fs::remove_dir_all(&dir).unwrap();
        for (i, t) in app.relays.write().unwrap().iter_mut().enumerate() {
            t.view.healthy = true;
            t.view.capacity = 100;
            t.uris = vec![format!("turn:127.0.0.1:{}?transport=udp", 3478 + i)];
            assert_eq!(t.view.zone, relays[i].1);
        }
        Ok(app)
    }

    const CALL_POLICY: &str = "zones:\n  eu: {relays: [eu-1, eu-2]}\n  us: {relays: [us-1]}\n  \
        apac: {relays: [apac-1]}\nrules:\n  - {match: {group: EU}, zones: [eu]}\n  \
        - {match: {country: US}, zones: [us, eu]}\n  - {match: {country: JP}, zones: [apac]}\n\
        default: [us]\nunknown: refuse\n";
    const CALL_RELAYS: &[(&str, &str)] = &[
        ("eu-1", "eu"),
        ("eu-2", "eu"),
        ("us-1", "us"),
        ("apac-1", "apac"),
    ];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A profile the relays admit only over TLS gets their `turns:` URIs only and the claim
    /// `s=<profile>`; it is placed only on relays that offer TLS (in another of the caller's
    /// zones if need be); without one the request is refused, never answered with a leg the
    /// profile cannot protect.
    #[test]
    fn tls_only_profiles_get_turns_uris_only() {
        let app = app_with(CALL_POLICY, CALL_RELAYS).unwrap();
        for t in app.relays.write().unwrap().iter_mut() {
            t.uris.push("turn:127.0.0.1:3478?transport=tcp".into());
            if t.view.name == "us-1" {
                t.uris.push("turns:relay.example:443?transport=tcp".into());
            }
            t.tls_only = vec!["private".into()];
        }
        // A US caller [us, eu], whom distance places in the EU: the EU relays have no TLS, so
        // the private profile goes to us-1.
        let req = |profile: Option<&str>| IceRequest {
            profile: profile.map(str::to_string),
            ..IceRequest::default()
        };
        let us = ip("127.0.2.7");
        let a = app.allocate(us, &req(Some("private"))).unwrap();
        let s = &a.ice_servers[0];
        assert!(!s.urls.is_empty());
        assert!(
            s.urls.iter().all(|u| u.starts_with("turns:")),
            "{:?}",
            s.urls
        );
        assert!(s.username.ends_with(";s=private"), "{}", s.username);
        assert_eq!(a.zone, "us");
        // Another profile is placed as before, with every URI.
        let plain = app.allocate(us, &req(Some("voice"))).unwrap();
        assert_eq!(plain.zone, "eu");
        let urls = &plain.ice_servers[0].urls;
        assert!(urls.iter().all(|u| u.starts_with("turn:")), "{urls:?}");
        // Japanese [apac] and German [eu] callers: no relay they may use offers TLS.
        let jp = ip("127.0.3.7");
        for caller in [jp, ip("127.0.1.7")] {
            let e = app.allocate(caller, &req(Some("private"))).unwrap_err();
            assert_eq!((e.0, e.1), (StatusCode::SERVICE_UNAVAILABLE, "no_tls"));
            assert!(app.allocate(caller, &req(None)).is_ok());
        }
        // A call with one private party: both are placed where TLS is.
        let call = CallRequest {
            parties: vec![
                crate::request::Party::default(),
                crate::request::Party {
                    profile: Some("private".into()),
                    ..crate::request::Party::default()
                },
            ],
            ..CallRequest::default()
        };
        let c = app.place_call([us, us], &call).unwrap();
        assert_eq!(c.zones, ["us", "us"]);
        let p = &c.parties[1].ice_servers[0].urls;
        assert!(p.iter().all(|u| u.starts_with("turns:")), "{p:?}");
        // A Japanese caller and a private American one: each in its own zone.
        let c = app.place_call([jp, us], &call).unwrap();
        assert_eq!(c.zones, ["apac", "us"]);
        let e = app.place_call([us, jp], &call).unwrap_err();
        assert_eq!(e.1, "no_tls");
        // Only a backend key chooses a profile.
        assert!(crate::request::ice(b"{\"profile\":\"private\"}", false).is_err());
        assert!(crate::request::ice(b"{\"profile\":\"a b\"}", true).is_err());
    }

    #[test]
    fn calls_joins_and_the_cross_border_record() {
        let app = app_with(CALL_POLICY, CALL_RELAYS).unwrap();
        let req = CallRequest {
            parties: vec![
                crate::request::Party::default(),
                crate::request::Party::default(),
            ],
            ..CallRequest::default()
        };
        // DE [eu] and US [us, eu]: one EU relay for both.
        let c = app
            .place_call([ip("127.0.1.5"), ip("127.0.2.5")], &req)
            .unwrap();
        assert!(!c.cross_zone);
        assert_eq!(c.zones, ["eu", "eu"]);
        assert_eq!(
            c.parties[0].ice_servers[0].urls[0], c.parties[1].ice_servers[0].urls[0],
            "the same relay"
        );
        // DE [eu] and JP [apac]: each in its own zone, recorded once.
        let c = app
            .place_call([ip("127.0.1.5"), ip("127.0.3.5")], &req)
            .unwrap();
        assert!(c.cross_zone);
        assert_eq!(c.zones, ["eu", "apac"]);
        let report = app.audit.lock().unwrap().report(0, u64::MAX);
        assert_eq!(report.cross_zone_calls.len(), 1);
        assert_eq!(
            (
                report.cross_zone_calls[0].zone_a.as_str(),
                report.cross_zone_calls[0].zone_b.as_str(),
                report.cross_zone_calls[0].count
            ),
            ("apac", "eu", 1)
        );

        // Join tokens: the US party joins the German one's relay; the Japanese one cannot.
        let first = app
            .allocate(ip("127.0.1.9"), &IceRequest::default())
            .unwrap();
        let join = |who: &str| {
            app.allocate(
                ip(who),
                &IceRequest {
                    join: Some(first.join_token.clone()),
                    ..IceRequest::default()
                },
            )
        };
        let us = join("127.0.2.9").unwrap();
        assert_eq!(us.cross_zone, Some(false));
        assert_eq!(us.ice_servers[0].urls[0], first.ice_servers[0].urls[0]);
        assert!(us.ice_servers[0].username.ends_with(";z=eu"));
        let jp = join("127.0.3.9").unwrap();
        assert_eq!((jp.zone.as_str(), jp.cross_zone), ("apac", Some(true)));
        let mut forged = first.join_token.clone();
        forged.push('A');
        let e = app
            .allocate(
                ip("127.0.2.9"),
                &IceRequest {
                    join: Some(forged),
                    ..IceRequest::default()
                },
            )
            .unwrap_err();
        assert_eq!((e.0, e.1), (StatusCode::BAD_REQUEST, "bad_join_token"));

        // A client the DB cannot place: 451, counted, not placed anywhere.
        let e = app
            .allocate(ip("203.0.113.7"), &IceRequest::default())
            .unwrap_err();
        assert_eq!(
            (e.0, e.1),
            (
                StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
                "location_unknown"
            )
        );

        let report = app.audit.lock().unwrap().report(0, u64::MAX);
        let placed = |c: &str, z: &str| {
            report
                .placements
                .iter()
                .filter(|r| r.country == c && r.zone == z)
                .map(|r| r.count)
                .sum::<u64>()
        };
        assert_eq!(placed("DE", "eu"), 3);
        assert_eq!(placed("US", "eu"), 2);
        assert_eq!(placed("JP", "apac"), 2);
        assert_eq!(placed("unknown", "eu") + placed("unknown", "us"), 0);
        assert_eq!(
            report.cross_zone_calls[0].count, 2,
            "the join across zones too"
        );
        let m = app.render_metrics();
        for want in [
            "veil_allocator_cross_zone_calls_total{zone_a=\"apac\",zone_b=\"eu\"} 2\n",
            "veil_allocator_placements_by_country_total{country=\"DE\",zone=\"eu\"} 3\n",
            "veil_allocator_calls_total{placement=\"same_zone\"} 2\n",
            "veil_allocator_calls_total{placement=\"cross_zone\"} 2\n",
            "veil_allocator_unplaceable_total 1\n",
        ] {
            assert!(m.contains(want), "{want}in\n{m}");
        }
        let csv = report.to_csv();
        assert!(csv.contains(",placement,DE,eu,,3\n"), "{csv}");
        assert!(
            !csv.contains("127.") && !m.contains("127.0.1"),
            "no address"
        );
    }

    #[test]
    fn draining_relays_get_nothing_and_a_dead_zone_never_spills() {
        let app = app_with(CALL_POLICY, CALL_RELAYS).unwrap();
        app.relays.write().unwrap()[0].view.draining = true;
        for _ in 0..20 {
            let a = app
                .allocate(ip("127.0.1.5"), &IceRequest::default())
                .unwrap();
            assert_eq!(
                a.ice_servers[0].urls[0],
                "turn:127.0.0.1:3479?transport=udp"
            );
        }
        app.relays.write().unwrap()[1].view.healthy = false;
        let e = app
            .allocate(ip("127.0.1.5"), &IceRequest::default())
            .unwrap_err();
        assert_eq!((e.0, e.1), (StatusCode::SERVICE_UNAVAILABLE, "no_relay"));
    }

    #[test]
    fn a_policy_the_db_cannot_serve_is_refused_at_start() {
        let e = app_with(
            "zones: {ca: {relays: [us-1]}}\nrules: [{match: {subdivision: US-CA}, zones: [ca]}]\ndefault: [ca]\n",
            &[("us-1", "ca")],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("policy") && e.contains("rules[0] (subdivision US-CA) can never match"),
            "{e}"
        );
    }

    /// Every configuration App::new accepts answers requests; each bad field is refused at
    /// load, named. `ttl: 30` used to pass and then panic on every request (a clamp whose
    /// minimum was above its maximum).
    #[test]
    fn accepted_configs_answer_and_bad_fields_are_refused_at_load() {
        let dir =
            std::env::temp_dir().join(format!("veil-alloc-{}-{}", std::process::id(), random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s"), "secret-0123456789abcdef\n").unwrap();
        let base = || {
            let mut cfg: AllocatorConfig =
                serde_saphyr::from_str(include_str!("../allocator.example.yaml")).unwrap();
            cfg.secret_files = vec![dir.join("s")];
            cfg
        };
        let refused = |f: &dyn Fn(&mut AllocatorConfig), field: &str| {
            let mut cfg = base();
            f(&mut cfg);
            let e = App::new(cfg)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(&format!("`{field}`")), "{field}: {e:?}");
        };
        refused(&|c| c.ttl = 30, "ttl");
        refused(&|c| c.ttl = 0, "ttl");
        refused(&|c| c.ttl = 86_401, "ttl");
        refused(&|c| c.down_after = 0, "down_after");
        refused(&|c| c.up_after = 0, "up_after");
        refused(&|c| c.poll_interval_ms = 0, "poll_interval_ms");
        refused(&|c| c.distance.ms_per_km = f64::NAN, "distance");
        refused(&|c| c.distance.unknown_ms = -1.0, "distance");
        refused(&|c| c.relays[0].latitude = Some(91.0), "relays");
        refused(
            &|c| {
                c.relays[0].latitude = Some(50.0);
                c.relays[0].longitude = None;
            },
            "relays",
        );
        // The edges are accepted and every request is answered, whatever ttl it asks for.
        for ttl in [MIN_TTL, 86_400] {
            let mut cfg = base();
            cfg.ttl = ttl;
            let app = App::new(cfg).expect("accepted");
            for (i, t) in app.relays.write().unwrap().iter_mut().enumerate() {
                t.view.healthy = true;
                t.view.capacity = 100;
                t.uris = vec![format!("turn:127.0.0.1:{}?transport=udp", 3478 + i)];
            }
            for asked in [None, Some(1), Some(MIN_TTL), Some(ttl), Some(u64::MAX)] {
                let req = IceRequest {
                    ttl: asked,
                    ..IceRequest::default()
                };
                let a = app
                    .allocate_inner("127.0.1.5".parse().unwrap(), &req)
                    .unwrap_or_else(|e| panic!("ttl {ttl}, asked {asked:?}: {}", e.2));
                let granted = a.expires_at - unix_now();
                assert!(
                    granted <= ttl && granted + 2 >= MIN_TTL.min(ttl),
                    "{granted}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// With `metrics_listen`, /metrics is served there without a key and not on the API.
    #[tokio::test]
    async fn metrics_listen_serves_metrics_apart_from_the_api() {
        async fn get(router: Router, path: &str) -> String {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                axum::serve(
                    l,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .await
            });
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            server.abort();
            out
        }
        let app = app_with(CALL_POLICY, CALL_RELAYS).unwrap();
        // No metrics_listen: the API serves /metrics, to backend keys only.
        assert!(
            get(router(app.clone()), "/metrics")
                .await
                .starts_with("HTTP/1.1 401")
        );
        let mut cfg = app.cfg.clone();
        cfg.metrics_listen = Some("127.0.0.1:9".parse().unwrap());
        let dir = std::env::temp_dir().join(format!("veil-alloc-m-{}", random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s"), "secret-0123456789abcdef\n").unwrap();
        cfg.secret_files = vec![dir.join("s")];
        let app = App::new(cfg).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            get(router(app.clone()), "/metrics")
                .await
                .starts_with("HTTP/1.1 404")
        );
        let m = get(metrics_router(app), "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("veil_allocator_rate_limited_total 0"), "{m}");
    }

    #[test]
    fn config_errors_name_the_field() {
        let mut cfg: AllocatorConfig =
            serde_saphyr::from_str(include_str!("../allocator.example.yaml")).unwrap();
        cfg.secret_files = vec![];
        cfg.api_keys = vec![ApiKey {
            key: "short".into(),
            backend: false,
            requests_per_second: default_rate(),
        }];
        assert!(
            App::new(cfg.clone())
                .err()
                .unwrap()
                .to_string()
                .contains("api_keys")
        );
        cfg.api_keys = vec![ApiKey {
            key: "long-enough-key-0123".into(),
            backend: false,
            requests_per_second: default_rate(),
        }];
        assert!(
            App::new(cfg.clone())
                .err()
                .unwrap()
                .to_string()
                .contains("secret_files")
        );
        let e = serde_saphyr::from_str::<AllocatorConfig>("listen: 127.0.0.1:1\nbogus: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
