//! What the workers and the links share: where a peer address leads ([`Routes`], read by every
//! worker for each datagram it sends, through a cache refreshed only when the table changes),
//! and which worker owns each of this node's relayed addresses ([`Directory`], for datagrams
//! that arrive over a link or from another allocation of this node).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::proto::mesh::announce::RelayRange;
use crate::proto::server::RelayId;

/// A datagram for one of this node's allocations, from another allocation (of this node or
/// of a linked relay).
pub struct Inbound {
    /// The relayed address it is for.
    pub relay: RelayId,
    /// The relayed address it comes from (the peer, as the allocation sees it).
    pub from: SocketAddr,
    /// The payload.
    pub payload: Vec<u8>,
}

/// A datagram for a linked relay.
pub struct ToLink {
    /// This node's relayed address it comes from (as advertised).
    pub src: SocketAddr,
    /// The linked relay's relayed address it goes to.
    pub dst: SocketAddr,
    /// The payload.
    pub payload: Vec<u8>,
}

/// What happens to a datagram for a linked relay while its link is down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Plain relayed UDP, as without a mesh: calls go on, unprotected between the relays.
    #[default]
    Udp,
    /// Dropped and counted, in both directions: no cross-relay media leaves unprotected.
    Refuse,
}

/// One linked relay as the workers see it.
pub struct LinkRoute {
    /// The peer's name (its certificate's).
    pub name: Arc<str>,
    /// Its relayed ranges: announced on the link, or pinned in the configuration before the
    /// first announcement.
    pub ranges: Vec<RelayRange>,
    /// The link's queue while it is up.
    pub tx: Option<mpsc::Sender<ToLink>>,
}

/// Where a peer address leads.
pub enum Route<'a> {
    /// Not a relay of the cluster: plain UDP.
    Plain,
    /// One of this node's relayed addresses: in-process.
    Local,
    /// A linked relay's, its link up.
    Link(&'a mpsc::Sender<ToLink>),
    /// A linked relay's, its link down and the policy refuses plain UDP.
    Refused,
}

/// The routing table: this node's ranges, and each link's.
pub struct Routes {
    own: Vec<RelayRange>,
    fallback: Fallback,
    table: RwLock<Arc<Vec<LinkRoute>>>,
    generation: AtomicU64,
}

impl Routes {
    /// A table with this node's relayed ranges and the links' pinned ranges, all down.
    pub fn new(own: Vec<RelayRange>, fallback: Fallback, links: Vec<LinkRoute>) -> Self {
        Routes {
            own,
            fallback,
            table: RwLock::new(Arc::new(links)),
            generation: AtomicU64::new(1),
        }
    }

    /// This node's relayed ranges.
    pub fn own(&self) -> &[RelayRange] {
        &self.own
    }

    /// The policy while a link is down.
    pub fn fallback(&self) -> Fallback {
        self.fallback
    }

    fn snapshot(&self) -> Arc<Vec<LinkRoute>> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the entry of link `name` (added if missing) and publishes the table.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut LinkRoute)) {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<LinkRoute> = t
            .iter()
            .map(|l| LinkRoute {
                name: l.name.clone(),
                ranges: l.ranges.clone(),
                tx: l.tx.clone(),
            })
            .collect();
        let i = match next.iter().position(|l| &*l.name == name) {
            Some(i) => i,
            None => {
                next.push(LinkRoute {
                    name: name.into(),
                    ranges: vec![],
                    tx: None,
                });
                next.len() - 1
            }
        };
        f(&mut next[i]);
        *t = Arc::new(next);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The ranges every link other than `name` claims, and this node's.
    pub fn claimed_by_others(&self, name: &str) -> Vec<RelayRange> {
        let t = self.snapshot();
        t.iter()
            .filter(|l| &*l.name != name)
            .flat_map(|l| l.ranges.iter().copied())
            .chain(self.own.iter().copied())
            .collect()
    }
}

