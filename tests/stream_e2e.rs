//! TURN over TCP and TLS end to end: the real `veil relay` binary, the webrtc-rs `turn` client
//! (a client we did not write) talking through a stream, and what a network observer of the TLS
//! connection sees. Plus the stream path's robustness: garbage, silence, a client that never
//! reads, connection caps. Everything stays on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::SECRET;
use common::stream::{StreamConn, connect, connect_with};
use tokio::net::UdpSocket;
use turn::client::Client;
use veil_relay::proto::auth;
use webrtc_util::Conn;

fn credentials(id: &str) -> (String, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    auth::mint(SECRET.as_bytes(), now + 3600, Some(id))
}

async fn client_over(conn: StreamConn, server: SocketAddr, id: &str) -> Client {
    let (user, pass) = credentials(id);
    common::turn_client_over(Arc::new(conn), server, &user, &pass).await
}

/// A UDP echo peer on loopback that stops after `limit` datagrams or 60 s.
async fn echo_peer(limit: usize) -> SocketAddr {
    common::echo_peer(limit, false).await.0
}

/// Allocates, exchanges `n` messages of `size` bytes with an echo peer and closes the
/// allocation.
async fn exchange(client: &Client, n: usize, size: usize) {
    let relay_conn = client.allocate().await.expect("allocate over the stream");
    exchange_on(&relay_conn, n, size).await;
    relay_conn.close().await.unwrap();
}

