//! `veil load`: a TURN load generator for any server (veil, coturn): N clients, each with an
//! allocation and a channel (or Send indications), exchange packets of a given size at a given
//! rate with a local UDP echo peer, for a bounded time. Reports offered and delivered packets/s,
//! loss, round-trip latency percentiles and the allocation setup rate on one summary line.
//!
//! Clients keep their state alive as a real client does (RFC 8656): a Refresh at half the
//! granted lifetime, and the channel (or permission) bound again every 4 minutes
//! (`--bind-every`), before its 5-minute permission expires; a stale nonce (438) is taken and the request sent again. The
//! summary counts these refreshes and their failures, so a long soak measures a relay in use.
//!
//! Built not to be the bottleneck: preallocated packet templates (no allocation per packet),
//! `sendmmsg` per client per tick, `recvmmsg` on readiness from epoll, a batched echo peer, and
//! several threads if asked. `--raw` drives a plain UDP forwarder instead (no TURN), to measure
//! the machine's ceiling with the same generator.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;
use veil_relay::proto::auth::{self, Key};
use veil_relay::proto::stun::{
    self, Class, Integrity, Message, Writer, attr, channel_data, method,
};

use veil_relay::sys::{Epoll, RecvBatch, SendQueue, raise_fd_limit};

#[derive(Args, Clone)]
pub(crate) struct LoadArgs {
    /// The TURN server (UDP).
    #[arg(long)]
    server: SocketAddr,
    /// TURN REST API secret file (the first secret signs); each client gets its own user id.
    #[arg(long = "secret-file", value_name = "FILE", conflicts_with_all = ["user", "password"])]
    secret_file: Option<PathBuf>,
    /// Long-term credential user (all clients share it).
    #[arg(long, requires = "password")]
    user: Option<String>,
    #[arg(long, requires = "user")]
    password: Option<String>,
    /// Clients, each with its own socket and allocation (at most 60000).
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Packets per second each client sends.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Payload bytes per packet (24 to 1400).
    #[arg(long, default_value_t = 160)]
    size: usize,
    /// Seconds of traffic (at most 3600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Send indications instead of a channel.
    #[arg(long = "send-indications")]
    send_indications: bool,
    /// Payload sizes instead of --size, one per client in turn (e.g. 60,200,600,1200).
    #[arg(long, value_delimiter = ',', value_name = "BYTES,...")]
    sizes: Vec<usize>,
    /// The share of clients (0 to 1, evenly spread) that use Send indications, the others a
    /// channel (a mix of what a kernel fast path carries and what it leaves).
    #[arg(
        long = "send-share",
        value_name = "SHARE",
        conflicts_with = "send_indications"
    )]
    send_share: Option<f64>,
    /// Network namespace (a name under /run/netns) the echo peer's socket is opened in, so that
    /// its traffic crosses a router as a remote peer's does (benches/fast_path.sh).
    #[arg(long = "peer-netns", value_name = "NAME")]
    peer_netns: Option<String>,
    /// Local IP of the clients.
    #[arg(long = "local-ip", default_value = "127.0.0.1")]
    local_ip: IpAddr,
    /// Address of the echo peer (port 0: any free port). Not the relay's own IP: there a relay
    /// reaches nothing but its relayed ports.
    #[arg(long, default_value = "127.0.0.2:0")]
    peer: SocketAddr,
    /// Client threads (the echo peer has its own).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Keep the allocations idle this many seconds before traffic (to measure memory).
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// No TURN: send payloads straight to --server, a plain UDP forwarder to --peer.
    #[arg(long)]
    raw: bool,
    /// Seconds between each client's channel (or permission) refreshes; RFC 8656 permissions
    /// last 300 s, so a real client binds again within that. Lower only for a server whose
    /// permissions are shorter. (Allocations are refreshed at half their granted lifetime.)
    #[arg(long = "bind-every", value_name = "SECS", default_value_t = 240.0)]
    bind_every: f64,
}

