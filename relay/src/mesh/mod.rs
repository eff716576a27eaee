//! The relay mesh's driver: one QUIC endpoint (quinn, mutual TLS from the cluster CA) on its
//! own thread, one connection per pair of relays, and per link the loop that moves cells
//! ([`link`]). The link protocol itself — cells, the constant-rate scheduler, the
//! announcements, the breaker — is sans-I/O in [`crate::proto::mesh`].
//!
//! How a datagram crosses: a worker's allocation sends to a peer address; the worker's
//! [`routes::RouteCache`] finds it in a linked relay's announced ranges and queues it for that
//! link; the link's scheduler puts it in cells; the other relay's link takes the cells apart,
//! checks that the source lies in what this relay announced and the destination in its own,
//! and hands the datagram to the worker owning that relayed address ([`routes::Directory`]),
//! which treats it exactly as a UDP datagram from that source: permission, filter, channel.
//!
//! Who may connect: the endpoint answers only addresses its peers' link names resolve to
//! (anything else gets no packet back), asks them to prove their address (a QUIC Retry, smaller
//! than what they sent) and then requires a certificate from the cluster CA valid for one of
//! the configured peer names. Of each pair, the relay whose name sorts first dials.

pub mod metrics;
pub mod routes;
pub mod status;

mod clock;
mod link;
mod tls;

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use self::routes::{Directory, Fallback, LinkRoute, Routes};
use self::status::{MeshStatus, Refusal};
use crate::config::PortRange;
use crate::proto::mesh::announce::{Announce, RelayRange};
use crate::proto::mesh::breaker::{Breaker, BreakerConfig};
use crate::proto::mesh::sched::LinkConfig;
use crate::proto::server::RelayAddr;

/// The mesh's configuration, resolved from `mesh:` (see `crate::config::MeshSettings`).
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// The link endpoint's UDP address.
    pub listen: SocketAddr,
    /// This relay's name.
    pub name: String,
    /// Certificate files.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
    /// The cluster CA.
    pub ca: PathBuf,
    /// While a link is down.
    pub fallback: Fallback,
    /// The other relays.
    pub peers: Vec<PeerConfig>,
    /// The scheduler's settings.
    pub link: LinkConfig,
    /// The breaker's.
    pub breaker: BreakerConfig,
    /// Silence after which a link is down.
    pub idle_timeout: Duration,
    /// QUIC's congestion response.
    pub congestion: Congestion,
}

/// QUIC's congestion response on the links (see `mesh.congestion`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// A fixed window: the link's rate is the scheduler's; its breaker protects the path.
    #[default]
    Fixed,
    /// quinn's defaults (Cubic, a 1 MiB datagram buffer), for comparison.
    Quinn,
}

/// One other relay.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Its name, checked in its certificate.
    pub name: String,
    /// `host:port` of its link endpoint.
    pub link: String,
    /// Relayed ranges it owns, known in advance.
    pub pinned: Vec<RelayRange>,
}

impl MeshConfig {
    /// The routes known before any link is up: the pinned ranges.
    pub fn pinned_routes(&self) -> Vec<LinkRoute> {
        self.peers
            .iter()
            .map(|p| LinkRoute {
                name: p.name.as_str().into(),
                ranges: p.pinned.clone(),
                tx: None,
            })
            .collect()
    }
}

/// This node's relayed ranges: each advertised relay IP with the port range.
pub fn own_ranges(relays: &[RelayAddr], ports: PortRange) -> Vec<RelayRange> {
    relays
        .iter()
        .map(|r| RelayRange {
            ip: r.advertise,
            ports: (ports.start, ports.end),
        })
        .collect()
}

