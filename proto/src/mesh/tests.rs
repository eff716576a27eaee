use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::announce::{Announce, AnnounceError, RelayRange};
use super::breaker::{Breaker, BreakerConfig};
use super::cell::{CELL_SIZE, Reassembler};
use super::sched::{LinkConfig, LinkScheduler, TxDrop};
use super::*;
use crate::rng::XorShift;

fn ep(range: u8, port: u16) -> Endpoint {
    Endpoint { range, port }
}

fn one_rung(rate: u32) -> LinkConfig {
    LinkConfig {
        rates: vec![rate],
        ..LinkConfig::default()
    }
}

/// Runs the scheduler from `t0` for `d`, collecting every cell it emits with its time.
fn drain(s: &mut LinkScheduler, t0: Instant, d: Duration) -> Vec<(Instant, Vec<u8>)> {
    let mut out = Vec::new();
    let mut now = t0;
    let end = t0 + d;
    while now < end {
        let mut cell = vec![0xAAu8; CELL_SIZE];
        while s.poll_cell(now, &mut cell) {
            out.push((now, cell.clone()));
        }
        now = s.poll_timeout().max(now + Duration::from_micros(1));
    }
    out
}

fn reassemble(cells: &[(Instant, Vec<u8>)]) -> (Vec<(Endpoint, Endpoint, Vec<u8>)>, Reassembler) {
    let mut r = Reassembler::default();
    let mut got = Vec::new();
    for (_, c) in cells {
        r.receive(c, |d| got.push((d.src, d.dst, d.payload.to_vec())));
    }
    (got, r)
}

#[test]
fn datagrams_of_every_size_cross_cells_intact_and_in_order() {
    let t0 = Instant::now();
    let mut rng = XorShift::new(7);
    let mut sent = Vec::new();
    // Sizes around every boundary: empty, tiny, voice, a cell's body, WebRTC's largest SRTP
    // (1 216 bytes and more), and one near the 64 KiB limit.
    let sizes = [
        0usize, 1, 60, 160, 1183, 1184, 1185, 1193, 1216, 1500, 4000, 4096,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
        sent.push((ep(0, 40_000 + i as u16), ep(1, 50_000), payload));
    }
    // The same traffic in one run, received by one reassembler.
    let mut s = LinkScheduler::new(one_rung(1000), t0);
    let mut all = Vec::new();
    let mut now = t0;
    for (src, dst, p) in &sent {
        s.push(now, *src, *dst, p).unwrap();
        all.extend(drain(&mut s, now, Duration::from_millis(80)));
        now += Duration::from_millis(80);
    }
    assert!(all.iter().all(|(_, c)| c.len() == CELL_SIZE));
    let (got, r) = reassemble(&all);
    let lens =
        |v: &[(Endpoint, Endpoint, Vec<u8>)]| v.iter().map(|d| d.2.len()).collect::<Vec<_>>();
    assert_eq!(lens(&got), lens(&sent));
    assert!(got == sent, "payloads differ");
    assert_eq!(r.stats().malformed, 0);
    assert_eq!(r.stats().lost_cells, 0);
    assert_eq!(s.stats().datagrams, sizes.len() as u64);
    assert_eq!(
        s.push(now, ep(0, 1), ep(0, 2), &[0; 4097]),
        Err(TxDrop::TooLarge)
    );
    assert_eq!(s.stats().too_large, 1);
}

#[test]
fn several_datagrams_share_a_cell() {
    let t0 = Instant::now();
    let mut s = LinkScheduler::new(one_rung(100), t0);
    for i in 0..5u16 {
        s.push(t0, ep(0, 1000 + i), ep(0, 2000), &[i as u8; 100])
            .unwrap();
    }
    let mut cell = vec![0u8; CELL_SIZE];
    assert!(s.poll_cell(t0, &mut cell));
    let mut got = 0;
    Reassembler::default().receive(&cell, |_| got += 1);
    assert_eq!(got, 5, "five 109-byte records fit one cell");
    assert_eq!(s.stats().media_cells, 1);
}

