//! One link, up: the announcements, then datagrams into the scheduler (whose cells the
//! [`super::clock`] sends) and cells in through the reassembler to the allocations they are for. It moves cells; every rule is in
//! [`crate::proto::mesh`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::routes::{ToLink, Undelivered};
use super::status::{LinkState, LinkStatus, Refusal, Routed};
use super::{Ctx, PeerConfig};
use crate::proto::mesh::announce::{Announce, MAX_ANNOUNCE};
use crate::proto::mesh::breaker::Breaker;
use crate::proto::mesh::cell::{CELL_SIZE, Reassembler};
use crate::proto::mesh::sched::LinkScheduler;

/// Datagrams the workers may queue for one link before more are dropped (a few ms at the top
/// rung; the scheduler's own queue bound is what limits delay).
const LINK_QUEUE: usize = 2048;
/// How often the link's status and breaker are updated.
const TICK: Duration = Duration::from_millis(250);

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkEnd {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("announcement: {0}")]
    Announce(String),
    #[error("the announcement claims ranges another relay (or this one) holds")]
    Overlap,
    #[error("the announcement claims ranges outside the peer's relay_ranges")]
    OutsidePinned,
    #[error("QUIC datagrams cannot carry a cell (max {0:?})")]
    CellTooLarge(Option<usize>),
    #[error("the circuit breaker tripped (loss {0:.0} %, standing queue: {1})")]
    Breaker(f64, bool),
    #[error("sending a cell: {0}")]
    Send(#[from] quinn::SendDatagramError),
    #[error("stopped")]
    Stopped,
}

impl LinkEnd {
    /// Whether a circuit breaker closed the link: this relay's, or the peer's (its close code).
    pub(super) fn is_breaker(&self) -> bool {
        match self {
            LinkEnd::Breaker(..) => true,
            LinkEnd::Connection(quinn::ConnectionError::ApplicationClosed(c)) => {
                c.error_code == BREAKER_CLOSE.into()
            }
            _ => false,
        }
    }
}

/// The close code of a link its breaker closed.
const BREAKER_CLOSE: u32 = 3;

/// Exchanges announcements: ours on a unidirectional stream, theirs read from the one the
/// peer opens, both within the handshake timeout.
async fn exchange(conn: &quinn::Connection, ours: &[u8]) -> Result<Announce, LinkEnd> {
    let send = async {
        let mut s = conn.open_uni().await?;
        s.write_all(ours)
            .await
            .map_err(|e| LinkEnd::Announce(e.to_string()))?;
        s.finish().map_err(|e| LinkEnd::Announce(e.to_string()))?;
        Ok::<_, LinkEnd>(())
    };
    let recv = async {
        let mut r = conn.accept_uni().await?;
        r.read_to_end(MAX_ANNOUNCE)
            .await
            .map_err(|e| LinkEnd::Announce(e.to_string()))
    };
    let both = async { tokio::try_join!(send, recv) };
    let (_, theirs) = tokio::time::timeout(super::tls::HANDSHAKE_TIMEOUT, both)
        .await
        .map_err(|_| LinkEnd::Announce("timed out".into()))??;
    Announce::decode(&theirs).map_err(|e| LinkEnd::Announce(e.to_string()))
}

