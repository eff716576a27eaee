//! One worker: its sockets ([`Io`]), its core ([`Server`]) and shaper, and the one place where
//! what the core returns is carried out, for UDP and for streams alike.
//!
//! Client → peer: a listener's batch ([`Worker::read_clients`]) or a stream's frame
//! ([`Worker::stream_frame`]) goes to [`dispatch`], which hands it to the core and executes the
//! [`Action`]: a reply to the client, or a payload for a peer, which [`forward`] sends where the
//! peer's address leads: the relayed socket ([`PeerPaths`]), another allocation of this node
//! (in-process), or the link to the relay owning that address ([`crate::mesh`]).
//! Peer → client: a relayed socket's batch ([`Worker::read_peers`]), or a datagram from the
//! worker's inbox ([`Worker::inbound`]: links, and other workers' allocations), goes to
//! [`deliver`], which has the core frame it in place, lets the shaper pad or hold it, and
//! queues it for the client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::node::NodeShared;
use super::now;
use super::peers::PeerPaths;
use super::stream::Outbound;
use crate::mesh::routes::{Inbound, Route, RouteCache, ToLink};
use crate::metrics::IoStats;
use crate::proto::rng::XorShift;
use crate::proto::server::{Action, ClientKey, Delivery, Now, RelayId, Server, Transport};
use crate::shaping::{Decision, Shaper};
use crate::sys::{Epoll, RecvBatch, SendQueue};

/// Epoll tokens of listeners count down from here; relayed sockets use their [`RelayId`],
/// whose slot bits never reach these values.
pub(super) const LISTENER_TOKEN: u64 = u64::MAX;

/// A UDP listener and what waits to leave it.
pub(super) struct Listener {
    pub(super) socket: std::net::UdpSocket,
    pub(super) out: SendQueue,
}

/// The I/O half of a worker: its sockets. Implements [`crate::proto::server::Env`] for the core.
pub(super) struct Io {
    pub(super) node: Arc<NodeShared>,
    /// This worker's index among the node's.
    pub(super) index: usize,
    /// Where peer addresses lead (this node, a linked relay, elsewhere).
    pub(super) routes: RouteCache,
    /// A datagram delivered in-process, with room for the core to frame it.
    pub(super) scratch: Vec<u8>,
    /// Listeners and relayed sockets, watched together.
    pub(super) epoll: Epoll,
    pub(super) listeners: Vec<Listener>,
    /// Open TCP/TLS connections: what is queued for each client.
    pub(super) conns: HashMap<ClientKey, Rc<Outbound>>,
    pub(super) peers: PeerPaths,
    pub(super) rng: XorShift,
    pub(super) stats: IoStats,
    /// Whether a failure to open relayed sockets was logged.
    pub(super) warned_bind: bool,
    /// New TCP/TLS connections per client prefix, and from everyone, on this worker.
    pub(super) new_conns: super::stream::NewConnections,
    /// What this worker installed in the fast path's maps.
    pub(super) fast: super::fast::Installed,
}

/// The shaper and the task that releases what it holds.
pub(super) struct Shaping {
    /// Padding and re-clocking of the relay → client leg.
    pub(super) shaper: Shaper<ClientKey>,
    /// Wakes the shaper task when a frame is due earlier than it planned.
    pub(super) wake: Rc<tokio::sync::Notify>,
    pub(super) armed: Option<Instant>,
}

pub(super) struct Worker {
    pub(super) server: Server,
    pub(super) io: Io,
    pub(super) shaping: Shaping,
    /// What clients sent to a listener, one round's batch.
    client_rx: RecvBatch,
    /// Where the core writes a reply to a client (with room for a stream reply's filler).
    reply: Vec<u8>,
    /// What peers sent to one relayed socket, each datagram with room for the core to frame it
    /// and the shaper to pad it in place.
    peer_rx: RecvBatch,
    /// Tokens of sockets whose last batch came back full: read again next round (the set is
    /// edge-triggered).
    unread: Vec<u64>,
}