#[test]
fn the_rate_and_size_do_not_depend_on_the_load() {
    let t0 = Instant::now();
    let mut counts = Vec::new();
    for flows in [0u16, 1, 8, 32] {
        let mut s = LinkScheduler::new(one_rung(400), t0);
        let mut cells = Vec::new();
        let mut now = t0;
        // 2 s of 20 ms voice frames (120 bytes) per flow, the flows' clocks spread over the
        // 20 ms as independent calls' are.
        for ms in 0..2000u32 {
            for f in 0..flows {
                if ms % 20 == u32::from(f) * 20 / 32 {
                    s.push(now, ep(0, 3000 + f), ep(0, 4000 + f), &[ms as u8; 120])
                        .unwrap();
                }
            }
            cells.extend(drain(&mut s, now, Duration::from_millis(1)));
            now += Duration::from_millis(1);
        }
        cells.extend(drain(&mut s, now, Duration::from_millis(20)));
        assert!(cells.iter().all(|(_, c)| c.len() == CELL_SIZE));
        // Cells leave on one grid: every gap is the interval (2.5 ms at 400 cells/s).
        for w in cells.windows(2) {
            assert_eq!(
                w[1].0 - w[0].0,
                Duration::from_micros(2500),
                "{flows} flows"
            );
        }
        let (got, _) = reassemble(&cells);
        assert_eq!(
            got.len(),
            usize::from(flows) * 100,
            "{flows} flows: nothing dropped {:?}",
            s.stats()
        );
        counts.push(cells.len());
        if flows == 0 {
            assert_eq!(s.stats().media_cells, 0);
        } else {
            assert!(s.stats().cover_cells > 0, "cover fills the rest");
        }
    }
    assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
}

#[test]
fn a_lost_cell_cuts_only_the_datagrams_it_carried() {
    let t0 = Instant::now();
    let mut s = LinkScheduler::new(one_rung(1000), t0);
    let mut now = t0;
    let mut all = Vec::new();
    // 1 000-byte datagrams: most span two cells.
    for i in 0..40u16 {
        s.push(now, ep(0, i + 1), ep(0, 9), &[i as u8; 1000])
            .unwrap();
        all.extend(drain(&mut s, now, Duration::from_millis(3)));
        now += Duration::from_millis(3);
    }
    // The fifth cell that carries media.
    let lost = all
        .iter()
        .enumerate()
        .filter(|(_, (_, c))| c[7..].iter().any(|&b| b != 0))
        .nth(5)
        .unwrap()
        .0;
    all.remove(lost);
    let (got, r) = reassemble(&all);
    assert!(got.len() >= 37 && got.len() < 40, "{}", got.len());
    // Every datagram handed out is one that was sent, whole.
    for (src, _, p) in &got {
        let i = src.port - 1;
        assert_eq!(p, &vec![i as u8; 1000]);
    }
    assert_eq!(r.stats().lost_cells, 1);
    assert_eq!(r.stats().malformed, 0);
}

#[test]
fn a_queue_of_milliseconds_drops_the_stale_and_the_heaviest_flow_first() {
    let t0 = Instant::now();
    let cfg = LinkConfig {
        rates: vec![100],
        max_delay: Duration::from_millis(5),
        ..LinkConfig::default()
    };
    // Stale: nothing polled for 100 ms.
    let mut s = LinkScheduler::new(cfg.clone(), t0);
    let mut cell = vec![0u8; CELL_SIZE];
    assert!(s.poll_cell(t0, &mut cell));
    s.push(t0, ep(0, 1), ep(0, 2), &[1; 100]).unwrap();
    assert!(s.poll_cell(t0 + Duration::from_millis(100), &mut cell));
    assert_eq!(s.stats().stale, 1);
    assert_eq!(s.stats().late, 1, "a late driver skips cells, never bursts");
    let mut n = 0;
    Reassembler::default().receive(&cell, |_| n += 1);
    assert_eq!(n, 0);

    // Overflow: a heavy flow floods, a light flow sends one; the light one survives.
    let mut s = LinkScheduler::new(cfg, t0);
    s.push(t0, ep(0, 7), ep(0, 8), &[7; 200]).unwrap();
    for _ in 0..50 {
        let _ = s.push(t0, ep(0, 1), ep(0, 2), &[1; 1200]);
    }
    assert_eq!(
        s.stats().overflow,
        48,
        "the queue holds two of the heavy flow's"
    );
    let cells = drain(&mut s, t0, Duration::from_millis(30));
    let (got, _) = reassemble(&cells);
    assert!(
        got.iter().any(|(src, _, _)| src.port == 7),
        "the light flow was kept"
    );
}