/// Runs a link until it ends; the route to the peer is up only meanwhile.
pub(super) async fn run(
    ctx: &Arc<Ctx>,
    peer: &PeerConfig,
    conn: quinn::Connection,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> LinkEnd {
    let status = ctx.status.link(&peer.name);
    let end = run_inner(ctx, peer, &conn, &status, &mut stop).await;
    ctx.routes.update(&peer.name, |l| l.tx = None);
    let code: u32 = match end {
        LinkEnd::Overlap | LinkEnd::OutsidePinned => 2,
        LinkEnd::Breaker(..) => BREAKER_CLOSE,
        _ => 0,
    };
    conn.close(code.into(), b"");
    status.update(|s| {
        s.state = LinkState::Down;
        s.last_error = Some(match end {
            LinkEnd::Connection(_) if end.is_breaker() => {
                "the peer's circuit breaker closed the link".to_string()
            }
            _ => end.to_string(),
        });
        s.breaker_trips += u64::from(end.is_breaker());
    });
    status.ended();
    end
}

async fn run_inner(
    ctx: &Arc<Ctx>,
    peer: &PeerConfig,
    conn: &quinn::Connection,
    status: &LinkStatus,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> LinkEnd {
    if conn.max_datagram_size().is_none_or(|m| m < CELL_SIZE) {
        return LinkEnd::CellTooLarge(conn.max_datagram_size());
    }
    let theirs = match exchange(conn, &ctx.announce_bytes).await {
        Ok(a) => a,
        Err(e) => {
            ctx.status.refused(Refusal::Announce);
            return e;
        }
    };
    if theirs.overlaps(&ctx.routes.claimed_by_others(&peer.name)) {
        ctx.status.refused(Refusal::Overlap);
        return LinkEnd::Overlap;
    }
    let outside = !peer.pinned.is_empty()
        && !theirs.ranges.iter().all(|r| {
            peer.pinned
                .iter()
                .any(|p| p.ip == r.ip && p.ports.0 <= r.ports.0 && r.ports.1 <= p.ports.1)
        });
    if outside {
        ctx.status.refused(Refusal::Overlap);
        return LinkEnd::OutsidePinned;
    }
    let (tx, mut rx) = mpsc::channel::<ToLink>(LINK_QUEUE);
    ctx.routes.update(&peer.name, |l| {
        l.ranges = theirs.ranges.clone();
        l.tx = Some(tx);
    });
    status.update(|s| {
        s.state = LinkState::Up;
        s.remote_zone = theirs.zone.clone();
        s.ups += 1;
        s.last_error = None;
    });
    tracing::info!(link = %peer.name, remote_zone = %theirs.zone, "mesh link up");

    // The clock sends the cells; this task fills the scheduler and empties the peer's cells.
    let clocked = ctx.clock.add(
        LinkScheduler::new(ctx.cfg.link.clone(), Instant::now()),
        conn.clone(),
    );
    let mut asm = Reassembler::default();
    let mut breaker = Breaker::new(ctx.cfg.breaker);
    let mut tick = tokio::time::interval(TICK);
    let mut routed = Routed::default();
    let publish = |asm: &Reassembler, routed: &Routed, breaker: &Breaker| {
        let q = conn.stats();
        let sched = clocked.sched();
        status.update(|s| {
            s.rtt = conn.rtt();
            s.rate = sched.rate();
            s.rung = sched.rung();
            s.loss = breaker.last_loss();
            let c = s.counters();
            c.tx = sched.stats();
            c.rx = asm.stats();
            c.routed = *routed;
            c.udp_tx_datagrams = q.udp_tx.datagrams;
            c.udp_tx_bytes = q.udp_tx.bytes;
            c.udp_rx_datagrams = q.udp_rx.datagrams;
            c.lost_packets = q.path.lost_packets;
            c.unsent_cells = clocked.unsent();
        });
    };
    let end = loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break LinkEnd::Stopped,
            _ = clocked.failure.notified() => {
                if let Some(e) = clocked.take_failure() {
                    break e.into();
                }
            }
            m = rx.recv() => {
                let Some(m) = m else { break LinkEnd::Stopped };
                let (Some(src), Some(dst)) = (ctx.announce.endpoint(m.src), theirs.endpoint(m.dst)) else {
                    routed.no_route += 1;
                    continue;
                };
                if clocked.sched().push(Instant::now(), src, dst, &m.payload).is_ok() {
                    routed.tx_datagrams += 1;
                    routed.tx_bytes += m.payload.len() as u64;
                }
            }
            d = conn.read_datagram() => {
                let d = match d {
                    Ok(d) => d,
                    Err(e) => break e.into(),
                };
                asm.receive(&d, |dg| {
                    let Some(from) = theirs.addr(dg.src) else {
                        // A source outside what the peer announced: it cannot speak for it.
                        routed.bad_source += 1;
                        return;
                    };
                    let Some(to) = ctx.announce.addr(dg.dst) else {
                        routed.bad_destination += 1;
                        return;
                    };
                    match ctx.directory.deliver(to, from, dg.payload) {
                        Ok(()) => {
                            routed.rx_datagrams += 1;
                            routed.rx_bytes += dg.payload.len() as u64;
                        }
                        Err(Undelivered::NoAllocation) => routed.no_allocation += 1,
                        Err(Undelivered::Full) => routed.inbox_full += 1,
                    }
                });
            }
            _ = tick.tick() => {
                let q = conn.stats();
                // Cells that never left (QUIC's send buffer full) are lost as much as those the
                // path dropped.
                let unsent = clocked.unsent();
                let tripped = breaker.observe(
                    Instant::now(),
                    q.path.sent_packets.saturating_add(unsent),
                    q.path.lost_packets.saturating_add(unsent),
                    conn.rtt(),
                );
                publish(&asm, &routed, &breaker);
                if tripped {
                    tracing::warn!(link = %peer.name, loss = breaker.last_loss(), queueing = breaker.queueing(), "mesh link breaker tripped");
                    break LinkEnd::Breaker(breaker.last_loss() * 100.0, breaker.queueing());
                }
            }
        }
    };
    ctx.clock.remove(&clocked);
    publish(&asm, &routed, &breaker);
    end
}
