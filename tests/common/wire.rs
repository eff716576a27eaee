//! Both legs of the relay on the wire: voice flows driven through the real `veil relay` binary
//! to clients we did not write (the webrtc-rs `turn` client over UDP and over TLS), captured
//! with an `AF_PACKET` socket on `lo` (root), and cut into per-flow packet lists for the
//! observers of [`super::observe`]. Everything stays on loopback; every wait is bounded.
//!
//! Legs: the **peer leg** is what each peer sends to its relayed address; the **client leg**
//! is what the relay sends to the client: UDP datagrams, or TLS records (header and length are
//! cleartext, what an observer of the TLS leg reads) from the reassembled TCP stream.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::observe::{Flow, Rng, dtx_voice};
use webrtc_util::Conn;

/// Microseconds since the Unix epoch: the clock of capture timestamps, shared with the test.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One IPv4 packet seen leaving on `lo`.
#[derive(Clone, Debug)]
pub struct Packet {
    /// Kernel receive timestamp, µs since the epoch.
    pub t_us: u64,
    pub tcp: bool,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// Transport payload length.
    pub len: usize,
    /// The payload's first 4 bytes (ChannelData or STUN header start).
    pub head: [u8; 4],
    /// TCP sequence number.
    pub seq: u32,
    /// TCP payload (empty for UDP).
    pub data: Vec<u8>,
}

/// A packet capture on `lo` running on its own thread until [`Capture::stop`].
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Packet>>>,
}

fn setsockopt<T>(fd: i32, level: i32, name: i32, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a live value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            v as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Capture {
    /// Starts capturing every packet sent on `lo` (each loopback packet is seen twice, going out
    /// and coming in; the outgoing copy is kept). Panics without root: the suites that need it
    /// must fail loudly, never pass silently.
    pub fn start() -> Capture {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto as i32) };
        assert!(
            fd >= 0,
            "AF_PACKET capture on lo needs root (CAP_NET_RAW): {}",
            io::Error::last_os_error()
        );
        // SAFETY: if_nametoindex reads a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a sockaddr_ll of the length passed.
        let r = unsafe {
            libc::bind(
                fd,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert!(r == 0, "bind to lo: {}", io::Error::last_os_error());
        let big: libc::c_int = 64 << 20;
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &big).expect("capture buffer");
        let on: libc::c_int = 1;
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &on).expect("timestamps");
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv).expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 65_536];
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: all-zero is a valid sockaddr_ll.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut flen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: `buf` and `from` are live buffers of the lengths passed.
                let n = unsafe {
                    libc::recvfrom(
                        fd,
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                        &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                        &mut flen,
                    )
                };
                if n <= 0 || from.sll_pkttype != libc::PACKET_OUTGOING {
                    continue;
                }
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: SIOCGSTAMPNS writes one timespec: the last packet's kernel timestamp.
                let r = unsafe { libc::ioctl(fd, 0x8907, &mut ts) };
                let t_us = if r == 0 && ts.tv_sec > 0 {
                    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
                } else {
                    now_us()
                };
                if let Some(p) = parse(&buf[..n as usize], t_us) {
                    out.push(p);
                }
            }
            // SAFETY: closing the descriptor this thread owns.
            unsafe { libc::close(fd) };
            out
        });
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the capture and returns what it saw, in order.
    pub fn stop(mut self) -> Vec<Packet> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("capture thread"))
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An IPv4 UDP or TCP packet (from its IP header on).
fn parse(b: &[u8], t_us: u64) -> Option<Packet> {
    if b.len() < 20 || b[0] >> 4 != 4 {
        return None;
    }
    let ihl = (b[0] & 15) as usize * 4;
    let total = (u16::from_be_bytes([b[2], b[3]]) as usize).min(b.len());
    let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    let (src_ip, dst_ip) = (ip(12), ip(16));
    let t = b.get(ihl..total)?;
    let port = |at: usize| u16::from_be_bytes([t[at], t[at + 1]]);
    let (tcp, payload, seq) = match b[9] {
        17 if t.len() >= 8 => (false, &t[8..], 0),
        6 if t.len() >= 20 => {
            let off = (t[12] >> 4) as usize * 4;
            let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            (true, t.get(off..)?, seq)
        }
        _ => return None,
    };
    let mut head = [0u8; 4];
    let k = payload.len().min(4);
    head[..k].copy_from_slice(&payload[..k]);
    Some(Packet {
        t_us,
        tcp,
        src: SocketAddrV4::new(src_ip, port(0)),
        dst: SocketAddrV4::new(dst_ip, port(2)),
        len: payload.len(),
        head,
        seq,
        data: if tcp { payload.to_vec() } else { Vec::new() },
    })
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("the wire suites run on IPv4 loopback"),
    }
}

