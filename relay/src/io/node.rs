//! The node: what its workers share, starting them with their sockets, reloading, stopping.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::health::Health;
use super::ports::{Parked, PortUse};
use super::sockets::{bind_listeners, bind_stream_listeners};
use super::stream::ConnCount;
use crate::config::{PortRange, Resolved, StreamLimits};
use crate::mesh::Mesh;
use crate::mesh::routes::{Directory, Routes};
use crate::metrics::Reports;
use crate::proto::server::{Shared, Transport};
use crate::shaping::Policy;

/// What all workers of a node share.
pub(super) struct NodeShared {
    pub(super) core: Arc<Shared>,
    /// The node's shaping policy and the named profiles (see [`crate::config::Resolved`]);
    /// a reload sends new ones and every worker's shaper takes them.
    pub(super) shaping: watch::Receiver<Vec<Policy>>,
    /// Origin of the shaping slot grid, the same for every worker.
    pub(super) epoch: Instant,
    /// Each worker's latest counters, for the metrics endpoint.
    pub(super) reports: Arc<Reports>,
    /// TCP/TLS connection limits, the TLS setup, and the connections held.
    pub(super) streams: StreamLimits,
    /// How long a worker rests after a round of UDP work (`batch_wait_us`).
    pub(super) batch_wait: std::time::Duration,
    pub(super) tls: Option<Arc<crate::tls::TlsState>>,
    /// The website sharing the TLS listeners.
    pub(super) site: Option<Arc<crate::site::Site>>,
    /// The kernel fast path, where the workers mirror what the core says it may carry.
    pub(super) fast_path: Option<Arc<crate::fastpath::FastPath>>,
    pub(super) conns: ConnCount,
    /// Relayed ports taken per relay IP, and the sockets parked for reservations.
    pub(super) ports: PortUse,
    pub(super) parked: Parked,
    /// Each worker's heartbeat and the node's first failure.
    pub(super) health: Arc<Health>,
    /// Which worker holds each relayed address, and each worker's inbox.
    pub(super) directory: Arc<Directory>,
    /// Where peer addresses lead: this node's relayed ranges, the mesh's links.
    pub(super) routes: Arc<Routes>,
    /// Each relay IP and the IP it is advertised as.
    pub(super) advertise: Vec<(IpAddr, IpAddr)>,
}

impl NodeShared {
    /// The IP relay IP `bind` is advertised as.
    pub(super) fn advertised(&self, bind: IpAddr) -> IpAddr {
        self.advertise
            .iter()
            .find(|(b, _)| *b == bind)
            .map_or(bind, |(_, a)| *a)
    }
}

/// A running node: its workers and the addresses it listens on.
pub struct Node {
    /// Where clients reach the node (for `/status`).
    pub endpoints: crate::admin::Endpoints,
    /// The TLS setup, whose certificate a reload replaces.
    pub tls: Option<Arc<crate::tls::TlsState>>,
    /// The workers' counters, for [`crate::metrics::render`].
    pub reports: Arc<Reports>,
    /// The relayed port range.
    pub port_range: PortRange,
    /// Whether every worker still turns its loop (read by the admin endpoint and the
    /// lifecycle, which exits when one fails).
    pub health: Arc<Health>,
    /// The links to other relays, when the node is in a mesh.
    pub mesh: Option<Mesh>,
    /// The kernel fast path, while attached (dropped with the workers' references, it
    /// detaches).
    pub fast_path: Option<Arc<crate::fastpath::FastPath>>,
    shaping: watch::Sender<Vec<Policy>>,
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<io::Result<()>>>,
}

