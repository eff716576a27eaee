//! A circuit breaker for a link (after RFC 8084): QUIC's own congestion response is turned off
//! so that the visible rate never follows the calls, and this is what stops a link that the
//! path cannot carry. Each interval it compares the packets QUIC declared lost with those it
//! sent; a link that lost more than `max_loss` of them for `trip_after` intervals in a row is
//! broken (the driver closes it, and media takes the fallback path until it is back).

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
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            interval: Duration::from_secs(1),
            max_loss: 0.2,
            trip_after: 3,
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
}

impl Breaker {
    /// A breaker with these settings.
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            mark: None,
            bad: 0,
            last_loss: 0.0,
        }
    }

    /// The loss fraction of the last whole interval.
    pub fn last_loss(&self) -> f64 {
        self.last_loss
    }

    /// Takes the connection's running totals of packets sent and lost; true when the link
    /// must be broken.
    pub fn observe(&mut self, now: Instant, sent: u64, lost: u64) -> bool {
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
        if s > 0 && self.last_loss > self.cfg.max_loss {
            self.bad = self.bad.saturating_add(1);
        } else {
            self.bad = 0;
        }
        self.bad >= self.cfg.trip_after.max(1)
    }
}
