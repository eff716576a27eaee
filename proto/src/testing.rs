//! The one fake driver, clock, random source and client for tests, fuzz targets and benches
//! (feature `testing`; always on in this crate's own tests). Nothing here opens a socket: the
//! fake driver hands out addresses from a counter and records what it was asked.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{self, Credentials, Key, NonceKey};
use crate::peer_filter::PeerFilter;
use crate::privacy::Redactor;
use crate::server::{
    Action, ClientKey, Env, Now, Opened, PortPolicy, RelayAddr, RelayId, Server, ServerConfig,
    Shared, Transport,
};
use crate::stun::{Class, Integrity, Message, Writer, attr, error_code_of, find_attr, method};

/// The realm of [`config`].
pub const REALM: &str = "test.veil";
/// The current REST secret of [`server_with`].
pub const SECRET: &[u8] = b"current-secret";
/// The previous REST secret (still accepted).
pub const OLD_SECRET: &[u8] = b"previous-secret";
/// Unix time at [`Clock`] zero.
pub const T0: u64 = 1_800_000_000;

/// A driver double: hands out ports from a counter, records what it was asked, and panics if
/// the core closes what it never opened.
#[derive(Default)]
pub struct FakeEnv {
    /// Open relayed addresses: bound address and DONT-FRAGMENT.
    pub open: HashMap<RelayId, (SocketAddr, bool)>,
    /// Addresses parked for reservations.
    pub parked: HashSet<SocketAddr>,
    /// The next port handed out (20000 first).
    pub next_port: u16,
    /// Every port is taken.
    pub exhausted: bool,
    /// IPv6 addresses cannot be opened.
    pub v6_broken: bool,
    /// At most this many open at once (0: no limit).
    pub cap: usize,
    /// How many relayed addresses were closed.
    pub closed: u64,
}

impl Env for FakeEnv {
    fn open_relay(
        &mut self,
        id: RelayId,
        on: &[RelayAddr],
        policy: PortPolicy,
        df: bool,
    ) -> Option<Opened> {
        let ip = on.first()?.bind;
        if self.exhausted
            || (ip.is_ipv6() && self.v6_broken)
            || (self.cap > 0 && self.open.len() >= self.cap)
        {
            return None;
        }
        if self.next_port < 20000 {
            self.next_port = 20000;
        }
        let mut port = self.next_port;
        let mut reserved = None;
        if let PortPolicy::Even { reserve_next } = policy {
            port += port % 2;
            if reserve_next {
                let next = SocketAddr::new(ip, port + 1);
                self.parked.insert(next);
                reserved = Some(next);
            }
        }
        self.next_port = port.wrapping_add(2);
        let bound = SocketAddr::new(ip, port);
        assert!(
            self.open.insert(id, (bound, df)).is_none(),
            "a RelayId opened twice"
        );
        Some(Opened { bound, reserved })
    }

    fn adopt_reserved(&mut self, id: RelayId, parked: SocketAddr, df: bool) -> bool {
        if !self.parked.remove(&parked) {
            return false;
        }
        assert!(
            self.open.insert(id, (parked, df)).is_none(),
            "a RelayId opened twice"
        );
        true
    }

    fn release_reserved(&mut self, parked: SocketAddr) {
        assert!(
            self.parked.remove(&parked),
            "releasing an address that is not parked"
        );
    }

    fn close_relay(&mut self, id: RelayId) {
        assert!(
            self.open.remove(&id).is_some(),
            "closing a relay that is not open"
        );
        self.closed += 1;
    }
}

/// A test configuration: realm [`REALM`], relay 127.0.0.1 advertised as 203.0.113.5 and ::1,
/// user quota 3, node quota 5.
pub fn config() -> ServerConfig {
    ServerConfig {
        realm: REALM.into(),
        relays: [
            vec![RelayAddr {
                bind: "127.0.0.1".parse().unwrap(),
                advertise: "203.0.113.5".parse().unwrap(),
            }],
            vec![RelayAddr {
                bind: "::1".parse().unwrap(),
                advertise: "::1".parse().unwrap(),
            }],
        ],
        user_quota: 3,
        total_quota: 5,
        ..ServerConfig::default()
    }
}

