//! TURN over TCP and TLS: accepting connections, reading frames into the core, and a bounded
//! send queue per connection. A connection lives on the worker whose SO_REUSEPORT listener
//! accepted it, with the allocation it creates, so its packets cross no thread either.
//!
//! Limits: a new-connection rate per source and per worker (checked at accept, before a byte is
//! read or any TLS is done), a total and a per-source connection cap (an IPv4 address, an IPv6
//! /64; checked at accept), one deadline from accept for the TLS handshake and the first whole message
//! (a client trickling bytes does not restart it), an idle deadline for connections without an
//! allocation, and small buffers until a connection holds an allocation: a read buffer of
//! [`SMALL_FRAME`](crate::proto::framing::SMALL_FRAME) bytes and a send queue of [`SMALL_QUEUE`], then one that holds a largest
//! frame and `streams.send_buffer` bytes: frames for a client that does not read are dropped,
//! never buffered without bound, and a write that stalls for [`WRITE_STALL`] closes the
//! connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::node::NodeShared;
use super::now;
use super::worker::Worker;
use crate::proto::framing::StreamBuf;
use crate::proto::limiter::source_prefix;
use crate::proto::server::{ClientKey, Transport};

/// How long one write to a client may take before the connection is given up.
pub(super) const WRITE_STALL: Duration = Duration::from_secs(30);

/// The send queue of a connection without an allocation: its answers only.
pub(super) const SMALL_QUEUE: usize = 4096;

/// Connections held by the node, in all and per source prefix (an IPv4 address, an IPv6 /64:
/// one host can hold a whole /64), touched at accept and close only.
#[derive(Default)]
pub(super) struct ConnCount {
    total: AtomicUsize,
    per_prefix: Mutex<HashMap<u64, usize>>,
}

impl ConnCount {
    /// Takes a place for a connection from `ip`; false at either cap.
    fn take(&self, ip: IpAddr, max_total: usize, max_per_prefix: usize) -> bool {
        let mut m = self.per_prefix.lock().unwrap_or_else(|e| e.into_inner());
        let key = source_prefix(ip);
        let held = m.get(&key).copied().unwrap_or(0);
        if held >= max_per_prefix || self.total.load(Ordering::Acquire) >= max_total {
            return false;
        }
        self.total.fetch_add(1, Ordering::AcqRel);
        *m.entry(key).or_insert(0) += 1;
        true
    }

    fn give_back(&self, ip: IpAddr) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        let mut m = self.per_prefix.lock().unwrap_or_else(|e| e.into_inner());
        let key = source_prefix(ip);
        if let Some(n) = m.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&key);
            }
        }
    }
}

/// A counted connection; dropping it releases the count.
pub(super) struct ConnPermit {
    node: Arc<NodeShared>,
    ip: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.node.conns.give_back(self.ip);
    }
}

fn acquire(node: &Arc<NodeShared>, ip: IpAddr) -> Option<ConnPermit> {
    let limits = &node.streams;
    node.conns
        .take(ip, limits.max_connections, limits.max_connections_per_ip)
        .then(|| ConnPermit {
            node: node.clone(),
            ip,
        })
}

/// The new-connection rates of a worker's stream listeners.
pub(super) struct NewConnections {
    per_prefix: crate::proto::limiter::PrefixLimiter,
    all: crate::proto::limiter::TokenBucket,
    rate: u64,
    /// The origin of the buckets' milliseconds.
    epoch: Instant,
}

impl NewConnections {
    pub(super) fn new(limits: &crate::config::StreamLimits) -> Self {
        let per = limits.new_per_ip_per_second;
        NewConnections {
            per_prefix: crate::proto::limiter::PrefixLimiter::new(per, per.saturating_mul(2)),
            all: crate::proto::limiter::TokenBucket::full(limits.new_per_second as u64, 0),
            rate: limits.new_per_second as u64,
            epoch: Instant::now(),
        }
    }

    /// Whether a connection from `ip` may be taken now; takes it if so. The client's own rate
    /// first, so that one flooding address spends nothing of everyone's.
    pub(super) fn admit(&mut self, ip: std::net::IpAddr) -> bool {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.per_prefix.allow(ip, ms)
            && (self.rate == 0 || self.all.take(ms, self.rate, self.rate, 1))
    }
}

/// What waits to be written to one client, bounded.
pub(super) struct Outbound {
    queue: RefCell<Queue>,
    wake: Notify,
    limit: Cell<usize>,
    /// Whether the connection has held an allocation (its answers are padded from then on).
    padded: Cell<bool>,
}

/// Frames back to back, and their lengths (so that each can be its own TLS record).
#[derive(Default)]
struct Queue {
    data: Vec<u8>,
    lens: Vec<u32>,
}

