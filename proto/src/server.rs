//! The TURN server state machine (RFC 8656 over RFC 8489), for UDP client transport.
//!
//! One [`Server`] belongs to one worker and owns the allocations of the clients that worker's
//! sockets receive from; nothing on the forwarding path is shared between workers. What is
//! shared ([`Shared`]: config, credentials, nonce key, peer filter, quota counters) is read-only
//! except the quota counters, touched only when an allocation is created or deleted, and the
//! reloadable part ([`Live`]: credentials and peer filter), read when a request is authenticated
//! or a peer is vetted, never per relayed packet.
//!
//! The server never opens sockets or reads clocks: the driver passes the time in ([`Now`]), hands
//! it datagrams and executes what it returns ([`Action`]); relayed sockets are opened and closed
//! through the [`Env`] trait.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use slab::Slab;

use super::auth::{self, Credentials, Key, NonceKey, UserError};
use super::peer_filter::PeerFilter;
use super::stun::{self, Class, Integrity, Message, Overflow, Writer, attr, channel_data, method};
use crate::privacy::Redactor;

/// Bytes the driver must leave free in front of a peer's payload so that the server can write
/// the ChannelData (4) or Data indication (20 + 24 + 4) header in place.
pub const HEADROOM: usize = 48;
/// Bytes the driver must leave free after a peer's payload (Data indication padding).
pub const TAILROOM: usize = 4;
/// REQUESTED-TRANSPORT value for UDP.
const PROTO_UDP: u8 = 17;
/// How long an RTP/RTCP port pair reservation (EVEN-PORT R bit) is held (RFC 8656 §7.2).
pub const RESERVATION_SECS: u64 = 30;

/// The time, passed in by the driver.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic time, for every expiry.
    pub mono: Instant,
    /// Unix seconds, for credential timestamps and nonces.
    pub unix: u64,
}

/// How a client reaches the relay. Relaying to peers is UDP whatever this is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// TCP and TLS carry a byte stream: ChannelData is padded to 4 bytes (RFC 8656 §12.5) and
    /// the allocation ends with the connection.
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// A client's 5-tuple as the driver sees it: which listener (socket, or accepted connection's
/// listener), the transport and the client's address. A stream connection is unique by it
/// while it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub listener: u16,
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// Address family of a relayed address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4 = 0,
    V6 = 1,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    fn wire(self) -> u8 {
        match self {
            Family::V4 => 0x01,
            Family::V6 => 0x02,
        }
    }
}

/// Names one relayed socket: allocation slot, generation and family. Stable for the socket's
/// life, never reused for another allocation while a packet for it could be in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RelayId(pub u64);

impl RelayId {
    fn new(slot: usize, generation: u32, fam: Family) -> Self {
        RelayId(((generation as u64) << 32) | ((slot as u64) << 1) | fam as u64)
    }
    pub fn slot(self) -> usize {
        ((self.0 & 0xFFFF_FFFF) >> 1) as usize
    }
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    pub fn family(self) -> Family {
        if self.0 & 1 == 0 {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// A relay IP: the one sockets bind to and the one advertised to clients (differs behind 1:1 NAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayAddr {
    pub bind: IpAddr,
    pub advertise: IpAddr,
}

/// What the protocol core needs from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub realm: String,
    /// SOFTWARE attribute value; none by default (it tells attackers the version).
    pub software: Option<String>,
    /// Relay addresses per family (indexed by [`Family`]). A family without any is not
    /// offered (440); with several, allocations spread across them, so a node relays more
    /// allocations than one address has ports.
    pub relays: [Vec<RelayAddr>; 2],
    /// Lifetime granted when the client asks for none (RFC 8656: 600 s).
    pub default_lifetime: u32,
    /// Longest lifetime granted (default 3600 s).
    pub max_lifetime: u32,
    /// Permission lifetime (RFC 8656: 300 s).
    pub permission_lifetime: u32,
    /// Channel binding lifetime (RFC 8656: 600 s).
    pub channel_lifetime: u32,
    /// How long a nonce stays valid.
    pub nonce_lifetime: u32,
    /// Allocations one user may hold at once (486 beyond).
    pub user_quota: u32,
    /// Allocations the node holds at once (508 beyond).
    pub total_quota: u32,
    /// Names of the shaping profiles a credential may select; profile `i + 1` is
    /// `shaping_profiles[i]`, 0 the node's default.
    pub shaping_profiles: Vec<String>,
    /// The residency zone this node serves. When set, a REST credential must carry the claim
    /// `z=<zone>` (the allocator mints it); others get 403. Static development users are exempt.
    pub zone: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            realm: "veil".into(),
            software: None,
            relays: [Vec::new(), Vec::new()],
            default_lifetime: 600,
            max_lifetime: 3600,
            permission_lifetime: 300,
            channel_lifetime: 600,
            nonce_lifetime: 3600,
            user_quota: 10,
            total_quota: 100_000,
            shaping_profiles: Vec::new(),
            zone: None,
        }
    }
}

/// What a reload (SIGHUP, file change) replaces while allocations go on.
#[derive(Clone, Debug)]
pub struct Live {
    pub credentials: Credentials,
    pub filter: PeerFilter,
}

/// State shared by every worker of a node. The quota counters change when an allocation is
/// created or deleted; [`Live`] when the operator reloads; `draining` once, at shutdown.
pub struct Shared {
    pub config: ServerConfig,
    pub nonces: NonceKey,
    pub redactor: Redactor,
    live: RwLock<Arc<Live>>,
    draining: AtomicBool,
    total: AtomicU32,
    per_user: Mutex<HashMap<Box<str>, u32>>,
}