impl Io {
    /// Sends a frame to a client: queued on the listener socket it talks to (leaving at the
    /// next [`Io::flush`]), or onto its connection's queue; counts it.
    pub(super) fn send_to_client(&mut self, client: ClientKey, frame: &[u8]) {
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
    pub(super) fn flush(&mut self) {
        for i in 0..self.listeners.len() {
            self.flush_listener(i);
        }
    }

    /// Sends a response to a client at once: control traffic is rare and does not wait for
    /// the round's batch. Over a stream it joins the connection's queue.
    fn reply(&mut self, to: ClientKey, reply: &[u8]) {
        let ok = if to.transport.is_stream() {
            self.conns.get(&to).is_some_and(|c| c.push(reply))
        } else {
            self.listeners
                .get(to.listener as usize)
                .is_some_and(|l| l.socket.send_to(reply, to.addr).is_ok())
        };
        if !ok {
            if to.transport.is_stream() {
                self.stats.stream_drops += 1;
            } else {
                self.stats.dropped_sends += 1;
            }
        }
    }

    /// Sends a client's payload to a peer over the relayed address's socket, and counts it.
    #[inline]
    fn send_udp(&mut self, relay: RelayId, peer: SocketAddr, payload: &[u8]) {
        if self.peers.send(&relay, peer, payload) {
            self.stats.client_to_peer_packets += 1;
            self.stats.client_to_peer_bytes += payload.len() as u64;
        } else {
            self.stats.dropped_sends += 1;
        }
    }
}

/// Hands one message from a client to the core and carries out what it returns: the one
/// dispatch of [`Action`]s, for UDP datagrams and stream frames.
#[inline]
fn dispatch(
    server: &mut Server,
    io: &mut Io,
    shaping: &mut Shaping,
    reply: &mut [u8],
    now: Now,
    from: ClientKey,
    msg: &[u8],
) {
    match server.handle_client(now, from, msg, reply, io) {
        Action::None => {}
        Action::Reply(len) => {
            let range = if from.transport.is_stream() {
                stream_reply(server, io, shaping, reply, from, len)
            } else {
                0..len
            };
            io.reply(from, &reply[range]);
        }
        Action::Forward { relay, peer, data } => {
            forward(server, io, shaping, now, relay, peer, &msg[data])
        }
    }
}

/// Sends a client's payload to a peer where the peer's address leads: its relayed socket
/// (plain UDP), another allocation of this node (in-process: never through a socket), or the
/// link to the relay that owns the address. Each arrives as if from `relay`'s address.
#[inline]
#[allow(clippy::too_many_arguments)]
fn forward(
    server: &mut Server,
    io: &mut Io,
    shaping: &mut Shaping,
    now: Now,
    relay: RelayId,
    peer: SocketAddr,
    payload: &[u8],
) {
    match io.routes.route(peer) {
        Route::Plain => io.send_udp(relay, peer, payload),
        Route::Link(link) => {
            let Some(src) = io.peers.addr(&relay) else {
                return;
            };
            let sent = link.try_send(ToLink {
                src,
                dst: peer,
                payload: payload.to_vec(),
            });
            if sent.is_ok() {
                io.stats.mesh_sent += 1;
                io.stats.client_to_peer_packets += 1;
                io.stats.client_to_peer_bytes += payload.len() as u64;
            } else {
                io.stats.mesh_full += 1;
            }
        }
        Route::Refused => io.stats.mesh_refused += 1,
        Route::Local => {
            let Some(src) = io.peers.addr(&relay) else {
                return;
            };
            match io.node.directory.owner(peer) {
                // Nobody holds it: as a datagram to a closed port.
                None => io.stats.local_undelivered += 1,
                Some((w, id)) if w == io.index => {
                    io.stats.local_delivered += 1;
                    io.stats.client_to_peer_packets += 1;
                    io.stats.client_to_peer_bytes += payload.len() as u64;
                    deliver_copy(server, io, shaping, now, id, src, payload);
                }
                Some((w, id)) => match io.node.directory.send(w, id, src, payload) {
                    Ok(()) => {
                        io.stats.local_delivered += 1;
                        io.stats.client_to_peer_packets += 1;
                        io.stats.client_to_peer_bytes += payload.len() as u64;
                    }
                    Err(_) => io.stats.local_undelivered += 1,
                },
            }
        }
    }
}

/// [`deliver`] of a payload that is not in a receive buffer: copied into the worker's scratch
/// buffer, with room around it for the core's framing and the shaper's padding.
#[allow(clippy::too_many_arguments)]
fn deliver_copy(
    server: &mut Server,
    io: &mut Io,
    shaping: &mut Shaping,
    now: Now,
    relay: RelayId,
    from: SocketAddr,
    payload: &[u8],
) {
    use crate::proto::server::{HEADROOM, TAILROOM};
    let mut buf = std::mem::take(&mut io.scratch);
    buf.clear();
    buf.resize(HEADROOM + payload.len() + TAILROOM, 0);
    let range = HEADROOM..HEADROOM + payload.len();
    buf[range.clone()].copy_from_slice(payload);
    deliver(server, io, shaping, now, relay, from, &mut buf, range);
    io.scratch = buf;
}

/// Pads a response on a stream once the connection has held an allocation. Until a Binding or
/// Allocate success has crossed the connection, Chromium closes it on any STUN type outside a
/// short list, and the filler (a Binding indication) is not on it. Once it has held one, every
/// later answer is padded too: the one to the deallocating Refresh, and a 437 to its
/// retransmission, would otherwise leave at their own sizes.
fn stream_reply(
    server: &Server,
    io: &Io,
    shaping: &mut Shaping,
    reply: &mut [u8],
    from: ClientKey,
    len: usize,
) -> Range<usize> {
    let padded = io
        .conns
        .get(&from)
        .is_some_and(|c| c.mark_padded(server.has_allocation(&from)));
    if padded {
        shaping.shaper.pad_stream_reply(from, reply, 0..len)
    } else {
        0..len
    }
}

/// Carries a peer's datagram to its client: the core frames it in place (ChannelData or Data
/// indication), the shaper pads or holds it, and it is queued for the client. Whatever path
/// the datagram came in on, it goes through here.
#[inline]
#[allow(clippy::too_many_arguments)]
fn deliver(
    server: &mut Server,
    io: &mut Io,
    shaping: &mut Shaping,
    now: Now,
    relay: RelayId,
    peer: SocketAddr,
    buf: &mut [u8],
    payload: Range<usize>,
) {
    let Some(Delivery {
        client,
        frame,
        profile,
    }) = server.handle_peer(now, relay, peer, buf, payload)
    else {
        return;
    };
    let frame = if shaping.shaper.is_off() {
        frame
    } else {
        let (decision, r) = shaping.shaper.submit_in(
            now.mono,
            client,
            profile,
            client.transport.is_stream(),
            buf,
            frame,
        );
        // Wake the shaper task if this frame (or a newly covered flow) needs it sooner than it
        // planned.
        let due = shaping.shaper.next_deadline();
        if due.is_some() && (shaping.armed.is_none() || due < shaping.armed) {
            shaping.armed = due;
            shaping.wake.notify_one();
        }
        match decision {
            Decision::SendNow => r,
            Decision::Queued => return,
        }
    };
    io.send_to_client(client, &buf[frame]);
}

impl Worker {
    pub(super) fn new(server: Server, io: Io, shaping: Shaping) -> Self {
        /// Largest UDP payload.
        const MAX_DATAGRAM: usize = 65_535;
        /// Datagrams read from a listener per round (one `recvmmsg`).
        const CLIENT_BATCH: usize = 64;
        /// Datagrams read from a relayed socket per round: a socket carries one allocation's
        /// peers, and one whose batch came back full is read again next round.
        const PEER_BATCH: usize = 16;
        use crate::proto::server::{HEADROOM, TAILROOM};
        Worker {
            server,
            io,
            shaping,
            client_rx: RecvBatch::new(CLIENT_BATCH, MAX_DATAGRAM, 0, 0),
            reply: vec![0u8; 2048 + crate::shaping::MAX_QUEUED_FRAME],
            peer_rx: RecvBatch::new(PEER_BATCH, MAX_DATAGRAM, HEADROOM, TAILROOM),
            unread: Vec::with_capacity(super::EVENTS),
        }
    }

