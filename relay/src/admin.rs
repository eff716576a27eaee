//! The relay's admin HTTP endpoint, for the allocator's registry and for Kubernetes probes:
//! `/healthz` (every worker turns its loop), `/readyz` (it accepts new allocations: healthy,
//! not draining, below its quota), `/status` (zone,
//! advertised TURN URIs, load and capacity as JSON) and `/metrics` (Prometheus). Counts only: never a client address or
//! username. Bind it to a private address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;

use crate::io::Health;
use crate::metrics::Reports;
use crate::proto::server::{Family, ServerConfig, Shared};

pub use veil_ops::Status;

/// The admin endpoint's view of the node.
pub struct AdminState {
    core: Arc<Shared>,
    uris: Vec<String>,
    metrics: Option<(Arc<Reports>, usize)>,
    health: Option<Arc<Health>>,
    mesh: Option<Arc<crate::mesh::status::MeshStatus>>,
}

/// Where clients reach a node: its UDP, TCP and TLS listeners, and the host name of `turns:`
/// URIs (it must match the certificate; none: the advertised IP).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// UDP listeners.
    pub udp: Vec<SocketAddr>,
    /// TCP listeners.
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners.
    pub tls: Vec<SocketAddr>,
    /// Host name of `turns:` URIs.
    pub tls_name: Option<String>,
}

/// The URIs clients reach a node on (RFC 7065): `turn:…?transport=udp` and `?transport=tcp` for
/// each UDP and TCP listener, `turns:…?transport=tcp` for each TLS one. An unspecified listen IP
/// is replaced by the advertised relay IP of its family.
pub fn turn_uris(ep: &Endpoints, cfg: &ServerConfig) -> Vec<String> {
    let mut v = uris_of(&ep.udp, cfg, "turn", "udp", None);
    v.extend(uris_of(&ep.tcp, cfg, "turn", "tcp", None));
    v.extend(uris_of(
        &ep.tls,
        cfg,
        "turns",
        "tcp",
        ep.tls_name.as_deref(),
    ));
    v
}

fn uris_of(
    listen: &[SocketAddr],
    cfg: &ServerConfig,
    scheme: &str,
    transport: &str,
    name: Option<&str>,
) -> Vec<String> {
    listen
        .iter()
        .filter_map(|l| {
            let relays = &cfg.relays[Family::of(l.ip()) as usize];
            let ip = if l.ip().is_unspecified() {
                relays.first()?.advertise
            } else {
                // A listener on a relay IP is reached through that IP's advertised address.
                relays
                    .iter()
                    .find(|r| r.bind == l.ip())
                    .map_or(l.ip(), |r| r.advertise)
            };
            let host = match (name, ip) {
                (Some(n), _) => n.to_string(),
                (None, IpAddr::V4(v4)) => v4.to_string(),
                (None, IpAddr::V6(v6)) => format!("[{v6}]"),
            };
            Some(format!(
                "{scheme}:{host}:{}?transport={transport}",
                l.port()
            ))
        })
        .collect()
}

impl AdminState {
    /// The admin state of a node; with `metrics` (the workers' reports and the port range size)
    /// it also serves `/metrics`; with `health` (the node's, [`crate::io::Node::health`]) a
    /// failed worker makes `/healthz` and `/readyz` answer 503.
    pub fn new(
        core: Arc<Shared>,
        endpoints: &Endpoints,
        metrics: Option<(Arc<Reports>, usize)>,
        health: Option<Arc<Health>>,
        mesh: Option<Arc<crate::mesh::status::MeshStatus>>,
    ) -> Arc<Self> {
        let uris = turn_uris(endpoints, &core.config);
        Arc::new(AdminState {
            core,
            uris,
            metrics,
            health,
            mesh,
        })
    }

    /// What failed on the node, if anything did.
    fn failure(&self) -> Option<crate::io::Failure> {
        self.health.as_ref().and_then(|h| h.failure())
    }

    /// The node's `/status` document now.
    pub fn status(&self) -> Status {
        let cfg = &self.core.config;
        let allocations = self.core.allocations();
        let draining = self.core.draining();
        Status {
            zone: cfg.zone.clone(),
            ready: self.failure().is_none() && !draining && allocations < cfg.total_quota,
            draining,
            allocations,
            capacity: cfg.total_quota,
            uris: self.uris.clone(),
            tls_only_profiles: cfg
                .shaping_profiles
                .iter()
                .zip(&cfg.tls_only_profiles)
                .filter(|(_, tls)| **tls)
                .map(|(name, _)| name.clone())
                .collect(),
            realm: Some(cfg.realm.clone()),
            links: self.mesh.as_ref().map_or_else(Vec::new, |m| {
                m.links()
                    .into_iter()
                    .map(|l| veil_ops::MeshLink {
                        state: match l.state {
                            crate::mesh::status::LinkState::Up => "up",
                            crate::mesh::status::LinkState::Down => "down",
                        }
                        .into(),
                        remote_zone: l.remote_zone.clone(),
                        rtt_us: u64::try_from(l.rtt.as_micros()).unwrap_or(u64::MAX),
                        cell_rate: l.rate,
                        last_error: l.last_error.clone(),
                        name: l.name,
                    })
                    .collect()
            }),
        }
    }
}

async fn healthz(State(s): State<Arc<AdminState>>) -> Response {
    match s.failure() {
        None => "ok\n".into_response(),
        Some(f) => (StatusCode::SERVICE_UNAVAILABLE, format!("{f}\n")).into_response(),
    }
}

async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    if let Some(f) = s.failure() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {f}\n")).into_response()
    } else if s.status().ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn status(State(s): State<Arc<AdminState>>) -> Json<Status> {
    Json(s.status())
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    match &s.metrics {
        Some((reports, ports)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            {
                let mut o = crate::metrics::render(&s.core, reports, *ports);
                crate::mesh::metrics::render(&mut o, s.mesh.as_deref(), &reports.sum().io);
                o
            },
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no metrics\n").into_response(),
    }
}

/// The admin routes.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the admin endpoint until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::server::RelayAddr;

    #[test]
    fn uris_use_advertised_addresses() {
        let cfg = ServerConfig {
            relays: [
                vec![RelayAddr {
                    bind: "10.0.0.5".parse().unwrap(),
                    advertise: "203.0.113.5".parse().unwrap(),
                }],
                vec![RelayAddr {
                    bind: "::1".parse().unwrap(),
                    advertise: "::1".parse().unwrap(),
                }],
            ],
            ..ServerConfig::default()
        };
        let mut ep = Endpoints {
            udp: vec![
                "0.0.0.0:3478".parse().unwrap(),
                "10.0.0.5:3479".parse().unwrap(),
                "[::1]:3478".parse().unwrap(),
            ],
            tcp: vec!["0.0.0.0:3478".parse().unwrap()],
            tls: vec!["0.0.0.0:443".parse().unwrap()],
            tls_name: None,
        };
        assert_eq!(
            turn_uris(&ep, &cfg),
            vec![
                "turn:203.0.113.5:3478?transport=udp",
                "turn:203.0.113.5:3479?transport=udp",
                "turn:[::1]:3478?transport=udp",
                "turn:203.0.113.5:3478?transport=tcp",
                "turns:203.0.113.5:443?transport=tcp",
            ]
        );
        ep.tls_name = Some("relay-1.example.net".into());
        assert_eq!(
            turn_uris(&ep, &cfg)[4],
            "turns:relay-1.example.net:443?transport=tcp"
        );
    }
}