impl Shared {
    pub fn new(
        config: ServerConfig,
        credentials: Credentials,
        nonces: NonceKey,
        filter: PeerFilter,
        redactor: Redactor,
    ) -> Self {
        Shared {
            config,
            nonces,
            redactor,
            live: RwLock::new(Arc::new(Live {
                credentials,
                filter,
            })),
            draining: AtomicBool::new(false),
            total: AtomicU32::new(0),
            per_user: Mutex::new(HashMap::new()),
        }
    }

    /// The credentials and peer filter in force.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts new credentials and a new peer filter in force. Allocations keep their keys (their
    /// credential was checked when they were created) and their permissions; new requests and
    /// new permissions see the new values.
    pub fn replace_live(&self, live: Live) {
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
    }

    /// From now on, new allocations are refused (508) while existing ones go on.
    pub fn set_draining(&self, v: bool) {
        self.draining.store(v, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Allocations alive on this node.
    pub fn allocations(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes one allocation from the user's quota and the node's; the error code otherwise.
    fn acquire(&self, quota_key: &str) -> Result<(), u16> {
        let mut users = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let held = users.get(quota_key).copied().unwrap_or(0);
        if held >= self.config.user_quota {
            return Err(486);
        }
        let total = self.total.load(Ordering::Relaxed);
        if total >= self.config.total_quota {
            return Err(508);
        }
        self.total.store(total + 1, Ordering::Relaxed);
        *users.entry(quota_key.into()).or_insert(0) += 1;
        Ok(())
    }

    fn release(&self, quota_key: &str) {
        let mut users = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = users.get_mut(quota_key) {
            *n -= 1;
            if *n == 0 {
                users.remove(quota_key);
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which port a new relayed socket should get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortPolicy {
    Any,
    /// An even port; with `reserve_next` the next (odd) port is held for a later allocation
    /// that presents the returned reservation token.
    Even {
        reserve_next: bool,
    },
}

/// A socket the driver opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub bound: SocketAddr,
    pub reservation: Option<[u8; 8]>,
}

/// The socket operations the core asks of its driver.
pub trait Env {
    /// Opens a relayed UDP socket on one of `on` (the driver picks the least used) within the
    /// port range; None if no port is free on any.
    fn open_relay(
        &mut self,
        id: RelayId,
        on: &[RelayAddr],
        policy: PortPolicy,
        dont_fragment: bool,
    ) -> Option<Opened>;
    /// Takes over the socket reserved under `token` (any worker may have reserved it) and
    /// names it `ids[family]` after its address family. Returns its bound address.
    fn claim_reservation(
        &mut self,
        ids: [RelayId; 2],
        token: [u8; 8],
        dont_fragment: bool,
    ) -> Option<SocketAddr>;
    /// Closes a relayed socket.
    fn close_relay(&mut self, id: RelayId);
}

/// A frame for a client, framed in the peer buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub client: ClientKey,
    pub frame: Range<usize>,
    /// The allocation's shaping profile (0: the node's default).
    pub profile: u8,
}

/// What the driver does with a datagram from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to send.
    None,
    /// Send `out[..len]` back to the client.
    Reply(usize),
    /// Send these bytes of the client's datagram from a relayed socket to a peer.
    Forward {
        relay: RelayId,
        peer: SocketAddr,
        data: Range<usize>,
    },
}

#[derive(Clone, Copy, Debug)]
struct Relayed {
    id: RelayId,
    advertised: SocketAddr,
}

#[derive(Clone, Copy, Debug)]
struct Permission {
    ip: IpAddr,
    expires: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

struct Allocation {
    client: ClientKey,
    generation: u32,
    username: Box<str>,
    quota_key: Box<str>,
    key: Key,
    /// Shaping profile chosen by the credential (0: the node's default).
    profile: u8,
    /// Transaction of the Allocate that created it, to answer its retransmissions.
    allocate_txid: [u8; 12],
    granted: u32,
    reservation: Option<[u8; 8]>,
    /// ADDITIONAL-ADDRESS-FAMILY asked for IPv6 and we could not give it.
    v6_failed: bool,
    expires: Instant,
    /// The deadline of this allocation's live timer entry.
    scheduled: Instant,
    relays: [Option<Relayed>; 2],
    perms: Vec<Permission>,
    channels: Vec<Channel>,
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.perms.iter().any(|p| p.ip == ip && p.expires > now)
    }

    fn relay_for(&self, peer: &SocketAddr) -> Option<RelayId> {
        self.relays[Family::of(peer.ip()) as usize].map(|r| r.id)
    }

    fn next_deadline(&self) -> Instant {
        let p = self.perms.iter().map(|p| p.expires);
        let c = self.channels.iter().map(|c| c.expires);
        p.chain(c).fold(self.expires, Instant::min)
    }
}

/// Counters of what one worker's server did, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub allocations_created: u64,
    pub allocations_expired: u64,
    pub allocations_deleted: u64,
    /// Allocate requests refused after authentication, by [`Refusal`].
    pub allocations_refused: [u64; Refusal::ALL.len()],
    /// 401s: bad integrity, unknown user, USERHASH.
    pub auth_failures: u64,
    /// 401s for a REST credential past its expiry (a subset of `auth_failures`).
    pub auth_expired: u64,
    pub peers_denied: u64,
    pub malformed: u64,
}

/// Why an authenticated Allocate was refused (metrics label values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 486: the user holds its quota of allocations.
    UserQuota,
    /// 508: the node holds `total_quota` allocations.
    NodeCapacity,
    /// 508: no relayed port could be bound (range used up or reservation gone).
    Ports,
    /// 508: the node is draining for shutdown.
    Draining,
    /// 403: the credential is not valid in this node's zone.
    Zone,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::UserQuota,
        Refusal::NodeCapacity,
        Refusal::Ports,
        Refusal::Draining,
        Refusal::Zone,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::UserQuota => "user_quota",
            Refusal::NodeCapacity => "node_capacity",
            Refusal::Ports => "ports",
            Refusal::Draining => "draining",
            Refusal::Zone => "zone",
        }
    }
}

