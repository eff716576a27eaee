//! The driver: owns every socket, feeds the sans-I/O core and executes what it returns.
//!
//! Each worker is an OS thread running a current-thread tokio runtime. It has its own
//! SO_REUSEPORT socket on every listen address (the kernel hashes a client's 4-tuple to one
//! of them, so a client always reaches the same worker) and owns the relayed sockets of the
//! allocations it created. A worker's state sits in an `Rc<RefCell<_>>` that only its own
//! tasks touch: a packet crosses no lock and no channel between receive and send, and nothing
//! is allocated per packet (the core writes headers in place, in preallocated batches).
//!
//! The UDP plane (listeners and relayed sockets) does not go through tokio's reactor one
//! socket at a time: the worker keeps its own edge-triggered epoll set of them, and tokio
//! waits on that set's fd as one source. Each round asks the set which sockets received
//! datagrams and reads each with one `recvmmsg` (a socket whose batch came back full is read
//! again next round); what goes to UDP clients is queued per listener and leaves with one
//! `sendmmsg` at the end of the round. A relayed socket costs no task and no buffer.
//! What goes to peers leaves with one `sendto` each: every allocation has its own socket, and
//! `sendmmsg` batches only within a socket.
//!
//! Shared between workers, and touched only when allocations are created or deleted: the
//! quota counters in [`Shared`], the count of relayed sockets, and the table of sockets held
//! for RESERVATION-TOKENs (any worker may claim one).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::os::fd::{AsRawFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

mod stream;

use crate::config::{PortRange, Resolved, StreamLimits};
use crate::metrics::{IoStats, Reports, WorkerReport};
use crate::proto::server::{
    Action, ClientKey, Delivery, Env, Family, HEADROOM, Now, Opened, PortPolicy, RelayAddr,
    RelayId, Server, Shared, TAILROOM, Transport,
};
use crate::shaping::{Decision, Policy, Shaper, ShapingStats};
use crate::sys::{Epoll, RecvBatch, SendQueue};

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams read from a listener per round (one `recvmmsg`).
const CLIENT_BATCH: usize = 64;
/// Datagrams read from a relayed socket per round: a socket carries one allocation's peers,
/// and one whose batch came back full is read again next round.
const PEER_BATCH: usize = 16;
/// Ready sockets reported per round.
const EVENTS: usize = 256;
/// Rounds run before the plane yields to the worker's other tasks (timers, TCP/TLS).
const ROUNDS_PER_YIELD: usize = 4;
/// Datagrams queued per listener before a `sendmmsg`, and the bytes they may take.
const SEND_QUEUE: usize = 64;
const SEND_ARENA: usize = 128 << 10;
/// Epoll tokens of listeners count down from here; relayed sockets use their [`RelayId`],
/// whose slot bits never reach these values.
const LISTENER_TOKEN: u64 = u64::MAX;
/// The longest the timer task sleeps, so reservations expire even on an idle worker.
const MAX_TICK: Duration = Duration::from_secs(1);
/// Socket buffer asked for on listener sockets.
const LISTENER_BUFFER: usize = 4 << 20;
/// Random ports tried before scanning the range.
const RANDOM_TRIES: usize = 32;

/// The current time for the core.
pub fn now() -> Now {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Now {
        mono: Instant::now(),
        unix,
    }
}

/// Relayed sockets bound per relay IP, across workers: a fast 508 when every IP's range is
/// full, and the least used IP for the next allocation.
struct PortUse {
    in_use: Vec<(IpAddr, AtomicUsize)>,
}

impl PortUse {
    fn of(&self, ip: IpAddr) -> Option<&AtomicUsize> {
        self.in_use.iter().find(|(i, _)| *i == ip).map(|(_, n)| n)
    }

