//! TURN over TCP and TLS: accepting connections, reading frames into the core, and a bounded
//! send queue per connection. A connection lives on the worker whose SO_REUSEPORT listener
//! accepted it, with the allocation it creates, so its packets cross no thread either.
//!
//! Limits: a total and a per-IP connection cap (checked at accept), a deadline for the TLS
//! handshake and the first message, an idle deadline for connections without an allocation, a
//! fixed read buffer that holds exactly one largest frame, and a send queue of
//! `streams.send_buffer` bytes: frames for a client that does not read are dropped, never
//! buffered without bound, and a write that stalls for [`WRITE_STALL`] closes the connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::node::NodeShared;
use super::now;
use super::worker::Worker;
use crate::proto::framing::StreamBuf;
use crate::proto::server::{ClientKey, Transport};

/// How long one write to a client may take before the connection is given up.
pub(super) const WRITE_STALL: Duration = Duration::from_secs(30);

/// Connections held by the node, in all and per client IP (touched at accept and close only).
#[derive(Default)]
pub(super) struct ConnCount {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A counted connection; dropping it releases the count.
pub(super) struct ConnPermit {
    node: Arc<NodeShared>,
    ip: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let c = &self.node.conns;
        c.total.fetch_sub(1, Ordering::AcqRel);
        let mut m = c.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

fn acquire(node: &Arc<NodeShared>, ip: IpAddr) -> Option<ConnPermit> {
    let c = &node.conns;
    let limits = &node.streams;
    let mut m = c.per_ip.lock().unwrap_or_else(|e| e.into_inner());
    let held = m.get(&ip).copied().unwrap_or(0);
    if held >= limits.max_connections_per_ip
        || c.total.load(Ordering::Acquire) >= limits.max_connections
    {
        return None;
    }
    c.total.fetch_add(1, Ordering::AcqRel);
    *m.entry(ip).or_insert(0) += 1;
    Some(ConnPermit {
        node: node.clone(),
        ip,
    })
}

/// What waits to be written to one client, bounded.
pub(super) struct Outbound {
    queue: RefCell<Queue>,
    wake: Notify,
    limit: usize,
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
            limit,
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
        if q.data.len() + frame.len() > self.limit {
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
        tokio::task::spawn_local(connection(worker.clone(), node.clone(), tcp, key, permit));
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
) {
    match (key.transport, &node.tls) {
        (Transport::Tls, Some(tls)) => {
            let hs = node.streams.handshake_timeout;
            match tokio::time::timeout(hs, tls.accept(tcp)).await {
                Ok(Ok(s)) => serve(worker, node, s, key).await,
                _ => count_error(&worker),
            }
        }
        (Transport::Tcp, _) => serve(worker, node, tcp, key).await,
        _ => {}
    }
}

/// Runs a connection until either side ends, then deletes its allocation.
async fn serve<S: AsyncRead + AsyncWrite>(
    worker: Weak<RefCell<Worker>>,
    node: Arc<NodeShared>,
    stream: S,
    key: ClientKey,
) {
    let out = Rc::new(Outbound::new(node.streams.send_buffer));
    {
        let Some(w) = worker.upgrade() else { return };
        w.borrow_mut().attach(key, out.clone());
    }
    let (rd, wr) = tokio::io::split(stream);
    let clean = tokio::select! {
        r = read_side(&worker, &node, rd, key) => r,
        r = write_side(&worker, wr, &out) => r.is_ok(),
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
) -> bool {
    tokio::pin!(rd);
    let mut sb = StreamBuf::default();
    let mut first = true;
    loop {
        let deadline = if first {
            node.streams.handshake_timeout
        } else {
            node.streams.idle_timeout
        };
        let n = match tokio::time::timeout(deadline, rd.read(sb.spare())).await {
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
    }
}

/// Writes what is queued. While the worker shapes traffic each frame (with its filler) is
/// written on its own, so over TLS each leaves as one record of a bucket size; otherwise
/// everything queued goes in one write.
async fn write_side<W: AsyncWrite>(
    worker: &Weak<RefCell<Worker>>,
    wr: W,
    out: &Outbound,
) -> io::Result<()> {
    tokio::pin!(wr);
    let mut batch = Queue::default();
    loop {
        out.wake.notified().await;
        std::mem::swap(&mut batch, &mut *out.queue.borrow_mut());
        if batch.data.is_empty() {
            continue;
        }
        let per_frame = worker
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