impl Node {
    /// Binds every socket of a resolved configuration and starts its worker threads.
    pub fn start(resolved: &Resolved, core: Arc<Shared>) -> io::Result<Node> {
        let workers = resolved.workers.max(1);
        let fast_path = crate::fastpath::start(&resolved.fast_path)
            .map_err(io::Error::other)?
            .map(Arc::new);
        let udp = bind_listeners(&resolved.listen, workers)?;
        let tcp = bind_stream_listeners(&resolved.listen_tcp, workers)?;
        let tls = bind_stream_listeners(&resolved.listen_tls, workers)?;
        let (shaping, shaping_rx) = watch::channel(resolved.shaping.clone());
        let (directory, inboxes) = Directory::new(workers);
        let directory = Arc::new(directory);
        let relays: Vec<_> = resolved.server.relays.iter().flatten().copied().collect();
        let own = crate::mesh::own_ranges(&relays, resolved.port_range);
        let routes = Arc::new(Routes::new(
            own,
            resolved
                .mesh
                .as_ref()
                .map_or_else(Default::default, |m| m.fallback),
            resolved
                .mesh
                .as_ref()
                .map_or_else(Vec::new, |m| m.pinned_routes()),
        ));
        let mesh = match &resolved.mesh {
            Some(m) => Some(Mesh::start(
                m,
                resolved.server.zone.clone().unwrap_or_default(),
                routes.clone(),
                directory.clone(),
            )?),
            None => None,
        };
        let node = Arc::new(NodeShared {
            directory,
            routes,
            advertise: relays.iter().map(|r| (r.bind, r.advertise)).collect(),
            ports: PortUse::new(
                resolved.server.relays.iter().flatten().map(|r| r.bind),
                resolved.port_range,
            ),
            core,
            shaping: shaping_rx,
            epoch: Instant::now(),
            reports: Arc::new(Reports::new(workers)),
            streams: resolved.streams,
            batch_wait: resolved.batch_wait,
            tls: resolved.tls.clone(),
            site: resolved.site.clone(),
            fast_path: fast_path.clone(),
            conns: ConnCount::default(),
            parked: Parked::default(),
            health: Arc::new(Health::new(workers)),
        });
        let health = node.health.clone();
        let reports = node.reports.clone();
        reports.publish_fast_path(fast_path.as_ref().map(|f| f.counts()));
        let (stop, stop_rx) = watch::channel(false);
        let mut threads = Vec::new();
        for (i, (((socks, tcp), tls), inbox)) in
            udp.into_iter().zip(tcp).zip(tls).zip(inboxes).enumerate()
        {
            let streams: Vec<_> = tcp
                .into_iter()
                .map(|l| (l, Transport::Tcp))
                .chain(tls.into_iter().map(|l| (l, Transport::Tls)))
                .collect();
            let node = node.clone();
            let rx = stop_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("veil-worker-{i}"))
                    .spawn(move || super::tasks::run_worker(i, node, socks, streams, inbox, rx))?,
            );
        }
        Ok(Node {
            endpoints: crate::admin::Endpoints {
                udp: resolved.listen.clone(),
                tcp: resolved.listen_tcp.clone(),
                tls: resolved.listen_tls.clone(),
                tls_name: resolved.tls_name.clone(),
            },
            tls: resolved.tls.clone(),
            stop,
            threads,
            reports,
            port_range: resolved.port_range,
            shaping,
            health,
            mesh,
            fast_path,
        })
    }

    /// The node drains: bindings leave the kernel, so that what is still relayed is counted
    /// and ended by the user-space path.
    pub fn withdraw_fast_path(&self) {
        if let Some(f) = &self.fast_path {
            f.withdraw();
        }
    }

    /// Reads the fast path's counters into the node's reports (for `/metrics`).
    pub fn publish_fast_path(&self) {
        self.reports
            .publish_fast_path(self.fast_path.as_ref().map(|f| f.counts()));
    }

    /// Puts new shaping policies (node policy, then the profiles in the same order as before)
    /// in force on every worker; allocations go on.
    pub fn reload_shaping(&self, policies: Vec<Policy>) {
        self.shaping.send_replace(policies);
    }

    /// Stops the workers (allocations are deleted, sockets closed) and waits for them. Not
    /// after a worker failed: a stalled thread never comes back to be joined.
    pub fn stop(self) -> io::Result<()> {
        let _ = self.stop.send(true);
        if let Some(m) = self.mesh {
            m.stop();
        }
        for t in self.threads {
            match t.join() {
                Ok(r) => r?,
                Err(_) => return Err(io::Error::other("a worker thread panicked")),
            }
        }
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C in a terminal).
pub async fn shutdown_signal() -> io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