/// A worker's view of [`Routes`]: a snapshot, taken again only when the table changed (one
/// atomic load per datagram, no lock).
pub struct RouteCache {
    routes: Arc<Routes>,
    generation: u64,
    table: Arc<Vec<LinkRoute>>,
}

impl RouteCache {
    /// A cache of `routes`.
    pub fn new(routes: Arc<Routes>) -> Self {
        let table = routes.snapshot();
        RouteCache {
            generation: routes.generation.load(Ordering::Acquire),
            routes,
            table,
        }
    }

    /// Where a datagram to `peer` goes.
    #[inline]
    pub fn route(&mut self, peer: SocketAddr) -> Route<'_> {
        if self.routes.own.iter().any(|r| r.contains(peer)) {
            return Route::Local;
        }
        let g = self.routes.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.table = self.routes.snapshot();
            self.generation = g;
        }
        let Some(link) = self
            .table
            .iter()
            .find(|l| l.ranges.iter().any(|r| r.contains(peer)))
        else {
            return Route::Plain;
        };
        match (&link.tx, self.routes.fallback) {
            (Some(tx), _) => Route::Link(tx),
            (None, Fallback::Udp) => Route::Plain,
            (None, Fallback::Refuse) => Route::Refused,
        }
    }

    /// Whether plain UDP from `peer` must be dropped: it comes from a linked relay's range and
    /// the policy refuses unprotected media between relays.
    #[inline]
    pub fn refuses_plain_from(&mut self, peer: SocketAddr) -> bool {
        self.routes.fallback == Fallback::Refuse
            && matches!(self.route(peer), Route::Link(_) | Route::Refused)
    }
}

/// Why a datagram for one of this node's allocations was not handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undelivered {
    /// No allocation holds that relayed address.
    NoAllocation,
    /// The owning worker's inbox is full.
    Full,
}

/// This node's relayed addresses (as advertised) and the worker owning each, with each
/// worker's inbox.
pub struct Directory {
    owners: RwLock<HashMap<SocketAddr, (usize, RelayId)>>,
    inboxes: Vec<mpsc::Sender<Inbound>>,
}

/// Datagrams each worker's inbox holds before more are dropped.
pub const INBOX: usize = 4096;

impl Directory {
    /// A directory for `workers` workers, and the receiving end of each one's inbox.
    pub fn new(workers: usize) -> (Directory, Vec<mpsc::Receiver<Inbound>>) {
        let (tx, rx) = (0..workers).map(|_| mpsc::channel(INBOX)).unzip();
        (
            Directory {
                owners: RwLock::default(),
                inboxes: tx,
            },
            rx,
        )
    }

    /// Notes that worker `worker` holds `addr` as relayed address `id`.
    pub fn insert(&self, addr: SocketAddr, worker: usize, id: RelayId) {
        self.owners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, (worker, id));
    }

    /// Forgets `addr`.
    pub fn remove(&self, addr: SocketAddr) {
        self.owners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
    }

    /// Who holds `addr`.
    pub fn owner(&self, addr: SocketAddr) -> Option<(usize, RelayId)> {
        self.owners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .copied()
    }

    /// Hands a datagram to the worker holding `to`.
    pub fn deliver(
        &self,
        to: SocketAddr,
        from: SocketAddr,
        payload: &[u8],
    ) -> Result<(), Undelivered> {
        let (worker, relay) = self.owner(to).ok_or(Undelivered::NoAllocation)?;
        self.send(worker, relay, from, payload)
    }

    /// Hands a datagram to worker `worker`'s allocation `relay`.
    pub fn send(
        &self,
        worker: usize,
        relay: RelayId,
        from: SocketAddr,
        payload: &[u8],
    ) -> Result<(), Undelivered> {
        let inbox = self.inboxes.get(worker).ok_or(Undelivered::NoAllocation)?;
        inbox
            .try_send(Inbound {
                relay,
                from,
                payload: payload.to_vec(),
            })
            .map_err(|_| Undelivered::Full)
    }
}