#[test]
fn the_ladder_steps_up_on_sustained_load_only_and_down_after_minutes() {
    let t0 = Instant::now();
    let cfg = LinkConfig {
        rates: vec![100, 150, 225, 400],
        up_after: Duration::from_secs(3),
        down_after: Duration::from_secs(60),
        max_delay: Duration::from_millis(50),
        ..LinkConfig::default()
    };
    let mut s = LinkScheduler::new(cfg, t0);
    let mut now = t0;
    let run = |s: &mut LinkScheduler, now: &mut Instant, secs: u64, per_ms: usize| {
        for _ in 0..secs * 1000 {
            for _ in 0..per_ms {
                let _ = s.push(*now, ep(0, 1), ep(0, 2), &[0; 191]);
            }
            drain(s, *now, Duration::from_millis(1));
            *now += Duration::from_millis(1);
        }
    };
    // A 2-second burst at ~167 cells/s: no step.
    run(&mut s, &mut now, 2, 1);
    run(&mut s, &mut now, 3, 0);
    assert_eq!(s.rate(), 100);
    // Sustained: it steps up to the rung that carries it (167 / 0.85 → 225).
    run(&mut s, &mut now, 5, 1);
    assert_eq!(s.rate(), 225);
    assert_eq!(s.stats().steps, 1);
    // Idle for 30 s: still up.
    run(&mut s, &mut now, 30, 0);
    assert_eq!(s.rate(), 225);
    // After a minute below: one rung down.
    run(&mut s, &mut now, 40, 0);
    assert_eq!(s.rate(), 150);
}

#[test]
fn junk_cells_never_panic_and_are_counted() {
    let mut rng = XorShift::new(3);
    let mut r = Reassembler::default();
    for len in [0usize, 1, 7, 100, CELL_SIZE - 1, CELL_SIZE, CELL_SIZE + 1] {
        for _ in 0..200 {
            let mut c: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if len >= 1 {
                c[0] = cell::VERSION;
            }
            r.receive(&c, |d| assert!(d.payload.len() < CELL_SIZE * 64));
        }
    }
    assert!(r.stats().malformed > 0);
    // A record claiming to end past where the next record starts is refused.
    let mut c = vec![0u8; CELL_SIZE];
    c[0] = cell::VERSION;
    c[5..7].copy_from_slice(&0u16.to_be_bytes());
    c[7] = 1;
    c[14..16].copy_from_slice(&5000u16.to_be_bytes());
    let mut r = Reassembler::default();
    r.receive(&c, |_| panic!("incomplete"));
    let mut c2 = vec![0u8; CELL_SIZE];
    c2[0] = cell::VERSION;
    c2[1..5].copy_from_slice(&1u32.to_be_bytes());
    c2[5..7].copy_from_slice(&10u16.to_be_bytes());
    r.receive(&c2, |_| panic!("cut"));
    assert_eq!(r.stats().malformed, 1);
}

fn range(ip: &str, lo: u16, hi: u16) -> RelayRange {
    RelayRange {
        ip: ip.parse().unwrap(),
        ports: (lo, hi),
    }
}

