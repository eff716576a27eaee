//! The sending half of a link: a small queue of datagrams, cut into cells that leave at a
//! constant rate whatever is queued.
//!
//! * **One size.** Every cell is [`CELL_SIZE`] bytes; records run across cell boundaries.
//! * **One rate.** A cell is due every `1 / rate` seconds, with media or without (cover). The
//!   rate is a rung of a short ladder ([`LinkConfig::rates`]): up when the offered load stays
//!   above [`LinkConfig::up_util`] of the rung for [`LinkConfig::up_after`], down one rung only
//!   when it stayed below [`LinkConfig::down_util`] of the rung beneath for
//!   [`LinkConfig::down_after`] (minutes): the rate follows the cluster's load coarsely and
//!   rarely, never a call's talk spurts.
//! * **No standing queue.** A datagram that waited more than [`LinkConfig::max_delay`] (plus
//!   one cell interval, the wait for the next cell) before its first byte left is dropped
//!   (`stale`); when the queue holds more than the rate can send in that time, the oldest
//!   datagram of the flow holding the most bytes is dropped (`overflow`), so one heavy flow
//!   cannot starve the others.
//!
//! Time is passed in; the driver calls [`LinkScheduler::poll_cell`] when
//! [`LinkScheduler::poll_timeout`] says, and hands each cell to QUIC.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Endpoint;
use super::cell::{CELL_BODY, CELL_HEADER, CELL_SIZE, NO_RECORD, RECORD_HEADER};

/// The ladder and queue settings of every link of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// Cell rates (cells per second), ascending: the ladder. A link starts on the first.
    pub rates: Vec<u32>,
    /// Longest a datagram waits for its first byte to leave, beyond one cell interval.
    pub max_delay: Duration,
    /// Fraction of a rung's capacity above which the link steps up (after `up_after`).
    pub up_util: f64,
    /// How long the load must stay above `up_util` before the link steps up.
    pub up_after: Duration,
    /// Fraction of the rung beneath's capacity below which the link steps down (after
    /// `down_after`).
    pub down_util: f64,
    /// How long the load must stay below `down_util` of the rung beneath before stepping down.
    pub down_after: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            rates: default_rates(),
            max_delay: Duration::from_millis(5),
            up_util: 0.85,
            up_after: Duration::from_secs(3),
            down_util: 0.6,
            down_after: Duration::from_secs(300),
        }
    }
}

/// The first rung of the default ladder.
pub const FLOOR_RATE: u32 = 750;

/// The default ladder: 750 cells/s (7.2 Mbit/s of 1 200-byte cells; a cell every 1.33 ms, so a
/// datagram waits 0.67 ms for one on average) up to 25 600 (246 Mbit/s), each rung 1.5 times
/// the one beneath: a short ladder (10 rungs) whose steps cost at most 1.5x over the load that
/// needs them. The floor is what a link costs idle, and what bounds the delay it adds: half an
/// interval on average (500 cells/s measured +1.1 ms p50 beyond plain UDP, 750 +0.8 ms:
/// `benches/mesh.rs`).
pub fn default_rates() -> Vec<u32> {
    const FLOOR: u32 = FLOOR_RATE;
    const TOP: u32 = 25_600;
    let mut r = vec![FLOOR];
    while let Some(&last) = r.last() {
        if last >= TOP {
            break;
        }
        r.push((last.saturating_mul(3) / 2).min(TOP));
    }
    r
}

/// Why a datagram was dropped on the sending side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxDrop {
    /// It waited longer than the queue allows.
    Stale,
    /// The queue was full; this was the oldest of the heaviest flow.
    Overflow,
    /// Larger than a record can carry.
    TooLarge,
}

crate::counters! {
/// What a sending half counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Cells sent that carried some media.
    pub media_cells: u64,
    /// Cells sent that carried none (cover).
    pub cover_cells: u64,
    /// Datagrams and their payload bytes that entered cells.
    pub datagrams: u64,
    /// Payload bytes of those datagrams.
    pub bytes: u64,
    /// Datagrams dropped, by [`TxDrop`].
    pub stale: u64,
    /// See [`TxDrop::Overflow`].
    pub overflow: u64,
    /// See [`TxDrop::TooLarge`].
    pub too_large: u64,
    /// Times the driver came so late that cells were skipped rather than sent in a burst.
    pub late: u64,
    /// Rate changes.
    pub steps: u64,
    /// Queue delays of datagrams (time from `push` to their first byte leaving), counted in
    /// the buckets of [`DELAY_BUCKETS_US`] (the last counts everything above).
    pub delay_buckets: [u64; DELAY_BUCKETS_US.len() + 1],
    /// Sum of those delays, in microseconds.
    pub delay_sum_us: u64,
}
}

/// Upper bounds (µs) of the queue-delay buckets.
pub const DELAY_BUCKETS_US: [u64; 7] = [250, 500, 1_000, 2_500, 5_000, 10_000, 25_000];

impl TxStats {
    fn delay(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = DELAY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(DELAY_BUCKETS_US.len());
        self.delay_buckets[i] += 1;
        self.delay_sum_us = self.delay_sum_us.saturating_add(us);
    }
}

