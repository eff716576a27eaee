//! The allocator service: the running state ([`App`]) and the placement of requests through it.
//! Its parts, each in its own file: `config` (`allocator.yaml`), `registry` (the relays and
//! their health, from polling), `mint` (credentials, join tokens, the answer handed out),
//! `metrics` (counters and their Prometheus text), `api` (keys, rate limits, the client's
//! address, handlers, `run`).
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

use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use veil_geo::policy::Policy;
use veil_geo::{GeoDb, Location, ReloadingGeo};

use crate::audit::AuditLog;
use crate::join::{self, JoinClaims};
use crate::request::{CallRequest, IceRequest};
use veil_proto::limiter::{PrefixLimiter, TokenBucket};

use crate::placement::{
    CallPlacement, ClientFacts, Joined, PlacementError, RelayView, Scoring, place, place_call,
    place_joining,
};
mod api;
mod config;
mod conn;
mod metrics;
mod mint;
mod registry;
#[cfg(test)]
mod tests;
mod trail;

pub use api::{ApiError, metrics_router, router, run};
pub use config::{
    AllocatorConfig, ApiKey, ConfigError, DEFAULT_CLIENT_RATE, MAX_BODY, MIN_TTL, RelayEntry,
};
pub use conn::{ConnectionLimits, FD_RESERVE};
use metrics::{LATENCY_BOUNDS, Metrics};
pub use mint::{CallAnswer, IceAnswer, IceServer};
use mint::{Mint, random_id, signing_secret};
use registry::Tracked;

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
    /// Per key with a per-caller rate ([`ApiKey::client_rate`]): a bucket per caller network.
    callers: Vec<Option<Mutex<PrefixLimiter>>>,
    /// The API listener's connections.
    conns: Arc<conn::Held>,
    /// The origin of the buckets' milliseconds.
    epoch: std::time::Instant,
    /// The audit trail of operator actions, once [`App::start_trail`] opened it.
    trail: trail::Trail,
}

/// Checks that the policy can match with a DB: the DB's notes, or the reason it cannot.
fn check_policy_against(policy: &Policy, db: &GeoDb) -> Result<Vec<String>, String> {
    policy
        .check_db(&db.survey(8), db.origin())
        .map_err(|e| e.to_string())
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
        let c = &cfg.connections;
        if !(1..=300).contains(&c.request_timeout)
            || !(1..=3600).contains(&c.idle_timeout)
            || c.max_per_source == 0
        {
            return Err(invalid(
                "connections",
                "request_timeout 1-300 s, idle_timeout 1-3600 s, max_per_source >= 1".into(),
            ));
        }
        if let Err((field, message)) = cfg.audit.check() {
            return Err(invalid(field, message.into()));
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
        if cfg.api_keys.iter().any(|k| {
            k.client_rate() > 1_000_000 || !(1..=1_000_000).contains(&k.client_allocations)
        }) {
            return Err(invalid(
                "api_keys",
                "client_requests_per_second between 0 and 1000000, client_allocations between \
                 1 and 1000000"
                    .into(),
            ));
        }
        // Per caller network: 65 536 buckets (1 MiB) a key, so that distinct networks rarely
        // share one however many call at once; the table cannot grow.
        let callers = cfg
            .api_keys
            .iter()
            .map(|k| {
                let rate = k.client_rate();
                (rate > 0).then(|| {
                    Mutex::new(PrefixLimiter::with_slots(
                        rate,
                        rate.saturating_mul(2),
                        1 << 16,
                    ))
                })
            })
            .collect();
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
            callers,
            conns: Arc::default(),
            epoch: std::time::Instant::now(),
            trail: trail::Trail::default(),
        }))
    }

    /// Places a client and mints its answer, the credential's user being the request's (a
    /// backend's) or a random one.
    #[cfg(test)]
    fn allocate(&self, ip: IpAddr, req: &IceRequest) -> Result<IceAnswer, ApiError> {
        self.timed(|| self.allocate_inner(ip, req, None))
    }

    /// [`App::allocate`] for a caller with `key`: a browser key's credentials get the user id
    /// of the caller's network and that key's quota for it.
    fn allocate_as(
        &self,
        ip: IpAddr,
        req: &IceRequest,
        key: &ApiKey,
    ) -> Result<IceAnswer, ApiError> {
        let network = (!key.backend).then_some(key.client_allocations);
        self.timed(|| self.allocate_inner(ip, req, network))
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

    /// With `network`, the credential's user is `ip`'s network, holding that many allocations.
    fn allocate_inner(
        &self,
        ip: IpAddr,
        req: &IceRequest,
        network: Option<u32>,
    ) -> Result<IceAnswer, ApiError> {
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
            network: network.map(|quota| (ip, quota)),
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
                    network: None,
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
