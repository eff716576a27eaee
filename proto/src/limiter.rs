//! Token buckets on the driver's clock: a fixed-size table of them per source prefix, and the
//! bandwidth meters of allocations and users.
//!
//! [`TokenBucket`] is the one rate primitive of the core: the replies to unauthenticated
//! requests per source prefix ([`PrefixLimiter`], issue 14 §2) and the bandwidth caps per
//! allocation and per user (§5) are built on it. Time is passed in as milliseconds on the
//! driver's monotonic clock; nothing here reads a clock or allocates after construction.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;

use crate::peer_filter::canonical;

/// A token bucket: up to `burst` tokens, refilled at `rate` per second. Tokens are kept in
/// thousandths, so that rates down to 1/s refill smoothly at millisecond steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    milli: u64,
    stamp_ms: u64,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens at `now_ms`.
    pub const fn full(burst: u64, now_ms: u64) -> Self {
        TokenBucket {
            milli: burst.saturating_mul(1000),
            stamp_ms: now_ms,
        }
    }

    /// Takes `cost` tokens if the bucket holds them at `now_ms` (after refilling at `rate`
    /// per second, up to `burst`); false, and nothing taken, if not. A clock that goes back
    /// refills nothing.
    #[inline]
    pub fn take(&mut self, now_ms: u64, rate: u64, burst: u64, cost: u64) -> bool {
        let cap = burst.saturating_mul(1000);
        let elapsed = now_ms.saturating_sub(self.stamp_ms);
        if elapsed > 0 {
            self.milli = self
                .milli
                .saturating_add(elapsed.saturating_mul(rate))
                .min(cap);
            self.stamp_ms = now_ms;
        }
        let want = cost.saturating_mul(1000);
        if self.milli >= want {
            self.milli -= want;
            true
        } else {
            false
        }
    }

    /// Whole tokens held (as of the last [`TokenBucket::take`]).
    pub fn tokens(&self) -> u64 {
        self.milli / 1000
    }

    /// Takes as many whole tokens as the bucket holds at `now_ms`, up to `max`; how many.
    pub fn take_up_to(&mut self, now_ms: u64, rate: u64, burst: u64, max: u64) -> u64 {
        self.take(now_ms, rate, burst, 0);
        let n = (self.milli / 1000).min(max);
        self.milli -= n * 1000;
        n
    }

    /// Takes `cost` tokens whatever the bucket holds (what was already sent), down to empty.
    pub fn take_all_of(&mut self, now_ms: u64, rate: u64, burst: u64, cost: u64) {
        self.take(now_ms, rate, burst, 0);
        self.milli = self.milli.saturating_sub(cost.saturating_mul(1000));
    }

    /// Gives back `n` tokens taken and not used, up to `burst`.
    pub fn give_back(&mut self, burst: u64, n: u64) {
        self.milli = self
            .milli
            .saturating_add(n.saturating_mul(1000))
            .min(burst.saturating_mul(1000));
    }
}

/// A grant of datagrams and payload bytes ([`Meter::reserve`]); `u64::MAX` where uncapped.
pub type Grant = (u64, u64);

/// A bandwidth cap: bytes and packets per second (0: no cap on that one), with a burst of one
/// second's worth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// Bytes of payload per second.
    pub bytes_per_second: u64,
    /// Packets per second.
    pub packets_per_second: u64,
}

/// The caps of one shaping profile (or the node's default): per allocation and per user, each
/// direction metered on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BandwidthCaps {
    /// Each allocation, per direction.
    pub allocation: Caps,
    /// All of one user's (REST id's) allocations on one worker together, per direction.
    pub user: Caps,
}

/// What one direction of an allocation or a user has used of its [`Caps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meter {
    bytes: TokenBucket,
    packets: TokenBucket,
}

impl Meter {
    /// A meter with full buckets for `caps` at `now_ms`.
    pub fn new(caps: &Caps, now_ms: u64) -> Self {
        Meter {
            bytes: TokenBucket::full(caps.bytes_per_second, now_ms),
            packets: TokenBucket::full(caps.packets_per_second, now_ms),
        }
    }

    /// Whether a packet of `len` bytes fits `caps` at `now_ms`; takes it if so.
    #[inline]
    pub fn admit(&mut self, caps: &Caps, now_ms: u64, len: usize) -> bool {
        let (bps, pps) = (caps.bytes_per_second, caps.packets_per_second);
        (pps == 0 || self.packets.take(now_ms, pps, pps, 1))
            && (bps == 0 || self.bytes.take(now_ms, bps, bps, len as u64))
    }
}