struct Queued {
    at: Instant,
    src: Endpoint,
    dst: Endpoint,
    /// Record header then payload.
    record: Vec<u8>,
}

impl Queued {
    fn flow(&self) -> (Endpoint, Endpoint) {
        (self.src, self.dst)
    }
}

/// The sending half of one link.
pub struct LinkScheduler {
    cfg: LinkConfig,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// Bytes of the front record already sent (it is in progress when > 0).
    sent: usize,
    seq: u32,
    rung: usize,
    next_due: Instant,
    /// The load measurement: record bytes offered since `window_start`.
    window_start: Instant,
    offered: u64,
    above_since: Option<Instant>,
    below_since: Option<Instant>,
    stats: TxStats,
}

/// Largest datagram a link carries (a WebRTC client sends at most ~1 300 bytes; larger UDP
/// would hold the link's head for many cells): larger ones are dropped as [`TxDrop::TooLarge`].
pub const MAX_DATAGRAM: usize = 4096;

/// Length of a load measurement window.
const WINDOW: Duration = Duration::from_secs(1);
/// Cells the driver may owe before the schedule is reset rather than caught up in a burst.
const MAX_CATCH_UP: u32 = 4;

impl LinkScheduler {
    /// A link starting now on the first rung. An empty ladder is one rung of [`FLOOR_RATE`].
    pub fn new(mut cfg: LinkConfig, now: Instant) -> Self {
        cfg.rates.retain(|&r| r > 0);
        cfg.rates.sort_unstable();
        cfg.rates.dedup();
        if cfg.rates.is_empty() {
            cfg.rates.push(FLOOR_RATE);
        }
        LinkScheduler {
            cfg,
            queue: VecDeque::new(),
            queued_bytes: 0,
            sent: 0,
            seq: 0,
            rung: 0,
            next_due: now,
            window_start: now,
            offered: 0,
            above_since: None,
            below_since: None,
            stats: TxStats::default(),
        }
    }

    /// The cell rate in force (cells per second).
    pub fn rate(&self) -> u32 {
        self.cfg.rates[self.rung]
    }

    /// The rung in force (0 = the lowest).
    pub fn rung(&self) -> usize {
        self.rung
    }

    /// What was counted so far.
    pub fn stats(&self) -> TxStats {
        self.stats
    }