/// TLS records of one direction of a TCP connection: (time of the segment carrying the
/// record's header, record length without its 5-byte header, content type).
pub fn tls_records(packets: &[&Packet]) -> Vec<(u64, usize, u8)> {
    let mut stream: Vec<u8> = Vec::new();
    let mut times: Vec<(usize, u64)> = Vec::new();
    let mut next: Option<u32> = None;
    for p in packets.iter().filter(|p| p.len > 0) {
        let expect = *next.get_or_insert(p.seq);
        // In order on loopback; a retransmission (an old sequence number) adds nothing.
        if p.seq != expect {
            continue;
        }
        times.push((stream.len(), p.t_us));
        stream.extend_from_slice(&p.data);
        next = Some(p.seq.wrapping_add(p.len as u32));
    }
    let mut out = Vec::new();
    let mut at = 0;
    let mut seg = 0;
    while at + 5 <= stream.len() {
        let len = u16::from_be_bytes([stream[at + 3], stream[at + 4]]) as usize;
        while seg + 1 < times.len() && times[seg + 1].0 <= at {
            seg += 1;
        }
        out.push((times[seg].1, len, stream[at]));
        at += 5 + len;
    }
    out
}

/// What a run drives: flows over UDP and over TLS at once, for `duration`.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub udp_flows: usize,
    pub tls_flows: usize,
    pub duration: Duration,
    pub seed: u64,
}

/// One flow as captured.
#[derive(Debug, Default)]
pub struct FlowRecord {
    pub tls: bool,
    /// Peer → relayed address: (µs, UDP payload bytes).
    pub peer_leg: Flow,
    /// Relay → client: (µs, UDP payload bytes) or (µs, TLS record bytes with header).
    pub client_leg: Flow,
    /// UDP only: the client leg as a TURN-aware observer reads it, ChannelData only (cover is
    /// STUN), by 4 + its Length field.
    pub client_turn: Flow,
    /// Sizes on the client leg from half a second after traffic started (UDP payload bytes,
    /// or TLS record lengths).
    pub steady_sizes: Vec<usize>,
    /// Frames the peer sent and the client application received.
    pub sent: usize,
    pub received: usize,
    /// Relay delays of media frames, µs: on the wire for UDP (peer leg to ChannelData on the
    /// client leg), to the client application for TLS (the record's payload is encrypted).
    pub delays_us: Vec<u64>,
}

/// A run: every flow, and the traffic window `[from_us, to_us)`.
#[derive(Debug)]
pub struct Outcome {
    pub flows: Vec<FlowRecord>,
    pub from_us: u64,
    pub to_us: u64,
}

impl Outcome {
    /// The flows of one transport, in order.
    pub fn of(&self, tls: bool) -> Vec<&FlowRecord> {
        self.flows.iter().filter(|f| f.tls == tls).collect()
    }
}

type RelayConn = Arc<dyn Conn + Send + Sync>;