const MAGIC: &[u8; 4] = b"VLD1";
/// Channel number used by every client (channels are per allocation).
const CHANNEL: u16 = 0x4000;
/// Round-trip histogram resolution: 1 µs buckets up to 1 s.
const HIST: usize = 1_000_000;
/// Datagrams moved per system call at most, and the largest one handled.
pub(crate) const BATCH: usize = 64;
pub(crate) const SLOT: usize = 2048;

/// A receive batch and a send queue of [`BATCH`] datagrams of up to [`SLOT`] bytes.
pub(crate) fn batches() -> (RecvBatch, SendQueue) {
    (
        RecvBatch::new(BATCH, SLOT, 0, 0),
        SendQueue::new(BATCH, BATCH * SLOT),
    )
}

/// One client after setup.
struct Client {
    sock: UdpSocket,
    /// A ready packet: header (ChannelData or Send indication) and payload; seq and timestamp
    /// are rewritten in place before each send.
    template: Vec<u8>,
    /// Where the payload starts in `template`.
    payload_at: usize,
    sent: u64,
    /// Packets the kernel refused to send (counted in `sent`, not offered to the server).
    failed: u64,
    /// A signed Refresh with LIFETIME 0, to delete the allocation at the end.
    goodbye: Option<Vec<u8>>,
    /// What keeps the allocation, its permission and channel alive (None with `--raw`).
    keep: Option<KeepAlive>,
}

/// A request unanswered this long is sent again (3 tries).
const RETRY: Duration = Duration::from_secs(2);

/// A client's credentials and what it must refresh, and when.
struct KeepAlive {
    user: String,
    key: Key,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    peer: SocketAddr,
    channel: bool,
    /// Half the lifetime the server granted.
    allocation_every: Duration,
    /// `--bind-every`.
    binding_every: Duration,
    next_allocation: Duration,
    next_binding: Duration,
    /// The request in flight: its transaction, what it refreshes, when sent, tries so far.
    pending: Option<([u8; 12], Refresh, Duration, u8)>,
}

/// What a keep-alive request refreshes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refresh {
    Allocation,
    Binding,
}

impl KeepAlive {
    /// The signed request for `what`, under a fresh transaction id.
    fn request(&self, what: Refresh, lifetime: u32) -> Result<([u8; 12], Vec<u8>)> {
        let id = txid();
        let mut req = vec![0u8; 512];
        let meth = match (what, self.channel) {
            (Refresh::Allocation, _) => method::REFRESH,
            (Refresh::Binding, true) => method::CHANNEL_BIND,
            (Refresh::Binding, false) => method::CREATE_PERMISSION,
        };
        let mut w = Writer::new(&mut req, meth, Class::Request, &id)?;
        match what {
            Refresh::Allocation => {
                w.u32(attr::LIFETIME, lifetime)?;
            }
            Refresh::Binding => {
                if self.channel {
                    w.u32(attr::CHANNEL_NUMBER, (CHANNEL as u32) << 16)?;
                }
                w.xor_address(attr::XOR_PEER_ADDRESS, self.peer)?;
            }
        }
        w.attr(attr::USERNAME, self.user.as_bytes())?;
        w.attr(attr::REALM, &self.realm)?;
        w.attr(attr::NONCE, &self.nonce)?;
        w.integrity(Integrity::Sha1, self.key.as_bytes())?;
        let n = w.finish();
        req.truncate(n);
        Ok((id, req))
    }
}

/// Keep-alive requests sent, answered with success, and failed (an error other than a stale
/// nonce, or no answer after 3 tries).
#[derive(Clone, Copy, Default)]
struct KeepStats {
    sent: u64,
    ok: u64,
    failed: u64,
}

/// Asks for large socket buffers (root may exceed net.core.rmem_max): the echo peer and the
/// clients take bursts from every relayed socket at once.
fn big_buffers(sock: &UdpSocket) {
    let fd = sock.as_raw_fd();
    let size: libc::c_int = 4 << 20;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: valid fd and an int option of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
    }
}

