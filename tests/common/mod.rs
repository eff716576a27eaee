//! Helpers shared by the cross-process tests: start the real `veil relay` binary on loopback and
//! wait until it answers.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod api;
pub mod mesh;
pub mod observe;
pub mod rules;
pub mod site;
pub mod stream;
pub mod wire;

use veil_relay::proto::stun::{Class, Message, Writer, method};

pub const SECRET: &str = "e2e-secret-0123456789abcdef";

/// A REST credential for `id` signed with [`SECRET`], valid ten minutes: (username, password).
pub fn credential(id: &str) -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    veil_relay::proto::auth::mint(SECRET.as_bytes(), now + 600, Some(id))
}

/// Fails the test unless `python3` can import aioice (`.ci/run` installs the pinned version).
pub fn require_aioice() {
    let ok = Command::new("python3")
        .args(["-c", "import aioice"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with aioice is required: pip install 'aioice==0.13.0' (.ci/run installs it)"
    );
}

/// The first JSON line a helper process printed (the client scripts under tests/ print their
/// result as one); panics with the process's output, naming `what`, when there is none.
pub fn json_result(out: &std::process::Output, what: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find(|l| l.starts_with('{')) {
        Some(l) => serde_json::from_str(l).unwrap(),
        None => panic!(
            "{what}: no result\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A `veil relay` child process, killed on drop.
pub struct Relay {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that is free for UDP and TCP, that no other test of this process was given,
/// and that lies above the kernel's ephemeral range (32768-60999), so that no port-0 bind or
/// outgoing connection of a test running beside takes it before it is used (port-0 picks raced
/// that way now and then: "Address already in use" for a relay or an allocator).
fn fresh_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Where a test binary starts: spread by its process id, so consecutive binaries rarely meet
    // a port a killed child of the previous one still holds.
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..4_500 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 61_000 + (start.wrapping_add(n) % 4_500) as u16;
        if StdUdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port in 61000-65499");
}

pub fn free_udp_port() -> u16 {
    fresh_port()
}

/// Starts a relay on a free loopback port with relayed ports in `ports` (below the kernel's
/// ephemeral range), REST secrets ["old", SECRET] and `extra` flags; waits until it answers.
pub fn start_relay(ports: &str, extra: &[&str]) -> Relay {
    start_relay_env(ports, extra, &[])
}

/// [`start_relay`] with environment variables set for the relay.
pub fn start_relay_env(ports: &str, extra: &[&str], env: &[(&str, &str)]) -> Relay {
    let dir = std::env::temp_dir().join(format!("veil-e2e-{}-{}", std::process::id(), ports));
    std::fs::create_dir_all(&dir).unwrap();
    let secrets = dir.join("secrets");
    std::fs::write(&secrets, format!("{SECRET}\nan-older-secret-still-valid\n")).unwrap();
    let port = free_udp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_veil"));
    cmd.args([
        "relay",
        "--listen",
        &addr.to_string(),
        "--port-range",
        ports,
        "--workers",
        "2",
    ])
    .arg("--auth-secret-file")
    .arg(&secrets)
    .args(extra)
    .env("RUST_LOG", "warn")
    .envs(env.iter().copied())
    .stdin(Stdio::null());
    let child = cmd.spawn().expect("veil binary runs");
    let relay = Relay {
        child,
        addr,
        dir: TempDir(dir),
    };
    wait_ready(addr);
    relay
}

/// Waits (10 s at most: workers publish their counters every tick) until `series` on the
/// relay's `/metrics` is exactly `want`; panics with the last value otherwise (a value that
/// overshoots fails too).
pub fn wait_metric(admin: SocketAddr, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(admin, "/metrics");
        let v = metric(&body, series);
        if v == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline && v.is_none_or(|v| v < want),
            "{series} is {v:?}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends STUN Binding requests until the relay answers (10 s at most).
pub fn wait_ready(addr: SocketAddr) {
    let s = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut req = [0u8; 64];
    let n = Writer::new(&mut req, method::BINDING, Class::Request, &[7; 12])
        .unwrap()
        .finish();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        s.send_to(&req[..n], addr).unwrap();
        if let Ok((len, _)) = s.recv_from(&mut buf) {
            let m = Message::decode(&buf[..len]).expect("a STUN response");
            assert_eq!(m.class, Class::Success);
            return;
        }
    }
    panic!("relay on {addr} did not answer within 10 s");
}

/// Runs `promtool check metrics` (Debian's prometheus package; .ci/run installs it) on a
/// metrics page and fails the test with its complaints.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is required: apt-get install prometheus (.ci/run installs it)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loopback TCP address nobody listens on (for an admin endpoint).
pub fn free_tcp_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], fresh_port()))
}