    /// Datagrams waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.rate()
    }

    /// Bytes the queue may hold: what the rate sends in `max_delay`, and at least two of the
    /// largest records WebRTC sends, so a large datagram fits at the lowest rung. One datagram
    /// waiting alone is never dropped for its size.
    fn capacity(&self) -> usize {
        let per_sec = u64::from(self.rate()) * CELL_BODY as u64;
        let in_delay = per_sec.saturating_mul(self.cfg.max_delay.as_micros() as u64) / 1_000_000;
        (in_delay as usize).max(2 * (1_500 + RECORD_HEADER))
    }

    /// Queues a datagram from `src` (this node's) to `dst` (the linked node's).
    pub fn push(
        &mut self,
        now: Instant,
        src: Endpoint,
        dst: Endpoint,
        payload: &[u8],
    ) -> Result<(), TxDrop> {
        if payload.len() > MAX_DATAGRAM {
            self.stats.too_large += 1;
            return Err(TxDrop::TooLarge);
        }
        let len = payload.len() as u16;
        let mut record = Vec::with_capacity(RECORD_HEADER + payload.len());
        record.extend_from_slice(&super::cell::record_header(src, dst, len));
        record.extend_from_slice(payload);
        self.offered = self.offered.saturating_add(record.len() as u64);
        self.queued_bytes += record.len();
        self.queue.push_back(Queued {
            at: now,
            src,
            dst,
            record,
        });
        let cap = self.capacity();
        let mut dropped_self = false;
        while self.queued_bytes > cap && self.queue.len() > 1 + usize::from(self.sent > 0) {
            // The flow with the most bytes queued loses its oldest datagram (never the one in
            // progress).
            let skip = usize::from(self.sent > 0);
            let Some(heaviest) = self.heaviest_flow(skip) else {
                break;
            };
            let Some(i) = self
                .queue
                .iter()
                .skip(skip)
                .position(|q| q.flow() == heaviest)
            else {
                break;
            };
            let i = i + skip;
            if i + 1 == self.queue.len() {
                dropped_self = true;
            }
            if let Some(q) = self.queue.remove(i) {
                self.queued_bytes -= q.record.len();
            }
            self.stats.overflow += 1;
        }
        if dropped_self {
            Err(TxDrop::Overflow)
        } else {
            Ok(())
        }
    }

    fn heaviest_flow(&self, skip: usize) -> Option<(Endpoint, Endpoint)> {
        let mut best: Option<((Endpoint, Endpoint), usize)> = None;
        let mut seen: Vec<((Endpoint, Endpoint), usize)> = Vec::new();
        for q in self.queue.iter().skip(skip) {
            match seen.iter_mut().find(|(f, _)| *f == q.flow()) {
                Some((_, b)) => *b += q.record.len(),
                None => seen.push((q.flow(), q.record.len())),
            }
        }
        for (f, b) in seen {
            if best.is_none_or(|(_, bb)| b > bb) {
                best = Some((f, b));
            }
        }
        best.map(|(f, _)| f)
    }

    /// When the next cell is due.
    pub fn poll_timeout(&self) -> Instant {
        self.next_due
    }

    /// Writes the next cell into `cell` ([`CELL_SIZE`] bytes) if one is due at `now`; true
    /// when one was written. Call again until it returns false: a driver that woke late sends
    /// the few cells it owes (more than [`MAX_CATCH_UP`] are skipped and counted, never burst).
    pub fn poll_cell(&mut self, now: Instant, cell: &mut [u8]) -> bool {
        self.measure(now);
        if now < self.next_due || cell.len() < CELL_SIZE {
            return false;
        }
        let interval = self.interval();
        if now.saturating_duration_since(self.next_due) > interval * MAX_CATCH_UP {
            self.stats.late += 1;
            self.next_due = now;
        }
        self.next_due += interval;
        self.drop_stale(now, interval);
        self.fill(now, &mut cell[..CELL_SIZE]);
        true
    }

    fn drop_stale(&mut self, now: Instant, interval: Duration) {
        let limit = self.cfg.max_delay + interval;
        let skip = usize::from(self.sent > 0);
        let before = self.queue.len();
        let mut i = skip;
        while i < self.queue.len() {
            if now.saturating_duration_since(self.queue[i].at) > limit {
                if let Some(q) = self.queue.remove(i) {
                    self.queued_bytes -= q.record.len();
                }
            } else {
                i += 1;
            }
        }
        self.stats.stale += (before - self.queue.len()) as u64;
    }

    fn fill(&mut self, now: Instant, cell: &mut [u8]) {
        let mut at = CELL_HEADER;
        let mut first = NO_RECORD;
        // The rest of the record in progress.
        if self.sent > 0 {
            at += self.copy_front(&mut cell[at..]);
        }
        while CELL_SIZE - at > RECORD_HEADER && !self.queue.is_empty() && self.sent == 0 {
            if first == NO_RECORD {
                first = (at - CELL_HEADER) as u16;
            }
            let waited = now.saturating_duration_since(self.queue[0].at);
            self.stats.delay(waited);
            at += self.copy_front(&mut cell[at..]);
        }
        let media = at > CELL_HEADER;
        cell[at..].fill(0);
        super::cell::write_header(cell, self.seq, first);
        self.seq = self.seq.wrapping_add(1);
        if media {
            self.stats.media_cells += 1;
        } else {
            self.stats.cover_cells += 1;
        }
    }

    /// Copies what fits of the front record into `out`; pops it when it is all sent.
    fn copy_front(&mut self, out: &mut [u8]) -> usize {
        let Some(q) = self.queue.front() else {
            return 0;
        };
        let rest = &q.record[self.sent..];
        let n = rest.len().min(out.len());
        out[..n].copy_from_slice(&rest[..n]);
        self.sent += n;
        if self.sent == q.record.len() {
            self.stats.datagrams += 1;
            self.stats.bytes += (q.record.len() - RECORD_HEADER) as u64;
            self.queued_bytes -= q.record.len();
            self.queue.pop_front();
            self.sent = 0;
        }
        n
    }

    /// Closes load windows up to `now` and moves on the ladder when the rules say so.
    fn measure(&mut self, now: Instant) {
        if now.saturating_duration_since(self.window_start) < WINDOW {
            return;
        }
        let secs = now
            .saturating_duration_since(self.window_start)
            .as_secs_f64()
            .max(1e-3);
        let demand = self.offered as f64 / CELL_BODY as f64 / secs;
        self.offered = 0;
        self.window_start = now;
        let rate = f64::from(self.rate());
        if demand > self.cfg.up_util * rate && self.rung + 1 < self.cfg.rates.len() {
            let since = *self.above_since.get_or_insert(now);
            if now.saturating_duration_since(since) + WINDOW >= self.cfg.up_after {
                let target = self
                    .cfg
                    .rates
                    .iter()
                    .position(|&r| demand <= self.cfg.up_util * f64::from(r))
                    .unwrap_or(self.cfg.rates.len() - 1);
                self.step_to(target.max(self.rung + 1), now);
            }
        } else {
            self.above_since = None;
        }
        let below =
            self.rung > 0 && demand < self.cfg.down_util * f64::from(self.cfg.rates[self.rung - 1]);
        if below {
            let since = *self.below_since.get_or_insert(now);
            if now.saturating_duration_since(since) + WINDOW >= self.cfg.down_after {
                self.step_to(self.rung - 1, now);
            }
        } else {
            self.below_since = None;
        }
    }

    fn step_to(&mut self, rung: usize, now: Instant) {
        if rung != self.rung {
            self.rung = rung;
            self.stats.steps += 1;
            self.above_since = None;
            self.below_since = None;
            if self.next_due < now {
                self.next_due = now;
            }
        }
    }
}