fn txid() -> [u8; 12] {
    let mut t = [0u8; 12];
    let _ = getrandom::fill(&mut t);
    t
}

/// Sends a request and waits for the response with its transaction id (3 tries).
fn transact(sock: &UdpSocket, server: SocketAddr, req: &[u8], buf: &mut [u8]) -> Result<usize> {
    let id = &req[8..20];
    for _ in 0..3 {
        sock.send_to(req, server)?;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match sock.recv_from(buf) {
                Ok((n, _)) if n >= 20 && &buf[8..20] == id => return Ok(n),
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    bail!("no answer from {server}")
}

fn error_code(msg: &[u8]) -> Option<u16> {
    stun::find_attr(msg, attr::ERROR_CODE).and_then(stun::error_code_of)
}

struct Creds {
    user: String,
    pass: String,
}

fn creds(args: &LoadArgs, secret: Option<&[u8]>, i: usize) -> Creds {
    match (secret, &args.user, &args.password) {
        (Some(s), _, _) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let (user, pass) = auth::mint(
                s,
                now + 3600 + args.duration as u64 + args.hold as u64,
                Some(&format!("load-{i}")),
            );
            Creds { user, pass }
        }
        (None, Some(u), Some(p)) => Creds {
            user: u.clone(),
            pass: p.clone(),
        },
        _ => Creds {
            user: String::new(),
            pass: String::new(),
        },
    }
}

/// What client `i` sends: its payload size, and whether over Send indications.
fn shape(args: &LoadArgs, i: usize) -> (usize, bool) {
    let size = match args.sizes.len() {
        0 => args.size,
        n => args.sizes[i % n],
    };
    let send = match args.send_share {
        // Client i sends indications when the running share crosses a whole number at i.
        Some(share) => ((i + 1) as f64 * share).floor() > (i as f64 * share).floor(),
        None => args.send_indications,
    };
    (size, send)
}

/// Allocates, then binds the channel (or installs the permission) towards `peer`.
fn setup(args: &LoadArgs, c: &Creds, peer: SocketAddr, i: usize) -> Result<Client> {
    let (size, send_indications) = shape(args, i);
    let sock = UdpSocket::bind(SocketAddr::new(args.local_ip, 0))?;
    big_buffers(&sock);
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let server = args.server;
    let mut buf = vec![0u8; 2048];
    let mut req = vec![0u8; 512];
    if args.raw {
        return client_from(sock, size, peer, None, None);
    }
    // Unauthenticated Allocate: learn realm and nonce.
    let n = {
        let mut w = Writer::new(&mut req, method::ALLOCATE, Class::Request, &txid())?;
        w.u32(attr::REQUESTED_TRANSPORT, 17 << 24)?;
        w.finish()
    };
    let got = transact(&sock, server, &req[..n], &mut buf)?;
    let m = Message::decode(&buf[..got]).context("a STUN answer")?;
    if m.class != Class::Error || error_code(&buf[..got]) != Some(401) {
        bail!("expected a 401 challenge");
    }
    let mut realm = m.get(attr::REALM).context("REALM")?.to_vec();
    let mut nonce = m.get(attr::NONCE).context("NONCE")?.to_vec();
    let mut key = Key::derive(auth::ALG_MD5, c.user.as_bytes(), &realm, c.pass.as_bytes());
    let signed = |req: &mut Vec<u8>,
                  meth: u16,
                  nonce: &[u8],
                  realm: &[u8],
                  key: &Key,
                  extra: &dyn Fn(&mut Writer) -> Result<(), stun::Overflow>|
     -> Result<usize> {
        let mut w = Writer::new(req, meth, Class::Request, &txid())?;
        extra(&mut w)?;
        w.attr(attr::USERNAME, c.user.as_bytes())?;
        w.attr(attr::REALM, realm)?;
        w.attr(attr::NONCE, nonce)?;
        w.integrity(Integrity::Sha1, key.as_bytes())?;
        Ok(w.finish())
    };
    let mut relayed = None;
    let mut granted = 600u32;
    for _ in 0..3 {
        let n = signed(&mut req, method::ALLOCATE, &nonce, &realm, &key, &|w| {
            w.u32(attr::REQUESTED_TRANSPORT, 17 << 24).map(|_| ())
        })?;
        let got = transact(&sock, server, &req[..n], &mut buf)?;
        let m = Message::decode(&buf[..got]).context("a STUN answer")?;
        match m.class {
            Class::Success => {
                let v = stun::find_attr(&buf[..got], attr::XOR_RELAYED_ADDRESS)
                    .context("XOR-RELAYED-ADDRESS")?;
                relayed = Some(
                    stun::decode_xor_address(v, m.transaction_id())
                        .map_err(|_| anyhow::anyhow!("bad XOR-RELAYED-ADDRESS"))?,
                );
                if let Some(Ok(l)) = m.get_u32(attr::LIFETIME) {
                    granted = l;
                }
                break;
            }
            _ if error_code(&buf[..got]) == Some(438) => {
                nonce = m.get(attr::NONCE).context("NONCE")?.to_vec();
                if let Some(r) = m.get(attr::REALM) {
                    realm = r.to_vec();
                    key = Key::derive(auth::ALG_MD5, c.user.as_bytes(), &realm, c.pass.as_bytes());
                }
            }
            _ => bail!("Allocate refused: {:?}", error_code(&buf[..got])),
        }
    }
    relayed.context("Allocate kept failing with 438")?;
    let (meth, with_channel) = if send_indications {
        (method::CREATE_PERMISSION, false)
    } else {
        (method::CHANNEL_BIND, true)
    };
    let n = signed(&mut req, meth, &nonce, &realm, &key, &|w| {
        if with_channel {
            w.u32(attr::CHANNEL_NUMBER, (CHANNEL as u32) << 16)?;
        }
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).map(|_| ())
    })?;
    let got = transact(&sock, server, &req[..n], &mut buf)?;
    let m = Message::decode(&buf[..got]).context("a STUN answer")?;
    if m.class != Class::Success {
        bail!(
            "{} refused: {:?}",
            if with_channel {
                "ChannelBind"
            } else {
                "CreatePermission"
            },
            error_code(&buf[..got])
        );
    }
    let n = signed(&mut req, method::REFRESH, &nonce, &realm, &key, &|w| {
        w.u32(attr::LIFETIME, 0).map(|_| ())
    })?;
    let mut client = client_from(
        sock,
        size,
        peer,
        Some(with_channel),
        Some(req[..n].to_vec()),
    )?;
    let allocation_every = Duration::from_secs((granted / 2).max(1).into());
    let binding_every = Duration::from_secs_f64(args.bind_every);
    client.keep = Some(KeepAlive {
        user: c.user.clone(),
        key,
        realm,
        nonce,
        peer,
        channel: with_channel,
        allocation_every,
        binding_every,
        // Times on the traffic clock, which starts after setup and --hold (during which
        // nothing is sent: the first refreshes come at once if the hold was long).
        next_allocation: allocation_every.saturating_sub(Duration::from_secs_f64(args.hold)),
        next_binding: binding_every.saturating_sub(Duration::from_secs_f64(args.hold)),
        pending: None,
    });
    Ok(client)
}

