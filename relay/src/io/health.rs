//! Whether every worker still turns its loop. A worker whose task panicked or ended, or whose
//! thread stopped coming back to its timer (an endless loop, a blocking call), serves nothing
//! while the process is up; the node must then say so at once (`/readyz` and `/healthz` answer
//! 503, so the allocator and the orchestrator stop sending callers) and exit non-zero so it is
//! replaced. This file sits below every other part of the driver: workers report to it, the
//! admin endpoint and the process's lifecycle read it.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Why a worker is counted as dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A task of the worker panicked (the panic message went to stderr).
    Panicked,
    /// A task that runs for the worker's life returned.
    TaskEnded,
    /// The worker's timer did not run for longer than the stall bound.
    Stalled,
}

impl Fault {
    /// The word in logs and probe answers.
    pub fn label(self) -> &'static str {
        match self {
            Fault::Panicked => "panicked",
            Fault::TaskEnded => "a task ended",
            Fault::Stalled => "stalled",
        }
    }
}

/// The first failure of a node's workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The worker's index.
    pub worker: usize,
    /// What happened to it.
    pub fault: Fault,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worker {} {}", self.worker, self.fault.label())
    }
}

/// The workers' heartbeats and the node's first failure.
pub struct Health {
    origin: Instant,
    /// Per worker: milliseconds since `origin` at its latest timer turn, plus one (0: none yet).
    beats: Box<[AtomicU64]>,
    failed: OnceLock<Failure>,
}

impl Health {
    /// The health of a node of `workers` workers, none of which has turned yet.
    pub fn new(workers: usize) -> Self {
        Health {
            origin: Instant::now(),
            beats: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            failed: OnceLock::new(),
        }
    }

    fn millis(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_millis() as u64 + 1
    }

    /// Worker `i` turned its loop at `now`.
    pub fn beat(&self, i: usize, now: Instant) {
        if let Some(b) = self.beats.get(i) {
            b.store(self.millis(now), Ordering::Relaxed);
        }
    }

    /// Worker `i` failed; the first failure is kept.
    pub fn fail(&self, worker: usize, fault: Fault) {
        if self.failed.set(Failure { worker, fault }).is_ok() {
            tracing::error!(
                worker,
                fault = fault.label(),
                "a worker failed: the node is not ready and exits so that it is replaced"
            );
        }
    }

    /// The node's first failure, if any.
    pub fn failure(&self) -> Option<Failure> {
        self.failed.get().copied()
    }

    /// Checks every worker against the stall bound at `now` (a worker that has not turned yet
    /// counts from the node's start), records a stall as a failure, and returns the node's
    /// first failure, if any.
    pub fn check(&self, now: Instant, stall: Duration) -> Option<Failure> {
        let now_ms = self.millis(now);
        let bound = stall.as_millis() as u64;
        for (i, b) in self.beats.iter().enumerate() {
            let last = b.load(Ordering::Relaxed).max(1);
            if now_ms.saturating_sub(last) > bound {
                self.fail(i, Fault::Stalled);
            }
        }
        self.failure()
    }
}

thread_local! {
    /// The worker this thread runs, for the panic hook.
    static WORKER: RefCell<Option<(Weak<Health>, usize)>> = const { RefCell::new(None) };
}

/// Marks this thread as worker `index` of the node whose health is `health`: a panic on it
/// (in any of its tasks, which tokio would otherwise catch and forget) fails the node.
pub(super) fn watch_this_thread(health: &Arc<Health>, index: usize) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let worker = WORKER.try_with(|w| w.borrow().clone()).ok().flatten();
            if let Some((health, i)) = worker
                && let Some(h) = health.upgrade()
            {
                h.fail(i, Fault::Panicked);
            }
        }));
    });
    WORKER.with(|w| *w.borrow_mut() = Some((Arc::downgrade(health), index)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_stops_beating_fails_the_node_and_the_first_failure_stays() {
        let h = Health::new(2);
        let t0 = Instant::now();
        h.beat(0, t0);
        h.beat(1, t0);
        let stall = Duration::from_secs(5);
        assert_eq!(h.check(t0 + Duration::from_secs(4), stall), None);
        h.beat(0, t0 + Duration::from_secs(4));
        let f = h.check(t0 + Duration::from_secs(6), stall);
        assert_eq!(
            f,
            Some(Failure {
                worker: 1,
                fault: Fault::Stalled
            })
        );
        h.fail(0, Fault::Panicked);
        assert_eq!(h.failure(), f, "the first failure is the one reported");
    }

    #[test]
    fn a_panic_on_a_watched_thread_fails_the_node() {
        let h = Arc::new(Health::new(3));
        let h2 = h.clone();
        let r = std::thread::spawn(move || {
            watch_this_thread(&h2, 2);
            panic!("injected by the test");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(
            h.failure(),
            Some(Failure {
                worker: 2,
                fault: Fault::Panicked
            })
        );
        // A panic on a thread that is no worker fails nothing.
        let other = Arc::new(Health::new(1));
        let _ = std::thread::spawn(|| panic!("elsewhere")).join();
        assert_eq!(other.failure(), None);
    }
}
