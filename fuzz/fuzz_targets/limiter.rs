//! The rate limiters under arbitrary time steps, sources and costs: never panic, and never
//! grant more than the burst plus the rate over the time elapsed, whatever the sequence (a
//! clock going back refills nothing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use veil_proto::limiter::{Caps, Meter, PrefixLimiter, TokenBucket};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let rate = u16::from_be_bytes([data[0], data[1]]) as u64;
    let burst = (data[2] as u64).max(1);
    let mut bucket = TokenBucket::full(burst, 0);
    let caps = Caps {
        bytes_per_second: rate * 100,
        packets_per_second: rate,
    };
    let mut meter = Meter::new(&caps, 0);
    let mut prefixes = PrefixLimiter::new(rate as u32, burst as u32);
    let (mut now, mut latest) = (0u64, 0u64);
    let (mut granted, mut prefix_granted) = (0u64, 0u64);
    for op in data[3..].chunks(6) {
        let [dt, b1, b2, b3, b4, cost] = <[u8; 6]>::try_from(op).unwrap_or([0; 6]);
        // Mostly forward, sometimes back.
        now = if dt & 0x80 != 0 {
            now.saturating_sub((dt & 0x7f) as u64 * 7)
        } else {
            now + dt as u64 * 13
        };
        latest = latest.max(now);
        let cost = (cost % 4) as u64;
        if bucket.take(now, rate, burst, cost) {
            granted += cost;
        }
        let _ = meter.admit(&caps, now, (cost * 400) as usize);
        let ip = if b1 & 1 == 0 {
            IpAddr::V4(Ipv4Addr::new(10, b2 % 2, b3 % 2, b4 % 2))
        } else {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                b2 as u16 % 2,
                0,
                b3 as u16,
                0,
                0,
                b4 as u16,
            ))
        };
        if prefixes.allow(ip, now) {
            prefix_granted += 1;
        }
    }
    // Refill only ever happens forward in time, at most up to the latest time seen.
    assert!(
        granted <= burst + rate * latest / 1000 + 1,
        "{granted} > {burst} + {rate} x {latest} ms"
    );
    // 10 distinct /32s and /64s at most, each bounded the same way (a rate of 0 turns the
    // prefix limit off: everything passes).
    if rate > 0 {
        assert!(prefix_granted <= 10 * (burst + rate * latest / 1000 + 1));
    }
});