fn client_from(
    sock: UdpSocket,
    size: usize,
    peer: SocketAddr,
    channel: Option<bool>,
    goodbye: Option<Vec<u8>>,
) -> Result<Client> {
    sock.set_nonblocking(true)?;
    let (template, payload_at) = match channel {
        None => (vec![0u8; size], 0),
        Some(true) => {
            let mut t = vec![0u8; 4 + size];
            let hdr: &mut [u8; 4] = (&mut t[..4]).try_into().expect("4 bytes");
            channel_data::write_header(hdr, CHANNEL, size as u16);
            (t, 4)
        }
        Some(false) => {
            let mut t = vec![0u8; 100 + size];
            let mut w = Writer::new(&mut t, method::SEND, Class::Indication, &txid())?;
            w.xor_address(attr::XOR_PEER_ADDRESS, peer)?;
            w.attr_slot(attr::DATA, size)?;
            let n = w.finish();
            t.truncate(n);
            let at = n - size - ((4 - size % 4) % 4);
            (t, at)
        }
    };
    let mut c = Client {
        sock,
        template,
        payload_at,
        sent: 0,
        failed: 0,
        goodbye,
        keep: None,
    };
    c.template[payload_at..payload_at + 4].copy_from_slice(MAGIC);
    Ok(c)
}

