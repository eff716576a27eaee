//! A worker's thread: its current-thread runtime and the tasks that share its state — the UDP
//! plane, the stream listeners, the timers, the shaper's releases and reloads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use super::health::{self, Fault, Health};
use super::node::NodeShared;
use super::peers::PeerPaths;
use super::worker::{Io, LISTENER_TOKEN, Listener, Shaping, Worker};
use super::{EVENTS, now, stream};
use crate::mesh::routes::{Inbound, RouteCache};
use crate::metrics::{IoStats, WorkerReport};
use crate::proto::rng::XorShift;
use crate::proto::server::{ClientKey, Server, Transport};
use crate::shaping::{Policy, Shaper, ShapingStats};
use crate::sys::{Epoll, SendQueue};

/// Rounds run before the plane yields to the worker's other tasks (timers, TCP/TLS).
const ROUNDS_PER_YIELD: usize = 4;
/// Datagrams queued per listener before a `sendmmsg`, and the bytes they may take.
const SEND_QUEUE: usize = 64;
const SEND_ARENA: usize = 128 << 10;
/// The longest the timer task sleeps, so that gauges are fresh even on an idle worker.
const MAX_TICK: Duration = Duration::from_secs(1);

/// Runs the UDP plane: waits until a socket of the set is ready, then runs rounds until none
/// is (or yields after [`ROUNDS_PER_YIELD`] so timers and TCP/TLS get their turn). After work,
/// the thread rests `batch_wait` before it looks again: datagrams that arrive meanwhile wake
/// nobody (no thread waits on the set) and are read in one batch. At call rates a worker
/// otherwise wakes for nearly every datagram, and the wakeups, on the waking side as on this
/// one, are most of what relaying costs the machine (benches/fast_path.sh: −22 % CPU for the
/// whole machine at 100 µs, for ~0.17 ms more round trip).
async fn udp_task(worker: Rc<RefCell<Worker>>, set: AsyncFd<OwnedFd>) {
    let rest = worker.borrow().io.node.batch_wait;
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
            // Not while shaping: the shaper's slots keep their own time on this thread.
            if !rest.is_zero() && worker.borrow().shaping.shaper.is_off() {
                std::thread::sleep(rest);
            }
        } else {
            drop(guard);
            tokio::task::yield_now().await;
        }
    }
}

