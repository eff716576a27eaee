//! The API's connections: its own accept loop over hyper, because `axum::serve` has no deadline
//! of any kind. Each connection must send a whole request head within `request_timeout` (the
//! wait for the next one on a kept-alive connection too), is closed after `idle_timeout`
//! without a byte moved either way (a stalled body, a client that does not read its answer),
//! and each source (an IPv4 address, an IPv6 /64) holds at most `max_per_source` connections of
//! the listener's `max_total`: beyond either, a short 503 and the connection is closed, before
//! any byte of it is read. One address holding its cap leaves the rest for everyone else.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use veil_proto::limiter::source_prefix;

/// Connection limits of the API listeners (`connections:` in `allocator.yaml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Seconds a client has to send a whole request head (and a kept-alive connection waits
    /// for the next one), and then its body once its key is checked.
    pub request_timeout: u32,
    /// Seconds a connection may go without a byte read or written before it is closed.
    pub idle_timeout: u32,
    /// Connections one source (an IPv4 address, an IPv6 /64) may hold at once.
    pub max_per_source: u32,
    /// Connections a listener holds at once; 0: what the open-file limit allows, less a
    /// reserve for everything else.
    pub max_total: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            request_timeout: 10,
            idle_timeout: 30,
            max_per_source: 128,
            max_total: 0,
        }
    }
}

/// Descriptors kept for everything but API connections (relay polls, files, the metrics
/// listener's connections).
pub const FD_RESERVE: u64 = 256;

/// Connections held, in all and per source, with the refusals counted for metrics.
#[derive(Debug, Default)]
pub(super) struct Held {
    by_source: Mutex<HashMap<u64, u32>>,
    total: AtomicU64,
    /// Connections refused: over the per-source cap, over the total.
    pub(super) refused: [AtomicU64; 2],
    /// Connections closed by the request or idle deadline.
    pub(super) timed_out: AtomicU64,
}

impl Held {
    /// Connections open now.
    pub(super) fn open(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr, per_source: u32, total: u64) -> Option<Permit> {
        let prefix = source_prefix(ip);
        let mut by = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        let n = by.get(&prefix).copied().unwrap_or(0);
        if n >= per_source {
            self.refused[0].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self.total.load(Ordering::Relaxed) >= total {
            self.refused[1].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        by.insert(prefix, n + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Permit {
            held: self.clone(),
            prefix,
        })
    }
}

/// One connection's place in [`Held`], given back on drop.
struct Permit {
    held: Arc<Held>,
    prefix: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut by = self
            .held
            .by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by.get_mut(&self.prefix) {
            *n -= 1;
            if *n == 0 {
                by.remove(&self.prefix);
            }
        }
        self.held.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that notes when a byte last moved, in milliseconds since `origin`.
struct Watched {
    inner: TcpStream,
    origin: Instant,
    last: Arc<AtomicU64>,
}

impl Watched {
    fn touch(&self) {
        self.last
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What a refused connection gets, written without reading anything of it.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Length: 0\r\nConnection: close\r\n\r\n";

/// Serves `router` on `listener` under `limits` until `stop` turns true, then lets the
/// connections in progress finish their current request.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    max_total: u64,
    held: Arc<Held>,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut stopping = stop.clone();
    loop {
        while tasks.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, or reset before accept: back off briefly.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stopped(&mut stopping) => break,
        };
        let Some(permit) = held.acquire(peer.ip(), limits.max_per_source, max_total) else {
            let _ = tcp.try_write(REFUSED);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(ConnectInfo::<SocketAddr>(peer))),
        );
        let held = held.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let _permit = permit;
            connection(tcp, service, limits, &held, stop).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn connection(
    tcp: TcpStream,
    service: TowerToHyperService<Router>,
    limits: ConnectionLimits,
    held: &Held,
    mut stop: watch::Receiver<bool>,
) {
    let origin = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched {
        inner: tcp,
        origin,
        last: last.clone(),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.request_timeout.into()));
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let idle = Duration::from_secs(limits.idle_timeout.into());
    let mut graceful = false;
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let idle_at = tokio::time::Instant::from_std(origin + since + idle);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r
                    && e.is_timeout()
                {
                    held.timed_out.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            _ = tokio::time::sleep_until(idle_at) => {
                let quiet = origin.elapsed().saturating_sub(Duration::from_millis(
                    last.load(Ordering::Relaxed),
                ));
                if quiet >= idle {
                    held.timed_out.fetch_add(1, Ordering::Relaxed);
                    return; // dropping the connection closes it
                }
            }
            _ = stopped(&mut stop), if !graceful => {
                graceful = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