/// Where the payload of a datagram from the server is.
fn payload_of(raw: bool, d: &[u8]) -> Option<&[u8]> {
    if raw {
        return Some(d);
    }
    if channel_data::is_channel_data(d) {
        return channel_data::decode(d).map(|(_, p)| p);
    }
    stun::find_attr(d, attr::DATA)
}

/// Sends what is due of `c`'s keep-alive at `now` (traffic clock): a retry of the request in
/// flight, or the next refresh.
fn keep_alive(c: &mut Client, server: SocketAddr, now: Duration, stats: &mut KeepStats) {
    let Some(k) = c.keep.as_mut() else { return };
    let what = match k.pending {
        Some((_, what, sent, tries)) if now >= sent + RETRY => {
            if tries >= 3 {
                stats.failed += 1;
                k.pending = None;
                return;
            }
            Some((what, tries + 1))
        }
        Some(_) => None,
        None if now >= k.next_allocation => Some((Refresh::Allocation, 1)),
        None if now >= k.next_binding => Some((Refresh::Binding, 1)),
        None => None,
    };
    let Some((what, tries)) = what else { return };
    let lifetime = (k.allocation_every.as_secs() * 2) as u32;
    if let Ok((id, req)) = k.request(what, lifetime) {
        if tries == 1 {
            stats.sent += 1;
        }
        let _ = c.sock.send_to(&req, server);
        k.pending = Some((id, what, now, tries));
    }
}

/// Takes a STUN response on `c`'s socket: the answer to its keep-alive request, if it is one.
fn keep_alive_answer(c: &mut Client, d: &[u8], now: Duration, stats: &mut KeepStats) {
    let Some(k) = c.keep.as_mut() else { return };
    let Some((id, what, _, tries)) = k.pending else {
        return;
    };
    let Ok(m) = Message::decode(d) else { return };
    if m.transaction_id() != &id {
        return;
    }
    k.pending = None;
    match m.class {
        Class::Success => {
            stats.ok += 1;
            match what {
                Refresh::Allocation => k.next_allocation = now + k.allocation_every,
                Refresh::Binding => k.next_binding = now + k.binding_every,
            }
        }
        _ if error_code(d) == Some(438) && tries < 3 => {
            // A stale nonce: take the new one and ask again at once.
            if let Some(n) = m.get(attr::NONCE) {
                k.nonce = n.to_vec();
            }
            k.pending = Some((id, what, Duration::ZERO, tries));
        }
        _ => stats.failed += 1,
    }
}

/// What one client thread counted.
struct ThreadReport {
    sent: u64,
    failed: u64,
    received: u64,
    keep: KeepStats,
    /// Round trips by µs; those of a second or more are in `received` only.
    hist: Vec<u32>,
}