impl Outbound {
    fn new(limit: usize) -> Self {
        Outbound {
            queue: RefCell::new(Queue::default()),
            wake: Notify::new(),
            limit: Cell::new(limit),
            padded: Cell::new(false),
        }
    }

    /// Notes whether the connection holds an allocation now; true once it ever has.
    pub(super) fn mark_padded(&self, holds_allocation: bool) -> bool {
        let p = self.padded.get() | holds_allocation;
        self.padded.set(p);
        p
    }

    /// Queues a frame; false (and nothing queued) if the queue is full.
    pub(super) fn push(&self, frame: &[u8]) -> bool {
        let mut q = self.queue.borrow_mut();
        if q.data.len() + frame.len() > self.limit.get() {
            return false;
        }
        q.data.extend_from_slice(frame);
        q.lens.push(frame.len() as u32);
        drop(q);
        self.wake.notify_one();
        true
    }
}

/// Accepts connections on one listener of this worker until the worker stops.
pub(super) async fn accept_task(
    worker: Weak<RefCell<Worker>>,
    node: Arc<NodeShared>,
    listener: TcpListener,
    index: u16,
    transport: Transport,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: back off briefly.
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // The rates first, before a byte is read and before any cryptography.
        let admitted = match worker.upgrade() {
            Some(w) => {
                let mut w = w.borrow_mut();
                let ok = w.io.new_conns.admit(addr.ip());
                if !ok {
                    w.io_stats().connections_rate_limited += 1;
                }
                ok
            }
            None => return,
        };
        if !admitted {
            continue; // dropping the stream closes it
        }
        let Some(permit) = acquire(&node, addr.ip()) else {
            if let Some(w) = worker.upgrade() {
                w.borrow_mut().io_stats().connections_refused += 1;
            }
            continue; // dropping the stream closes it
        };
        let _ = tcp.set_nodelay(true);
        let key = ClientKey {
            listener: index,
            transport,
            addr,
        };
        // One deadline from accept for the TLS handshake and the first whole message.
        let first_by = tokio::time::Instant::now() + node.streams.handshake_timeout;
        tokio::task::spawn_local(connection(
            worker.clone(),
            node.clone(),
            tcp,
            key,
            permit,
            first_by,
        ));
    }
}

/// Counts a connection of a shared port: to the site or to TURN.
fn count_route(worker: &Weak<RefCell<Worker>>, site: bool) {
    if let Some(w) = worker.upgrade() {
        let mut w = w.borrow_mut();
        let s = w.io_stats();
        if site {
            s.to_site += 1;
        } else {
            s.to_turn += 1;
        }
    }
}

fn count_error(worker: &Weak<RefCell<Worker>>) {
    if let Some(w) = worker.upgrade() {
        w.borrow_mut().io_stats().stream_errors += 1;
    }
}

async fn connection(
    worker: Weak<RefCell<Worker>>,
    node: Arc<NodeShared>,
    tcp: TcpStream,
    key: ClientKey,
    _permit: ConnPermit,
    first_by: tokio::time::Instant,
) {
    match (key.transport, &node.tls) {
        (Transport::Tls, Some(tls)) => {
            let (Some(site), Ok(local)) = (node.site.clone(), tcp.local_addr()) else {
                match tokio::time::timeout_at(first_by, tls.accept(tcp)).await {
                    Ok(Ok(s)) => serve(worker, node, s, key, first_by).await,
                    _ => count_error(&worker),
                }
                return;
            };
            // A port shared with a website: STUN stays, the rest is the site's.
            let core = node.core.clone();
            let (io, raw) =
                match crate::site::open(&site, &core, tcp, key.addr, local, first_by).await {
                    crate::site::Opened::Tls(io, raw) => (io, raw),
                    crate::site::Opened::Turn(s) => {
                        count_route(&worker, false);
                        return serve(worker, node, s, key, first_by).await;
                    }
                    crate::site::Opened::Done(to_site) => {
                        if to_site {
                            count_route(&worker, true);
                        }
                        return;
                    }
                };
            let s = match tokio::time::timeout_at(first_by, tls.accept(io)).await {
                Ok(Ok(s)) => s,
                _ => return count_error(&worker),
            };
            let sni = s.get_ref().1.server_name().map(str::to_owned);
            let alpn = s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            match crate::site::route(&site, &core, s, raw, sni, alpn, first_by).await {
                crate::site::Route::Turn(s) => {
                    count_route(&worker, false);
                    serve(worker, node, s, key, first_by).await
                }
                crate::site::Route::Site => count_route(&worker, true),
                crate::site::Route::Closed => {}
            }
        }
        (Transport::Tcp, _) => serve(worker, node, tcp, key, first_by).await,
        _ => {}
    }
}