    /// Takes a port of `ip`'s budget; false when its range is used up.
    fn take(&self, ip: IpAddr, cap: usize) -> bool {
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

struct Reserved {
    socket: std::net::UdpSocket,
    ip: IpAddr,
    expires: Instant,
}

/// What all workers of a node share.
pub struct NodeShared {
    pub core: Arc<Shared>,
    pub port_range: PortRange,
    /// The node's shaping policy and the named profiles (see [`crate::config::Resolved`]);
    /// a reload sends new ones and every worker's shaper takes them.
    shaping: watch::Receiver<Vec<Policy>>,
    /// Origin of the shaping slot grid, the same for every worker.
    pub epoch: Instant,
    /// Each worker's latest counters, for the metrics endpoint.
    pub reports: Arc<Reports>,
    /// TCP/TLS connection limits, the TLS setup, and the connections held.
    streams: StreamLimits,
    tls: Option<Arc<crate::tls::TlsState>>,
    conns: stream::ConnCount,
    ports: PortUse,
    reservations: Mutex<HashMap<[u8; 8], Reserved>>,
}

impl NodeShared {
    fn new(
        core: Arc<Shared>,
        resolved: &Resolved,
        shaping: watch::Receiver<Vec<Policy>>,
        workers: usize,
    ) -> Arc<Self> {
        Arc::new(NodeShared {
            core,
            port_range: resolved.port_range,
            shaping,
            epoch: Instant::now(),
            reports: Arc::new(Reports::new(workers)),
            streams: resolved.streams,
            tls: resolved.tls.clone(),
            conns: stream::ConnCount::default(),
            ports: PortUse {
                in_use: resolved
                    .server
                    .relays
                    .iter()
                    .flatten()
                    .map(|r| (r.bind, AtomicUsize::new(0)))
                    .collect(),
            },
            reservations: Mutex::default(),
        })
    }

    fn reservations(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 8], Reserved>> {
        self.reservations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes reserved sockets nobody claimed in time.
    fn expire_reservations(&self, now: Instant) {
        self.reservations().retain(|_, v| {
            let keep = v.expires > now;
            if !keep {
                self.ports.release(v.ip);
            }
            keep
        });
    }
}

/// Opens a UDP socket the way relayed and listener sockets need it.
fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Sets whether the kernel sets DF on what this socket sends: only when the client asked
/// (DONT-FRAGMENT); otherwise the relay lets routers fragment, as RFC 8656 expects.
fn set_dont_fragment(sock: &std::net::UdpSocket, v6: bool, df: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name, value) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            if df {
                libc::IPV6_PMTUDISC_DO
            } else {
                libc::IPV6_PMTUDISC_DONT
            },
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            if df {
                libc::IP_PMTUDISC_DO
            } else {
                libc::IP_PMTUDISC_DONT
            },
        )
    };
    // SAFETY: a valid fd, and a c_int option value of the documented size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Binds listener sockets: `workers` SO_REUSEPORT sockets per listen address.
pub fn bind_listeners(
    listen: &[SocketAddr],
    workers: usize,
) -> io::Result<Vec<Vec<std::net::UdpSocket>>> {
    let mut per_worker: Vec<Vec<std::net::UdpSocket>> = (0..workers).map(|_| Vec::new()).collect();
    for addr in listen {
        if addr.port() != 0 {
            port_is_free(*addr, Type::DGRAM)?;
        }
        for w in per_worker.iter_mut() {
            let s = udp_socket(*addr, true)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            // Every client of the worker shares this socket: room for bursts (the kernel caps
            // the request at net.core.rmem_max / wmem_max).
            let s2 = socket2::SockRef::from(&s);
            let _ = s2.set_recv_buffer_size(LISTENER_BUFFER);
            let _ = s2.set_send_buffer_size(LISTENER_BUFFER);
            w.push(s);
        }
    }
    Ok(per_worker)
}

/// Fails when another process listens on `addr`. SO_REUSEPORT, which spreads a node's
/// clients over its workers, would otherwise let a second relay (same user) bind the same
/// port silently and take part of the clients. A socket bound without it fails where any
/// other socket is bound; it is closed before the workers bind theirs.
fn port_is_free(addr: SocketAddr, ty: Type) -> io::Result<()> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, ty, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if ty == Type::STREAM {
        // Connections of an earlier run in TIME_WAIT do not count; a listener does.
        s.set_reuse_address(true)?;
    }
    let proto = if ty == Type::STREAM { "tcp" } else { "udp" };
    s.bind(&addr.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {proto} {addr}: another process listens there"),
            )
        } else {
            io::Error::new(e.kind(), format!("cannot listen on {proto} {addr}: {e}"))
        }
    })
}