fn run_clients(
    args: &LoadArgs,
    mut clients: Vec<Client>,
    start: Instant,
    first: u32,
) -> Result<ThreadReport> {
    let mut poll = Epoll::new(256)?;
    for (i, c) in clients.iter().enumerate() {
        poll.add(&c.sock, i as u64)?;
    }
    let mut hist = vec![0u32; HIST];
    let mut received = 0u64;
    let (mut inb, mut out) = batches();
    let duration = Duration::from_secs_f64(args.duration);
    let drain = Duration::from_millis(500);
    let rate = args.rate as f64;
    let server = args.server;
    // Clients start out of phase, so that their packets do not all leave in the same tick.
    let phase: Vec<f64> = (0..clients.len())
        .map(|i| (i as f64 + first as f64) / args.clients as f64)
        .collect();
    let mut keep = KeepStats::default();
    let mut next_keep = Duration::ZERO;
    loop {
        let now = start.elapsed();
        if now >= duration + drain {
            break;
        }
        // Keep-alives are looked at ten times a second, not every tick.
        if now >= next_keep && now < duration {
            for c in clients.iter_mut() {
                keep_alive(c, server, now, &mut keep);
            }
            next_keep = now + Duration::from_millis(100);
        }
        if now < duration {
            let t = now.as_secs_f64();
            for (i, c) in clients.iter_mut().enumerate() {
                let due_total = (rate * t + phase[i]) as u64;
                let due = due_total.saturating_sub(c.sent).min(BATCH as u64);
                if due == 0 {
                    continue;
                }
                // One clock read per batch: its packets leave in one sendmmsg.
                let t_ns = start.elapsed().as_nanos() as u64;
                for _ in 0..due {
                    let at = c.payload_at;
                    c.template[at + 4..at + 8].copy_from_slice(&(first + i as u32).to_be_bytes());
                    c.template[at + 8..at + 12].copy_from_slice(&(c.sent as u32).to_be_bytes());
                    c.template[at + 12..at + 20].copy_from_slice(&t_ns.to_be_bytes());
                    out.push(&c.template, server);
                    c.sent += 1;
                }
                c.failed += out.send(c.sock.as_raw_fd()).dropped as u64;
            }
        }
        // Until the next send tick (1 ms), take what came back.
        for k in 0..poll.wait(1) {
            let c = &mut clients[poll.token(k) as usize];
            loop {
                let n = inb.recv(c.sock.as_raw_fd()).unwrap_or(0);
                let t_now = start.elapsed().as_nanos() as u64;
                for k in 0..n {
                    let d = inb.get(k);
                    if !args.raw && stun::looks_like_stun(d) && d.len() >= 20 && d[0] & 0x01 == 1 {
                        // A response (class bits: success or error), not a Data indication.
                        keep_alive_answer(c, d, Duration::from_nanos(t_now), &mut keep);
                        continue;
                    }
                    let Some(p) = payload_of(args.raw, d) else {
                        continue;
                    };
                    if p.len() < 20 || &p[..4] != MAGIC {
                        continue;
                    }
                    let t = u64::from_be_bytes(p[12..20].try_into().expect("8 bytes"));
                    let us = (t_now.saturating_sub(t) / 1000) as usize;
                    received += 1;
                    if let Some(b) = hist.get_mut(us) {
                        *b += 1;
                    }
                }
                if n < BATCH {
                    break;
                }
            }
        }
    }
    // Delete the allocations, one answered request at a time (the server would otherwise keep
    // them until they expire, and a later run reusing a 5-tuple would get 437/441).
    let mut buf = vec![0u8; 2048];
    for c in &clients {
        if let Some(g) = &c.goodbye {
            let _ = c.sock.set_nonblocking(false);
            let _ = c.sock.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = transact(&c.sock, server, g, &mut buf);
        }
    }
    Ok(ThreadReport {
        failed: clients.iter().map(|c| c.failed).sum(),
        sent: clients.iter().map(|c| c.sent - c.failed).sum(),
        received,
        keep,
        hist,
    })
}

/// A UDP socket bound to `addr` in network namespace `ns` (from a thread that enters it; the
/// socket stays there).
fn bind_in_netns(ns: &str, addr: SocketAddr) -> Result<UdpSocket> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("--peer-netns: {path}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on an fd of a namespace file this thread holds; it moves only the
            // calling thread, which ends here.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("--peer-netns {ns}: {}", std::io::Error::last_os_error());
            }
            UdpSocket::bind(addr).context("echo peer")
        })
        .join()
        .unwrap_or_else(|_| bail!("--peer-netns: the thread failed"))
    })
}