/// Exchanges `n` messages with a new echo peer (first by Send indication, then on the channel
/// the client binds) and checks every echo.
async fn exchange_on(relay_conn: &impl Conn, n: usize, size: usize) {
    let peer = echo_peer(n).await;
    let mut buf = vec![0u8; 2048];
    for i in 0..n {
        let mut msg = format!("message {i:04} ").into_bytes();
        msg.resize(size, b'.');
        relay_conn.send_to(&msg, peer).await.expect("send_to");
        let (got, from) =
            tokio::time::timeout(Duration::from_secs(5), relay_conn.recv_from(&mut buf))
                .await
                .expect("echo within 5 s")
                .expect("recv");
        assert_eq!(from, peer);
        assert_eq!(&buf[..got], &msg[..], "message {i}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_client_relays_over_tcp_and_tls() {
    let (relay, tcp, tls) =
        common::start_stream_relay("16000-16099", &["--allow-peer", "127.0.0.0/8"]);
    let cert = std::env::temp_dir()
        .join(format!("veil-tls-{}-16000-16099", std::process::id()))
        .join("cert.pem");

    let (conn, _, received, _) = connect(tcp, None).await;
    let client = client_over(conn, tcp, "tcp-user").await;
    exchange(&client, 30, 160).await;
    client.close().await.unwrap();
    let kinds = received.lock().unwrap().clone();
    assert!(
        kinds.iter().any(|(k, _)| k >> 14 == 1),
        "echoes came back as ChannelData over TCP: {kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .filter(|(k, _)| k >> 14 == 1)
            .all(|(_, n)| n % 4 == 0),
        "ChannelData over a stream is padded to 4"
    );

    let (conn, _, _, alpn) = connect(tls, Some(&cert)).await;
    assert_eq!(
        alpn.as_deref(),
        Some(&b"stun.turn"[..]),
        "ALPN stun.turn selected"
    );
    let client = client_over(conn, tls, "tls-user").await;
    exchange(&client, 30, 1000).await;
    client.close().await.unwrap();
    drop(relay);
}

/// TLS record lengths in a byte stream: (content type, length) of each record.
fn tls_records(wire: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= wire.len() {
        let len = u16::from_be_bytes([wire[at + 3], wire[at + 4]]) as usize;
        out.push((wire[at], len));
        at += 5 + len;
    }
    out
}

/// TURN over TLS is a byte stream, but coturn's own client (`turnutils_uclient -S`, 4.6) takes
/// what one `SSL_read` returns, one record, as one message: frames the relay packed into one
/// record were lost to it (seen in CI as 61 of 1 000 echoes missing under load, when the send
/// queue held several frames at a write). So every frame leaves in a record of its own, also
/// unshaped; here a burst from the peer, queued at once, arrives as one record per frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unshaped_tls_sends_each_frame_in_a_record_of_its_own() {
    const BURST: usize = 64;
    let (_relay, _tcp, tls) =
        common::start_stream_relay("16200-16299", &["--allow-peer", "127.0.0.0/8"]);
    let cert = common::stream_relay_cert("16200-16299");
    let (conn, wire, received, _) = connect(tls, Some(&cert)).await;
    let client = client_over(conn, tls, "records").await;
    let relay_conn = client.allocate().await.expect("allocate over TLS");
    // Not the relay's own address, where only relayed ports are peers.
    let peer = UdpSocket::bind("127.0.0.61:0").await.unwrap();
    let mut buf = vec![0u8; 2048];
    // The client's first send installs the permission (and the channel); the peer learns the
    // relayed address from it.
    relay_conn
        .send_to(b"hello", peer.local_addr().unwrap())
        .await
        .unwrap();
    let (_, relayed) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
        .await
        .expect("the peer hears the client")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (wire_from, frames_from) = (wire.0.lock().unwrap().len(), received.lock().unwrap().len());
    for i in 0..BURST {
        peer.send_to(&[i as u8; 100], relayed).await.unwrap();
    }
    for i in 0..BURST {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), relay_conn.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("datagram {i} of the burst arrives"))
            .unwrap();
        assert_eq!(&buf[..n], &[i as u8; 100], "datagram {i} in order");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let records = tls_records(&wire.0.lock().unwrap()[wire_from..]);
    let frames = received.lock().unwrap().len() - frames_from;
    assert_eq!(frames, BURST, "one frame per datagram");
    assert_eq!(
        records.len(),
        frames,
        "one TLS record per frame; record lengths: {:?}",
        records.iter().map(|(_, n)| n).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shaped_tls_records_leave_at_bucket_sizes_and_break_nothing() {
    const BUCKETS: [usize; 4] = [128, 256, 512, 1200];
    let (_relay, _tcp, tls) = common::start_stream_relay(
        "16100-16199",
        &common::shaped(&["--allow-peer", "127.0.0.0/8"]),
    );
    let cert = std::env::temp_dir()
        .join(format!("veil-tls-{}-16100-16199", std::process::id()))
        .join("cert.pem");
    let (conn, wire, received, _) = connect(tls, Some(&cert)).await;
    let client = client_over(conn, tls, "shaped").await;
    // Let the handshake's records go by; everything after is TURN.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let handshake_bytes = wire.0.lock().unwrap().len();
    // Sizes of several buckets, and silences that cover fills.
    let relay_conn = client.allocate().await.expect("allocate over TLS");
    for (n, size) in [(10, 40), (10, 300), (5, 900)] {
        exchange_on(&relay_conn, n, size).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    relay_conn.close().await.unwrap();
    client.close().await.unwrap();
    // Answers after the allocation is gone are padded too (a 437 to a retransmitted Refresh
    // used to leave at its own size when the client retransmitted under load).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let wire = wire.0.lock().unwrap().clone();
    let records = tls_records(&wire[handshake_bytes..]);
    assert!(records.len() > 40, "{} records", records.len());
    // TLS 1.3 adds a content-type byte and a 16-byte AEAD tag to each record.
    let sizes: Vec<usize> = records.iter().map(|(_, n)| n - 17).collect();
    // The first is the 401 challenge, unpadded on purpose: until an Allocate succeeds Chromium
    // drops a TURN/TCP connection on a filler. Everything from the Allocate success on is padded.
    let off: Vec<_> = sizes[1..].iter().filter(|n| !BUCKETS.contains(n)).collect();
    assert!(
        off.is_empty(),
        "every record after the challenge is a bucket size; these are not: {off:?} of {sizes:?}"
    );
    let kinds = received.lock().unwrap().clone();
    let fillers = kinds.iter().filter(|(k, _)| *k == 0x0011).count();
    assert!(
        fillers > 0,
        "filler/cover Binding indications reached the client and were ignored"
    );
    eprintln!(
        "observed {} TLS records after the handshake: {:?}",
        sizes.len(),
        BUCKETS.map(|b| (b, sizes.iter().filter(|n| **n == b).count()))
    );
}

fn read_until_closed(s: &mut StdTcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_silence_and_caps_close_connections_without_harm() {
    let admin = common::free_tcp_addr();
    let (_relay, tcp, tls) = common::start_stream_relay(
        "16200-16299",
        &[
            "--allow-peer",
            "127.0.0.0/8",
            "--admin",
            &admin.to_string(),
            "--config",
            &{
                let p = std::env::temp_dir()
                    .join(format!("veil-stream-limits-{}.yaml", std::process::id()));
                std::fs::write(
                    &p,
                    "streams: {handshake_timeout: 1, idle_timeout: 2, max_connections_per_ip: 4}\n",
                )
                .unwrap();
                p.display().to_string()
            },
        ],
    );
    // Garbage (neither STUN nor ChannelData): closed at once.
    let mut s = StdTcpStream::connect(tcp).unwrap();
    s.write_all(&[0xC0; 64]).unwrap();
    assert!(
        read_until_closed(&mut s, Duration::from_secs(5)),
        "garbage closes"
    );
    // A STUN header without the magic cookie (e.g. TLS on the TCP port): closed.
    let mut s = StdTcpStream::connect(tcp).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xC8, 0x01, 0x00, 0x00])
        .unwrap();
    assert!(
        read_until_closed(&mut s, Duration::from_secs(5)),
        "no cookie closes"
    );
    // Silence: no first message within the handshake deadline (1 s), TCP and TLS.
    for addr in [tcp, tls] {
        let t0 = Instant::now();
        let mut s = StdTcpStream::connect(addr).unwrap();
        assert!(
            read_until_closed(&mut s, Duration::from_secs(5)),
            "silence closes"
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
    }
    // A half frame, then nothing: the deadline still closes it.
    let mut s = StdTcpStream::connect(tcp).unwrap();
    s.write_all(&[0x00, 0x01, 0x00, 0x08, 0x21, 0x12]).unwrap();
    assert!(
        read_until_closed(&mut s, Duration::from_secs(5)),
        "partial frame closes"
    );

    // Per-IP cap 4: a fifth connection from the same IP is closed at once, the others live.
    let held: Vec<StdTcpStream> = (0..4)
        .map(|_| StdTcpStream::connect(tcp).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = StdTcpStream::connect(tcp).unwrap();
    assert!(
        read_until_closed(&mut fifth, Duration::from_millis(800)),
        "over the cap"
    );
    // Binding over one of the held connections still works.
    let mut ok = held.into_iter().next().unwrap();
    let mut req = [0u8; 20];
    let n = veil_relay::proto::stun::Writer::new(
        &mut req,
        veil_relay::proto::stun::method::BINDING,
        veil_relay::proto::stun::Class::Request,
        &[3; 12],
    )
    .unwrap()
    .finish();
    ok.write_all(&req[..n]).unwrap();
    ok.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut resp = [0u8; 256];
    let got = ok.read(&mut resp).unwrap();
    let m = veil_relay::proto::stun::Message::decode(&resp[..got]).expect("a STUN response");
    assert_eq!(m.class, veil_relay::proto::stun::Class::Success);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = common::http_get(admin, "/metrics");
        let refused = common::metric(&m, "veil_relay_connections_refused_total").unwrap_or(0.0);
        let errors = common::metric(&m, "veil_relay_stream_errors_total").unwrap_or(0.0);
        if refused >= 1.0 && errors >= 5.0 {
            assert!(!m.contains("127.0.0.1"), "no address in metrics");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refused {refused}, errors {errors}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_the_relay() {
    let admin = common::free_tcp_addr();
    let (relay, tcp, _tls) = common::start_stream_relay(
        "16300-16399",
        &[
            "--allow-peer",
            "127.0.0.0/8",
            "--admin",
            &admin.to_string(),
            // The flood must reach the send queue: no bandwidth cap in front of it.
            "--set",
            "limits.bandwidth={allocation: {bytes_per_second: 0, packets_per_second: 0}, user: {bytes_per_second: 0, packets_per_second: 0}}",
        ],
    );
    // An allocation over TCP whose client then stops reading, while a peer floods it.
    let (conn, _, _, _) = connect_with(tcp, None, true).await;
    let paused = conn.paused.clone();
    let client = client_over(conn, tcp, "slow").await;
    let relay_conn = client.allocate().await.expect("allocate");
    let relayed = relay_conn.local_addr().unwrap();
    let peer = UdpSocket::bind(common::PEER_IP).await.unwrap();
    relay_conn
        .send_to(b"open the permission", peer.local_addr().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf)).await;
    let rss = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    let pid = relay.child.id();
    let before = rss(pid);
    // The client stops reading; its 4 KiB window fills, then the relay's socket buffer, then
    // the relay's send queue for it.
    paused.store(true, std::sync::atomic::Ordering::Relaxed);
    // 30 000 datagrams of 1 000 bytes (30 MB) at the relayed address, paced so that the relay
    // takes them rather than its socket buffer dropping them; bounded in count.
    let payload = vec![0x55u8; 1000];
    for i in 0..30_000 {
        let _ = peer.send_to(&payload, relayed).await;
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss(pid);
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} kB to {after} kB: the send queue must stay bounded"
    );
    // The frames that did not fit were dropped and counted (metrics are published each second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = common::http_get(admin, "/metrics");
        let drops = common::metric(&m, "veil_relay_stream_drops_total").unwrap_or(0.0);
        if drops > 1000.0 {
            break;
        }
        assert!(Instant::now() < deadline, "stream drops {drops}:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_used_for_new_handshakes_while_connections_go_on() {
    let admin = common::free_tcp_addr();
    let (_relay, _tcp, tls) = common::start_stream_relay(
        "16400-16499",
        &[
            "--allow-peer",
            "127.0.0.0/8",
            "--admin",
            &admin.to_string(),
            "--watch-interval",
            "1",
        ],
    );
    let dir = std::env::temp_dir().join(format!("veil-tls-{}-16400-16499", std::process::id()));
    let old_cert = dir.join("old-cert.pem");
    std::fs::copy(dir.join("cert.pem"), &old_cert).unwrap();

    // A call in progress over TLS with the first certificate.
    let (conn, _, _, _) = connect(tls, Some(&old_cert)).await;
    let client = client_over(conn, tls, "before-rotation").await;
    let relay_conn = client.allocate().await.expect("allocate");
    exchange_on(&relay_conn, 3, 100).await;

    // The certificate files are replaced (as cert-manager renews a Secret).
    let new_dir = std::env::temp_dir().join(format!("veil-tls-new-{}", std::process::id()));
    std::fs::create_dir_all(&new_dir).unwrap();
    let (new_cert, new_key) = common::self_signed(&new_dir);
    std::fs::copy(&new_key, dir.join("key.pem")).unwrap();
    std::fs::copy(&new_cert, dir.join("cert.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = common::http_get(admin, "/metrics");
        if common::metric(&m, "veil_relay_config_reloads_total{result=\"success\"}")
            .is_some_and(|v| v >= 1.0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no reload in 10 s:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // New handshakes present the new certificate: a client trusting only it connects...
    let (conn, _, _, _) = connect(tls, Some(&new_cert)).await;
    let client2 = client_over(conn, tls, "after-rotation").await;
    exchange(&client2, 3, 100).await;
    client2.close().await.unwrap();
    // ...and the connection made before the rotation still relays.
    exchange_on(&relay_conn, 3, 100).await;
    relay_conn.close().await.unwrap();
    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&new_dir);
}

/// When the relay closes `s` (read returns 0 or an error), measured from `t0`; None if it was
/// still open after `wait`.
fn closed_after(s: &StdTcpStream, t0: Instant, wait: Duration) -> Option<Duration> {
    let mut r = s.try_clone().unwrap();
    r.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match r.read(&mut buf) {
        Ok(0) => Some(t0.elapsed()),
        Err(e)
            if e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::TimedOut =>
        {
            Some(t0.elapsed())
        }
        _ => None,
    }
}

/// Issue 14 §3: the first-message deadline counts from accept. A client sending one byte of a
/// Binding request every 300 ms (it would complete it after 6 s) is cut at the 2 s deadline,
/// over TCP and over TLS (a ClientHello trickled the same way).
#[test]
fn a_trickling_client_is_cut_at_the_deadline_from_accept() {
    let (_relay, tcp, tls) =
        common::start_stream_relay("13400-13499", &["--set", "streams.handshake_timeout=2"]);
    let mut binding = [0u8; 20];
    veil_relay::proto::stun::Writer::new(
        &mut binding,
        veil_relay::proto::stun::method::BINDING,
        veil_relay::proto::stun::Class::Request,
        &[4; 12],
    )
    .unwrap()
    .finish();
    // A TLS record header for a 512-byte handshake message, then its body, byte by byte.
    let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    hello.resize(20, 0x01);
    for (addr, bytes) in [(tcp, binding.to_vec()), (tls, hello)] {
        let s = StdTcpStream::connect(addr).unwrap();
        let t0 = Instant::now();
        let writer = {
            let mut w = s.try_clone().unwrap();
            std::thread::spawn(move || {
                for b in bytes {
                    if w.write_all(&[b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            })
        };
        let closed = closed_after(&s, t0, Duration::from_secs(8));
        assert!(
            closed.is_some_and(
                |t| t >= Duration::from_millis(1800) && t < Duration::from_millis(3500)
            ),
            "{addr}: closed after {closed:?}, want about 2 s from accept"
        );
        writer.join().unwrap();
    }
}

/// The relay's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Issue 14 §3: the worst unauthenticated mix at the caps. 1200 connections (the node's cap
/// here) from 6 loopback addresses (200 each, the per-source cap): half TCP holding a partial
/// first frame, half TLS holding a partial ClientHello. The node's memory grows by less than
/// 24 KiB per connection (the README's bound); the next connection is refused.
#[test]
fn unauthenticated_connections_at_the_caps_stay_within_the_memory_bound() {
    let (relay, tcp, tls) = common::start_stream_relay(
        "13500-13599",
        &[
            "--set",
            "streams={handshake_timeout: 60, idle_timeout: 60, max_connections: 1200, max_connections_per_ip: 200, new_per_ip_per_second: 0, new_per_second: 0}",
        ],
    );
    let pid = relay.child.id();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    let mut held = Vec::new();
    for i in 0..6u8 {
        let (addr, partial): (SocketAddr, &[u8]) = if i % 2 == 0 {
            // 19 of a STUN header's 20 bytes, a frame that declares 1000 more.
            (
                tcp,
                &[
                    0x00, 0x01, 0x03, 0xe8, 0x21, 0x12, 0xa4, 0x42, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                ],
            )
        } else {
            (
                tls,
                &[
                    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
                ],
            )
        };
        for _ in 0..200 {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::from(([127, 0, 1, 10 + i], 0)).into())
                .unwrap();
            sock.connect(&addr.into()).unwrap();
            let mut s: StdTcpStream = sock.into();
            s.write_all(partial).unwrap();
            held.push(s);
        }
    }
    // Let the relay accept and read all of them.
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid);
    let per_conn = (after.saturating_sub(before)) * 1024 / held.len() as u64;
    eprintln!(
        "RSS {before} KiB -> {after} KiB with {} connections: {per_conn} B each",
        held.len()
    );
    assert!(per_conn < 24 * 1024, "{per_conn} bytes per connection");
    // Every one is still held (none was refused below the caps)...
    for s in &held {
        assert!(closed_after(s, Instant::now(), Duration::from_millis(1)).is_none());
    }
    // ...and one more, from a seventh address, is over the node's cap: closed at once.
    let extra = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    extra
        .bind(&SocketAddr::from(([127, 0, 1, 20], 0)).into())
        .unwrap();
    extra.connect(&tcp.into()).unwrap();
    let extra: StdTcpStream = extra.into();
    assert!(closed_after(&extra, Instant::now(), Duration::from_secs(2)).is_some());
}