/// What every task of the mesh shares.
struct Ctx {
    cfg: MeshConfig,
    routes: Arc<Routes>,
    directory: Arc<Directory>,
    status: Arc<MeshStatus>,
    /// What this node announces, and its encoding.
    announce: Announce,
    announce_bytes: Vec<u8>,
    /// The TLS configurations in force (a reload replaces them).
    creds: RwLock<Arc<tls::Creds>>,
    /// IPs the peers' link names resolve to: the only sources answered.
    peer_ips: RwLock<HashSet<IpAddr>>,
    /// Sends every link's cells when they are due.
    clock: clock::Clock,
}

impl Ctx {
    fn creds(&self) -> Arc<tls::Creds> {
        self.creds.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The running mesh.
pub struct Mesh {
    ctx: Arc<Ctx>,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mesh {
    /// Loads the certificates, binds the link endpoint and starts the mesh's thread.
    pub fn start(
        cfg: &MeshConfig,
        zone: String,
        routes: Arc<Routes>,
        directory: Arc<Directory>,
    ) -> io::Result<Mesh> {
        let creds = tls::Creds::load(cfg).map_err(io::Error::other)?;
        let announce = Announce {
            zone: zone.clone(),
            ranges: routes.own().to_vec(),
        };
        let announce_bytes = announce
            .encode()
            .map_err(|e| io::Error::other(format!("mesh: this node's ranges: {e}")))?;
        let socket = std::net::UdpSocket::bind(cfg.listen)
            .map_err(|e| io::Error::new(e.kind(), format!("mesh.listen {}: {e}", cfg.listen)))?;
        let status = Arc::new(MeshStatus::new(
            zone,
            cfg.peers.iter().map(|p| p.name.clone()),
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let endpoint = {
            let _guard = rt.enter();
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(creds.server.clone()),
                socket,
                Arc::new(quinn::TokioRuntime),
            )?
        };
        let ctx = Arc::new(Ctx {
            cfg: cfg.clone(),
            routes,
            directory,
            status,
            announce,
            announce_bytes,
            creds: RwLock::new(Arc::new(creds)),
            peer_ips: RwLock::default(),
            clock: clock::Clock::start()?,
        });
        let (stop, stop_rx) = watch::channel(false);
        let thread = {
            let ctx = ctx.clone();
            let endpoint = endpoint.clone();
            std::thread::Builder::new()
                .name("veil-mesh".into())
                .spawn(move || rt.block_on(run(ctx, endpoint, stop_rx)))?
        };
        Ok(Mesh {
            ctx,
            endpoint,
            stop,
            thread: Some(thread),
        })
    }

    /// The links' status.
    pub fn status(&self) -> Arc<MeshStatus> {
        self.ctx.status.clone()
    }

    /// Reads the certificate files again; new handshakes use them (links up stay up). On an
    /// error the files in force stay.
    pub fn reload_tls(&self) -> Result<(), String> {
        let creds = tls::Creds::load(&self.ctx.cfg)?;
        self.endpoint.set_server_config(Some(creds.server.clone()));
        *self.ctx.creds.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(creds);
        Ok(())
    }

    /// Closes every link and stops the thread.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        self.endpoint.close(0u32.into(), b"");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The mesh's thread: resolving peers, accepting, dialling.
async fn run(ctx: Arc<Ctx>, endpoint: quinn::Endpoint, stop: watch::Receiver<bool>) {
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(resolve_task(ctx.clone(), stop.clone()));
    for peer in ctx.cfg.peers.iter().filter(|p| ctx.cfg.name < p.name) {
        tasks.spawn(dial_task(
            ctx.clone(),
            endpoint.clone(),
            peer.clone(),
            stop.clone(),
        ));
    }
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            _ = stopping.changed() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                tasks.spawn(accept(ctx.clone(), incoming, stop.clone()));
            }
        }
    }
    tasks.shutdown().await;
    endpoint.wait_idle().await;
}

/// Resolves the peers' link names now and every 10 s: their IPs are the only sources answered.
async fn resolve_task(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    loop {
        let mut ips = HashSet::new();
        for p in &ctx.cfg.peers {
            if let Ok(addrs) = tokio::net::lookup_host(p.link.as_str()).await {
                ips.extend(addrs.map(|a| a.ip()));
            }
        }
        *ctx.peer_ips.write().unwrap_or_else(|e| e.into_inner()) = ips;
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// Takes an inbound connection: only from a peer's address, after a Retry, with a
/// certificate valid for a configured peer whose link is not already up.
async fn accept(ctx: Arc<Ctx>, incoming: quinn::Incoming, stop: watch::Receiver<bool>) {
    let ip = incoming.remote_address().ip().to_canonical();
    let known = ctx
        .peer_ips
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&ip);
    if !known {
        ctx.status.refused(Refusal::UnknownSource);
        incoming.ignore();
        return;
    }
    if !incoming.remote_address_validated() {
        let _ = incoming.retry();
        return;
    }
    let conn = match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, async {
        incoming.accept()?.await
    })
    .await
    {
        Ok(Ok(c)) => c,
        _ => {
            ctx.status.refused(Refusal::Handshake);
            return;
        }
    };
    let creds = ctx.creds();
    let Some(name) = creds.peer_name(&conn, ctx.cfg.peers.iter().map(|p| p.name.as_str())) else {
        ctx.status.refused(Refusal::UnknownPeer);
        conn.close(1u32.into(), b"");
        return;
    };
    if ctx.status.is_up(name) {
        ctx.status.refused(Refusal::Duplicate);
        conn.close(1u32.into(), b"");
        return;
    }
    let Some(peer) = ctx.cfg.peers.iter().find(|p| p.name == name).cloned() else {
        return;
    };
    let end = link::run(&ctx, &peer, conn, stop).await;
    tracing::info!(link = %peer.name, reason = %end, "mesh link down");
}

/// Dials one peer, and again whenever its link ends (backing off to 10 s while it fails; a
/// link a breaker closed stays down for the breaker's hold, longer at each trip in a row).
async fn dial_task(
    ctx: Arc<Ctx>,
    endpoint: quinn::Endpoint,
    peer: PeerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    let mut trips = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let started = tokio::time::Instant::now();
        let mut wait = None;
        match dial(&ctx, &endpoint, &peer).await {
            Ok(conn) => {
                let end = link::run(&ctx, &peer, conn, stop.clone()).await;
                tracing::info!(link = %peer.name, reason = %end, "mesh link down");
                if matches!(end, link::LinkEnd::Stopped) {
                    return;
                }
                // A link that carried its rate for a while starts its holds afresh.
                if started.elapsed() > 2 * Breaker::hold(&ctx.cfg.breaker, 1) {
                    trips = 0;
                }
                if end.is_breaker() {
                    trips = trips.saturating_add(1);
                    let hold = Breaker::hold(&ctx.cfg.breaker, trips);
                    tracing::warn!(link = %peer.name, hold_s = hold.as_secs(), "mesh link held down by its breaker");
                    wait = Some(hold);
                }
            }
            Err(e) => {
                ctx.status
                    .link(&peer.name)
                    .update(|s| s.last_error = Some(e));
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(250);
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait.unwrap_or(backoff)) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn dial(
    ctx: &Ctx,
    endpoint: &quinn::Endpoint,
    peer: &PeerConfig,
) -> Result<quinn::Connection, String> {
    let addr = tokio::net::lookup_host(peer.link.as_str())
        .await
        .map_err(|e| format!("resolving {}: {e}", peer.link))?
        .next()
        .ok_or_else(|| format!("{} resolves to nothing", peer.link))?;
    let creds = ctx.creds();
    let connecting = endpoint
        .connect_with(creds.client.clone(), addr, &peer.name)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => {
            ctx.status.refused(Refusal::Handshake);
            Err(format!("handshake: {e}"))
        }
        Err(_) => Err("handshake timed out".into()),
    }
}
