//! The vocabulary the core and its driver share: time, client 5-tuples, relayed-address names,
//! and what the driver is asked to do.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

/// The time, passed in by the driver.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic time, for every expiry.
    pub mono: Instant,
    /// Unix seconds, for credential timestamps and nonces.
    pub unix: u64,
}

/// The furthest ahead any deadline is set (about 136 years): a lifetime, an expiry or a grace
/// period computed from a credential or a config is cut to this before it meets an `Instant`,
/// so no input can overflow the clock's arithmetic (which panics, or wraps in release builds).
pub const MAX_HORIZON: Duration = Duration::from_secs(u32::MAX as u64);

/// `t` plus `secs` seconds, saturating at [`MAX_HORIZON`] ahead of `t`.
///
/// ```
/// # use std::time::Instant;
/// # use veil_proto::server::{later, MAX_HORIZON};
/// let t = Instant::now();
/// assert_eq!(later(t, u64::MAX), t + MAX_HORIZON);
/// assert_eq!(later(t, 5) - t, std::time::Duration::from_secs(5));
/// ```
#[inline]
pub fn later(t: Instant, secs: u64) -> Instant {
    let d = Duration::from_secs(secs).min(MAX_HORIZON);
    // Linux's monotonic clock holds centuries past any `t` a running process sees; were it
    // ever not to, the deadline stays at `t` rather than wrap into the past.
    t.checked_add(d).unwrap_or(t)
}

/// How a client reaches the relay. Relaying to peers is UDP whatever this is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Datagrams on a UDP listener.
    #[default]
    Udp,
    /// A TCP connection (RFC 8656 §3.1).
    Tcp,
    /// A TLS connection over TCP.
    Tls,
}

impl Transport {
    /// TCP and TLS carry a byte stream: ChannelData is padded to 4 bytes (RFC 8656 §12.5) and
    /// the allocation ends with the connection.
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// The metrics label value.
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
    /// The driver's index of the listener the client talks to.
    pub listener: u16,
    /// How the client reaches the relay.
    pub transport: Transport,
    /// The client's address as the relay sees it (its server-reflexive address).
    pub addr: SocketAddr,
}

/// Address family of a relayed address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (wire value 0x01).
    V4 = 0,
    /// IPv6 (wire value 0x02).
    V6 = 1,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family named by an address-family attribute value (RFC 8656 §18.6); None when the
    /// value is empty or names another family.
    pub fn from_wire(v: &[u8]) -> Option<Family> {
        match v.first() {
            Some(0x01) => Some(Family::V4),
            Some(0x02) => Some(Family::V6),
            _ => None,
        }
    }

    pub(crate) fn wire(self) -> u8 {
        match self {
            Family::V4 => 0x01,
            Family::V6 => 0x02,
        }
    }
}

/// Names one relayed transport address: allocation slot, generation and family. Stable for its
/// life, never reused for another allocation while a packet for it could be in flight. The core
/// knows no more of it than this name; the driver decides what carries its packets (a relayed
/// UDP socket today, an inter-relay link later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RelayId(pub u64);

impl RelayId {
    pub(crate) fn new(slot: usize, generation: u32, fam: Family) -> Self {
        RelayId(((generation as u64) << 32) | ((slot as u64) << 1) | fam as u64)
    }
    /// The allocation's slot in its worker.
    pub fn slot(self) -> usize {
        ((self.0 & 0xFFFF_FFFF) >> 1) as usize
    }
    /// The allocation's generation (a slot reused later has another).
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The address family of this relayed address.
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
    /// The local address relayed sockets bind to.
    pub bind: IpAddr,
    /// The address put in XOR-RELAYED-ADDRESS.
    pub advertise: IpAddr,
}

/// A frame for a client, framed in the peer buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Whom to send it to.
    pub client: ClientKey,
    /// Where the framed message (ChannelData or Data indication) lies in the buffer.
    pub frame: Range<usize>,
    /// The allocation's shaping profile (0: the node's default).
    pub profile: u8,
}

/// What the driver does with what a client sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to send.
    None,
    /// Send `out[..len]` back to the client.
    Reply(usize),
    /// Send these bytes of the client's message to `peer` over the peer path named `relay`.
    Forward {
        /// The relayed address the payload leaves from.
        relay: RelayId,
        /// The peer it goes to (already admitted by the allocation's permissions).
        peer: SocketAddr,
        /// The payload's place in the client's message.
        data: Range<usize>,
    },
}