/// Runs the core's timers (allocations, permissions, channels, reservations) on time, and
/// publishes the worker's counters.
async fn timer_task(worker: Rc<RefCell<Worker>>, node: Arc<NodeShared>, index: usize) {
    loop {
        let deadline = {
            let w = worker.borrow();
            let cap = Instant::now() + MAX_TICK;
            w.server.poll_timeout().map_or(cap, |t| t.min(cap))
        };
        tokio::time::sleep_until(deadline.into()).await;
        node.health.beat(index, Instant::now());
        let mut w = worker.borrow_mut();
        let w = &mut *w;
        w.server.handle_timeout(now(), &mut w.io);
        w.io.flush();
        w.charge_fast_path();
        w.shaping.shaper.housekeeping(Instant::now());
        w.io.stats.relayed_sockets = w.io.peers.len() as u64;
        w.io.stats.fast_bindings = w.io.fast.len() as u64;
        w.io.stats.connections = [Transport::Tcp, Transport::Tls]
            .map(|t| w.io.conns.keys().filter(|k| k.transport == t).count() as u64);
        node.reports.publish(
            index,
            WorkerReport {
                core: w.server.stats(),
                occupancy: w.server.occupancy(),
                shaping: w.shaping.shaper.stats(),
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
        let Worker { shaping, io, .. } = &mut *w;
        shaping
            .shaper
            .set_profiles(Instant::now(), next, |client, frame| {
                io.send_to_client(client, frame)
            });
        io.flush();
        shaping.wake.notify_one();
        // Which flows' client leg may skip user space follows the policies.
        w.server.fast_path_resync();
        w.sync_fast_path();
    }
}

/// Sends re-clocked frames when they are due: one sleep for the earliest release, no timer per
/// packet.
async fn shaper_task(worker: Rc<RefCell<Worker>>, wake: Rc<tokio::sync::Notify>) {
    loop {
        let due = worker.borrow().shaping.shaper.next_deadline();
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
            shaping,
            io,
            ..
        } = &mut *w;
        let mut send = |client: ClientKey, frame: &[u8]| io.send_to_client(client, frame);
        let now = Instant::now();
        shaping.shaper.pop_due(now, &mut send);
        shaping
            .shaper
            .cover_due(now, |k| server.has_allocation(k), &mut send);
        io.flush();
        shaping.armed = shaping.shaper.next_deadline();
    }
}

/// Hands what arrives in the worker's inbox (datagrams from links, and from other workers'
/// allocations) to its allocations, a batch at a time.
async fn inbox_task(worker: Rc<RefCell<Worker>>, mut inbox: mpsc::Receiver<Inbound>) {
    /// Datagrams handled before the task yields.
    const BATCH: usize = 64;
    while let Some(first) = inbox.recv().await {
        let mut w = worker.borrow_mut();
        let now = now();
        w.inbound(now, first);
        for _ in 1..BATCH {
            match inbox.try_recv() {
                Ok(m) => w.inbound(now, m),
                Err(_) => break,
            }
        }
        w.io.flush();
    }
}

/// Runs a task that lasts the worker's life; its end (it returned, or panicked and tokio caught
/// it) fails the node. On a stop it is aborted, which ends it without this.
fn spawn_supervised(
    health: &Arc<Health>,
    index: usize,
    task: impl Future<Output = ()> + 'static,
) -> tokio::task::JoinHandle<()> {
    let health = health.clone();
    tokio::task::spawn_local(async move {
        task.await;
        health.fail(index, Fault::TaskEnded);
    })
}

/// Runs one worker until `stop` turns true.
pub(super) fn run_worker(
    index: usize,
    node: Arc<NodeShared>,
    listeners: Vec<std::net::UdpSocket>,
    stream_listeners: Vec<(std::net::TcpListener, Transport)>,
    inbox: mpsc::Receiver<Inbound>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    health::watch_this_thread(&node.health, index);
    node.health.beat(index, Instant::now());
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
        let mut server = Server::new(node.core.clone());
        if node.fast_path.is_some() {
            server.track_fast_path();
        }
        let worker = Rc::new(RefCell::new(Worker::new(
            server,
            Io {
                node: node.clone(),
                index,
                routes: RouteCache::new(node.routes.clone()),
                scratch: Vec::new(),
                epoll,
                listeners: socks,
                conns: HashMap::new(),
                peers: PeerPaths::default(),
                rng: XorShift::from_os(),
                stats: IoStats::default(),
                warned_bind: false,
                new_conns: stream::NewConnections::new(&node.streams),
                fast: Default::default(),
            },
            Shaping {
                shaper: Shaper::with_profiles(
                    node.shaping.borrow().clone(),
                    node.epoch,
                    XorShift::from_os().next_u64(),
                ),
                wake: wake.clone(),
                armed: None,
            },
        )));
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
        let health = &node.health;
        let mut tasks = vec![spawn_supervised(
            health,
            index,
            udp_task(worker.clone(), set),
        )];
        for (i, (l, transport)) in stream_listeners.into_iter().enumerate() {
            let listener = (udp_listeners + i) as u16;
            tasks.push(spawn_supervised(
                health,
                index,
                stream::accept_task(
                    Rc::downgrade(&worker),
                    node.clone(),
                    tokio::net::TcpListener::from_std(l)?,
                    listener,
                    transport,
                ),
            ));
        }
        tasks.push(spawn_supervised(
            health,
            index,
            timer_task(worker.clone(), node.clone(), index),
        ));
        // Always running (it sleeps when nothing is shaped), so a reload can turn shaping on.
        tasks.push(spawn_supervised(
            health,
            index,
            shaper_task(worker.clone(), wake.clone()),
        ));
        tasks.push(spawn_supervised(
            health,
            index,
            reload_task(worker.clone(), node.shaping.clone()),
        ));
        tasks.push(spawn_supervised(
            health,
            index,
            inbox_task(worker.clone(), inbox),
        ));
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
        let shaping: ShapingStats = w.shaping.shaper.stats();
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
