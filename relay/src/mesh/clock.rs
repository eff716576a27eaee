//! The cells' clock: one thread that sends every link's cells when the scheduler says they are
//! due, to within tens of microseconds. tokio's timers have a millisecond's grain: on them a
//! cell every 2 ms left up to a millisecond late, which added that much to every datagram the
//! link carried (measured: +1.2 to +1.9 ms p50 at 500 and 750 cells/s, `benches/mesh.rs`) and
//! drew the timer's grid into the gaps between cells on the wire.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::proto::mesh::cell::CELL_SIZE;
use crate::proto::mesh::sched::LinkScheduler;

/// Longest the clock sleeps with no cell due (it is woken when a link joins).
const IDLE: Duration = Duration::from_millis(50);

/// A link on the clock: its scheduler (the link's task pushes datagrams into it, the clock
/// takes cells out) and its connection.
pub(super) struct Clocked {
    sched: Mutex<LinkScheduler>,
    conn: quinn::Connection,
    /// Set by the link when it ends; the clock forgets it on its next pass.
    ended: AtomicBool,
    /// Cells that found QUIC's send buffer full, so that one older cell never left: the
    /// socket or the interface beneath is backed up (a bottleneck at this relay's own egress,
    /// which QUIC never counts as loss). The breaker counts them as lost.
    unsent: AtomicU64,
    /// The first error sending a cell; the link's task ends on it.
    failed: Mutex<Option<quinn::SendDatagramError>>,
    /// Wakes the link's task when `failed` is set.
    pub(super) failure: tokio::sync::Notify,
}

impl Clocked {
    /// The scheduler, for pushing datagrams and reading its counters.
    pub(super) fn sched(&self) -> MutexGuard<'_, LinkScheduler> {
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cells pushed out of QUIC's send buffer before they left (see the field).
    pub(super) fn unsent(&self) -> u64 {
        self.unsent.load(Ordering::Relaxed)
    }

    /// The error that stopped the cells, if one did.
    pub(super) fn take_failure(&self) -> Option<quinn::SendDatagramError> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

struct Shared {
    links: Mutex<Vec<Arc<Clocked>>>,
    stop: AtomicBool,
}

/// The clock's thread.
pub(super) struct Clock {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Clock {
    /// Starts the thread.
    pub(super) fn start() -> std::io::Result<Clock> {
        let shared = Arc::new(Shared {
            links: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("veil-mesh-clock".into())
                .spawn(move || run(&shared))?
        };
        Ok(Clock {
            shared,
            thread: Some(thread),
        })
    }

    /// Puts a link on the clock; its first cell leaves when its scheduler says.
    pub(super) fn add(&self, sched: LinkScheduler, conn: quinn::Connection) -> Arc<Clocked> {
        let c = Arc::new(Clocked {
            sched: Mutex::new(sched),
            conn,
            ended: AtomicBool::new(false),
            unsent: AtomicU64::new(0),
            failed: Mutex::new(None),
            failure: tokio::sync::Notify::new(),
        });
        self.shared
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c.clone());
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        c
    }

    /// Takes a link off the clock: no cell of it leaves after this returns.
    pub(super) fn remove(&self, c: &Arc<Clocked>) {
        c.ended.store(true, Ordering::Release);
        self.shared
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l| !Arc::ptr_eq(l, c));
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared) {
    // Sleep as close to the due time as the kernel can (the default slack is 50 µs).
    // SAFETY: prctl with PR_SET_TIMERSLACK takes an integer and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong);
    }
    let mut cell = vec![0u8; CELL_SIZE];
    while !shared.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let mut next = now + IDLE;
        {
            let links = shared.links.lock().unwrap_or_else(|e| e.into_inner());
            for l in links.iter() {
                if l.ended.load(Ordering::Acquire) {
                    continue;
                }
                let mut sched = l.sched();
                while sched.poll_cell(now, &mut cell) {
                    if l.conn.datagram_send_buffer_space() < CELL_SIZE {
                        l.unsent.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Err(e) = l.conn.send_datagram(Bytes::copy_from_slice(&cell)) {
                        l.ended.store(true, Ordering::Release);
                        *l.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        l.failure.notify_one();
                        break;
                    }
                }
                next = next.min(sched.poll_timeout());
            }
        }
        let wait = next.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::park_timeout(wait);
        }
    }
}