/// Reservations, for a path that forwards on its own and reports afterwards (the kernel fast
/// path): what it may carry is taken from the meter beforehand, so that it and the datagrams
/// admitted one by one together never exceed the caps.
impl Meter {
    /// Takes up to `max` of what the meter holds at `now_ms` (all of `max` on a side without
    /// a cap); what was taken.
    pub fn reserve(&mut self, caps: &Caps, now_ms: u64, max: Grant) -> Grant {
        let (bps, pps) = (caps.bytes_per_second, caps.packets_per_second);
        let packets = if pps == 0 {
            max.0
        } else {
            self.packets.take_up_to(now_ms, pps, pps, max.0)
        };
        let bytes = if bps == 0 {
            max.1
        } else {
            self.bytes.take_up_to(now_ms, bps, bps, max.1)
        };
        (packets, bytes)
    }

    /// Gives back what a reservation did not use.
    pub fn release(&mut self, caps: &Caps, unused: Grant) {
        let (bps, pps) = (caps.bytes_per_second, caps.packets_per_second);
        if pps != 0 {
            self.packets.give_back(pps, unused.0);
        }
        if bps != 0 {
            self.bytes.give_back(bps, unused.1);
        }
    }

    /// Takes what was carried beyond a reservation (a race of the forwarder's own), down to
    /// empty.
    pub fn charge(&mut self, caps: &Caps, now_ms: u64, over: Grant) {
        let (bps, pps) = (caps.bytes_per_second, caps.packets_per_second);
        if pps != 0 {
            self.packets.take_all_of(now_ms, pps, pps, over.0);
        }
        if bps != 0 {
            self.bytes.take_all_of(now_ms, bps, bps, over.1);
        }
    }
}

/// Buckets in a [`PrefixLimiter`]: 4096 × 16 bytes = 64 KiB per worker, whatever the traffic.
pub const PREFIX_SLOTS: usize = 4096;

/// What a source is limited by: its /32 (IPv4, IPv4-embedding IPv6 forms reduced first) or its
/// /64 (IPv6), which one subscriber or one host usually holds whole.
pub fn source_prefix(ip: IpAddr) -> u64 {
    match canonical(ip) {
        IpAddr::V4(v4) => u32::from(v4) as u64 | (1 << 63),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64 & !(1 << 63),
    }
}

/// A rate limit per source prefix in a table of fixed size: a flood from spoofed sources
/// cannot grow it. Prefixes map to [`PREFIX_SLOTS`] buckets by a keyed hash (SipHash, a key
/// per process), so an attacker cannot aim at the bucket of a given victim; prefixes that
/// share a bucket share its budget, so the table also bounds the total rate at
/// `PREFIX_SLOTS × rate`.
pub struct PrefixLimiter {
    buckets: Box<[TokenBucket]>,
    key: RandomState,
    rate: u64,
    burst: u64,
}

impl PrefixLimiter {
    /// `rate` per second and `burst` per prefix; a `rate` of 0 turns the limit off.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::with_slots(rate, burst, PREFIX_SLOTS)
    }

    /// As [`PrefixLimiter::new`] with `slots` buckets (rounded up to a power of two): a table
    /// for many distinct callers (the allocator's per-caller limit) needs more, so that
    /// prefixes rarely share one.
    pub fn with_slots(rate: u32, burst: u32, slots: usize) -> Self {
        let burst = (burst as u64).max(1);
        let slots = slots.max(1).next_power_of_two();
        PrefixLimiter {
            buckets: vec![TokenBucket::full(burst, 0); if rate == 0 { 0 } else { slots }]
                .into_boxed_slice(),
            key: RandomState::new(),
            rate: rate as u64,
            burst,
        }
    }

    /// Whether the limit is on.
    pub fn enabled(&self) -> bool {
        !self.buckets.is_empty()
    }

    /// Whether `ip` may have one more reply at `now_ms`; takes it if so.
    pub fn allow(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        if self.buckets.is_empty() {
            return true;
        }
        let slot = self.key.hash_one(source_prefix(ip)) as usize & (self.buckets.len() - 1);
        self.buckets[slot].take(now_ms, self.rate, self.burst, 1)
    }

    /// Bytes the table holds (fixed at construction).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets)
    }
}