/// What one worker holds right now, by client transport (`[udp, tcp, tls]`) and address family
/// (`[v4, v6]`): relayed addresses, permissions (by peer family) and channel bindings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub relayed: [[u64; 2]; 3],
    pub permissions: [[u64; 2]; 3],
    pub channels: [[u64; 2]; 3],
}

/// One worker's TURN server.
pub struct Server {
    shared: Arc<Shared>,
    allocs: Slab<Allocation>,
    by_client: HashMap<ClientKey, usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    next_generation: u32,
    indication_seq: u64,
    stats: Stats,
}

/// What an authentication check concluded.
enum Auth {
    Ok(Key, Integrity),
    /// Answer with this many bytes written to `out`.
    Reply(usize),
}

/// How to seal a response.
#[derive(Clone, Copy)]
struct Seal<'k> {
    integrity: Option<(Integrity, &'k Key)>,
    fingerprint: bool,
}

impl Server {
    pub fn new(shared: Arc<Shared>) -> Self {
        Server {
            shared,
            allocs: Slab::new(),
            by_client: HashMap::new(),
            timers: BinaryHeap::new(),
            next_generation: 1,
            indication_seq: 0,
            stats: Stats::default(),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Allocations this worker holds.
    pub fn allocation_count(&self) -> usize {
        self.allocs.len()
    }

    /// Counts what this worker holds (for gauges; O(allocations), run once per timer tick).
    pub fn occupancy(&self) -> Occupancy {
        let mut o = Occupancy::default();
        for (_, a) in &self.allocs {
            let t = a.client.transport as usize;
            for r in a.relays.iter().flatten() {
                o.relayed[t][Family::of(r.advertised.ip()) as usize] += 1;
            }
            for p in &a.perms {
                o.permissions[t][Family::of(p.ip) as usize] += 1;
            }
            for c in &a.channels {
                o.channels[t][Family::of(c.peer.ip()) as usize] += 1;
            }
        }
        o
    }

    fn refused(&mut self, why: Refusal) {
        self.stats.allocations_refused[why as usize] += 1;
    }

    /// True if this client 5-tuple has an allocation here.
    pub fn has_allocation(&self, client: &ClientKey) -> bool {
        self.by_client.contains_key(client)
    }

    /// When [`Server::handle_timeout`] should next run, if anything is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Removes whatever expired by `now`: allocations (with their sockets), permissions,
    /// channel bindings.
    pub fn handle_timeout(&mut self, now: Now, env: &mut impl Env) {
        while let Some(&Reverse((t, slot, generation))) = self.timers.peek() {
            if t > now.mono {
                break;
            }
            self.timers.pop();
            let Some(a) = self.allocs.get_mut(slot) else {
                continue;
            };
            if a.generation != generation || a.scheduled != t {
                continue; // superseded entry
            }
            if a.expires <= now.mono {
                self.stats.allocations_expired += 1;
                self.delete(slot, now, env, "expired");
                continue;
            }
            a.perms.retain(|p| p.expires > now.mono);
            a.channels.retain(|c| c.expires > now.mono);
            let next = a.next_deadline();
            a.scheduled = next;
            self.timers.push(Reverse((next, slot, generation)));
        }
    }

    /// A stream client's connection closed: its allocation ends with it (RFC 8656 §3.1).
    pub fn client_closed(&mut self, now: Now, client: &ClientKey, env: &mut impl Env) {
        if let Some(&slot) = self.by_client.get(client) {
            self.stats.allocations_deleted += 1;
            self.delete(slot, now, env, "connection closed");
        }
    }

    /// Deletes every allocation (shutdown).
    pub fn clear(&mut self, now: Now, env: &mut impl Env) {
        let slots: Vec<usize> = self.allocs.iter().map(|(s, _)| s).collect();
        for s in slots {
            self.delete(s, now, env, "shutdown");
        }
    }

    /// Makes sure a timer entry fires no later than the allocation's next deadline.
    fn schedule(&mut self, slot: usize) {
        let a = &mut self.allocs[slot];
        let next = a.next_deadline();
        if next < a.scheduled {
            a.scheduled = next;
            self.timers.push(Reverse((next, slot, a.generation)));
        }
    }

    fn delete(&mut self, slot: usize, now: Now, env: &mut impl Env, why: &'static str) {
        let a = self.allocs.remove(slot);
        self.by_client.remove(&a.client);
        for r in a.relays.iter().flatten() {
            env.close_relay(r.id);
        }
        self.shared.release(&a.quota_key);
        let red = &self.shared.redactor;
        tracing::debug!(
            client = %red.client(now.unix, &a.client.addr),
            user = %red.user(now.unix, &a.username),
            reason = why,
            "allocation deleted"
        );
    }

    /// Handles one datagram from a client. `out` receives a reply (at least 1500 bytes).
    pub fn handle_client(
        &mut self,
        now: Now,
        from: ClientKey,
        pkt: &[u8],
        out: &mut [u8],
        env: &mut impl Env,
    ) -> Action {
        match pkt.first().map(|b| b >> 6) {
            Some(1) => self.client_channel_data(now, from, pkt),
            Some(0) => match Message::decode(pkt) {
                Ok(m) => match m.class {
                    Class::Request => match self.request(now, from, &m, out, env) {
                        Some(n) => Action::Reply(n),
                        None => Action::None,
                    },
                    Class::Indication if m.method == method::SEND => {
                        self.send_indication(now, from, &m)
                    }
                    _ => Action::None,
                },
                Err(_) => {
                    self.stats.malformed += 1;
                    Action::None
                }
            },
            _ => {
                self.stats.malformed += 1;
                Action::None
            }
        }
    }

    fn client_channel_data(&mut self, now: Now, from: ClientKey, pkt: &[u8]) -> Action {
        let Some((number, payload)) = channel_data::decode(pkt) else {
            self.stats.malformed += 1;
            return Action::None;
        };
        let Some(&slot) = self.by_client.get(&from) else {
            return Action::None;
        };
        let a = &self.allocs[slot];
        let Some(c) = a
            .channels
            .iter()
            .find(|c| c.number == number && c.expires > now.mono)
        else {
            return Action::None;
        };
        if !a.permitted(c.peer.ip(), now.mono) {
            return Action::None;
        }
        match a.relay_for(&c.peer) {
            Some(relay) => Action::Forward {
                relay,
                peer: c.peer,
                data: 4..4 + payload.len(),
            },
            None => Action::None,
        }
    }

    fn send_indication(&mut self, now: Now, from: ClientKey, m: &Message) -> Action {
        let Some(&slot) = self.by_client.get(&from) else {
            return Action::None;
        };
        let (Some(peer), Some(data)) = (m.peer_address, m.data) else {
            return Action::None;
        };
        let Ok(peer) = m.xor_address(peer) else {
            return Action::None;
        };
        let a = &self.allocs[slot];
        if !a.permitted(peer.ip(), now.mono) {
            return Action::None;
        }
        match a.relay_for(&peer) {
            Some(relay) => {
                let start = data.start as usize;
                Action::Forward {
                    relay,
                    peer,
                    data: start..start + data.len as usize,
                }
            }
            None => Action::None,
        }
    }

    /// Handles a datagram a peer sent to a relayed socket. The payload sits at
    /// `buf[payload]`, with [`HEADROOM`] bytes before it and [`TAILROOM`] after; the framed
    /// message for the client is written in place. Returns where to send what.
    pub fn handle_peer(
        &mut self,
        now: Now,
        relay: RelayId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> Option<Delivery> {
        let a = self.allocs.get(relay.slot())?;
        if a.generation != relay.generation() || !a.permitted(peer.ip(), now.mono) {
            return None;
        }
        let len = payload.len();
        if len > u16::MAX as usize - 64
            || payload.start < HEADROOM
            || payload.end + TAILROOM > buf.len()
        {
            return None;
        }
        if let Some(c) = a
            .channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now.mono)
        {
            let start = payload.start - 4;
            let hdr: &mut [u8; 4] = (&mut buf[start..payload.start]).try_into().ok()?;
            channel_data::write_header(hdr, c.number, len as u16);
            // Over a stream the next frame starts on a 4-byte boundary (RFC 8656 §12.5).
            let end = if a.client.transport.is_stream() {
                let end = start + ((4 + len + 3) & !3);
                buf[payload.end..end].fill(0);
                end
            } else {
                payload.end
            };
            return Some(Delivery {
                client: a.client,
                frame: start..end,
                profile: a.profile,
            });
        }
        let (client, profile) = (a.client, a.profile);
        let addr_len = if peer.is_ipv4() { 8 } else { 20 };
        let start = payload.start - (stun::HEADER_LEN + 4 + addr_len + 4);
        self.indication_seq = self.indication_seq.wrapping_add(1);
        let txid = indication_txid(self.indication_seq, relay);
        let mut w = Writer::new(
            &mut buf[start..payload.end + TAILROOM],
            method::DATA,
            Class::Indication,
            &txid,
        )
        .ok()?;
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).ok()?;
        // The value is already in place: attr_slot only writes the header and the padding.
        w.attr_slot(attr::DATA, len).ok()?;
        let n = w.finish();
        Some(Delivery {
            client,
            frame: start..start + n,
            profile,
        })
    }

    fn begin<'o>(
        &self,
        out: &'o mut [u8],
        m: &Message,
        class: Class,
    ) -> Result<Writer<'o>, Overflow> {
        let mut w = Writer::new(out, m.method, class, m.transaction_id())?;
        if let Some(s) = &self.shared.config.software {
            w.attr(attr::SOFTWARE, s.as_bytes())?;
        }
        Ok(w)
    }

    fn seal(w: Writer, seal: Seal) -> Option<usize> {
        let mut w = w;
        if let Some((kind, key)) = seal.integrity {
            w.integrity(kind, key.as_bytes()).ok()?;
        }
        if seal.fingerprint {
            w.fingerprint().ok()?;
        }
        Some(w.finish())
    }

    /// An error response, signed when the request authenticated.
    fn error(&self, out: &mut [u8], m: &Message, code: u16, seal: Seal) -> Option<usize> {
        tracing::debug!(method = m.method, code, "error response");
        let mut w = self.begin(out, m, Class::Error).ok()?;
        w.error(code).ok()?;
        Self::seal(w, seal)
    }

    /// 401 or 438: an unsigned challenge with REALM, a fresh NONCE and PASSWORD-ALGORITHMS.
    fn challenge(
        &self,
        now: Now,
        from: ClientKey,
        out: &mut [u8],
        m: &Message,
        code: u16,
    ) -> Option<usize> {
        let cfg = &self.shared.config;
        let expiry = now
            .unix
            .saturating_add(cfg.nonce_lifetime as u64)
            .min(u32::MAX as u64) as u32;
        let nonce = self.shared.nonces.mint(expiry, from.listener, from.addr);
        let mut w = self.begin(out, m, Class::Error).ok()?;
        w.error(code).ok()?;
        w.attr(attr::REALM, cfg.realm.as_bytes()).ok()?;
        w.attr(attr::NONCE, &nonce).ok()?;
        w.attr(attr::PASSWORD_ALGORITHMS, &auth::PASSWORD_ALGORITHMS)
            .ok()?;
        Self::seal(
            w,
            Seal {
                integrity: None,
                fingerprint: m.has_fingerprint,
            },
        )
    }

    /// RFC 8489 §9.2.4: long-term credential checks, with the allocation's stored key for
    /// requests on an existing allocation.
    fn authenticate(
        &mut self,
        now: Now,
        from: ClientKey,
        m: &Message,
        out: &mut [u8],
        existing: Option<usize>,
    ) -> Option<Auth> {
        let unsigned = Seal {
            integrity: None,
            fingerprint: m.has_fingerprint,
        };
        if m.integrity.is_none() && m.integrity_sha256.is_none() {
            return Some(Auth::Reply(self.challenge(now, from, out, m, 401)?));
        }
        let (Some(user), Some(_realm), Some(nonce)) = (m.username, m.realm, m.nonce) else {
            if m.username.is_none() && m.userhash.is_some() {
                // USERHASH needs a user database to resolve; we have none by design.
                self.stats.auth_failures += 1;
                return Some(Auth::Reply(self.challenge(now, from, out, m, 401)?));
            }
            return Some(Auth::Reply(self.error(out, m, 400, unsigned)?));
        };
        let nonce = m.value(nonce);
        // Our nonces always announce the password-algorithms feature.
        let alg = match (
            m.value_of(m.password_algorithms),
            m.value_of(m.password_algorithm),
        ) {
            (None, None) => auth::ALG_MD5,
            (Some(list), Some(one)) if list == auth::PASSWORD_ALGORITHMS && one.len() >= 4 => {
                let alg = u16::from_be_bytes([one[0], one[1]]);
                if alg != auth::ALG_MD5 && alg != auth::ALG_SHA256 {
                    return Some(Auth::Reply(self.error(out, m, 400, unsigned)?));
                }
                alg
            }
            _ => return Some(Auth::Reply(self.error(out, m, 400, unsigned)?)),
        };
        let Ok(username) = std::str::from_utf8(m.value(user)) else {
            return Some(Auth::Reply(self.error(out, m, 400, unsigned)?));
        };
        let realm = self.shared.config.realm.as_bytes();
        let key = match existing {
            Some(slot) => {
                let a = &self.allocs[slot];
                if &*a.username != username {
                    return Some(Auth::Reply(self.error(out, m, 441, unsigned)?));
                }
                let want_alg = if matches!(a.key, Key::Sha256(_)) {
                    auth::ALG_SHA256
                } else {
                    auth::ALG_MD5
                };
                (want_alg == alg).then_some(a.key)
            }
            None => {
                let mut found = None;
                let live = self.shared.live();
                let r = live
                    .credentials
                    .for_each_password(username, now.unix, |pw| {
                        let k = Key::derive(alg, username.as_bytes(), realm, pw);
                        let ok = m.verify_integrity(k.as_bytes()).is_some();
                        if ok {
                            found = Some(k);
                        }
                        ok
                    });
                match r {
                    Ok(_) => found,
                    Err(UserError::Expired) => {
                        self.stats.auth_expired += 1;
                        None
                    }
                    Err(UserError::Unknown) => None,
                }
            }
        };
        let Some(key) = key else {
            self.stats.auth_failures += 1;
            return Some(Auth::Reply(self.challenge(now, from, out, m, 401)?));
        };
        let Some(kind) = m.verify_integrity(key.as_bytes()) else {
            self.stats.auth_failures += 1;
            return Some(Auth::Reply(self.challenge(now, from, out, m, 401)?));
        };
        if self
            .shared
            .nonces
            .check(nonce, from.listener, from.addr, now.unix)
            .is_err()
        {
            return Some(Auth::Reply(self.challenge(now, from, out, m, 438)?));
        }
        Some(Auth::Ok(key, kind))
    }

    fn request(
        &mut self,
        now: Now,
        from: ClientKey,
        m: &Message,
        out: &mut [u8],
        env: &mut impl Env,
    ) -> Option<usize> {
        let unsigned = Seal {
            integrity: None,
            fingerprint: m.has_fingerprint,
        };
        if m.method == method::BINDING {
            if !m.unknown_required().is_empty() {
                return self.unknown_attributes(out, m, unsigned);
            }
            let mut w = self.begin(out, m, Class::Success).ok()?;
            w.xor_address(attr::XOR_MAPPED_ADDRESS, from.addr).ok()?;
            return Self::seal(w, unsigned);
        }
        if !matches!(
            m.method,
            method::ALLOCATE | method::REFRESH | method::CREATE_PERMISSION | method::CHANNEL_BIND
        ) {
            return self.error(out, m, 400, unsigned);
        }
        let existing = self.by_client.get(&from).copied();
        let (key, kind) = match self.authenticate(now, from, m, out, existing)? {
            Auth::Ok(k, i) => (k, i),
            Auth::Reply(n) => return Some(n),
        };
        let seal = Seal {
            integrity: Some((kind, &key)),
            fingerprint: m.has_fingerprint,
        };
        if !m.unknown_required().is_empty() {
            return self.unknown_attributes(out, m, seal);
        }
        if m.method == method::ALLOCATE {
            return match existing {
                Some(slot) if self.allocs[slot].allocate_txid == *m.transaction_id() => {
                    self.allocate_success(now, out, m, slot, seal)
                }
                Some(_) => self.error(out, m, 437, seal),
                None => self.allocate(now, from, m, out, env, key, seal),
            };
        }
        let Some(slot) = existing else {
            return self.error(out, m, 437, seal);
        };
        match m.method {
            method::REFRESH => self.refresh(now, slot, m, out, env, seal),
            method::CREATE_PERMISSION => self.create_permission(now, slot, m, out, seal),
            _ => self.channel_bind(now, slot, m, out, seal),
        }
    }

    fn unknown_attributes(&self, out: &mut [u8], m: &Message, seal: Seal) -> Option<usize> {
        let mut w = self.begin(out, m, Class::Error).ok()?;
        w.error(420).ok()?;
        let unknown = m.unknown_required();
        let v = w
            .attr_slot(attr::UNKNOWN_ATTRIBUTES, unknown.len() * 2)
            .ok()?;
        for (i, t) in unknown.iter().enumerate() {
            v[i * 2..i * 2 + 2].copy_from_slice(&t.to_be_bytes());
        }
        Self::seal(w, seal)
    }

    fn lifetime(&self, requested: Option<u32>) -> u32 {
        let c = &self.shared.config;
        let floor = c.default_lifetime.min(c.max_lifetime);
        requested.map_or(floor, |r| r.clamp(floor, c.max_lifetime))
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &mut self,
        now: Now,
        from: ClientKey,
        m: &Message,
        out: &mut [u8],
        env: &mut impl Env,
        key: Key,
        seal: Seal,
    ) -> Option<usize> {
        // REQUESTED-TRANSPORT: present, UDP.
        let transport = match m.value_of(m.requested_transport) {
            Some(v) if v.len() == 4 => v[0],
            _ => return self.error(out, m, 400, seal),
        };
        if transport != PROTO_UDP {
            return self.error(out, m, 442, seal);
        }
        let token = match m.value_of(m.reservation_token) {
            Some(v) => match <[u8; 8]>::try_from(v) {
                Ok(t) => Some(t),
                Err(_) => return self.error(out, m, 400, seal),
            },
            None => None,
        };
        let even = match m.value_of(m.even_port) {
            Some([b, ..]) => Some(b & 0x80 != 0),
            Some([]) => return self.error(out, m, 400, seal),
            None => None,
        };
        let family_of = |v: Option<&[u8]>| -> Option<Result<Family, ()>> {
            v.map(|v| match v.first() {
                Some(0x01) => Ok(Family::V4),
                Some(0x02) => Ok(Family::V6),
                _ => Err(()),
            })
        };
        let requested = family_of(m.value_of(m.requested_family));
        let additional = family_of(m.value_of(m.additional_family));
        // RFC 8656 §7.2 combinations that are errors.
        // EVEN-PORT conflicts with a dual allocation only when it asks for a reserved pair
        // (R bit); coturn's uclient sends EVEN-PORT without R along with its dual request.
        if token.is_some() && (even.is_some() || requested.is_some())
            || even == Some(true) && additional.is_some()
            || requested.is_some() && additional.is_some()
        {
            return self.error(out, m, 400, seal);
        }
        if additional.is_some() && additional != Some(Ok(Family::V6)) {
            return self.error(out, m, 400, seal);
        }
        let cfg = &self.shared.config;
        let primary = match requested {
            Some(Err(())) => return self.error(out, m, 440, seal),
            Some(Ok(f)) => f,
            None => Family::V4,
        };
        if token.is_none() && cfg.relays[primary as usize].is_empty() {
            return self.error(out, m, 440, seal);
        }
        let Some(lifetime) = m.u32_of(m.lifetime).transpose().ok() else {
            return self.error(out, m, 400, seal);
        };
        let granted = self.lifetime(lifetime);
        let username: Box<str> = std::str::from_utf8(m.value_of(m.username)?).ok()?.into();
        if let Some(zone) = &cfg.zone
            && auth::is_rest_username(&username)
            && auth::zone_claim(&username) != Some(zone.as_str())
        {
            tracing::debug!("credential not valid in this zone");
            self.refused(Refusal::Zone);
            return self.error(out, m, 403, seal);
        }
        let quota_key: Box<str> = auth::quota_key(&username).into();
        let profile = match auth::shaping_profile(&username) {
            None => 0,
            Some(name) => match cfg.shaping_profiles.iter().position(|p| p == name) {
                Some(i) => (i + 1).min(u8::MAX as usize) as u8,
                None => {
                    tracing::warn!(
                        "a credential names an unknown shaping profile; the node default applies"
                    );
                    0
                }
            },
        };
        if self.shared.draining() {
            // 508 (a capacity limit) makes clients try their next server at once.
            tracing::debug!("allocation refused: draining");
            self.refused(Refusal::Draining);
            return self.error(out, m, 508, seal);
        }
        if let Err(code) = self.shared.acquire(&quota_key) {
            tracing::debug!(code, "allocation refused by quota");
            self.refused(if code == 486 {
                Refusal::UserQuota
            } else {
                Refusal::NodeCapacity
            });
            return self.error(out, m, code, seal);
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let slot = self.allocs.vacant_key();
        let df = m.dont_fragment;
        let mut relays: [Option<Relayed>; 2] = [None, None];
        let mut reservation = None;
        let mut v6_failed = false;
        let advertise = |bound: SocketAddr| {
            let ip = cfg.relays[Family::of(bound.ip()) as usize]
                .iter()
                .find(|r| r.bind == bound.ip())
                .map_or(bound.ip(), |r| r.advertise);
            SocketAddr::new(ip, bound.port())
        };
        if let Some(t) = token {
            // The reserved socket's family is the allocation's.
            let ids = [Family::V4, Family::V6].map(|f| RelayId::new(slot, generation, f));
            let claimed = env.claim_reservation(ids, t, df).map(|bound| {
                let f = Family::of(bound.ip());
                (f, ids[f as usize], bound)
            });
            match claimed {
                Some((f, id, bound)) => {
                    relays[f as usize] = Some(Relayed {
                        id,
                        advertised: advertise(bound),
                    })
                }
                None => {
                    self.shared.release(&quota_key);
                    self.refused(Refusal::Ports);
                    return self.error(out, m, 508, seal);
                }
            }
        } else {
            let policy = match even {
                Some(reserve_next) => PortPolicy::Even { reserve_next },
                None => PortPolicy::Any,
            };
            let id = RelayId::new(slot, generation, primary);
            match env.open_relay(id, &cfg.relays[primary as usize], policy, df) {
                Some(o) => {
                    relays[primary as usize] = Some(Relayed {
                        id,
                        advertised: advertise(o.bound),
                    });
                    reservation = o.reservation;
                }
                None => {
                    self.shared.release(&quota_key);
                    self.refused(Refusal::Ports);
                    return self.error(out, m, 508, seal);
                }
            }
            if additional.is_some() {
                let id = RelayId::new(slot, generation, Family::V6);
                match env.open_relay(id, &cfg.relays[Family::V6 as usize], PortPolicy::Any, df) {
                    Some(o) => {
                        relays[1] = Some(Relayed {
                            id,
                            advertised: advertise(o.bound),
                        })
                    }
                    None => v6_failed = true,
                }
            }
        }
        let expires = now.mono + Duration::from_secs(granted as u64);
        let a = Allocation {
            client: from,
            generation,
            username,
            quota_key,
            key,
            profile,
            allocate_txid: *m.transaction_id(),
            granted,
            reservation,
            v6_failed,
            expires,
            scheduled: expires,
            relays,
            perms: Vec::new(),
            channels: Vec::new(),
        };
        let s = self.allocs.insert(a);
        debug_assert_eq!(s, slot);
        self.by_client.insert(from, slot);
        self.timers.push(Reverse((expires, slot, generation)));
        self.stats.allocations_created += 1;
        let red = &self.shared.redactor;
        tracing::debug!(
            client = %red.client(now.unix, &from.addr),
            user = %red.user(now.unix, &self.allocs[slot].username),
            lifetime = granted,
            "allocation created"
        );
        self.allocate_success(now, out, m, slot, seal)
    }

    fn allocate_success(
        &self,
        now: Now,
        out: &mut [u8],
        m: &Message,
        slot: usize,
        seal: Seal,
    ) -> Option<usize> {
        let a = &self.allocs[slot];
        let remaining = a.expires.saturating_duration_since(now.mono).as_secs() as u32;
        let mut w = self.begin(out, m, Class::Success).ok()?;
        for r in a.relays.iter().flatten() {
            w.xor_address(attr::XOR_RELAYED_ADDRESS, r.advertised)
                .ok()?;
        }
        w.u32(attr::LIFETIME, remaining.min(a.granted)).ok()?;
        if let Some(t) = &a.reservation {
            w.attr(attr::RESERVATION_TOKEN, t).ok()?;
        }
        w.xor_address(attr::XOR_MAPPED_ADDRESS, a.client.addr)
            .ok()?;
        if a.v6_failed {
            let reason = stun::reason_phrase(440).as_bytes();
            let v = w
                .attr_slot(attr::ADDRESS_ERROR_CODE, 4 + reason.len())
                .ok()?;
            v[0] = Family::V6.wire();
            v[1] = 0;
            v[2] = 4;
            v[3] = 40;
            v[4..].copy_from_slice(reason);
        }
        Self::seal(w, seal)
    }

    fn refresh(
        &mut self,
        now: Now,
        slot: usize,
        m: &Message,
        out: &mut [u8],
        env: &mut impl Env,
        seal: Seal,
    ) -> Option<usize> {
        let Some(requested) = m.u32_of(m.lifetime).transpose().ok() else {
            return self.error(out, m, 400, seal);
        };
        if let Some(v) = m.value_of(m.requested_family) {
            let fam = match v.first() {
                Some(0x01) => Family::V4,
                Some(0x02) => Family::V6,
                _ => return self.error(out, m, 440, seal),
            };
            if self.allocs[slot].relays[fam as usize].is_none() {
                return self.error(out, m, 443, seal);
            }
        }
        let granted = if requested == Some(0) {
            self.stats.allocations_deleted += 1;
            self.delete(slot, now, env, "refresh with lifetime 0");
            0
        } else {
            let granted = self.lifetime(requested);
            let a = &mut self.allocs[slot];
            a.expires = now.mono + Duration::from_secs(granted as u64);
            a.granted = granted;
            // A later expiry needs no new timer entry: the current one fires first and
            // reschedules; an earlier one (a shorter lifetime) does.
            self.schedule(slot);
            granted
        };
        let mut w = self.begin(out, m, Class::Success).ok()?;
        w.u32(attr::LIFETIME, granted).ok()?;
        Self::seal(w, seal)
    }

    /// Checks a peer for CreatePermission/ChannelBind: family of the allocation (443) and the
    /// peer filter (403).
    fn vet_peer(&mut self, slot: usize, peer: SocketAddr) -> Result<(), u16> {
        if self.allocs[slot].relay_for(&peer).is_none() {
            return Err(443);
        }
        if let Err(why) = self.shared.live().filter.check(peer) {
            self.stats.peers_denied += 1;
            tracing::debug!(reason = ?why, "peer refused");
            return Err(403);
        }
        Ok(())
    }

    fn create_permission(
        &mut self,
        now: Now,
        slot: usize,
        m: &Message,
        out: &mut [u8],
        seal: Seal,
    ) -> Option<usize> {
        if m.peer_address_count == 0 {
            return self.error(out, m, 400, seal);
        }
        // All or nothing: vet every address before installing any.
        let mut peers = [IpAddr::from([0u8; 4]); 16];
        let mut n = 0;
        for p in m.peer_addresses() {
            let Ok(p) = p else {
                return self.error(out, m, 400, seal);
            };
            if let Err(code) = self.vet_peer(slot, p) {
                return self.error(out, m, code, seal);
            }
            if n == peers.len() {
                return self.error(out, m, 400, seal);
            }
            peers[n] = p.ip();
            n += 1;
        }
        let expires = now.mono + Duration::from_secs(self.shared.config.permission_lifetime as u64);
        for ip in &peers[..n] {
            self.permit(slot, *ip, expires);
        }
        self.schedule(slot);
        let w = self.begin(out, m, Class::Success).ok()?;
        Self::seal(w, seal)
    }

    fn permit(&mut self, slot: usize, ip: IpAddr, expires: Instant) {
        let a = &mut self.allocs[slot];
        match a.perms.iter_mut().find(|p| p.ip == ip) {
            Some(p) => p.expires = expires,
            None => a.perms.push(Permission { ip, expires }),
        }
    }

    fn channel_bind(
        &mut self,
        now: Now,
        slot: usize,
        m: &Message,
        out: &mut [u8],
        seal: Seal,
    ) -> Option<usize> {
        let number = match m.value_of(m.channel_number) {
            Some(v) if v.len() == 4 => u16::from_be_bytes([v[0], v[1]]),
            _ => return self.error(out, m, 400, seal),
        };
        let Some(Ok(peer)) = m.peer_address.map(|s| m.xor_address(s)) else {
            return self.error(out, m, 400, seal);
        };
        if !(channel_data::MIN_CHANNEL..=channel_data::MAX_CHANNEL).contains(&number) {
            tracing::debug!(number, "channel number out of range");
            return self.error(out, m, 400, seal);
        }
        if let Err(code) = self.vet_peer(slot, peer) {
            return self.error(out, m, code, seal);
        }
        let a = &self.allocs[slot];
        // RFC 8656 §11.2: a number bound to another peer, or a peer bound to another number,
        // is an error; rebinding the same pair refreshes it. Expired bindings still count:
        // housekeeping removes them.
        let conflict = a.channels.iter().any(|c| {
            (c.number == number && c.peer != peer) || (c.peer == peer && c.number != number)
        });
        if conflict {
            return self.error(out, m, 400, seal);
        }
        let cfg = &self.shared.config;
        let ch_exp = now.mono + Duration::from_secs(cfg.channel_lifetime as u64);
        let perm_exp = now.mono + Duration::from_secs(cfg.permission_lifetime as u64);
        let a = &mut self.allocs[slot];
        match a.channels.iter_mut().find(|c| c.number == number) {
            Some(c) => c.expires = ch_exp,
            None => a.channels.push(Channel {
                number,
                peer,
                expires: ch_exp,
            }),
        }
        self.permit(slot, peer.ip(), perm_exp);
        self.schedule(slot);
        let w = self.begin(out, m, Class::Success).ok()?;
        Self::seal(w, seal)
    }
}

/// A transaction id for a Data indication: unique per worker, not predictable from outside
/// without the relay id, and costing no random draw per packet.
fn indication_txid(seq: u64, relay: RelayId) -> [u8; 12] {
    let mut t = [0u8; 12];
    let mix = (seq ^ relay.0.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    t[..8].copy_from_slice(&mix.to_be_bytes());
    t[8..].copy_from_slice(&(seq as u32).to_be_bytes());
    t
}

#[cfg(test)]
mod tests;