/// `GET path` on a plain HTTP/1.1 endpoint: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("admin endpoint answers");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_string())
}

/// The value of the first sample line starting with `series` (name and labels), if any.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Sends a signal (`TERM`, `HUP`, …) to a child process.
pub fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill(1) runs")
        .success();
    assert!(ok, "kill -{name} {}", child.id());
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM into `dir`: the
/// (certificate, key) paths.
pub fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen makes a certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

/// A relay as [`start_relay`] makes it, also listening for TURN over TCP and TLS (a self-signed
/// certificate in its directory) on free loopback ports: the relay, its TCP and TLS addresses.
pub fn start_stream_relay(ports: &str, extra: &[&str]) -> (Relay, SocketAddr, SocketAddr) {
    let dir = std::env::temp_dir().join(format!("veil-tls-{}-{ports}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed(&dir);
    let tcp = free_tcp_addr();
    let tls = free_tcp_addr();
    let mut args: Vec<String> = [
        "--listen-tcp".to_string(),
        tcp.to_string(),
        "--listen-tls".into(),
        tls.to_string(),
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ]
    .into();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = start_relay(ports, &args);
    // The relay's temp dir holds the secrets; the certificate dir goes with the test process.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(tls).is_err() {
        assert!(Instant::now() < deadline, "TLS listener {tls} not up");
        std::thread::sleep(Duration::from_millis(50));
    }
    (relay, tcp, tls)
}

/// The certificate [`start_stream_relay`] made for the relay on `ports`.
pub fn stream_relay_cert(ports: &str) -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("veil-tls-{}-{ports}", std::process::id()))
        .join("cert.pem")
}

/// The shaping every shaped test relay runs with: the default of `--shaping` (one size per flow
/// from the buckets 128,256,512,1200, 20 ms slots, cover at 50 frames/s of the flow's size).
pub const SHAPING: [&str; 1] = ["--shaping"];

/// `base` followed by [`SHAPING`].
pub fn shaped(base: &[&'static str]) -> Vec<&'static str> {
    base.iter().chain(SHAPING.iter()).copied().collect()
}

/// Fails loudly when an external tool a suite needs is missing (never a silent pass).
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} not found: this suite needs Debian's coturn package \
         (`apt-get install coturn`; .ci/run installs it)"
    );
}

/// A webrtc-rs `turn` client (a client we did not write) for `server` over `conn`, listening.
pub async fn turn_client_over(
    conn: std::sync::Arc<dyn webrtc_util::Conn + Send + Sync>,
    server: SocketAddr,
    username: &str,
    password: &str,
) -> turn::client::Client {
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.into(),
        password: password.into(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .expect("client");
    client.listen().await.expect("listen");
    client
}

/// Where test peers run: a loopback address that is not the relay's (127.0.0.1), on which the
/// relay refuses every port outside its relayed range.
pub const PEER_IP: &str = "127.0.0.2:0";

/// A UDP echo peer on loopback: answers every datagram from socket A and, with `copy_from_b`,
/// sends a copy from a second socket B on the same IP (same permission, no channel: always a
/// Data indication). Stops by itself after `limit` datagrams or 60 s; the task returns how many
/// it saw.
pub async fn echo_peer(
    limit: usize,
    copy_from_b: bool,
) -> (SocketAddr, SocketAddr, tokio::task::JoinHandle<usize>) {
    echo_peer_at(PEER_IP, limit, copy_from_b).await
}

/// [`echo_peer`] on the address `at` (port 0).
pub async fn echo_peer_at(
    at: &str,
    limit: usize,
    copy_from_b: bool,
) -> (SocketAddr, SocketAddr, tokio::task::JoinHandle<usize>) {
    let a = tokio::net::UdpSocket::bind(at).await.unwrap();
    let b = tokio::net::UdpSocket::bind(at).await.unwrap();
    let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut n_seen = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while n_seen < limit {
            let Ok(Ok((n, from))) = tokio::time::timeout_at(deadline, a.recv_from(&mut buf)).await
            else {
                break;
            };
            n_seen += 1;
            let _ = a.send_to(&buf[..n], from).await;
            if copy_from_b {
                let mut copy = b"B:".to_vec();
                copy.extend_from_slice(&buf[..n]);
                let _ = b.send_to(&copy, from).await;
            }
        }
        n_seen
    });
    (aa, ba, task)
}

