//! Peer paths: what carries a relayed address's packets to and from its peers. The core names a
//! relayed address by its [`RelayId`] and never learns what is behind it; here it is a relayed
//! UDP socket, watched by the worker's epoll set, and the address it is advertised as. Where a
//! datagram to a peer goes is decided per peer in `worker::forward`: this socket, another
//! allocation of this node (in-process), or the link to the relay that owns the peer's address
//! (`crate::mesh`); what comes back by any of them reaches the same `worker::deliver`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::proto::server::RelayId;

/// How one relayed address reaches its peers.
pub(super) enum PeerPath {
    /// A UDP socket of the relay port range, bound on `ip` (whose port budget it holds).
    Udp {
        socket: std::net::UdpSocket,
        ip: IpAddr,
        /// The relayed address as clients and peers see it (the advertised IP).
        addr: SocketAddr,
    },
}

impl PeerPath {
    /// Sends one payload to a peer.
    #[inline]
    fn send(&self, peer: SocketAddr, payload: &[u8]) -> bool {
        match self {
            PeerPath::Udp { socket, .. } => socket.send_to(payload, peer).is_ok(),
        }
    }
}

/// The peer paths of one worker's allocations.
#[derive(Default)]
pub(super) struct PeerPaths {
    paths: HashMap<RelayId, PeerPath>,
}

impl PeerPaths {
    pub(super) fn insert(&mut self, id: RelayId, path: PeerPath) {
        self.paths.insert(id, path);
    }

    pub(super) fn remove(&mut self, id: &RelayId) -> Option<PeerPath> {
        self.paths.remove(id)
    }

    /// The UDP socket behind a relayed address, to read from.
    #[inline]
    pub(super) fn udp_socket(&self, id: &RelayId) -> Option<&std::net::UdpSocket> {
        match self.paths.get(id)? {
            PeerPath::Udp { socket, .. } => Some(socket),
        }
    }

    /// The relayed address `id` is advertised as.
    #[inline]
    pub(super) fn addr(&self, id: &RelayId) -> Option<SocketAddr> {
        match self.paths.get(id)? {
            PeerPath::Udp { addr, .. } => Some(*addr),
        }
    }

    /// Sends a client's payload to a peer from relayed address `id`; false if it is gone or
    /// the send failed.
    #[inline]
    pub(super) fn send(&self, id: &RelayId, peer: SocketAddr, payload: &[u8]) -> bool {
        self.paths.get(id).is_some_and(|p| p.send(peer, payload))
    }

    pub(super) fn len(&self) -> usize {
        self.paths.len()
    }
}
