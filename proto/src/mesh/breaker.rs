//! A circuit breaker for a link (after RFC 8084): QUIC's own congestion response is turned off
//! so that the visible rate never follows the calls, and this is what stops a link that the
//! path cannot carry. Each interval it compares the packets QUIC declared lost with those it
//! sent, and the round-trip time with the least the link has seen; an interval that lost more
//! than `max_loss` of its packets, or whose RTT stood more than `max_queueing` above that least
//! (a queue building at a bottleneck with a deep buffer, which loses little and delays all), is
//! bad, and `trip_after` bad intervals in a row break the link: the driver closes it, holds it
//! down for [`BreakerConfig::hold`] (doubled at each trip in a row, up to eight times), and media
//! takes the fallback path meanwhile.

use std::time::{Duration, Instant};

/// The breaker's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Length of one measurement.
    pub interval: Duration,
    /// Loss fraction above which an interval counts as bad.
    pub max_loss: f64,
    /// Bad intervals in a row that break the link.
    pub trip_after: u32,
    /// RTT above the link's least beyond which an interval counts as bad.
    pub max_queueing: Duration,
    /// How long a broken link stays down before it is tried again.
    pub hold: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            interval: Duration::from_secs(1),
            max_loss: 0.2,
            trip_after: 3,
            max_queueing: Duration::from_millis(100),
            hold: Duration::from_secs(60),
        }
    }
}

/// The state of one link's breaker.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    /// Start of the current interval and the totals then.
    mark: Option<(Instant, u64, u64)>,
    bad: u32,
    /// The last interval's loss fraction.
    last_loss: f64,
    /// The least RTT seen.
    min_rtt: Option<Duration>,
    /// Whether the last interval's RTT stood above the least by more than allowed.
    queueing: bool,
}

impl Breaker {
    /// A breaker with these settings.
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            mark: None,
            bad: 0,
            last_loss: 0.0,
            min_rtt: None,
            queueing: false,
        }
    }

    /// The loss fraction of the last whole interval.
    pub fn last_loss(&self) -> f64 {
        self.last_loss
    }

    /// Whether the last whole interval's RTT showed a standing queue.
    pub fn queueing(&self) -> bool {
        self.queueing
    }

    /// How long a link broken after `trips` trips in a row stays down.
    pub fn hold(cfg: &BreakerConfig, trips: u32) -> Duration {
        cfg.hold.saturating_mul(1 << trips.saturating_sub(1).min(3))
    }

    /// Takes the connection's running totals of packets sent and lost and its current RTT;
    /// true when the link must be broken.
    pub fn observe(&mut self, now: Instant, sent: u64, lost: u64, rtt: Duration) -> bool {
        let min = self.min_rtt.map_or(rtt, |m| m.min(rtt));
        self.min_rtt = Some(min);
        let Some((t0, s0, l0)) = self.mark else {
            self.mark = Some((now, sent, lost));
            return false;
        };
        if now.saturating_duration_since(t0) < self.cfg.interval {
            return false;
        }
        let s = sent.saturating_sub(s0);
        let l = lost.saturating_sub(l0);
        self.mark = Some((now, sent, lost));
        self.last_loss = if s == 0 { 0.0 } else { l as f64 / s as f64 };
        self.queueing = rtt.saturating_sub(min) > self.cfg.max_queueing;
        if (s > 0 && self.last_loss > self.cfg.max_loss) || self.queueing {
            self.bad = self.bad.saturating_add(1);
        } else {
            self.bad = 0;
        }
        self.bad >= self.cfg.trip_after.max(1)
    }
}
