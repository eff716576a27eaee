//! The link protocol on arbitrary input: cells of any bytes never panic the reassembler, and
//! datagrams pushed through a scheduler (with cells lost where the input says) come out whole,
//! in order, each one that was sent, and never one that was not.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use veil_proto::mesh::Endpoint;
use veil_proto::mesh::cell::{CELL_SIZE, Reassembler};
use veil_proto::mesh::sched::{LinkConfig, LinkScheduler};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // Raw cells.
        let mut r = Reassembler::default();
        for c in rest.chunks(CELL_SIZE) {
            r.receive(c, |d| assert!(d.payload.len() <= rest.len()));
        }
        return;
    }
    // Round trip: each 3 bytes are (size, port, lose-next-cell).
    let t0 = Instant::now();
    let mut s = LinkScheduler::new(
        LinkConfig {
            rates: vec![1000],
            max_delay: Duration::from_secs(10),
            ..LinkConfig::default()
        },
        t0,
    );
    let mut r = Reassembler::default();
    let mut sent: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut got: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut now = t0;
    let mut cell = vec![0u8; CELL_SIZE];
    for (i, ch) in rest.chunks_exact(3).enumerate() {
        let len = usize::from(ch[0]) * 13;
        let port = u16::from(ch[1]) + 1;
        let payload = vec![(i % 251) as u8; len];
        let ep = Endpoint { range: 0, port };
        if s.push(now, ep, ep, &payload).is_ok() {
            sent.push((port, payload));
        }
        now += Duration::from_millis(1);
        while s.poll_cell(now, &mut cell) {
            if ch[2] & 0x0F != 0 {
                r.receive(&cell, |d| got.push((d.src.port, d.payload.to_vec())));
            }
        }
    }
    // What arrived is a subsequence of what was sent.
    let mut it = sent.iter();
    for g in &got {
        assert!(it.any(|s| s == g), "a datagram that was not sent, or out of order");
    }
    assert_eq!(r.stats().malformed, 0);
});
