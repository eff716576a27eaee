//! What the links report, for `/status` and `/metrics`: one [`LinkStatus`] per configured peer,
//! counters that only grow across reconnections, and the node's refusals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::proto::counters::Accumulate;
use crate::proto::mesh::cell::RxStats;
use crate::proto::mesh::sched::TxStats;

/// Where a link is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Not connected (never yet, or it ended).
    #[default]
    Down,
    /// Carrying cells.
    Up,
}

crate::proto::counters! {
    /// Datagrams routed through a link, beyond what the scheduler and reassembler count.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Routed {
        /// Datagrams (and payload bytes) this node sent over the link.
        pub tx_datagrams: u64,
        /// Payload bytes of those.
        pub tx_bytes: u64,
        /// Datagrams (and payload bytes) from the link handed to this node's allocations.
        pub rx_datagrams: u64,
        /// Payload bytes of those.
        pub rx_bytes: u64,
        /// Datagrams for the link whose source or destination no announcement names.
        pub no_route: u64,
        /// Datagrams from the link naming a source outside the peer's announced ranges.
        pub bad_source: u64,
        /// Datagrams from the link naming a destination outside this node's ranges.
        pub bad_destination: u64,
        /// Datagrams from the link for a relayed address no allocation holds.
        pub no_allocation: u64,
        /// Datagrams from the link dropped because the owning worker's inbox was full.
        pub inbox_full: u64,
    }
}

crate::proto::counters! {
    /// A link's counters.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct LinkCounters {
        /// The scheduler's.
        pub tx: TxStats,
        /// The reassembler's.
        pub rx: RxStats,
        /// The router's.
        pub routed: Routed,
        /// UDP datagrams QUIC sent on the link (cells, and packets of its own: ACKs, probes,
        /// the handshake).
        pub udp_tx_datagrams: u64,
        /// Their bytes.
        pub udp_tx_bytes: u64,
        /// UDP datagrams QUIC received.
        pub udp_rx_datagrams: u64,
        /// Packets QUIC declared lost.
        pub lost_packets: u64,
        /// Cells pushed out of QUIC's send buffer before they left (egress backed up).
        pub unsent_cells: u64,
    }
}

/// A link's state and counters.
#[derive(Clone, Debug, Default)]
pub struct LinkSnapshot {
    /// The peer's name.
    pub name: String,
    /// Up or down.
    pub state: LinkState,
    /// The zone the peer announced.
    pub remote_zone: String,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Cell rate in force (cells per second).
    pub rate: u32,
    /// Its rung on the ladder.
    pub rung: usize,
    /// Loss fraction of the breaker's last interval.
    pub loss: f64,
    /// Times it came up.
    pub ups: u64,
    /// Times a circuit breaker closed it (this relay's or the peer's).
    pub breaker_trips: u64,
    /// Why it last ended, if it did.
    pub last_error: Option<String>,
    /// Counters of the links that ended.
    past: LinkCounters,
    /// Counters of the link now up.
    current: LinkCounters,
}

impl LinkSnapshot {
    /// Counters since the node started.
    pub fn totals(&self) -> LinkCounters {
        let mut t = self.past;
        t.accumulate(&self.current);
        t
    }
}

/// The view of the current connection that a link updates.
pub(super) struct Update<'a> {
    snap: &'a mut LinkSnapshot,
}

impl std::ops::Deref for Update<'_> {
    type Target = LinkSnapshot;
    fn deref(&self) -> &LinkSnapshot {
        self.snap
    }
}

impl std::ops::DerefMut for Update<'_> {
    fn deref_mut(&mut self) -> &mut LinkSnapshot {
        self.snap
    }
}

impl Update<'_> {
    pub(super) fn counters(&mut self) -> &mut LinkCounters {
        &mut self.snap.current
    }
}

/// One link's shared status.
#[derive(Default)]
pub(super) struct LinkStatus(Mutex<LinkSnapshot>);

impl LinkStatus {
    pub(super) fn update(&self, f: impl FnOnce(&mut Update<'_>)) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut Update { snap: &mut g });
    }

    /// A connection ended: its counters join the past ones.
    pub(super) fn ended(&self) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let c = std::mem::take(&mut g.current);
        g.past.accumulate(&c);
    }

    fn snapshot(&self) -> LinkSnapshot {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Why the node refused a connection or a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A packet from an address that is not a configured peer's: ignored, nothing sent back.
    UnknownSource,
    /// The TLS handshake failed (no certificate, another CA's, expired, wrong name).
    Handshake,
    /// A certificate from the CA valid for no configured peer's name.
    UnknownPeer,
    /// The announcement was malformed or late.
    Announce,
    /// The announcement claimed ranges another relay, or this one, holds (or outside the
    /// peer's pinned ranges).
    Overlap,
    /// A second connection from a peer whose link is up.
    Duplicate,
}

impl Refusal {
    /// Every reason, in metric order.
    pub const ALL: [Refusal; 6] = [
        Refusal::UnknownSource,
        Refusal::Handshake,
        Refusal::UnknownPeer,
        Refusal::Announce,
        Refusal::Overlap,
        Refusal::Duplicate,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::UnknownSource => "unknown_source",
            Refusal::Handshake => "handshake",
            Refusal::UnknownPeer => "unknown_peer",
            Refusal::Announce => "announce",
            Refusal::Overlap => "overlap",
            Refusal::Duplicate => "duplicate",
        }
    }
}

/// The mesh's status: each link's, and the refusals.
pub struct MeshStatus {
    /// This node's zone.
    pub zone: String,
    links: Vec<(String, Arc<LinkStatus>)>,
    refusals: [AtomicU64; 6],
}

impl MeshStatus {
    pub(super) fn new(zone: String, names: impl Iterator<Item = String>) -> Self {
        MeshStatus {
            zone,
            links: names
                .map(|n| {
                    let s = LinkStatus::default();
                    s.update(|u| u.name = n.clone());
                    (n, Arc::new(s))
                })
                .collect(),
            refusals: Default::default(),
        }
    }

    pub(super) fn link(&self, name: &str) -> Arc<LinkStatus> {
        self.links
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    pub(super) fn refused(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refusals[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Every link's snapshot.
    pub fn links(&self) -> Vec<LinkSnapshot> {
        self.links.iter().map(|(_, s)| s.snapshot()).collect()
    }

    /// Refusals by reason, in [`Refusal::ALL`] order.
    pub fn refusals(&self) -> [(Refusal, u64); 6] {
        Refusal::ALL.map(|r| {
            let i = Refusal::ALL.iter().position(|x| *x == r).unwrap_or(0);
            (r, self.refusals[i].load(Ordering::Relaxed))
        })
    }

    /// Whether the link to `name` is up.
    pub(super) fn is_up(&self, name: &str) -> bool {
        self.link(name).snapshot().state == LinkState::Up
    }
}