/// A server with [`SECRET`] and [`OLD_SECRET`], and a filter that denies the node's own
/// addresses (listener 127.0.0.1:3478, relayed range 20000–29999).
pub fn server_with(cfg: ServerConfig) -> Server {
    let creds = Credentials {
        secrets: vec![SECRET.to_vec(), OLD_SECRET.to_vec()],
        static_users: vec![],
        ..Default::default()
    };
    let filter = PeerFilter::new(&[], &[]).with_own_addresses(
        &["127.0.0.1:3478".parse().unwrap()],
        &["127.0.0.1".parse().unwrap(), "203.0.113.5".parse().unwrap()],
        (20000, 29999),
    );
    let shared = Shared::new(
        cfg,
        creds,
        NonceKey::new(b"node"),
        filter,
        Redactor::with_secret(b"r", false),
    );
    Server::new(Arc::new(shared))
}

/// A server on [`config`], a fake driver and a clock at zero.
pub fn setup() -> (Server, FakeEnv, Clock) {
    (server_with(config()), FakeEnv::default(), Clock::new())
}

/// A virtual clock: whole seconds since a fixed origin; Unix time [`T0`] at zero.
pub struct Clock {
    /// The monotonic origin.
    pub base: Instant,
    /// Seconds since it.
    pub secs: u64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock at zero.
    pub fn new() -> Self {
        Clock {
            base: Instant::now(),
            secs: 0,
        }
    }
    /// The time for the core.
    pub fn now(&self) -> Now {
        Now {
            mono: self.base + Duration::from_secs(self.secs),
            unix: T0 + self.secs,
        }
    }
}

pub use crate::rng::XorShift;

/// What the server did with a client's message, owned.
pub enum Reply {
    /// Nothing.
    None,
    /// A response.
    Bytes(Vec<u8>),
    /// A payload forwarded to a peer.
    Forward(RelayId, SocketAddr, Vec<u8>),
}

impl Reply {
    /// The response; panics on anything else.
    pub fn bytes(self) -> Vec<u8> {
        match self {
            Reply::Bytes(b) => b,
            _ => panic!("expected a reply"),
        }
    }
}

/// The ERROR-CODE of a response.
pub fn code(resp: &[u8]) -> Option<u16> {
    find_attr(resp, attr::ERROR_CODE).and_then(error_code_of)
}

/// The class of a response.
pub fn class(resp: &[u8]) -> Class {
    Message::decode(resp).expect("a valid STUN message").class
}

/// A TURN client talking to a [`Server`] directly: builds requests, signs them, answers one
/// 401/438 challenge as real clients do.
pub struct Client {
    /// Its 5-tuple.
    pub key: ClientKey,
    /// USERNAME.
    pub username: String,
    /// The password (a REST password from the secret).
    pub password: String,
    /// The last nonce the server gave.
    pub nonce: Vec<u8>,
    /// The password algorithm ([`auth::ALG_MD5`] or [`auth::ALG_SHA256`]).
    pub alg: u16,
    /// The last transaction number used.
    pub txn: u32,
}

impl Client {
    /// A UDP client at 192.0.2.10:`port` with a REST password derived from `secret`.
    pub fn new(port: u16, username: String, secret: &[u8]) -> Self {
        let password =
            String::from_utf8(auth::rest_password(secret, username.as_bytes()).to_vec()).unwrap();
        Client {
            key: ClientKey {
                listener: 0,
                transport: Transport::Udp,
                addr: SocketAddr::new("192.0.2.10".parse().unwrap(), port),
            },
            username,
            password,
            nonce: Vec::new(),
            alg: auth::ALG_MD5,
            txn: 0,
        }
    }

    /// A client with a REST credential for `id` valid an hour past [`T0`], under [`SECRET`].
    pub fn rest(port: u16, id: &str) -> Self {
        Client::new(port, format!("{}:{id}", T0 + 3600), SECRET)
    }

    /// Its long-term key.
    pub fn key(&self) -> Key {
        Key::derive(
            self.alg,
            self.username.as_bytes(),
            REALM.as_bytes(),
            self.password.as_bytes(),
        )
    }

    /// A fresh transaction id.
    pub fn txid(&mut self) -> [u8; 12] {
        self.txn += 1;
        let mut t = [9u8; 12];
        t[..4].copy_from_slice(&self.txn.to_be_bytes());
        t[4..6].copy_from_slice(&self.key.addr.port().to_be_bytes());
        t
    }