crate::counters! {
    /// Counters of what one worker's server did, for metrics and tests.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Stats {
        /// Allocations created.
        pub allocations_created: u64,
        /// Allocations that reached their lifetime.
        pub allocations_expired: u64,
        /// Allocations ended by the client (Refresh 0, connection closed).
        pub allocations_deleted: u64,
        /// Allocations ended by the operator: their user revoked, or the secret that admitted
        /// them removed (after its grace).
        pub allocations_revoked: u64,
        /// Allocate requests refused after authentication, by [`Refusal`].
        pub allocations_refused: [u64; Refusal::ALL.len()],
        /// 401s: bad integrity, unknown user, USERHASH.
        pub auth_failures: u64,
        /// 401s for a REST credential past its expiry (a subset of `auth_failures`).
        pub auth_expired: u64,
        /// 401s for a REST credential whose expiry lies beyond `max_validity` (a subset of
        /// `auth_failures`).
        pub auth_expiry_too_far: u64,
        /// CreatePermission/ChannelBind peers the filter refused.
        pub peers_denied: u64,
        /// Send indications dropped because they named one of the node's own addresses (a
        /// listener, a port outside the relayed range on an own IP).
        pub peer_sends_denied: u64,
        /// CreatePermission/ChannelBind refused because the allocation holds its cap (508).
        pub permissions_refused: u64,
        /// Packets dropped over a bandwidth cap (per allocation or per user), client to peer
        /// and peer to client.
        pub bandwidth_dropped: [u64; 2],
        /// Replies to unauthenticated UDP requests not sent: their source prefix is over its
        /// rate ([`ServerConfig::unauthenticated_rate`](super::ServerConfig)).
        pub unauthenticated_suppressed: u64,
        /// Datagrams that were neither STUN nor ChannelData, or failed to decode.
        pub malformed: u64,
        /// 438s: a request signed with a stale or foreign nonce.
        pub stale_nonces: u64,
        /// Peer addresses newly permitted (CreatePermission, ChannelBind).
        pub peers_permitted: u64,
        /// Allocations that permitted [`BURST_PEERS`](super::watch::BURST_PEERS) new peers
        /// within a minute (counted once per window).
        pub permission_bursts: u64,
        /// Relayed payloads judged media-like, client to peer and peer to client.
        pub payloads_media: [u64; 2],
        /// Relayed payloads judged not media-like, per direction.
        pub payloads_other: [u64; 2],
        /// Allocations whose payloads in a direction were more than a quarter not media-like
        /// (counted once per allocation and direction).
        pub non_media_allocations: [u64; 2],
        /// Allocations that relayed more than `heavy_bytes_per_second` sustained (once each).
        pub heavy_allocations: u64,
        /// Ended allocations by bytes relayed both ways, per
        /// [`BYTES_BUCKETS`](super::watch::BYTES_BUCKETS) (not cumulative; the last: more).
        pub allocation_bytes_hist: [u64; 7],
        /// Bytes relayed by the ended allocations.
        pub allocation_bytes_sum: u64,
    }
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
    /// 403: the user id is on the revocation list.
    Revoked,
    /// 403: the credential's shaping profile requires TLS and the client is not on it.
    TlsRequired,
    /// 486: the client's source prefix holds `source_quota` allocations.
    SourceQuota,
}

impl Refusal {
    /// Every refusal, in label order.
    pub const ALL: [Refusal; 8] = [
        Refusal::UserQuota,
        Refusal::NodeCapacity,
        Refusal::Ports,
        Refusal::Draining,
        Refusal::Zone,
        Refusal::Revoked,
        Refusal::TlsRequired,
        Refusal::SourceQuota,
    ];

    /// The metrics label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::UserQuota => "user_quota",
            Refusal::NodeCapacity => "node_capacity",
            Refusal::Ports => "ports",
            Refusal::Draining => "draining",
            Refusal::Zone => "zone",
            Refusal::Revoked => "revoked",
            Refusal::TlsRequired => "tls_required",
            Refusal::SourceQuota => "source_quota",
        }
    }

    /// The error response it draws.
    pub fn error(self) -> super::TurnError {
        use super::TurnError;
        match self {
            // 508 (a capacity limit) makes clients try their next server at once.
            Refusal::UserQuota => TurnError::new(486, "user quota reached"),
            Refusal::NodeCapacity => TurnError::new(508, "node allocation quota reached"),
            Refusal::Ports => TurnError::new(508, "no relayed port free"),
            Refusal::Draining => TurnError::new(508, "node draining"),
            Refusal::Zone => TurnError::new(403, "credential not valid in this zone"),
            Refusal::Revoked => TurnError::new(403, "user revoked"),
            Refusal::TlsRequired => TurnError::new(403, "this credential's profile requires TLS"),
            Refusal::SourceQuota => TurnError::new(486, "source address quota reached"),
        }
    }
}

crate::counters! {
    /// What one worker holds right now, by client transport (`[udp, tcp, tls]`) and address family
    /// (`[v4, v6]`): relayed addresses, permissions (by peer family) and channel bindings.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Occupancy {
        /// Relayed addresses.
        pub relayed: [[u64; 2]; 3],
        /// Permissions, by the peer's family.
        pub permissions: [[u64; 2]; 3],
        /// Channel bindings, by the peer's family.
        pub channels: [[u64; 2]; 3],
    }
}
