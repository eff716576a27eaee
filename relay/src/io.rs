//! The UDP driver: owns every socket, feeds the sans-I/O core and executes what it returns.
//!
//! Each worker is an OS thread running a current-thread tokio runtime. It has its own
//! SO_REUSEPORT socket on every listen address (the kernel hashes a client's 4-tuple to one
//! of them, so a client always reaches the same worker) and owns the relayed sockets of the
//! allocations it created. A worker's state sits in an `Rc<RefCell<_>>` that only its own
//! tasks touch: a packet crosses no lock and no channel between receive and send, and nothing
//! is allocated per packet (each task reuses one buffer; the core writes headers in place).
//!
//! Shared between workers, and touched only when allocations are created or deleted: the
//! quota counters in [`Shared`], the count of relayed sockets, and the table of sockets held
//! for RESERVATION-TOKENs (any worker may claim one).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod stream;

use crate::config::{PortRange, Resolved, StreamLimits};
use crate::metrics::{IoStats, Reports, WorkerReport};
use crate::proto::server::{
    Action, ClientKey, Delivery, Env, Family, HEADROOM, Now, Opened, PortPolicy, RelayId, Server,
    Shared, TAILROOM, Transport,
};
use crate::shaping::{Decision, Policy, Shaper, ShapingStats};

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams drained from a socket per wake-up before yielding to other sockets.
const BATCH: usize = 64;
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

/// Relayed sockets bound per family, across workers, for a fast 508 when the range is full.
#[derive(Default)]
struct PortUse {
    in_use: [AtomicUsize; 2],
}

