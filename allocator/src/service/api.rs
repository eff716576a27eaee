//! The HTTP API: authentication and rate limits, the client's address, handlers, routers, `run`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::App;
use super::config::{ApiKey, MAX_BODY};
use super::conn::{FD_RESERVE, Held, serve};
use super::mint::{CallAnswer, IceAnswer};
use crate::request::{self, IceRequest};

/// An API error: JSON `{code, message}`.
#[derive(Debug)]
pub struct ApiError(
    pub(super) StatusCode,
    pub(super) &'static str,
    pub(super) String,
);

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
    /// The caller's key, once it is known and within its rates: first the rate of the
    /// address the request comes from (`peer`, or a trusted proxy's `X-Forwarded-For`), then
    /// the key's own, so one address over its rate spends nothing of the key's budget.
    pub(super) fn authorize(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<&ApiKey, ApiError> {
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
        if key.client_rate() > 0 {
            let seen = self.client_ip(peer, headers, key, None)?;
            if !self.admit_caller(i, seen) {
                self.metrics
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .caller_rate_limited += 1;
                return Err(ApiError(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "this key allows {} requests per second from one address",
                        key.client_rate()
                    ),
                ));
            }
        }
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
    pub(super) fn admit(&self, i: usize, rate: u32) -> bool {
        let Some(b) = self.buckets.get(i) else {
            return false;
        };
        let ms = self.epoch.elapsed().as_millis() as u64;
        let rate = rate as u64;
        let mut b = b.lock().unwrap_or_else(|e| e.into_inner());
        b.take(ms, rate, rate, 1)
    }

    /// Takes one request from the bucket of `ip`'s network under key `i` (true when the key
    /// has no per-caller limit).
    fn admit_caller(&self, i: usize, ip: IpAddr) -> bool {
        let Some(Some(l)) = self.callers.get(i) else {
            return true;
        };
        let ms = self.epoch.elapsed().as_millis() as u64;
        l.lock().unwrap_or_else(|e| e.into_inner()).allow(ip, ms)
    }

    /// The client's address: a backend's `client_ip`, else `X-Forwarded-For`'s last hop before
    /// our trusted proxies, else the connection's peer.
    pub(super) fn client_ip(
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
}

/// Reads a request body of at most [`MAX_BODY`] bytes; called only once the key is checked, so
/// an unauthenticated caller never has its body read.
/// It must arrive within `connections.request_timeout`: a body trickled a byte at a time would
/// otherwise hold the connection for hours.
pub(super) async fn read_body(
    app: &App,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, ApiError> {
    let within = Duration::from_secs(app.cfg.connections.request_timeout.into());
    match tokio::time::timeout(within, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a request body is at most {MAX_BODY} bytes"),
        )),
        Err(_) => Err(ApiError(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the request body did not arrive within {within:?}"),
        )),
    }
}

pub(super) async fn ice_servers(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<IceAnswer>, ApiError> {
    let key = app.authorize(&headers, peer)?;
    let body = read_body(&app, body).await?;
    let req = request::ice(&body, key.backend)?;
    let ip = app.client_ip(peer, &headers, key, req.client_ip.as_deref())?;
    app.allocate_as(ip, &req, key).map(Json)
}

pub(super) async fn calls(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<CallAnswer>, ApiError> {
    let key = app.authorize(&headers, peer)?;
    if !key.backend {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only backend keys may place calls (they name both parties' addresses)".into(),
        ));
    }
    let body = read_body(&app, body).await?;
    let (req, ips) = request::call(&body)?;
    app.timed(|| app.place_call(ips, &req)).map(Json)
}

#[derive(Debug, Deserialize)]
pub(super) struct TurnQuery {
    service: Option<String>,
    username: Option<String>,
    client_ip: Option<String>,
}

pub(super) async fn turn_rest(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<TurnQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = app.authorize(&headers, peer)?;
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
    let a = app.allocate_as(ip, &req, key)?;
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
pub(super) struct AuditQuery {
    from: Option<u64>,
    to: Option<u64>,
    format: Option<String>,
}

pub(super) async fn audit(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    if !app.authorize(&headers, peer)?.backend {
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
pub(super) async fn metrics_with_key(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !app.authorize(&headers, peer)?.backend {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only backend keys may read the metrics on the API listener (or set metrics_listen)"
                .into(),
        ));
    }
    Ok(metrics(State(app)).await.into_response())
}

pub(super) async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.render_metrics(),
    )
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn not_found() -> ApiError {
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
    let limits = app.cfg.connections;
    let max_total = match limits.max_total {
        0 => 1024 - FD_RESERVE,
        n => u64::from(n),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let metrics = match app.cfg.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await?;
            let router = metrics_router(app.clone());
            let stopped = stopped.clone();
            // Its own count: a scraper never competes with callers for a place.
            let held = Arc::new(Held::default());
            Some(tokio::spawn(serve(
                l, router, limits, max_total, held, stopped,
            )))
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
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let held = app.conns.clone();
    let r = serve(listener, router(app), limits, max_total, held, stopped).await;
    poller.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    r
}