/// The echo peer: whatever arrives goes back to where it came from, in batches.
fn echo(sock: UdpSocket, stop: Arc<AtomicBool>) -> u64 {
    let mut poll = Epoll::new(1).expect("epoll");
    poll.add(&sock, 0).expect("epoll add");
    let (mut inb, mut out) = batches();
    let mut echoed = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if poll.wait(50) == 0 {
            continue;
        }
        loop {
            let n = inb.recv(sock.as_raw_fd()).unwrap_or(0);
            for k in 0..n {
                if let Some(from) = inb.addr(k) {
                    out.push(inb.get(k), from);
                }
            }
            echoed += out.send(sock.as_raw_fd()).packets as u64;
            if n < BATCH {
                break;
            }
        }
    }
    echoed
}

/// The `q` quantile of the round trips in µs; [`HIST`] when it lies among the slower ones
/// the histogram does not hold.
fn percentile(hist: &[u32], total: u64, q: f64) -> Option<usize> {
    if total == 0 {
        return None;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut acc = 0u64;
    for (us, n) in hist.iter().enumerate() {
        acc += *n as u64;
        if acc >= want {
            return Some(us);
        }
    }
    Some(HIST)
}

pub(crate) fn run(args: LoadArgs) -> Result<()> {
    if args.clients == 0 || args.clients > 60_000 {
        bail!("--clients: 1 to 60000");
    }
    if std::iter::once(&args.size)
        .chain(&args.sizes)
        .any(|s| !(24..=1400).contains(s))
    {
        bail!("--size, --sizes: 24 to 1400 bytes");
    }
    if args.send_share.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
        bail!("--send-share: 0 to 1");
    }
    let in_range = |v: f64, lo: f64| v >= lo && v <= 3600.0;
    if !in_range(args.duration, 0.001) || !in_range(args.hold, 0.0) {
        bail!("--duration: up to 3600 s; --hold: 0 to 3600 s");
    }
    if !(1.0..=3600.0).contains(&args.bind_every) {
        bail!("--bind-every: 1 to 3600 s");
    }
    if args.rate == 0 || args.rate as u64 * args.clients as u64 > 2_000_000 {
        bail!("--rate x --clients: 1 to 2 000 000 packets/s");
    }
    if !args.raw && args.secret_file.is_none() && args.user.is_none() {
        bail!("credentials: --secret-file, or --user and --password");
    }
    let threads = args.threads.clamp(1, 16).min(args.clients);
    let limit = raise_fd_limit(args.clients as u64 + 64);
    if (limit as usize) < args.clients + 64 {
        bail!(
            "{} clients need {} open files; the limit is {limit}",
            args.clients,
            args.clients + 64
        );
    }
    let secret = match &args.secret_file {
        Some(f) => {
            let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
            Some(
                veil_relay::config::parse_secrets(&text)
                    .into_iter()
                    .next()
                    .context("the secret file holds no secret")?,
            )
        }
        None => None,
    };

    let peer_sock = match &args.peer_netns {
        None => UdpSocket::bind(args.peer).context("echo peer")?,
        Some(ns) => bind_in_netns(ns, args.peer)?,
    };
    big_buffers(&peer_sock);
    let peer = peer_sock.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || echo(peer_sock, stop))
    };

    // Setup, several allocations in flight.
    let setup_start = Instant::now();
    let setup_threads = threads.max(4).min(args.clients);
    let per = args.clients.div_ceil(setup_threads);
    let results: Vec<(Vec<Client>, usize)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..setup_threads)
            .map(|t| {
                let args = &args;
                let secret = secret.as_deref();
                s.spawn(move || {
                    let mut ok = Vec::new();
                    let mut failed = 0;
                    for i in t * per..((t + 1) * per).min(args.clients) {
                        match setup(args, &creds(args, secret, i), peer, i) {
                            Ok(c) => ok.push(c),
                            Err(e) => {
                                if failed == 0 {
                                    eprintln!("veil load: client {i}: {e:#}");
                                }
                                failed += 1;
                            }
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let setup_secs = setup_start.elapsed().as_secs_f64();
    let mut all: Vec<Client> = Vec::new();
    let mut failures = 0;
    for (c, f) in results {
        all.extend(c);
        failures += f;
    }
    let ready = all.len();
    if ready == 0 {
        stop.store(true, Ordering::Relaxed);
        let _ = echo_thread.join();
        bail!("no client could allocate ({failures} failures)");
    }
    eprintln!(
        "veil load: {ready} allocations in {setup_secs:.2} s ({:.0}/s), {failures} failed; peer {peer}",
        ready as f64 / setup_secs
    );
    if args.hold > 0.0 {
        eprintln!(
            "veil load: holding {ready} idle allocations for {} s",
            args.hold
        );
        std::thread::sleep(Duration::from_secs_f64(args.hold));
    }

    // Traffic.
    let start = Instant::now();
    let chunk = ready.div_ceil(threads);
    let mut groups: Vec<Vec<Client>> = Vec::new();
    let mut it = all.into_iter();
    loop {
        let g: Vec<Client> = it.by_ref().take(chunk).collect();
        if g.is_empty() {
            break;
        }
        groups.push(g);
    }
    let reports: Vec<Result<ThreadReport>> = std::thread::scope(|s| {
        let hs: Vec<_> = groups
            .into_iter()
            .enumerate()
            .map(|(t, g)| {
                let args = &args;
                s.spawn(move || run_clients(args, g, start, (t * chunk) as u32))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client thread panicked")))
            })
            .collect()
    });
    stop.store(true, Ordering::Relaxed);
    let echoed = echo_thread.join().unwrap_or(0);
    let mut hist = vec![0u32; HIST];
    let (mut sent, mut received, mut failed) = (0u64, 0u64, 0u64);
    let mut keep = KeepStats::default();
    for r in reports {
        let r = r?;
        sent += r.sent;
        failed += r.failed;
        received += r.received;
        keep.sent += r.keep.sent;
        keep.ok += r.keep.ok;
        keep.failed += r.keep.failed;
        for (a, b) in hist.iter_mut().zip(&r.hist) {
            *a += b;
        }
    }
    let secs = args.duration;
    let loss = if sent == 0 {
        0.0
    } else {
        (sent.saturating_sub(received)) as f64 / sent as f64 * 100.0
    };
    let p = |q| percentile(&hist, received, q).map_or("-".to_string(), |v| v.to_string());
    println!(
        "veil-load clients={ready} setup_failures={failures} size={} mode={} duration_s={secs} \
         offered_pps={:.0} delivered_pps={:.0} sent={sent} received={received} echoed={echoed} \
         send_failed={failed} \
         loss_pct={loss:.3} rtt_p50_us={} rtt_p99_us={} rtt_p999_us={} setup_per_s={:.0} \
         keepalive=refresh_half_lifetime+bind_every_{}s refreshes_sent={} refreshes_ok={} \
         refreshes_failed={}",
        if args.sizes.is_empty() {
            args.size.to_string()
        } else {
            args.sizes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(",")
        },
        if args.raw {
            "raw".to_string()
        } else if let Some(share) = args.send_share {
            format!("send_share_{share}")
        } else if args.send_indications {
            "send".to_string()
        } else {
            "channel".to_string()
        },
        sent as f64 / secs,
        received as f64 / secs,
        p(0.5),
        p(0.99),
        p(0.999),
        ready as f64 / setup_secs,
        args.bind_every,
        keep.sent,
        keep.ok,
        keep.failed,
    );
    Ok(())
}