/// Runs a connection until either side ends, then deletes its allocation.
async fn serve<S: AsyncRead + AsyncWrite>(
    worker: Weak<RefCell<Worker>>,
    node: Arc<NodeShared>,
    stream: S,
    key: ClientKey,
    first_by: tokio::time::Instant,
) {
    let out = Rc::new(Outbound::new(SMALL_QUEUE.min(node.streams.send_buffer)));
    {
        let Some(w) = worker.upgrade() else { return };
        w.borrow_mut().attach(key, out.clone());
    }
    let (rd, wr) = tokio::io::split(stream);
    let clean = tokio::select! {
        r = read_side(&worker, &node, rd, key, &out, first_by) => r,
        r = write_side(&worker, wr, &out, key.transport == Transport::Tls) => r.is_ok(),
    };
    if !clean {
        count_error(&worker);
    }
    if let Some(w) = worker.upgrade() {
        w.borrow_mut().detach(&key);
    }
}

/// Reads frames and hands them to the core. Returns true on an orderly end (EOF, idle), false
/// on garbage or a missed first-message deadline.
async fn read_side<R: AsyncRead>(
    worker: &Weak<RefCell<Worker>>,
    node: &NodeShared,
    rd: R,
    key: ClientKey,
    out: &Outbound,
    first_by: tokio::time::Instant,
) -> bool {
    tokio::pin!(rd);
    let mut sb = StreamBuf::small();
    let mut first = true;
    let mut grown = false;
    loop {
        let deadline = if first {
            first_by
        } else {
            tokio::time::Instant::now() + node.streams.idle_timeout
        };
        let n = match tokio::time::timeout_at(deadline, rd.read(sb.spare())).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => n,
            Err(_) if first => return false,
            Err(_) => {
                // Silence is fine while an allocation lives: its own expiry ends it.
                let alive = worker
                    .upgrade()
                    .is_some_and(|w| w.borrow().has_allocation(&key));
                if alive {
                    continue;
                }
                return true;
            }
        };
        sb.filled(n);
        let Some(w) = worker.upgrade() else {
            return true;
        };
        let mut w = w.borrow_mut();
        let now = now();
        loop {
            let frame = match sb.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "closing a connection that sent garbage");
                    return false;
                }
            };
            first = false;
            w.stream_frame(now, key, frame);
        }
        // Full buffers once the connection holds an allocation (and keeps them).
        if !grown && w.has_allocation(&key) {
            sb.grow();
            out.limit.set(node.streams.send_buffer);
            grown = true;
        }
    }
}

/// Writes what is queued. Over TLS each frame is written on its own, so it leaves as a record of
/// its own: while the worker shapes traffic, one of a bucket size; and always because clients
/// read a record as a message (coturn's `turnutils_uclient -S` keeps the first frame of a record
/// and drops the rest). Each frame is written on its own over TCP too while shaping (the filler
/// and the frame leave together); otherwise everything queued goes in one write.
async fn write_side<W: AsyncWrite>(
    worker: &Weak<RefCell<Worker>>,
    wr: W,
    out: &Outbound,
    tls: bool,
) -> io::Result<()> {
    tokio::pin!(wr);
    let mut batch = Queue::default();
    loop {
        out.wake.notified().await;
        std::mem::swap(&mut batch, &mut *out.queue.borrow_mut());
        if batch.data.is_empty() {
            continue;
        }
        let per_frame = tls
            || worker
                .upgrade()
                .is_some_and(|w| w.borrow().per_frame_writes());
        let write = async {
            if per_frame {
                let mut at = 0;
                for &len in &batch.lens {
                    wr.write_all(&batch.data[at..at + len as usize]).await?;
                    at += len as usize;
                }
            } else {
                wr.write_all(&batch.data).await?;
            }
            wr.flush().await
        };
        match tokio::time::timeout(WRITE_STALL, write).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled")),
        }
        batch.data.clear();
        batch.lens.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 §3: the per-source cap counts an IPv6 /64 as one source (a host holds a whole
    /// /64), an IPv4 address as one.
    #[test]
    fn connection_caps_count_ipv6_per_slash_64() {
        let c = ConnCount::default();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert!(c.take(ip("2001:db8:1:2::1"), 100, 2));
        assert!(c.take(ip("2001:db8:1:2::2"), 100, 2));
        assert!(!c.take(ip("2001:db8:1:2:ffff::9"), 100, 2), "the same /64");
        assert!(c.take(ip("2001:db8:1:3::1"), 100, 2), "another /64");
        assert!(c.take(ip("192.0.2.1"), 100, 2));
        assert!(c.take(ip("192.0.2.2"), 100, 2), "another IPv4 address");
        c.give_back(ip("2001:db8:1:2::1"));
        assert!(c.take(ip("2001:db8:1:2::77"), 100, 2), "a place given back");
        assert!(!c.take(ip("198.51.100.1"), 5, 2), "the total cap");
    }
}