#[test]
fn announcements_round_trip_and_bound_what_a_link_may_name() {
    let a = Announce {
        zone: "apac".into(),
        ranges: vec![
            range("192.0.2.10", 49152, 65535),
            range("2001:db8::1", 40000, 40999),
        ],
    };
    let b = a.encode().unwrap();
    assert_eq!(Announce::decode(&b).unwrap(), a);
    let inside: SocketAddr = "192.0.2.10:50000".parse().unwrap();
    let e = a.endpoint(inside).unwrap();
    assert_eq!(a.addr(e), Some(inside));
    // Outside the ranges: not nameable, and a record naming it resolves to nothing.
    assert_eq!(a.endpoint("192.0.2.11:50000".parse().unwrap()), None);
    assert_eq!(a.addr(ep(1, 39999)), None);
    assert_eq!(a.addr(ep(2, 50000)), None);
    assert!(a.overlaps(&[range("192.0.2.10", 65535, 65535)]));
    assert!(!a.overlaps(&[range("192.0.2.10", 1000, 2000)]));
    // Every truncation and a trailing byte are errors, never panics.
    for n in 0..b.len() {
        assert!(Announce::decode(&b[..n]).is_err());
    }
    let mut long = b.clone();
    long.push(0);
    assert_eq!(Announce::decode(&long), Err(AnnounceError::Malformed));
    let bad = Announce {
        zone: "x".into(),
        ranges: vec![range("192.0.2.1", 10, 5)],
    };
    assert_eq!(
        Announce::decode(&bad.encode().unwrap()),
        Err(AnnounceError::BadRange)
    );
    let big = Announce {
        zone: "z".repeat(64),
        ranges: vec![],
    };
    assert_eq!(big.encode(), Err(AnnounceError::TooLarge));
}

#[test]
fn the_breaker_trips_on_sustained_loss_only() {
    let t0 = Instant::now();
    let mut b = Breaker::new(BreakerConfig::default());
    let s = |i: u64| t0 + Duration::from_secs(i);
    let rtt = Duration::from_millis(20);
    assert!(!b.observe(s(0), 0, 0, rtt));
    // One bad second, then good ones.
    assert!(!b.observe(s(1), 100, 50, rtt));
    assert!(!b.observe(s(2), 200, 50, rtt));
    // Three bad seconds in a row.
    assert!(!b.observe(s(3), 300, 100, rtt));
    assert!(!b.observe(s(4), 400, 150, rtt));
    assert!(b.observe(s(5), 500, 200, rtt));
    assert!((b.last_loss() - 0.5).abs() < 1e-9);
}

#[test]
fn the_breaker_trips_on_a_standing_queue_and_holds_longer_each_time() {
    let t0 = Instant::now();
    let cfg = BreakerConfig::default();
    let mut b = Breaker::new(cfg);
    let s = |i: u64| t0 + Duration::from_secs(i);
    let ms = Duration::from_millis;
    // No loss; the RTT climbs from 20 ms as a deep buffer fills. Within the allowance (and
    // a single spike above it) is not a trip.
    assert!(!b.observe(s(0), 0, 0, ms(20)));
    assert!(!b.observe(s(1), 100, 0, ms(110)));
    assert!(!b.observe(s(2), 200, 0, ms(200)));
    assert!(b.queueing());
    assert!(!b.observe(s(3), 300, 0, ms(40)));
    assert!(!b.queueing());
    assert!(!b.observe(s(4), 400, 0, ms(180)));
    assert!(!b.observe(s(5), 500, 0, ms(400)));
    assert!(b.observe(s(6), 600, 0, ms(900)));
    assert_eq!(b.last_loss(), 0.0);
    // The hold doubles with each trip in a row, and stops growing.
    let holds: Vec<u64> = (1..=6).map(|t| Breaker::hold(&cfg, t).as_secs()).collect();
    assert_eq!(holds, [60, 120, 240, 480, 480, 480]);
}