    /// One round of the UDP plane: reads every ready socket once, then sends what is queued
    /// for clients. False when no socket was ready.
    pub(super) fn udp_round(&mut self) -> bool {
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
        self.sync_fast_path();
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
            shaping,
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
            let Some(addr) = client_rx.addr(i) else {
                continue;
            };
            let from = ClientKey {
                listener: index as u16,
                transport: Transport::Udp,
                addr,
            };
            #[cfg(debug_assertions)]
            super::faults::inject(client_rx.get(i));
            dispatch(server, io, shaping, reply, now, from, client_rx.get(i));
        }
        n == client_rx.capacity()
    }

    /// Handles a batch of what peers sent to one relayed socket; true when it may hold more.
    fn read_peers(&mut self, now: Now, id: RelayId) -> bool {
        let Worker {
            server,
            io,
            shaping,
            peer_rx,
            ..
        } = self;
        // A socket closed earlier in this round: its event is stale.
        let Some(socket) = io.peers.udp_socket(&id) else {
            return false;
        };
        let Ok(n) = peer_rx.recv(socket.as_raw_fd()) else {
            return true;
        };
        for i in 0..n {
            let Some(peer) = peer_rx.addr(i) else {
                continue;
            };
            if io.routes.refuses_plain_from(peer) {
                io.stats.mesh_refused += 1;
                continue;
            }
            let (buf, payload) = peer_rx.slot_mut(i);
            deliver(server, io, shaping, now, id, peer, buf, payload);
        }
        n == peer_rx.capacity()
    }

