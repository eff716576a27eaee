//! Relayed ports: the per-IP budget shared by the node's workers, the port choice within the
//! range, the sockets parked for RESERVATION-TOKENs (the core keeps the tokens and their
//! expiry), and the [`Env`] the core opens and closes relayed addresses through.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::peers::PeerPath;
use super::sockets::{set_dont_fragment, udp_socket};
use super::worker::Io;
use crate::config::PortRange;
use crate::proto::server::{Env, Opened, PortPolicy, RelayAddr, RelayId};

/// Random ports tried before scanning the range.
const RANDOM_TRIES: usize = 32;

/// Relayed sockets bound per relay IP, across workers: a fast 508 when every IP's range is
/// full, and the least used IP for the next allocation.
pub(super) struct PortUse {
    in_use: Vec<(IpAddr, AtomicUsize)>,
    range: PortRange,
}

impl PortUse {
    pub(super) fn new(ips: impl Iterator<Item = IpAddr>, range: PortRange) -> Self {
        PortUse {
            in_use: ips.map(|ip| (ip, AtomicUsize::new(0))).collect(),
            range,
        }
    }

    fn of(&self, ip: IpAddr) -> Option<&AtomicUsize> {
        self.in_use.iter().find(|(i, _)| *i == ip).map(|(_, n)| n)
    }

    /// Takes a port of `ip`'s budget; false when its range is used up.
    fn take(&self, ip: IpAddr) -> bool {
        let cap = self.range.len();
        self.of(ip).is_some_and(|n| {
            n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
        })
    }

    fn release(&self, ip: IpAddr) {
        if let Some(n) = self.of(ip) {
            let _ = n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    fn used(&self, ip: IpAddr) -> usize {
        self.of(ip)
            .map_or(usize::MAX, |n| n.load(Ordering::Relaxed))
    }
}

/// Sockets bound for reservations, waiting for the allocation that claims them; any worker may
/// adopt or release one.
#[derive(Default)]
pub(super) struct Parked {
    by_addr: Mutex<HashMap<SocketAddr, std::net::UdpSocket>>,
}

impl Parked {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, std::net::UdpSocket>> {
        self.by_addr.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Io {
    /// Binds a socket on `ip` at a port of the range (an even one if `even`).
    fn bind_in_range(&mut self, ip: IpAddr, even: bool) -> Option<std::net::UdpSocket> {
        let PortRange { start, end } = self.node.ports.range;
        let span = (end - start) as u64 + 1;
        let ok = |p: u16| !even || p % 2 == 0;
        // Only a taken port is worth trying the next one; out of descriptors or buffers, no
        // port will do (and scanning the whole range per Allocate would burn the worker).
        let bind = |p: u16| match udp_socket(SocketAddr::new(ip, p), false) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(None),
            Err(e) => Err(e),
        };
        // Random ports first, then a scan of the range from a random offset.
        let offset = self.rng.next_u64() % span;
        for k in 0..RANDOM_TRIES as u64 + span {
            let i = if k < RANDOM_TRIES as u64 {
                self.rng.next_u64() % span
            } else {
                (offset + k) % span
            };
            let p = start + i as u16;
            if !ok(p) {
                continue;
            }
            match bind(p) {
                Ok(Some(s)) => return Some(s),
                Ok(None) => {}
                Err(e) => {
                    if !self.warned_bind {
                        self.warned_bind = true;
                        tracing::warn!(
                            error = %e,
                            "cannot open relayed sockets; allocations get 508 (said once per worker)"
                        );
                    }
                    return None;
                }
            }
        }
        None
    }

    /// Watches a relayed socket and makes it the peer path of `id`.
    fn adopt(&mut self, id: RelayId, socket: std::net::UdpSocket) -> Option<SocketAddr> {
        let bound = socket.local_addr().ok()?;
        if let Err(e) = self.epoll.add_edge(&socket, id.0) {
            tracing::warn!(error = %e, "cannot watch a relayed socket");
            return None;
        }
        let addr = SocketAddr::new(self.node.advertised(bound.ip()), bound.port());
        self.peers.insert(
            id,
            PeerPath::Udp {
                socket,
                ip: bound.ip(),
                addr,
            },
        );
        self.node.directory.insert(addr, self.index, id);
        Some(bound)
    }

    /// An even port and, with `reserve_next`, the next one bound and parked.
    fn bind_even(
        &mut self,
        ip: IpAddr,
        reserve_next: bool,
    ) -> Option<(std::net::UdpSocket, Option<SocketAddr>)> {
        for _ in 0..RANDOM_TRIES {
            let s = self.bind_in_range(ip, true)?;
            if !reserve_next {
                return Some((s, None));
            }
            let Ok(port) = s.local_addr().map(|a| a.port()) else {
                continue;
            };
            if port == self.node.ports.range.end || !self.node.ports.take(ip) {
                continue;
            }
            let next = SocketAddr::new(ip, port + 1);
            match udp_socket(next, false) {
                Ok(sock) => {
                    self.node.parked.lock().insert(next, sock);
                    return Some((s, Some(next)));
                }
                Err(_) => self.node.ports.release(ip),
            }
        }
        None
    }

    /// Opens a relayed socket on `ip` (see [`Env::open_relay`]).
    fn open_on(&mut self, id: RelayId, ip: IpAddr, policy: PortPolicy, df: bool) -> Option<Opened> {
        if !self.node.ports.take(ip) {
            return None;
        }
        let bound = match policy {
            PortPolicy::Any => self.bind_in_range(ip, false).map(|s| (s, None)),
            PortPolicy::Even { reserve_next } => self.bind_even(ip, reserve_next),
        };
        let Some((sock, reserved)) = bound else {
            self.node.ports.release(ip);
            return None;
        };
        if let Err(e) = set_dont_fragment(&sock, ip.is_ipv6(), df) {
            tracing::debug!(error = %e, "cannot set the DF policy on a relayed socket");
        }
        match self.adopt(id, sock) {
            Some(bound) => Some(Opened { bound, reserved }),
            None => {
                self.node.ports.release(ip);
                if let Some(r) = reserved {
                    self.release_reserved(r);
                }
                None
            }
        }
    }
}

impl Env for Io {
    fn open_relay(
        &mut self,
        id: RelayId,
        on: &[RelayAddr],
        policy: PortPolicy,
        df: bool,
    ) -> Option<Opened> {
        // The least used IP first; the others in order when it has no free port.
        let first = on.iter().min_by_key(|r| self.node.ports.used(r.bind))?;
        std::iter::once(first)
            .chain(on.iter().filter(|r| !std::ptr::eq(*r, first)))
            .find_map(|r| self.open_on(id, r.bind, policy, df))
    }

    fn adopt_reserved(&mut self, id: RelayId, parked: SocketAddr, df: bool) -> bool {
        let Some(socket) = self.node.parked.lock().remove(&parked) else {
            return false;
        };
        let _ = set_dont_fragment(&socket, parked.is_ipv6(), df);
        if self.adopt(id, socket).is_none() {
            self.node.ports.release(parked.ip());
            return false;
        }
        true
    }

    fn release_reserved(&mut self, parked: SocketAddr) {
        if self.node.parked.lock().remove(&parked).is_some() {
            self.node.ports.release(parked.ip());
        }
    }

    fn close_relay(&mut self, id: RelayId) {
        if let Some(PeerPath::Udp { socket, ip, addr }) = self.peers.remove(&id) {
            let _ = self.epoll.remove(&socket);
            self.node.directory.remove(addr);
            self.node.ports.release(ip);
        }
    }
}