/// Whether coturn's uclient failed on its own channel numbers: each client binds a random
/// channel (0x4000-0x4FFF) to its peer's RTCP port, then another random one to its RTP port,
/// and when the two draws agree (1 in 4 096 per client) the second bind names a channel bound
/// to another peer, which RFC 8656 §11.2 answers with 400 and uclient gives up on. Its tests run
/// it again once, then.
pub fn uclient_collided(out: &std::process::Output, text: &str) -> bool {
    let hit = !out.status.success() && text.contains("channel bind: error 400");
    if hit {
        eprintln!("uclient drew one channel number twice (1 in 4 096 per client); once more");
    }
    hit
}

/// A TURN client written against the wire, for what friendly clients never send: Send
/// indications to any address, requests without attributes, counting replies byte by byte.
/// Blocking, on its own loopback socket; every wait is bounded.
pub struct RawTurn {
    pub sock: StdUdpSocket,
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
    pub nonce: Vec<u8>,
    txn: u32,
}

/// The realm `veil relay` uses by default.
pub const REALM: &str = "veil";

impl RawTurn {
    /// A client on `local` (e.g. "127.0.0.1:0") with a REST credential for `id` valid an hour.
    pub fn rest(local: &str, server: SocketAddr, id: &str) -> RawTurn {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let username = format!("{exp}:{id}");
        let password = String::from_utf8(
            veil_relay::proto::auth::rest_password(SECRET.as_bytes(), username.as_bytes()).to_vec(),
        )
        .unwrap();
        RawTurn::with(local, server, username, password)
    }

    /// A client with this username and password.
    pub fn with(local: &str, server: SocketAddr, username: String, password: String) -> RawTurn {
        let sock = StdUdpSocket::bind(local).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        RawTurn {
            sock,
            server,
            username,
            password,
            nonce: Vec::new(),
            txn: 0,
        }
    }

    pub fn txid(&mut self) -> [u8; 12] {
        self.txn += 1;
        let mut t = [0x5a; 12];
        t[..4].copy_from_slice(&self.txn.to_be_bytes());
        t
    }