    /// Hands datagrams from the worker's inbox (a link, or another worker's allocation) to
    /// their allocations, as a relayed socket's would be.
    pub(super) fn inbound(&mut self, now: Now, m: Inbound) {
        let Worker {
            server,
            io,
            shaping,
            ..
        } = self;
        deliver_copy(server, io, shaping, now, m.relay, m.from, &m.payload);
    }

    /// Handles one frame a stream client sent.
    pub(super) fn stream_frame(&mut self, now: Now, from: ClientKey, frame: &[u8]) {
        let Worker {
            server,
            io,
            shaping,
            reply,
            ..
        } = self;
        dispatch(server, io, shaping, reply, now, from, frame);
    }

    /// A stream connection opened: frames for `key` go to `out`.
    pub(super) fn attach(&mut self, key: ClientKey, out: Rc<Outbound>) {
        self.io.conns.insert(key, out);
    }

    /// A stream connection closed: its allocation ends with it.
    pub(super) fn detach(&mut self, key: &ClientKey) {
        self.io.conns.remove(key);
        self.server.client_closed(now(), key, &mut self.io);
    }

    /// The worker's I/O counters.
    pub(super) fn io_stats(&mut self) -> &mut IoStats {
        &mut self.io.stats
    }

    /// Whether this client holds an allocation here.
    pub(super) fn has_allocation(&self, key: &ClientKey) -> bool {
        self.server.has_allocation(key)
    }

    /// Whether frames to streams are written one by one (so that each is its own TLS record).
    pub(super) fn per_frame_writes(&self) -> bool {
        !self.shaping.shaper.is_off()
    }
}
