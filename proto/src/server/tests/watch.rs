//! Issue 25 §1: the abuse signals an allocation feeds, through the core's requests and relay
//! path: a permission burst, payloads that are not media (each direction), a heavy allocation,
//! and the relayed-bytes histogram (438s: `stale_nonce_gets_438_with_a_fresh_one`). Each counts
//! once where it says once, and a call's pattern moves none of them.

use super::*;

fn peer(i: u32) -> String {
    format!("93.184.{}.{}:5000", 200 + i / 250, 1 + i % 250)
}

/// An RTP packet (version 2, payload type 111, 160 bytes of audio).
fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 111];
    p.extend(seq.to_be_bytes());
    p.extend([0u8; 8]);
    p.extend([0x55u8; 160]);
    p
}

#[test]
fn many_new_peers_within_a_minute_count_once_as_a_burst() {
    let (mut s, mut env, mut clock) = setup();
    let mut c = Client::rest(40000, "scan");
    allocate_ok(&mut c, &mut s, &mut env, &clock);
    // A call: a handful of candidates, refreshed over and over.
    for round in 0..3 {
        for i in 0..6 {
            assert_eq!(
                class(&c.permit(&mut s, &mut env, &clock, &peer(i))),
                Class::Success
            );
        }
        clock.secs += 20 * (round + 1);
    }
    assert_eq!(s.stats().peers_permitted, 6, "refreshes are not new peers");
    assert_eq!(s.stats().permission_bursts, 0);
    // Ten more within the minute (16 new in it, with channels too): one burst.
    clock.secs = 200;
    for i in 6..12 {
        c.permit(&mut s, &mut env, &clock, &peer(i));
    }
    for (n, i) in (12..21).enumerate() {
        let r = bind_channel(
            &mut c,
            &mut s,
            &mut env,
            &clock,
            0x4000 + n as u16,
            &peer(i),
        );
        assert_eq!(class(&r), Class::Success);
    }
    assert_eq!(s.stats().permission_bursts, 0, "15 new in this window");
    c.permit(&mut s, &mut env, &clock, &peer(21));
    assert_eq!(s.stats().permission_bursts, 1);
    for i in 22..30 {
        c.permit(&mut s, &mut env, &clock, &peer(i));
    }
    assert_eq!(s.stats().permission_bursts, 1, "once per window");
    // The next minute: counted again when it bursts again.
    clock.secs = 261;
    for i in 30..46 {
        c.permit(&mut s, &mut env, &clock, &peer(i));
    }
    assert_eq!(s.stats().permission_bursts, 2);
    assert_eq!(s.stats().peers_permitted, 46);
}