/// Drives `spec` through a running relay (UDP listener `udp`, TLS listener `tls` with the
/// certificate `cert`) with REST credentials from `secret`, capturing both legs.
pub async fn run(
    spec: Spec,
    udp: SocketAddr,
    tls: SocketAddr,
    cert: &std::path::Path,
    secret: &str,
) -> Outcome {
    let capture = Capture::start();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let n = spec.udp_flows + spec.tls_flows;
    let expiry = now_us() / 1_000_000 + 3600;
    let mut clients = Vec::new();
    let mut conns: Vec<RelayConn> = Vec::new();
    let mut client_addrs = Vec::new();
    for i in 0..n {
        let tls_flow = i >= spec.udp_flows;
        let (user, pass) =
            veil_relay::proto::auth::mint(secret.as_bytes(), expiry, Some(&format!("wire{i}")));
        let (conn, local, server): (Arc<dyn Conn + Send + Sync>, SocketAddr, SocketAddr) =
            if tls_flow {
                let (c, _, _, _) = super::stream::connect(tls, Some(cert)).await;
                let local = c.local;
                (Arc::new(c), local, tls)
            } else {
                let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let local = s.local_addr().unwrap();
                (Arc::new(s), local, udp)
            };
        let client = super::turn_client_over(conn, server, &user, &pass).await;
        let relay_conn = client.allocate().await.expect("allocate");
        conns.push(Arc::new(relay_conn));
        clients.push(client);
        client_addrs.push(local);
    }
    // Each flow's peer; the client's first datagrams create the permission and the channel
    // (webrtc-rs binds one after its first send) and tell the peer its relayed address.
    let mut peers = Vec::new();
    let mut relayed = Vec::new();
    for conn in &conns {
        let peer = StdUdpSocket::bind(super::PEER_IP).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let to = peer.local_addr().unwrap();
        conn.send_to(b"hello", to).await.expect("send_to");
        let mut buf = [0u8; 64];
        let (_, from) = peer.recv_from(&mut buf).expect("the peer hears the client");
        relayed.push(from);
        peers.push(peer);
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for (conn, peer) in conns.iter().zip(&peers) {
        conn.send_to(b"bound", peer.local_addr().unwrap())
            .await
            .expect("send_to");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The schedules, and one receiving task per client: (flow, seq) in each payload's head.
    let duration_us = spec.duration.as_micros() as u64;
    let mut rng = Rng::new(spec.seed);
    let schedules: Vec<Vec<(u64, usize)>> =
        (0..n).map(|_| dtx_voice(&mut rng, duration_us)).collect();
    let from_us = now_us() + 300_000;
    let to_us = from_us + duration_us;
    let stop_at = tokio::time::Instant::now() + spec.duration + Duration::from_secs(3);
    let mut receivers = Vec::new();
    for (i, conn) in conns.iter().enumerate() {
        let conn = conn.clone();
        let want = schedules[i].len();
        receivers.push(tokio::spawn(async move {
            let mut got: Vec<(u32, u64)> = Vec::new();
            let mut buf = vec![0u8; 2048];
            while got.len() < want {
                match tokio::time::timeout_at(stop_at, conn.recv_from(&mut buf)).await {
                    Ok(Ok((len, _))) if len >= 8 => {
                        let flow = u32::from_be_bytes(buf[..4].try_into().unwrap());
                        let seq = u32::from_be_bytes(buf[4..8].try_into().unwrap());
                        if flow as usize == i {
                            got.push((seq, now_us()));
                        }
                    }
                    Ok(Ok(_)) => {}
                    // The receive loop ended (an error) or the time is up.
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            got
        }));
    }
    let targets: Vec<(StdUdpSocket, SocketAddr)> = peers
        .iter()
        .map(|p| p.try_clone().unwrap())
        .zip(relayed.iter().copied())
        .collect();
    let plan = schedules.clone();
    let sender = tokio::task::spawn_blocking(move || send_all(&plan, &targets, from_us));
    let sent = sender.await.expect("sender");
    let mut received = Vec::new();
    for r in receivers {
        received.push(r.await.expect("receiver"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let packets = capture.stop();
    for c in &clients {
        c.close().await.ok();
    }

    let udp = v4(udp);
    let tls = v4(tls);
    let mut flows = Vec::new();
    for i in 0..n {
        let tls_flow = i >= spec.udp_flows;
        let peer = v4(peers[i].local_addr().unwrap());
        let client = v4(client_addrs[i]);
        let peer_leg: Flow = packets
            .iter()
            .filter(|p| !p.tcp && p.src == peer && p.dst == v4(relayed[i]) && p.t_us >= from_us)
            .map(|p| (p.t_us, p.len))
            .collect();
        let peer_times: Vec<u64> = peer_leg.iter().map(|p| p.0).collect();
        let mut rec = FlowRecord {
            tls: tls_flow,
            peer_leg,
            sent: sent[i],
            received: received[i].len(),
            ..FlowRecord::default()
        };
        let steady = from_us + 500_000;
        if tls_flow {
            let segs: Vec<&Packet> = packets
                .iter()
                .filter(|p| p.tcp && p.src == tls && p.dst == client)
                .collect();
            for (t, len, _) in tls_records(&segs) {
                if t >= from_us {
                    rec.client_leg.push((t, 5 + len));
                }
                if t >= steady {
                    rec.steady_sizes.push(len);
                }
            }
            for (seq, t) in &received[i] {
                if let Some(p) = peer_times.get(*seq as usize) {
                    rec.delays_us.push(t.saturating_sub(*p));
                }
            }
        } else {
            let mut media = 0usize;
            for p in packets
                .iter()
                .filter(|p| !p.tcp && p.src == udp && p.dst == client && p.t_us >= from_us)
            {
                rec.client_leg.push((p.t_us, p.len));
                if p.t_us >= steady {
                    rec.steady_sizes.push(p.len);
                }
                if p.head[0] >> 6 == 1 {
                    let length = u16::from_be_bytes([p.head[2], p.head[3]]) as usize;
                    rec.client_turn.push((p.t_us, 4 + length));
                    if let Some(t) = peer_times.get(media) {
                        rec.delays_us.push(p.t_us.saturating_sub(*t));
                    }
                    media += 1;
                }
            }
        }
        flows.push(rec);
    }
    Outcome {
        flows,
        from_us,
        to_us,
    }
}

/// Sends every flow's frames from its peer socket at their times (µs after `from_us`), each
/// payload starting with (flow, seq); returns how many each flow sent.
fn send_all(
    plan: &[Vec<(u64, usize)>],
    targets: &[(StdUdpSocket, SocketAddr)],
    from_us: u64,
) -> Vec<usize> {
    let mut events: Vec<(u64, usize, usize)> = plan
        .iter()
        .enumerate()
        .flat_map(|(f, s)| s.iter().enumerate().map(move |(k, (t, _))| (*t, f, k)))
        .collect();
    events.sort();
    let mut sent = vec![0usize; plan.len()];
    let mut buf = vec![0x55u8; 2048];
    for (t, f, k) in events {
        let at = from_us + t;
        let now = now_us();
        if at > now {
            std::thread::sleep(Duration::from_micros(at - now));
        }
        let size = plan[f][k].1.max(8);
        buf[..4].copy_from_slice(&(f as u32).to_be_bytes());
        buf[4..8].copy_from_slice(&(k as u32).to_be_bytes());
        let (sock, to) = &targets[f];
        if sock.send_to(&buf[..size], to).is_ok() {
            sent[f] += 1;
        }
    }
    sent
}