struct Reserved {
    socket: std::net::UdpSocket,
    family: Family,
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
            ports: PortUse::default(),
            reservations: Mutex::default(),
        })
    }

    fn reservations(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 8], Reserved>> {
        self.reservations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release_port(&self, f: Family) {
        let _ =
            self.ports.in_use[f as usize]
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Closes reserved sockets nobody claimed in time.
    fn expire_reservations(&self, now: Instant) {
        let mut expired = [0usize; 2];
        self.reservations().retain(|_, v| {
            let keep = v.expires > now;
            if !keep {
                expired[v.family as usize] += 1;
            }
            keep
        });
        for (f, n) in [Family::V4, Family::V6].into_iter().zip(expired) {
            for _ in 0..n {
                self.release_port(f);
            }
        }
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
    socket: Rc<UdpSocket>,
    family: Family,
    task: JoinHandle<()>,
}

/// The I/O half of a worker: its sockets. Implements [`Env`] for the core.
struct Io {
    node: Arc<NodeShared>,
    listeners: Vec<Rc<UdpSocket>>,
    /// Open TCP/TLS connections: what is queued for each client.
    conns: HashMap<ClientKey, Rc<stream::Outbound>>,
    relays: HashMap<RelayId, RelaySocket>,
    me: Weak<RefCell<Worker>>,
    rng: Rng,
    stats: IoStats,
}

struct Worker {
    server: Server,
    io: Io,
    /// The one buffer every relayed socket of this worker reads into, with room for the core
    /// to frame the payload in place.
    peer_buf: Vec<u8>,
    /// Padding and re-clocking of the relay → client leg.
    shaper: Shaper<ClientKey>,
    /// Wakes the shaper task when a frame is due earlier than it planned.
    shaper_wake: Rc<tokio::sync::Notify>,
    shaper_armed: Option<Instant>,
}

impl Io {
    fn family_slot(&self, f: Family) -> &AtomicUsize {
        &self.node.ports.in_use[f as usize]
    }

    /// Takes a port slot of the family's budget, or None if the range is used up.
    fn take_port_slot(&self, f: Family) -> bool {
        let cap = self.node.port_range.len();
        self.family_slot(f)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_port_slot(&self, f: Family) {
        self.node.release_port(f);
    }

    /// Binds a socket on `ip` at a port of the range that satisfies `pred`.
    fn bind_in_range(&mut self, ip: IpAddr, even: bool) -> Option<std::net::UdpSocket> {
        let PortRange { start, end } = self.node.port_range;
        let span = (end - start) as u64 + 1;
        let ok = |p: u16| !even || p % 2 == 0;
        for _ in 0..RANDOM_TRIES {
            let p = start + (self.rng.next() % span) as u16;
            if ok(p)
                && let Ok(s) = udp_socket(SocketAddr::new(ip, p), false)
            {
                return Some(s);
            }
        }
        let offset = self.rng.next() % span;
        for i in 0..span {
            let p = start + ((offset + i) % span) as u16;
            if ok(p)
                && let Ok(s) = udp_socket(SocketAddr::new(ip, p), false)
            {
                return Some(s);
            }
        }
        None
    }

    fn adopt(
        &mut self,
        id: RelayId,
        sock: std::net::UdpSocket,
        family: Family,
    ) -> Option<SocketAddr> {
        let bound = sock.local_addr().ok()?;
        let socket = match UdpSocket::from_std(sock) {
            Ok(s) => Rc::new(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register a relayed socket");
                return None;
            }
        };
        let task = tokio::task::spawn_local(relay_task(self.me.clone(), id, socket.clone()));
        self.relays.insert(
            id,
            RelaySocket {
                socket,
                family,
                task,
            },
        );
        Some(bound)
    }
}

impl Io {
    /// Sends a frame to a client: from the listener socket it talks to, or onto its
    /// connection's queue; counts it.
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
        let sent = self
            .listeners
            .get(client.listener as usize)
            .map(|l| l.try_send_to(frame, client.addr));
        if matches!(sent, Some(Ok(_))) {
            self.stats.peer_to_client_packets += 1;
            self.stats.peer_to_client_bytes += frame.len() as u64;
        } else {
            self.stats.dropped_sends += 1;
        }
    }

    /// Sends a client's payload to a peer from the allocation's relayed socket, and counts it.
    fn forward(&mut self, relay: RelayId, peer: SocketAddr, payload: &[u8]) {
        let sent = self
            .relays
            .get(&relay)
            .map(|r| r.socket.try_send_to(payload, peer));
        if matches!(sent, Some(Ok(_))) {
            self.stats.client_to_peer_packets += 1;
            self.stats.client_to_peer_bytes += payload.len() as u64;
        } else {
            self.stats.dropped_sends += 1;
        }
    }
}

impl Env for Io {
    fn open_relay(
        &mut self,
        id: RelayId,
        ip: IpAddr,
        policy: PortPolicy,
        df: bool,
    ) -> Option<Opened> {
        let fam = Family::of(ip);
        if !self.take_port_slot(fam) {
            return None;
        }
        let (sock, reservation) = match policy {
            PortPolicy::Any => match self.bind_in_range(ip, false) {
                Some(s) => (s, None),
                None => {
                    self.give_port_slot(fam);
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
                    if port == self.node.port_range.end || !self.take_port_slot(fam) {
                        continue;
                    }
                    match udp_socket(SocketAddr::new(ip, port + 1), false) {
                        Ok(next) => {
                            let mut token = [0u8; 8];
                            if getrandom::fill(&mut token).is_err() {
                                self.give_port_slot(fam);
                                continue;
                            }
                            let expires = Instant::now()
                                + Duration::from_secs(crate::proto::server::RESERVATION_SECS);
                            self.node.reservations().insert(
                                token,
                                Reserved {
                                    socket: next,
                                    family: fam,
                                    expires,
                                },
                            );
                            found = Some((s, Some(token)));
                            break;
                        }
                        Err(_) => self.give_port_slot(fam),
                    }
                }
                match found {
                    Some(f) => f,
                    None => {
                        self.give_port_slot(fam);
                        return None;
                    }
                }
            }
        };
        if let Err(e) = set_dont_fragment(&sock, ip.is_ipv6(), df) {
            tracing::debug!(error = %e, "cannot set the DF policy on a relayed socket");
        }
        match self.adopt(id, sock, fam) {
            Some(bound) => Some(Opened { bound, reservation }),
            None => {
                self.give_port_slot(fam);
                None
            }
        }
    }

    fn claim_reservation(
        &mut self,
        ids: [RelayId; 2],
        token: [u8; 8],
        df: bool,
    ) -> Option<SocketAddr> {
        let r = self.node.reservations().remove(&token)?;
        let addr = r.socket.local_addr().ok()?;
        let fam = Family::of(addr.ip());
        if r.expires <= Instant::now() {
            self.give_port_slot(fam);
            return None;
        }
        let _ = set_dont_fragment(&r.socket, addr.is_ipv6(), df);
        let bound = self.adopt(ids[fam as usize], r.socket, fam);
        if bound.is_none() {
            self.give_port_slot(fam);
        }
        bound
    }

    fn close_relay(&mut self, id: RelayId) {
        if let Some(r) = self.relays.remove(&id) {
            r.task.abort();
            self.give_port_slot(r.family);
        }
    }
}

/// Receives what peers send to one relayed socket and hands it to the core. The task owns no
/// buffer: it waits for readiness and then reads into the worker's single peer buffer, so an
/// allocation costs a socket and a small task, not 64 KiB.
async fn relay_task(worker: Weak<RefCell<Worker>>, id: RelayId, socket: Rc<UdpSocket>) {
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        let Some(w) = worker.upgrade() else { return };
        let mut w = w.borrow_mut();
        let Worker {
            server,
            io: sockets,
            peer_buf,
            shaper,
            shaper_wake,
            shaper_armed,
        } = &mut *w;
        let end = peer_buf.len() - TAILROOM;
        let now = now();
        let shaping = !shaper.is_off();
        for _ in 0..BATCH {
            match socket.try_recv_from(&mut peer_buf[HEADROOM..end]) {
                Ok((n, peer)) => {
                    let Some(Delivery {
                        client,
                        frame: range,
                        profile,
                    }) = server.handle_peer(now, id, peer, peer_buf, HEADROOM..HEADROOM + n)
                    else {
                        continue;
                    };
                    let range = if shaping {
                        let (decision, r) = shaper.submit_in(
                            now.mono,
                            client,
                            profile,
                            client.transport.is_stream(),
                            peer_buf,
                            range,
                        );
                        // Wake the shaper task if this frame (or a newly covered flow) needs it
                        // sooner than it planned.
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
                    sockets.send_to_client(client, &peer_buf[range]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors surface as receive errors on Linux; nothing to do.
                Err(_) => {}
            }
        }
    }
}

/// Receives what clients send to one listener socket.
async fn listener_task(worker: Rc<RefCell<Worker>>, index: u16, socket: Rc<UdpSocket>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = vec![0u8; 2048];
    loop {
        let first = socket.recv_from(&mut buf).await;
        let mut w = worker.borrow_mut();
        let w = &mut *w;
        let now = now();
        let mut next = first;
        for i in 0..BATCH {
            // Read the next datagram only if this turn will process it: one read and not
            // handled would be lost.
            if i > 0 {
                next = socket.try_recv_from(&mut buf);
            }
            match next {
                Ok((n, from)) => {
                    let key = ClientKey {
                        listener: index,
                        transport: Transport::Udp,
                        addr: from,
                    };
                    match w
                        .server
                        .handle_client(now, key, &buf[..n], &mut out, &mut w.io)
                    {
                        Action::None => {}
                        Action::Reply(len) => {
                            if socket.try_send_to(&out[..len], from).is_err() {
                                w.io.stats.dropped_sends += 1;
                            }
                        }
                        Action::Forward { relay, peer, data } => {
                            w.io.forward(relay, peer, &buf[data]);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {}
            }
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
        let mut socks = Vec::new();
        for l in listeners {
            socks.push(Rc::new(UdpSocket::from_std(l)?));
        }
        let wake = Rc::new(tokio::sync::Notify::new());
        let worker = Rc::new_cyclic(|me| {
            RefCell::new(Worker {
                server: Server::new(node.core.clone()),
                io: Io {
                    node: node.clone(),
                    listeners: socks.clone(),
                    conns: HashMap::new(),
                    relays: HashMap::new(),
                    me: me.clone(),
                    rng: Rng::seeded(),
                    stats: IoStats::default(),
                },
                peer_buf: vec![0u8; HEADROOM + MAX_DATAGRAM + TAILROOM],
                shaper: Shaper::with_profiles(
                    node.shaping.borrow().clone(),
                    node.epoch,
                    Rng::seeded().next(),
                ),
                shaper_wake: wake.clone(),
                shaper_armed: None,
            })
        });
        let mut tasks = Vec::new();
        for (i, s) in socks.iter().enumerate() {
            tasks.push(tokio::task::spawn_local(listener_task(
                worker.clone(),
                i as u16,
                s.clone(),
            )));
        }
        for (i, (l, transport)) in stream_listeners.into_iter().enumerate() {
            let index = (socks.len() + i) as u16;
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