    /// A message of `method` and `class` with `attrs` (an XOR-PEER-ADDRESS given as an address),
    /// signed with the long-term key when `signed`.
    pub fn build(
        &self,
        m: u16,
        class: Class,
        txid: [u8; 12],
        attrs: &[Attr],
        signed: bool,
    ) -> Vec<u8> {
        use veil_relay::proto::auth::{ALG_MD5, Key};
        use veil_relay::proto::stun::{Integrity, attr};
        let mut buf = vec![0u8; 16 * 1024];
        let mut w = Writer::new(&mut buf, m, class, &txid).unwrap();
        for a in attrs {
            match a {
                Attr::Peer(p) => w.xor_address(attr::XOR_PEER_ADDRESS, *p).unwrap(),
                Attr::Raw(t, v) => w.attr(*t, v).unwrap(),
            };
        }
        if signed {
            w.attr(attr::USERNAME, self.username.as_bytes()).unwrap();
            w.attr(attr::REALM, REALM.as_bytes()).unwrap();
            w.attr(attr::NONCE, &self.nonce).unwrap();
            let key = Key::derive(
                ALG_MD5,
                self.username.as_bytes(),
                REALM.as_bytes(),
                self.password.as_bytes(),
            );
            w.integrity(Integrity::Sha1, key.as_bytes()).unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    /// The next datagram from the server within `wait`, skipping none.
    pub fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 2048];
        while Instant::now() < deadline {
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) if from == self.server => return Some(buf[..n].to_vec()),
                Ok(_) => {}
                Err(_) => {}
            }
        }
        None
    }

    /// The response to transaction `txid` within 2 s (skips indications and other replies).
    pub fn response(&self, txid: &[u8; 12]) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let b = self.recv(Duration::from_millis(200))?;
            if let Ok(m) = Message::decode(&b)
                && m.transaction_id() == txid
                && m.class != Class::Indication
            {
                return Some(b);
            }
        }
        None
    }

    /// Sends a signed request (answering one 401/438 challenge as clients do); the response.
    pub fn request(&mut self, m: u16, attrs: &[Attr]) -> Vec<u8> {
        use veil_relay::proto::stun::{attr, error_code_of, find_attr};
        for _ in 0..2 {
            let txid = self.txid();
            let req = self.build(m, Class::Request, txid, attrs, !self.nonce.is_empty());
            self.sock.send_to(&req, self.server).unwrap();
            let resp = self.response(&txid).expect("the relay answers");
            let code = find_attr(&resp, attr::ERROR_CODE).and_then(error_code_of);
            if matches!(code, Some(401 | 438))
                && let Some(n) = find_attr(&resp, attr::NONCE)
            {
                self.nonce = n.to_vec();
                continue;
            }
            return resp;
        }
        panic!("challenged twice");
    }

    /// Allocates a UDP relayed address; returns it.
    pub fn allocate(&mut self) -> SocketAddr {
        use veil_relay::proto::stun::attr;
        let resp = self.request(
            method::ALLOCATE,
            &[Attr::Raw(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        );
        let m = Message::decode(&resp).unwrap();
        assert_eq!(m.class, Class::Success, "allocate: {:?}", error_code(&resp));
        m.get_xor_address(attr::XOR_RELAYED_ADDRESS)
            .unwrap()
            .unwrap()
    }

    /// Installs a permission for `peer`'s IP; the response's error code, if any.
    pub fn permit(&mut self, peer: SocketAddr) -> Option<u16> {
        let resp = self.request(method::CREATE_PERMISSION, &[Attr::Peer(peer)]);
        error_code(&resp)
    }

    /// Sends `data` to `peer` in a Send indication.
    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        use veil_relay::proto::stun::attr;
        let txid = self.txid();
        let ind = self.build(
            method::SEND,
            Class::Indication,
            txid,
            &[Attr::Peer(peer), Attr::Raw(attr::DATA, data.to_vec())],
            false,
        );
        self.sock.send_to(&ind, self.server).unwrap();
    }

    /// The next Data indication within `wait`: its peer and data.
    pub fn data_indication(&self, wait: Duration) -> Option<(SocketAddr, Vec<u8>)> {
        use veil_relay::proto::stun::attr;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let Some(b) = self.recv(deadline.saturating_duration_since(Instant::now())) else {
                break;
            };
            if let Ok(m) = Message::decode(&b)
                && m.method == method::DATA
                && m.class == Class::Indication
            {
                let peer = m.get_xor_address(attr::XOR_PEER_ADDRESS)?.ok()?;
                return Some((peer, m.get(attr::DATA)?.to_vec()));
            }
        }
        None
    }
}

/// An attribute for [`RawTurn::build`].
pub enum Attr {
    /// XOR-PEER-ADDRESS.
    Peer(SocketAddr),
    /// Any attribute, its value as given.
    Raw(u16, Vec<u8>),
}

/// The ERROR-CODE of a response, if it has one.
pub fn error_code(resp: &[u8]) -> Option<u16> {
    use veil_relay::proto::stun::{attr, error_code_of, find_attr};
    find_attr(resp, attr::ERROR_CODE).and_then(error_code_of)
}