/// A tiny xorshift generator for port choice (not security-relevant: the kernel's bind is
/// the source of truth; tokens come from the OS RNG).
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Rng(u64::from_le_bytes(b) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct RelaySocket {
    socket: std::net::UdpSocket,
    /// The relay IP whose port budget it holds.
    ip: IpAddr,
}

/// A UDP listener and what waits to leave it.
struct Listener {
    socket: std::net::UdpSocket,
    out: SendQueue,
}

/// The I/O half of a worker: its sockets. Implements [`Env`] for the core.
struct Io {
    node: Arc<NodeShared>,
    /// Listeners and relayed sockets, watched together.
    epoll: Epoll,
    listeners: Vec<Listener>,
    /// Open TCP/TLS connections: what is queued for each client.
    conns: HashMap<ClientKey, Rc<stream::Outbound>>,
    relays: HashMap<RelayId, RelaySocket>,
    rng: Rng,
    stats: IoStats,
    /// Whether a failure to open relayed sockets was logged.
    warned_bind: bool,
}

struct Worker {
    server: Server,
    io: Io,
    /// What clients sent to a listener, one round's batch.
    client_rx: RecvBatch,
    /// Where the core writes a reply to a client.
    reply: Vec<u8>,
    /// What peers sent to one relayed socket, each datagram with room for the core to frame it
    /// and the shaper to pad it in place.
    peer_rx: RecvBatch,
    /// Tokens of sockets whose last batch came back full: read again next round (the set is
    /// edge-triggered).
    unread: Vec<u64>,
    /// Padding and re-clocking of the relay → client leg.
    shaper: Shaper<ClientKey>,
    /// Wakes the shaper task when a frame is due earlier than it planned.
    shaper_wake: Rc<tokio::sync::Notify>,
    shaper_armed: Option<Instant>,
}

impl Io {
    /// Takes a port of `ip`'s budget; false if its range is used up.
    fn take_port_slot(&self, ip: IpAddr) -> bool {
        self.node.ports.take(ip, self.node.port_range.len())
    }

    fn give_port_slot(&self, ip: IpAddr) {
        self.node.ports.release(ip);
    }

    /// Binds a socket on `ip` at a port of the range that satisfies `pred`.
    fn bind_in_range(&mut self, ip: IpAddr, even: bool) -> Option<std::net::UdpSocket> {
        let PortRange { start, end } = self.node.port_range;
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
        let offset = self.rng.next() % span;
        for k in 0..RANDOM_TRIES as u64 + span {
            let i = if k < RANDOM_TRIES as u64 {
                self.rng.next() % span
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

    fn adopt(&mut self, id: RelayId, socket: std::net::UdpSocket) -> Option<SocketAddr> {
        let bound = socket.local_addr().ok()?;
        if let Err(e) = self.epoll.add_edge(&socket, id.0) {
            tracing::warn!(error = %e, "cannot watch a relayed socket");
            return None;
        }
        self.relays.insert(
            id,
            RelaySocket {
                socket,
                ip: bound.ip(),
            },
        );
        Some(bound)
    }
}

impl Io {
    /// Sends a frame to a client: queued on the listener socket it talks to (leaving at the
    /// next [`Io::flush`]), or onto its connection's queue; counts it.
    fn send_to_client(&mut self, client: ClientKey, frame: &[u8]) {
        if client.transport.is_stream() {
            if self.conns.get(&client).is_some_and(|c| c.push(frame)) {
                self.stats.peer_to_client_packets += 1;
                self.stats.peer_to_client_bytes += frame.len() as u64;
            } else {
                self.stats.stream_drops += 1;
            }
            return;
        }
        let index = client.listener as usize;
        let Some(l) = self.listeners.get_mut(index) else {
            self.stats.dropped_sends += 1;
            return;
        };
        if l.out.push(frame, client.addr) {
            return;
        }
        self.flush_listener(index);
        let l = &mut self.listeners[index];
        if l.out.push(frame, client.addr) {
            return;
        }
        // Larger than the whole queue: on its own.
        if l.socket.send_to(frame, client.addr).is_ok() {
            self.stats.peer_to_client_packets += 1;
            self.stats.peer_to_client_bytes += frame.len() as u64;
        } else {
            self.stats.dropped_sends += 1;
        }
    }

    fn flush_listener(&mut self, index: usize) {
        let l = &mut self.listeners[index];
        if l.out.is_empty() {
            return;
        }
        let sent = l.out.send(l.socket.as_raw_fd());
        self.stats.peer_to_client_packets += sent.packets as u64;
        self.stats.peer_to_client_bytes += sent.bytes as u64;
        self.stats.dropped_sends += sent.dropped as u64;
    }

    /// Sends what is queued for UDP clients. Every task that may queue calls it before it
    /// gives the thread back.
    fn flush(&mut self) {
        for i in 0..self.listeners.len() {
            self.flush_listener(i);
        }
    }

    /// Sends a reply from a listener at once (control traffic is rare; it does not wait for
    /// the round's batch).
    fn reply(&mut self, index: usize, to: SocketAddr, reply: &[u8]) {
        let ok = self
            .listeners
            .get(index)
            .is_some_and(|l| l.socket.send_to(reply, to).is_ok());
        if !ok {
            self.stats.dropped_sends += 1;
        }
    }

    /// Sends a client's payload to a peer from the allocation's relayed socket, and counts it.
    fn forward(&mut self, relay: RelayId, peer: SocketAddr, payload: &[u8]) {
        let sent = self
            .relays
            .get(&relay)
            .map(|r| r.socket.send_to(payload, peer));
        if matches!(sent, Some(Ok(_))) {
            self.stats.client_to_peer_packets += 1;
            self.stats.client_to_peer_bytes += payload.len() as u64;
        } else {
            self.stats.dropped_sends += 1;
        }
    }
}

impl Io {
    /// Opens a relayed socket on `ip` (see [`Env::open_relay`]).
    fn open_on(&mut self, id: RelayId, ip: IpAddr, policy: PortPolicy, df: bool) -> Option<Opened> {
        if !self.take_port_slot(ip) {
            return None;
        }
        let (sock, reservation) = match policy {
            PortPolicy::Any => match self.bind_in_range(ip, false) {
                Some(s) => (s, None),
                None => {
                    self.give_port_slot(ip);
                    return None;
                }
            },
            PortPolicy::Even { reserve_next } => {
                let mut found = None;
                for _ in 0..RANDOM_TRIES {
                    let Some(s) = self.bind_in_range(ip, true) else {
                        break;
                    };
                    if !reserve_next {
                        found = Some((s, None));
                        break;
                    }
                    let Ok(port) = s.local_addr().map(|a| a.port()) else {
                        continue;
                    };
                    if port == self.node.port_range.end || !self.take_port_slot(ip) {
                        continue;
                    }
                    match udp_socket(SocketAddr::new(ip, port + 1), false) {
                        Ok(next) => {
                            let mut token = [0u8; 8];
                            if getrandom::fill(&mut token).is_err() {
                                self.give_port_slot(ip);
                                continue;
                            }
                            let expires = Instant::now()
                                + Duration::from_secs(crate::proto::server::RESERVATION_SECS);
                            self.node.reservations().insert(
                                token,
                                Reserved {
                                    socket: next,
                                    ip,
                                    expires,
                                },
                            );
                            found = Some((s, Some(token)));
                            break;
                        }
                        Err(_) => self.give_port_slot(ip),
                    }
                }
                match found {
                    Some(f) => f,
                    None => {
                        self.give_port_slot(ip);
                        return None;
                    }
                }
            }
        };
        if let Err(e) = set_dont_fragment(&sock, ip.is_ipv6(), df) {
            tracing::debug!(error = %e, "cannot set the DF policy on a relayed socket");
        }
        match self.adopt(id, sock) {
            Some(bound) => Some(Opened { bound, reservation }),
            None => {
                self.give_port_slot(ip);
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

    fn claim_reservation(
        &mut self,
        ids: [RelayId; 2],
        token: [u8; 8],
        df: bool,
    ) -> Option<SocketAddr> {
        let r = self.node.reservations().remove(&token)?;
        if r.expires <= Instant::now() {
            self.give_port_slot(r.ip);
            return None;
        }
        let _ = set_dont_fragment(&r.socket, r.ip.is_ipv6(), df);
        let bound = self.adopt(ids[Family::of(r.ip) as usize], r.socket);
        if bound.is_none() {
            self.give_port_slot(r.ip);
        }
        bound
    }

    fn close_relay(&mut self, id: RelayId) {
        if let Some(r) = self.relays.remove(&id) {
            let _ = self.epoll.remove(&r.socket);
            self.give_port_slot(r.ip);
        }
    }
}

impl Worker {
    /// One round of the UDP plane: reads every ready socket once, then sends what is queued
    /// for clients. False when no socket was ready.
    fn udp_round(&mut self) -> bool {
        let ready = self.io.epoll.wait(0);
        if ready == 0 && self.unread.is_empty() {
            return false;
        }
        let now = now();
        // Sockets left with datagrams last round go first (the set reports a socket only when
        // datagrams arrive; it is read until a batch comes back short). Those still full are
        // noted after them, and the old entries dropped at the end.
        let pending = self.unread.len();
        for i in 0..pending {
            let token = self.unread[i];
            self.read(now, token, pending);
        }
        for k in 0..ready {
            let token = self.io.epoll.token(k);
            self.read(now, token, pending);
        }
        self.unread.drain(..pending);
        self.io.flush();
        true
    }

    /// Reads one batch from the socket named by an epoll token, and notes it (once, after
    /// `from`) when it may hold more.
    fn read(&mut self, now: Now, token: u64, from: usize) {
        let listener = LISTENER_TOKEN - token;
        let full = if listener < self.io.listeners.len() as u64 {
            self.read_clients(now, listener as usize)
        } else {
            self.read_peers(now, RelayId(token))
        };
        if full && !self.unread[from..].contains(&token) {
            self.unread.push(token);
        }
    }

    /// Handles a batch of what clients sent to listener `index`. True when the socket may hold
    /// more (a full batch, or an error ahead of datagrams).
    fn read_clients(&mut self, now: Now, index: usize) -> bool {
        let Worker {
            server,
            io,
            client_rx,
            reply,
            ..
        } = self;
        let n = match client_rx.recv(io.listeners[index].socket.as_raw_fd()) {
            Ok(n) => n,
            // An ICMP error reported on the socket; the datagrams behind it are read next round.
            Err(_) => return true,
        };
        for i in 0..n {
            let Some(from) = client_rx.addr(i) else {
                continue;
            };
            let key = ClientKey {
                listener: index as u16,
                transport: Transport::Udp,
                addr: from,
            };
            let datagram = client_rx.get(i);
            match server.handle_client(now, key, datagram, reply, io) {
                Action::None => {}
                Action::Reply(len) => io.reply(index, from, &reply[..len]),
                Action::Forward { relay, peer, data } => io.forward(relay, peer, &datagram[data]),
            }
        }
        n == client_rx.capacity()
    }

    /// Handles a batch of what peers sent to one relayed socket; true when it may hold more.
    fn read_peers(&mut self, now: Now, id: RelayId) -> bool {
        let Worker {
            server,
            io,
            peer_rx,
            shaper,
            shaper_wake,
            shaper_armed,
            ..
        } = self;
        // A socket closed earlier in this round: its event is stale.
        let Some(r) = io.relays.get(&id) else {
            return false;
        };
        let Ok(n) = peer_rx.recv(r.socket.as_raw_fd()) else {
            return true;
        };
        let shaping = !shaper.is_off();
        for i in 0..n {
            let Some(peer) = peer_rx.addr(i) else {
                continue;
            };
            let (buf, payload) = peer_rx.slot_mut(i);
            let Some(Delivery {
                client,
                frame: range,
                profile,
            }) = server.handle_peer(now, id, peer, buf, payload)
            else {
                continue;
            };
            let range = if shaping {
                let (decision, r) = shaper.submit_in(
                    now.mono,
                    client,
                    profile,
                    client.transport.is_stream(),
                    buf,
                    range,
                );
                // Wake the shaper task if this frame (or a newly covered flow) needs it sooner
                // than it planned.
                let due = shaper.next_deadline();
                if due.is_some() && (shaper_armed.is_none() || due < *shaper_armed) {
                    *shaper_armed = due;
                    shaper_wake.notify_one();
                }
                match decision {
                    Decision::SendNow => r,
                    Decision::Queued => continue,
                }
            } else {
                range
            };
            io.send_to_client(client, &buf[range]);
        }
        n == peer_rx.capacity()
    }
}

/// Runs the UDP plane: waits until a socket of the set is ready, then runs rounds until none
/// is (or yields after [`ROUNDS_PER_YIELD`] so timers and TCP/TLS get their turn).
async fn udp_task(worker: Rc<RefCell<Worker>>, set: AsyncFd<OwnedFd>) {
    loop {
        let Ok(mut guard) = set.readable().await else {
            return;
        };
        let mut idle = false;
        {
            let mut w = worker.borrow_mut();
            for _ in 0..ROUNDS_PER_YIELD {
                if !w.udp_round() {
                    idle = true;
                    break;
                }
            }
        }
        if idle {
            // Nothing was ready after the last round; tokio polls the set again before it
            // runs this task, so a datagram that arrives now still wakes it.
            guard.clear_ready();
        } else {
            drop(guard);
            tokio::task::yield_now().await;
        }
    }
}

/// Expires allocations, permissions, channels and reservations on time.
async fn timer_task(worker: Rc<RefCell<Worker>>, node: Arc<NodeShared>, index: usize) {
    loop {
        let deadline = {
            let w = worker.borrow();
            let cap = Instant::now() + MAX_TICK;
            w.server.poll_timeout().map_or(cap, |t| t.min(cap))
        };
        tokio::time::sleep_until(deadline.into()).await;
        let mut w = worker.borrow_mut();
        let w = &mut *w;
        w.server.handle_timeout(now(), &mut w.io);
        w.io.flush();
        w.shaper.housekeeping(Instant::now());
        node.expire_reservations(Instant::now());
        w.io.stats.relayed_sockets = w.io.relays.len() as u64;
        w.io.stats.connections = [Transport::Tcp, Transport::Tls]
            .map(|t| w.io.conns.keys().filter(|k| k.transport == t).count() as u64);
        node.reports.publish(
            index,
            WorkerReport {
                core: w.server.stats(),
                occupancy: w.server.occupancy(),
                shaping: w.shaper.stats(),
                io: w.io.stats,
            },
        );
    }
}

/// Puts reloaded shaping policies in force on this worker.
async fn reload_task(worker: Rc<RefCell<Worker>>, mut policies: watch::Receiver<Vec<Policy>>) {
    while policies.changed().await.is_ok() {
        let next = policies.borrow_and_update().clone();
        let mut w = worker.borrow_mut();
        let Worker {
            shaper,
            io: sockets,
            shaper_wake,
            ..
        } = &mut *w;
        shaper.set_profiles(Instant::now(), next, |client, frame| {
            sockets.send_to_client(client, frame)
        });
        sockets.flush();
        shaper_wake.notify_one();
    }
}

/// Sends re-clocked frames when they are due: one sleep for the earliest release, no timer per
/// packet.
async fn shaper_task(worker: Rc<RefCell<Worker>>, wake: Rc<tokio::sync::Notify>) {
    loop {
        let due = worker.borrow().shaper.next_deadline();
        match due {
            None => wake.notified().await,
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t.into()) => {}
                    _ = wake.notified() => continue,
                }
            }
        }
        let mut w = worker.borrow_mut();
        let Worker {
            server,
            shaper,
            io: sockets,
            shaper_armed,
            ..
        } = &mut *w;
        let mut send = |client: ClientKey, frame: &[u8]| sockets.send_to_client(client, frame);
        let now = Instant::now();
        shaper.pop_due(now, &mut send);
        shaper.cover_due(now, |k| server.has_allocation(k), &mut send);
        sockets.flush();
        *shaper_armed = shaper.next_deadline();
    }
}

/// Runs one worker until `stop` turns true.
fn run_worker(
    index: usize,
    node: Arc<NodeShared>,
    listeners: Vec<std::net::UdpSocket>,
    stream_listeners: Vec<(std::net::TcpListener, Transport)>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let epoll = Epoll::new(EVENTS)?;
        let udp_listeners = listeners.len();
        let mut socks = Vec::new();
        for (i, socket) in listeners.into_iter().enumerate() {
            epoll.add_edge(&socket, LISTENER_TOKEN - i as u64)?;
            socks.push(Listener {
                socket,
                out: SendQueue::new(SEND_QUEUE, SEND_ARENA),
            });
        }
        let wake = Rc::new(tokio::sync::Notify::new());
        let worker = Rc::new(RefCell::new(Worker {
            server: Server::new(node.core.clone()),
            io: Io {
                node: node.clone(),
                epoll,
                listeners: socks,
                conns: HashMap::new(),
                relays: HashMap::new(),
                rng: Rng::seeded(),
                stats: IoStats::default(),
                warned_bind: false,
            },
            client_rx: RecvBatch::new(CLIENT_BATCH, MAX_DATAGRAM, 0, 0),
            reply: vec![0u8; 2048],
            peer_rx: RecvBatch::new(PEER_BATCH, MAX_DATAGRAM, HEADROOM, TAILROOM),
            unread: Vec::with_capacity(EVENTS),
            shaper: Shaper::with_profiles(
                node.shaping.borrow().clone(),
                node.epoch,
                Rng::seeded().next(),
            ),
            shaper_wake: wake.clone(),
            shaper_armed: None,
        }));
        // tokio watches a duplicate of the set's fd: the same set, owned by the registration.
        // Without it the worker does not start (and its listeners close), rather than hold
        // sockets nobody reads.
        let set = worker
            .borrow()
            .io
            .epoll
            .duplicate_fd()
            // SAFETY: the AsyncFd owns this fd; it stays open and the same until it drops.
            .and_then(|fd| unsafe {
                AsyncFd::register_with_interest(fd, Interest::READABLE).map_err(|e| e.into())
            })?;
        let mut tasks = vec![tokio::task::spawn_local(udp_task(worker.clone(), set))];
        for (i, (l, transport)) in stream_listeners.into_iter().enumerate() {
            let index = (udp_listeners + i) as u16;
            tasks.push(tokio::task::spawn_local(stream::accept_task(
                Rc::downgrade(&worker),
                node.clone(),
                tokio::net::TcpListener::from_std(l)?,
                index,
                transport,
            )));
        }
        tasks.push(tokio::task::spawn_local(timer_task(
            worker.clone(),
            node.clone(),
            index,
        )));
        // Always running (it sleeps when nothing is shaped), so a reload can turn shaping on.
        tasks.push(tokio::task::spawn_local(shaper_task(
            worker.clone(),
            wake.clone(),
        )));
        tasks.push(tokio::task::spawn_local(reload_task(
            worker.clone(),
            node.shaping.clone(),
        )));
        tracing::debug!(worker = index, "worker started");
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
        for t in &tasks {
            t.abort();
        }
        let mut w = worker.borrow_mut();
        let w = &mut *w;
        let stats = w.server.stats();
        let shaping: ShapingStats = w.shaper.stats();
        w.server.clear(now(), &mut w.io);
        tracing::debug!(
            worker = index,
            ?stats,
            ?shaping,
            io = ?w.io.stats,
            "worker stopped"
        );
        Ok(())
    })
}

/// A running node: its workers and the addresses it listens on.
pub struct Node {
    /// Where clients reach the node (for `/status`).
    pub endpoints: crate::admin::Endpoints,
    /// The TLS setup, whose certificate a reload replaces.
    pub tls: Option<Arc<crate::tls::TlsState>>,
    /// The workers' counters, for [`crate::metrics::render`].
    pub reports: Arc<Reports>,
    pub port_range: PortRange,
    shaping: watch::Sender<Vec<Policy>>,
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<io::Result<()>>>,
}

impl Node {
    /// Binds every socket of a resolved configuration and starts its worker threads.
    pub fn start(resolved: &Resolved, core: Arc<Shared>) -> io::Result<Node> {
        let workers = resolved.workers.max(1);
        let per_worker = bind_listeners(&resolved.listen, workers)?;
        let mut streams: Vec<Vec<(std::net::TcpListener, Transport)>> =
            (0..workers).map(|_| Vec::new()).collect();
        for (list, t) in [
            (&resolved.listen_tcp, Transport::Tcp),
            (&resolved.listen_tls, Transport::Tls),
        ] {
            for addr in list {
                if addr.port() != 0 {
                    port_is_free(*addr, Type::STREAM)?;
                }
                for w in streams.iter_mut() {
                    w.push((stream::bind_tcp(*addr)?, t));
                }
            }
        }
        let port_range = resolved.port_range;
        let (shaping, shaping_rx) = watch::channel(resolved.shaping.clone());
        let node = NodeShared::new(core, resolved, shaping_rx, workers);
        let reports = node.reports.clone();
        let (stop, stop_rx) = watch::channel(false);
        let mut threads = Vec::new();
        for (i, (socks, streams)) in per_worker.into_iter().zip(streams).enumerate() {
            let node = node.clone();
            let rx = stop_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("veil-worker-{i}"))
                    .spawn(move || run_worker(i, node, socks, streams, rx))?,
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
            port_range,
            shaping,
        })
    }

    /// Puts new shaping policies (node policy, then the profiles in the same order as before)
    /// in force on every worker; allocations go on.
    pub fn reload_shaping(&self, policies: Vec<Policy>) {
        self.shaping.send_replace(policies);
    }

    /// Stops the workers (allocations are deleted, sockets closed) and waits for them.
    pub fn stop(self) -> io::Result<()> {
        let _ = self.stop.send(true);
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