    /// Builds a request; `signed` adds USERNAME, REALM, NONCE (+ algorithms) and integrity.
    /// An XOR-PEER-ADDRESS value is given as the address's text.
    pub fn build(
        &self,
        m: u16,
        txid: [u8; 12],
        attrs: &[(u16, Vec<u8>)],
        signed: bool,
        fp: bool,
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let mut w = Writer::new(&mut buf, m, Class::Request, &txid).unwrap();
        for (t, v) in attrs {
            if *t == attr::XOR_PEER_ADDRESS {
                let addr = sa(std::str::from_utf8(v).unwrap());
                w.xor_address(*t, addr).unwrap();
            } else {
                w.attr(*t, v).unwrap();
            }
        }
        if signed {
            w.attr(attr::USERNAME, self.username.as_bytes()).unwrap();
            w.attr(attr::REALM, REALM.as_bytes()).unwrap();
            w.attr(attr::NONCE, &self.nonce).unwrap();
            let kind = if self.alg == auth::ALG_SHA256 {
                w.attr(attr::PASSWORD_ALGORITHMS, &auth::PASSWORD_ALGORITHMS)
                    .unwrap();
                w.attr(attr::PASSWORD_ALGORITHM, &[0, 2, 0, 0]).unwrap();
                Integrity::Sha256
            } else {
                Integrity::Sha1
            };
            w.integrity(kind, self.key().as_bytes()).unwrap();
        }
        if fp {
            w.fingerprint().unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    /// Hands a message to the server as this client.
    pub fn send(&self, s: &mut Server, env: &mut FakeEnv, clock: &Clock, pkt: &[u8]) -> Reply {
        let mut out = [0u8; 1500];
        match s.handle_client(clock.now(), self.key, pkt, &mut out, env) {
            Action::None => Reply::None,
            Action::Reply(n) => Reply::Bytes(out[..n].to_vec()),
            Action::Forward { relay, peer, data } => {
                Reply::Forward(relay, peer, pkt[data].to_vec())
            }
        }
    }

    /// Sends an authenticated request, answering one 401/438 challenge as real clients do.
    pub fn request(
        &mut self,
        s: &mut Server,
        env: &mut FakeEnv,
        clock: &Clock,
        m: u16,
        attrs: &[(u16, Vec<u8>)],
    ) -> Vec<u8> {
        for _ in 0..2 {
            let txid = self.txid();
            let pkt = self.build(m, txid, attrs, !self.nonce.is_empty(), true);
            let resp = self.send(s, env, clock, &pkt).bytes();
            let msg = Message::decode(&resp).unwrap();
            assert_eq!(msg.transaction_id(), &txid);
            if matches!(code(&resp), Some(401 | 438)) && find_attr(&resp, attr::NONCE).is_some() {
                let fresh = find_attr(&resp, attr::NONCE).unwrap().to_vec();
                if fresh != self.nonce {
                    self.nonce = fresh;
                    continue;
                }
            }
            return resp;
        }
        panic!("challenge loop")
    }

    /// An Allocate for UDP with `extra` attributes.
    pub fn allocate(
        &mut self,
        s: &mut Server,
        env: &mut FakeEnv,
        clock: &Clock,
        extra: &[(u16, Vec<u8>)],
    ) -> Vec<u8> {
        let mut attrs = vec![(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])];
        attrs.extend_from_slice(extra);
        self.request(s, env, clock, method::ALLOCATE, &attrs)
    }

    /// A CreatePermission for one peer (its address as text).
    pub fn permit(
        &mut self,
        s: &mut Server,
        env: &mut FakeEnv,
        clock: &Clock,
        peer: &str,
    ) -> Vec<u8> {
        let attrs = [(attr::XOR_PEER_ADDRESS, peer.as_bytes().to_vec())];
        self.request(s, env, clock, method::CREATE_PERMISSION, &attrs)
    }

    /// Which integrity of this client's key a response carries.
    pub fn verify(&self, resp: &[u8]) -> Option<Integrity> {
        Message::decode(resp)
            .unwrap()
            .verify_integrity(self.key().as_bytes())
    }
}

/// Panics if a run of transaction ids carries a counter: any 4-byte window, read big- or
/// little-endian, that counts up by one between consecutive ids more than a few times (a PRF's
/// output does so about once in 2^32 pairs).
pub fn assert_no_counter(ids: &[[u8; 12]]) {
    for at in 0..=8 {
        for be in [true, false] {
            let word = |t: &[u8; 12]| {
                let w: [u8; 4] = t[at..at + 4].try_into().unwrap();
                if be {
                    u32::from_be_bytes(w)
                } else {
                    u32::from_le_bytes(w)
                }
            };
            let ups = ids
                .windows(2)
                .filter(|w| word(&w[1]).wrapping_sub(word(&w[0])) == 1)
                .count();
            assert!(ups < 5, "bytes {at}..{} count up ({ups} times)", at + 4);
        }
    }
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "ids repeat");
}

/// Parses a socket address (panics on a bad one: test input).
pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