impl std::fmt::Debug for PrefixLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixLimiter")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("slots", &self.buckets.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_caps_bytes_and_packets_with_a_second_of_burst() {
        let caps = Caps {
            bytes_per_second: 10_000,
            packets_per_second: 100,
        };
        let mut m = Meter::new(&caps, 0);
        // 1000-byte packets: the byte cap binds (10 per second).
        assert_eq!((0..50).filter(|_| m.admit(&caps, 0, 1000)).count(), 10);
        assert_eq!((0..50).filter(|_| m.admit(&caps, 500, 1000)).count(), 5);
        // 10-byte packets: the packet cap binds (100 per second).
        let mut m = Meter::new(&caps, 0);
        assert_eq!((0..500).filter(|_| m.admit(&caps, 0, 10)).count(), 100);
        // No caps: everything.
        let none = Caps::default();
        let mut m = Meter::new(&none, 0);
        assert!((0..10_000).all(|_| m.admit(&none, 0, 1500)));
    }

    #[test]
    fn bucket_refills_at_its_rate_up_to_its_burst() {
        let mut b = TokenBucket::full(3, 0);
        assert!((0..3).all(|_| b.take(0, 10, 3, 1)));
        assert!(!b.take(0, 10, 3, 1), "empty");
        assert!(!b.take(99, 10, 3, 1), "0.99 of a token after 99 ms at 10/s");
        assert!(b.take(100, 10, 3, 1), "one after 100 ms");
        // Ten seconds later: full, never more than the burst.
        assert!((0..3).all(|_| b.take(10_100, 10, 3, 1)));
        assert!(!b.take(10_100, 10, 3, 1));
        // A clock going back refills nothing and does not panic.
        assert!(!b.take(5, 10, 3, 1));
        // A cost larger than the burst never passes; huge values saturate.
        let mut b = TokenBucket::full(u64::MAX, 0);
        assert!(b.take(u64::MAX, u64::MAX, u64::MAX, 5));
        let mut b = TokenBucket::full(2, 0);
        assert!(!b.take(1_000_000, 1, 2, 3));
    }

    #[test]
    fn prefixes_are_slash_32_and_slash_64() {
        let p = |s: &str| source_prefix(s.parse().unwrap());
        assert_eq!(
            p("192.0.2.1"),
            p("::ffff:192.0.2.1"),
            "mapped forms are the IPv4 host"
        );
        assert_ne!(p("192.0.2.1"), p("192.0.2.2"));
        assert_eq!(p("2001:db8:1:2::1"), p("2001:db8:1:2:ffff::9"), "one /64");
        assert_ne!(p("2001:db8:1:2::1"), p("2001:db8:1:3::1"));
        assert_ne!(p("0.0.0.1"), p("::1"), "families never share a prefix");
    }

    /// A source gets its burst, then its rate; others are not affected (except by a shared
    /// bucket, which a keyed hash makes rare: checked over a few hundred prefixes).
    #[test]
    fn limiter_holds_each_prefix_to_its_budget_in_fixed_memory() {
        let mut l = PrefixLimiter::new(5, 10);
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!((0..100).filter(|_| l.allow(a, 0)).count(), 10);
        assert_eq!((0..100).filter(|_| l.allow(a, 1000)).count(), 5);
        // The same /64 is one source, whatever the interface id.
        let six = |i: u16| -> IpAddr { format!("2001:db8:7:7::{i:x}").parse().unwrap() };
        assert_eq!((0..100).filter(|i| l.allow(six(*i), 0)).count(), 10);
        // A flood of distinct spoofed sources: memory stays what it was.
        let before = l.memory_bytes();
        let mut granted = 0;
        for i in 0..200_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            granted += l.allow(ip, 2000) as u32;
        }
        assert_eq!(l.memory_bytes(), before);
        assert_eq!(before, PREFIX_SLOTS * 16);
        assert!(
            granted as usize <= PREFIX_SLOTS * 10,
            "the table bounds the total: {granted}"
        );
        // Off: everything passes, no table.
        let mut off = PrefixLimiter::new(0, 10);
        assert!((0..1000).all(|_| off.allow(a, 0)));
        assert_eq!(off.memory_bytes(), 0);
    }
}