#[test]
fn payloads_that_are_not_media_mark_their_allocation_once_per_direction() {
    let (mut s, mut env, clock) = setup();
    let mut call = Client::rest(40000, "call");
    let mut tunnel = Client::rest(40001, "tunnel");
    allocate_ok(&mut call, &mut s, &mut env, &clock);
    call.permit(&mut s, &mut env, &clock, PEER);
    for seq in 0..100 {
        assert!(matches!(
            indication(&call, &mut s, &mut env, &clock, PEER, &rtp(seq)),
            Reply::Forward(..)
        ));
        assert!(from_peer(&mut s, &env, &clock, PEER, &rtp(seq)).is_some());
    }
    let st = s.stats();
    assert_eq!(st.payloads_media, [100, 100]);
    assert_eq!(st.payloads_other, [0, 0]);
    assert_eq!(st.non_media_allocations, [0, 0], "a call is media");

    // A tunnel: HTTP requests up, mostly encrypted-looking bytes down, between RTP-like ones.
    let before: Vec<RelayId> = env.open.keys().copied().collect();
    allocate_ok(&mut tunnel, &mut s, &mut env, &clock);
    let relay = *env.open.keys().find(|k| !before.contains(k)).unwrap();
    tunnel.permit(&mut s, &mut env, &clock, PEER2);
    for _ in 0..(INSPECT_MIN - 1) {
        indication(
            &tunnel,
            &mut s,
            &mut env,
            &clock,
            PEER2,
            b"GET /beacon HTTP/1.1\r\n",
        );
    }
    assert_eq!(
        s.stats().non_media_allocations,
        [0, 0],
        "judged after {INSPECT_MIN}"
    );
    indication(
        &tunnel,
        &mut s,
        &mut env,
        &clock,
        PEER2,
        b"GET /beacon HTTP/1.1\r\n",
    );
    assert_eq!(s.stats().non_media_allocations, [1, 0]);
    for _ in 0..50 {
        indication(
            &tunnel,
            &mut s,
            &mut env,
            &clock,
            PEER2,
            b"POST /x HTTP/1.1\r\n",
        );
    }
    assert_eq!(s.stats().non_media_allocations, [1, 0], "once");
    // Down: two thirds TLS application data records, a third RTP.
    for i in 0..60u16 {
        let p = if i % 3 == 0 {
            rtp(i)
        } else {
            vec![23, 3, 3, 0, 64, 9, 9, 9]
        };
        let mut buf = vec![0u8; HEADROOM + p.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + p.len()].copy_from_slice(&p);
        let range = HEADROOM..HEADROOM + p.len();
        assert!(
            s.handle_peer(clock.now(), relay, sa(PEER2), &mut buf, range)
                .is_some()
        );
    }
    assert_eq!(s.stats().non_media_allocations, [1, 1]);
    assert_eq!(s.stats().payloads_other, [82, 40]);
}

#[test]
fn an_allocation_relaying_more_than_a_call_counts_once_as_heavy() {
    let cfg = ServerConfig {
        heavy_bytes_per_second: 10_000,
        ..config()
    };
    let (mut s, mut env, mut clock) = (server_with(cfg), FakeEnv::default(), Clock::new());
    let mut c = Client::rest(40000, "heavy");
    allocate_ok(&mut c, &mut s, &mut env, &clock);
    c.permit(&mut s, &mut env, &clock, PEER);
    let chunk = vec![0x80u8; 1200];
    // 600 KB in the first minute is within 10 kB/s over the minute's grace: 60 s * 10 kB/s
    // = 600 kB; 1.2 MB by 100 s (1 MB allowed) is not.
    for _ in 0..500 {
        indication(&c, &mut s, &mut env, &clock, PEER, &chunk);
    }
    clock.secs = 100;
    assert_eq!(s.stats().heavy_allocations, 0);
    for _ in 0..500 {
        indication(&c, &mut s, &mut env, &clock, PEER, &chunk);
    }
    assert_eq!(s.stats().heavy_allocations, 1);
    for _ in 0..2_000 {
        from_peer(&mut s, &env, &clock, PEER, &chunk);
    }
    assert_eq!(s.stats().heavy_allocations, 1, "once");
    // Its bytes land in the histogram when it ends: 3.6 MB, the 10 MB bucket.
    c.request(
        &mut s,
        &mut env,
        &clock,
        method::REFRESH,
        &[(attr::LIFETIME, vec![0, 0, 0, 0])],
    );
    let st = s.stats();
    assert_eq!(st.allocation_bytes_hist, [0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(st.allocation_bytes_sum, 3_600_000);
}

#[test]
fn a_call_rate_is_not_heavy_by_default() {
    let (mut s, mut env, mut clock) = setup();
    let mut c = Client::rest(40000, "video");
    allocate_ok(&mut c, &mut s, &mut env, &clock);
    c.permit(&mut s, &mut env, &clock, PEER);
    // 5 Mbit/s each way (625 kB/s, 10 Mbit/s together) for 2 s, then quiet: a minute averages
    // far below 8 Mbit/s.
    let chunk = vec![0x80u8; 1250];
    for second in 0..2 {
        clock.secs = second;
        for _ in 0..500 {
            indication(&c, &mut s, &mut env, &clock, PEER, &chunk);
            from_peer(&mut s, &env, &clock, PEER, &chunk);
        }
    }
    assert_eq!(s.stats().heavy_allocations, 0);
}
