//! `veil call`: a two-party call through the cluster, for trying it. Asks the allocator to place
//! a call between two client addresses (`POST /v1/calls`), allocates on each party's relay with
//! the credential it returned, lets each party permit the other's relayed address, and sends
//! datagrams both ways at a voice rate (one every 20 ms). When the parties land on two relays of
//! a mesh, what crosses between the relays rides their link; `veil dev` prints this command.
//!
//! A demonstration client, blocking and loopback-friendly (each party binds its own client IP,
//! so a dev cluster's demo geo DB places it); interoperability is proven with clients we did not
//! write (tests/mesh_e2e.rs, tests/mesh_clients.rs).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use veil_relay::proto::auth::{ALG_MD5, Key};
use veil_relay::proto::stun::{self, Class, Integrity, Message, Writer, attr, method};

#[derive(Args)]
pub struct CallArgs {
    /// The allocator's base URL (http://host:port).
    #[arg(long)]
    allocator: String,
    /// A backend API key.
    #[arg(long)]
    key: String,
    /// The caller's client IP (bound locally: use a loopback address with a dev cluster).
    #[arg(long)]
    from: IpAddr,
    /// The callee's client IP.
    #[arg(long)]
    to: IpAddr,
    /// Datagrams each way (one every 20 ms; at most 3000).
    #[arg(long, default_value_t = 100)]
    packets: u32,
}

/// A party: its socket, its relay and credential, its relayed address.
struct Party {
    sock: UdpSocket,
    server: SocketAddr,
    user: String,
    pass: String,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    relayed: SocketAddr,
    txn: u32,
}

fn post(base: &str, key: &str, path: &str, body: &str) -> Result<String> {
    let host = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--allocator must be http://host:port"))?
        .trim_end_matches('/');
    let mut s = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.take(1 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "the allocator answered {}: {}",
            head.lines().next().unwrap_or(""),
            body.trim()
        );
    }
    Ok(body.to_string())
}

impl Party {
    fn new(ip: IpAddr, ice: &serde_json::Value) -> Result<Party> {
        let server = ice["iceServers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["urls"].as_array().into_iter().flatten())
            .filter_map(|u| u.as_str())
            .find_map(|u| {
                let rest = u.strip_prefix("turn:")?.strip_suffix("?transport=udp")?;
                rest.parse::<SocketAddr>().ok()
            })
            .ok_or_else(|| anyhow!("no turn:…?transport=udp URI in the answer"))?;
        let s = &ice["iceServers"][0];
        let sock = UdpSocket::bind((ip, 0)).with_context(|| format!("binding {ip}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(1)))?;
        Ok(Party {
            sock,
            server,
            user: s["username"].as_str().unwrap_or_default().to_string(),
            pass: s["credential"].as_str().unwrap_or_default().to_string(),
            realm: Vec::new(),
            nonce: Vec::new(),
            relayed: SocketAddr::from(([0, 0, 0, 0], 0)),
            txn: 0,
        })
    }

    fn txid(&mut self) -> [u8; 12] {
        self.txn += 1;
        let mut t = [0x76; 12];
        t[..4].copy_from_slice(&self.txn.to_be_bytes());
        t
    }

    /// A signed request (answering the 401 and 438 challenges); the success response.
    fn request(
        &mut self,
        m: u16,
        peer: Option<SocketAddr>,
        extra: &[(u16, &[u8])],
    ) -> Result<Vec<u8>> {
        for _ in 0..3 {
            let txid = self.txid();
            let mut buf = vec![0u8; 1500];
            let mut w = Writer::new(&mut buf, m, Class::Request, &txid)?;
            if let Some(p) = peer {
                w.xor_address(attr::XOR_PEER_ADDRESS, p)?;
            }
            for (t, v) in extra {
                w.attr(*t, v)?;
            }
            if !self.nonce.is_empty() {
                w.attr(attr::USERNAME, self.user.as_bytes())?;
                w.attr(attr::REALM, &self.realm)?;
                w.attr(attr::NONCE, &self.nonce)?;
                let key = Key::derive(
                    ALG_MD5,
                    self.user.as_bytes(),
                    &self.realm,
                    self.pass.as_bytes(),
                );
                w.integrity(Integrity::Sha1, key.as_bytes())?;
            }
            let n = w.finish();
            self.sock.send_to(&buf[..n], self.server)?;
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut rb = vec![0u8; 2048];
            let resp = loop {
                if Instant::now() > deadline {
                    bail!("{} did not answer", self.server);
                }
                if let Ok((len, from)) = self.sock.recv_from(&mut rb)
                    && from == self.server
                    && let Ok(msg) = Message::decode(&rb[..len])
                    && msg.transaction_id() == &txid
                {
                    break rb[..len].to_vec();
                }
            };
            let msg = Message::decode(&resp)?;
            if msg.class == Class::Success {
                return Ok(resp);
            }
            let code = stun::find_attr(&resp, attr::ERROR_CODE).and_then(stun::error_code_of);
            match code {
                Some(401 | 438) => {
                    if let Some(r) = stun::find_attr(&resp, attr::REALM) {
                        self.realm = r.to_vec();
                    }
                    self.nonce = stun::find_attr(&resp, attr::NONCE)
                        .ok_or_else(|| anyhow!("a challenge without a nonce"))?
                        .to_vec();
                }
                other => bail!("{} refused: error {other:?}", self.server),
            }
        }
        bail!("{} challenged three times", self.server)
    }

    fn allocate(&mut self) -> Result<()> {
        let resp = self.request(
            method::ALLOCATE,
            None,
            &[(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])],
        )?;
        self.relayed = Message::decode(&resp)?
            .get_xor_address(attr::XOR_RELAYED_ADDRESS)
            .ok_or_else(|| anyhow!("no relayed address"))??;
        Ok(())
    }

    fn send(&mut self, to: SocketAddr, data: &[u8]) -> Result<()> {
        let txid = self.txid();
        let mut buf = vec![0u8; 1500];
        let mut w = Writer::new(&mut buf, method::SEND, Class::Indication, &txid)?;
        w.xor_address(attr::XOR_PEER_ADDRESS, to)?;
        w.attr(attr::DATA, data)?;
        let n = w.finish();
        self.sock.send_to(&buf[..n], self.server)?;
        Ok(())
    }

    /// Data indications received now: (from, data).
    fn drain(&self, out: &mut Vec<(SocketAddr, Vec<u8>, Instant)>) {
        let mut rb = vec![0u8; 2048];
        while let Ok((len, from)) = self.sock.recv_from(&mut rb) {
            if from != self.server {
                continue;
            }
            if let Ok(m) = Message::decode(&rb[..len])
                && m.method == method::DATA
                && m.class == Class::Indication
                && let (Some(Ok(p)), Some(d)) =
                    (m.get_xor_address(attr::XOR_PEER_ADDRESS), m.get(attr::DATA))
            {
                out.push((p, d.to_vec(), Instant::now()));
            }
        }
    }
}

fn percentile(v: &mut [Duration], q: f64) -> Duration {
    v.sort_unstable();
    v.get(((v.len().saturating_sub(1)) as f64 * q) as usize)
        .copied()
        .unwrap_or_default()
}

pub fn run(a: CallArgs) -> Result<()> {
    if a.packets == 0 || a.packets > 3000 {
        bail!("--packets must be between 1 and 3000");
    }
    let body = format!(
        "{{\"parties\":[{{\"client_ip\":\"{}\"}},{{\"client_ip\":\"{}\"}}]}}",
        a.from, a.to
    );
    let answer: serde_json::Value =
        serde_json::from_str(&post(&a.allocator, &a.key, "/v1/calls", &body)?)
            .context("the allocator's answer")?;
    let zones = answer["zones"].clone();
    let mut x = Party::new(a.from, &answer["parties"][0])?;
    let mut y = Party::new(a.to, &answer["parties"][1])?;
    x.allocate().context("the caller's allocation")?;
    y.allocate().context("the callee's allocation")?;
    x.request(method::CREATE_PERMISSION, Some(y.relayed), &[])?;
    y.request(method::CREATE_PERMISSION, Some(x.relayed), &[])?;
    println!(
        "caller {} via {} (zone {}, relayed {})  <->  callee {} via {} (zone {}, relayed {})",
        a.from, x.server, zones[0], x.relayed, a.to, y.server, zones[1], y.relayed
    );
    // From here on the sockets are polled: a blocking read with a timeout sleeps in whole
    // kernel ticks (4 ms here), which stamped one party's datagrams up to 8 ms late.
    x.sock.set_nonblocking(true)?;
    y.sock.set_nonblocking(true)?;
    let start = Instant::now();
    let (mut at_x, mut at_y) = (Vec::new(), Vec::new());
    let mut sent_at = Vec::new();
    for i in 0..a.packets {
        let due = start + Duration::from_millis(20 * u64::from(i));
        while Instant::now() < due {
            x.drain(&mut at_x);
            y.drain(&mut at_y);
            std::thread::sleep(Duration::from_micros(50));
        }
        let payload = format!("veil call {i:05}").into_bytes();
        sent_at.push(Instant::now());
        x.send(y.relayed, &payload)?;
        y.send(x.relayed, &payload)?;
    }
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end {
        x.drain(&mut at_x);
        y.drain(&mut at_y);
        std::thread::sleep(Duration::from_micros(50));
    }
    let report = |name: &str, got: &[(SocketAddr, Vec<u8>, Instant)], from: SocketAddr| {
        let mut delays: Vec<Duration> = got
            .iter()
            .filter(|(p, _, _)| *p == from)
            .filter_map(|(_, d, t)| {
                let i: usize = std::str::from_utf8(d)
                    .ok()?
                    .strip_prefix("veil call ")?
                    .parse()
                    .ok()?;
                Some(t.saturating_duration_since(*sent_at.get(i)?))
            })
            .collect();
        let n = delays.len();
        let p50 = percentile(&mut delays, 0.5);
        let p99 = percentile(&mut delays, 0.99);
        println!(
            "  {name}: {n}/{} delivered, one way p50 {:.2} ms, p99 {:.2} ms",
            a.packets,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        n
    };
    let to_y = report("caller -> callee", &at_y, x.relayed);
    let to_x = report("callee -> caller", &at_x, y.relayed);
    if to_y == 0 || to_x == 0 {
        bail!("the call did not connect");
    }
    Ok(())
}
