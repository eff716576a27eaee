//! TURN requests parsed once from a decoded [`Message`], with RFC 8656's rules on which
//! attributes may come together. The handlers see typed values; a malformed or conflicting
//! request is a [`TurnError`] here, before any state is touched.

use std::net::SocketAddr;
use std::ops::Range;

use super::{Family, PortPolicy, TurnError};
use crate::stun::{Message, attr};

/// REQUESTED-TRANSPORT value for UDP (RFC 8656 §18.8: an IANA protocol number).
const PROTO_UDP: u8 = 17;

/// Most XOR-PEER-ADDRESS attributes one CreatePermission may carry.
pub const MAX_PEERS_PER_REQUEST: usize = 16;

/// How long an attribute's value may be, by its RFC.
#[derive(Clone, Copy)]
enum Bound {
    /// Exactly this many bytes.
    Exactly(usize),
    /// Fewer than this many bytes.
    Bytes(usize),
    /// Fewer than 128 characters and at most 763 bytes (RFC 8489's bound of REALM, NONCE,
    /// SOFTWARE and reason phrases).
    Text,
    /// From `min` to `max` bytes, a multiple of four.
    Words(usize, usize),
}

/// The attributes a server reads whose length an RFC bounds, with the bound.
const BOUNDS: [(u16, Bound, &str); 13] = [
    (
        attr::USERNAME,
        Bound::Bytes(509),
        "USERNAME is 509 bytes or more (RFC 8489 §14.3)",
    ),
    (
        attr::REALM,
        Bound::Text,
        "REALM is 128 characters or more (RFC 8489 §14.9)",
    ),
    (
        attr::NONCE,
        Bound::Text,
        "NONCE is 128 characters or more (RFC 8489 §14.10)",
    ),
    (
        attr::SOFTWARE,
        Bound::Text,
        "SOFTWARE is 128 characters or more (RFC 8489 §14.14)",
    ),
    (
        attr::USERHASH,
        Bound::Exactly(32),
        "USERHASH is not 32 bytes (RFC 8489 §14.4)",
    ),
    (
        attr::MESSAGE_INTEGRITY_SHA256,
        Bound::Words(16, 32),
        "MESSAGE-INTEGRITY-SHA256 is not 16-32 bytes in words (RFC 8489 §14.6)",
    ),
    (
        attr::CHANNEL_NUMBER,
        Bound::Exactly(4),
        "CHANNEL-NUMBER is not 4 bytes (RFC 8656 §18.1)",
    ),
    (
        attr::LIFETIME,
        Bound::Exactly(4),
        "LIFETIME is not 4 bytes (RFC 8656 §18.2)",
    ),
    (
        attr::REQUESTED_ADDRESS_FAMILY,
        Bound::Exactly(4),
        "REQUESTED-ADDRESS-FAMILY is not 4 bytes (RFC 8656 §18.6)",
    ),
    (
        attr::EVEN_PORT,
        Bound::Exactly(1),
        "EVEN-PORT is not 1 byte (RFC 8656 §18.7)",
    ),
    (
        attr::REQUESTED_TRANSPORT,
        Bound::Exactly(4),
        "REQUESTED-TRANSPORT is not 4 bytes (RFC 8656 §18.8)",
    ),
    (
        attr::RESERVATION_TOKEN,
        Bound::Exactly(8),
        "RESERVATION-TOKEN is not 8 bytes (RFC 8656 §18.10)",
    ),
    (
        attr::ADDITIONAL_ADDRESS_FAMILY,
        Bound::Exactly(4),
        "ADDITIONAL-ADDRESS-FAMILY is not 4 bytes (RFC 8656 §18.11)",
    ),
];

/// Every request's attributes against their RFCs' bounds on length: a 400 naming the first one
/// outside, so that no value kept for an allocation's life (USERNAME) is larger than its RFC
/// allows.
pub(super) fn check_bounds(m: &Message) -> Result<(), TurnError> {
    let over = BOUNDS.iter().find_map(|&(typ, bound, why)| {
        let v = m.get(typ)?;
        let ok = match bound {
            Bound::Exactly(n) => v.len() == n,
            Bound::Bytes(n) => v.len() < n,
            Bound::Text => {
                let chars = std::str::from_utf8(v).map_or(v.len(), |s| s.chars().count());
                v.len() <= 763 && chars < 128
            }
            Bound::Words(min, max) => (min..=max).contains(&v.len()) && v.len() % 4 == 0,
        };
        (!ok).then_some(why)
    });
    over.map_or(Ok(()), |why| Err(TurnError::bad_request(why)))
}

/// An Allocate (RFC 8656 §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocateRequest {
    /// The family of the relayed address (REQUESTED-ADDRESS-FAMILY, IPv4 by default). With a
    /// reservation token it is the reserved address's.
    pub family: Family,
    /// ADDITIONAL-ADDRESS-FAMILY asked for an IPv6 address besides the IPv4 one.
    pub additional_v6: bool,
    /// EVEN-PORT, and whether it asked to hold the next port (R bit).
    pub port: PortPolicy,
    /// RESERVATION-TOKEN: claim the address an earlier EVEN-PORT allocation held.
    pub reservation: Option<[u8; 8]>,
    /// LIFETIME asked for, in seconds.
    pub lifetime: Option<u32>,
    /// DONT-FRAGMENT: send to peers with DF set.
    pub dont_fragment: bool,
}

impl AllocateRequest {
    /// Parses and checks the attribute combinations of RFC 8656 §7.2.
    pub fn parse(m: &Message) -> Result<Self, TurnError> {
        let transport = match m.get(attr::REQUESTED_TRANSPORT) {
            Some(&[p, _, _, _]) => p,
            _ => {
                return Err(TurnError::bad_request(
                    "REQUESTED-TRANSPORT missing or malformed",
                ));
            }
        };
        if transport != PROTO_UDP {
            return Err(TurnError::new(442, "only UDP relaying is offered"));
        }
        let reservation = match m.get(attr::RESERVATION_TOKEN) {
            Some(v) => Some(
                <[u8; 8]>::try_from(v)
                    .map_err(|_| TurnError::bad_request("RESERVATION-TOKEN is not 8 bytes"))?,
            ),
            None => None,
        };
        let even = match m.get(attr::EVEN_PORT) {
            Some([b, ..]) => Some(b & 0x80 != 0),
            Some([]) => return Err(TurnError::bad_request("EVEN-PORT is empty")),
            None => None,
        };
        let requested = m.get(attr::REQUESTED_ADDRESS_FAMILY).map(Family::from_wire);
        let additional = m
            .get(attr::ADDITIONAL_ADDRESS_FAMILY)
            .map(Family::from_wire);
        // EVEN-PORT conflicts with a dual allocation only when it asks for a reserved pair
        // (R bit); coturn's uclient sends EVEN-PORT without R along with its dual request.
        if reservation.is_some() && (even.is_some() || requested.is_some()) {
            return Err(TurnError::bad_request(
                "RESERVATION-TOKEN with EVEN-PORT or REQUESTED-ADDRESS-FAMILY",
            ));
        }
        if even == Some(true) && additional.is_some() {
            return Err(TurnError::bad_request(
                "EVEN-PORT with R bit and ADDITIONAL-ADDRESS-FAMILY",
            ));
        }
        if requested.is_some() && additional.is_some() {
            return Err(TurnError::bad_request(
                "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together",
            ));
        }
        if additional.is_some() && additional != Some(Some(Family::V6)) {
            return Err(TurnError::bad_request(
                "ADDITIONAL-ADDRESS-FAMILY other than IPv6",
            ));
        }
        let family = match requested {
            Some(None) => return Err(TurnError::new(440, "unknown address family")),
            Some(Some(f)) => f,
            None => Family::V4,
        };
        let lifetime = m
            .get_u32(attr::LIFETIME)
            .transpose()
            .map_err(|_| TurnError::bad_request("LIFETIME is not 4 bytes"))?;
        Ok(AllocateRequest {
            family,
            additional_v6: additional.is_some(),
            port: match even {
                Some(reserve_next) => PortPolicy::Even { reserve_next },
                None => PortPolicy::Any,
            },
            reservation,
            lifetime,
            dont_fragment: m.has(attr::DONT_FRAGMENT),
        })
    }
}

/// A Refresh (RFC 8656 §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshRequest {
    /// LIFETIME asked for (0 deletes the allocation).
    pub lifetime: Option<u32>,
    /// REQUESTED-ADDRESS-FAMILY: the family that must be present in the allocation.
    pub family: Option<Family>,
}

impl RefreshRequest {
    /// Parses a Refresh's attributes.
    pub fn parse(m: &Message) -> Result<Self, TurnError> {
        let lifetime = m
            .get_u32(attr::LIFETIME)
            .transpose()
            .map_err(|_| TurnError::bad_request("LIFETIME is not 4 bytes"))?;
        let family = match m.get(attr::REQUESTED_ADDRESS_FAMILY) {
            Some(v) => {
                Some(Family::from_wire(v).ok_or(TurnError::new(440, "unknown address family"))?)
            }
            None => None,
        };
        Ok(RefreshRequest { lifetime, family })
    }
}

/// A CreatePermission (RFC 8656 §10): one to [`MAX_PEERS_PER_REQUEST`] peers, all or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermissionRequest {
    peers: [SocketAddr; MAX_PEERS_PER_REQUEST],
    len: usize,
}

impl PermissionRequest {
    /// Parses every XOR-PEER-ADDRESS before the integrity attribute.
    pub fn parse(m: &Message) -> Result<Self, TurnError> {
        let mut peers = [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_PEERS_PER_REQUEST];
        let mut len = 0;
        for p in m.peer_addresses() {
            let p = p.map_err(|_| TurnError::bad_request("XOR-PEER-ADDRESS malformed"))?;
            if len == MAX_PEERS_PER_REQUEST {
                return Err(TurnError::bad_request("too many XOR-PEER-ADDRESS"));
            }
            peers[len] = p;
            len += 1;
        }
        if len == 0 {
            return Err(TurnError::bad_request("no XOR-PEER-ADDRESS"));
        }
        Ok(PermissionRequest { peers, len })
    }

    /// The peers, in request order.
    pub fn peers(&self) -> &[SocketAddr] {
        &self.peers[..self.len]
    }
}

/// A ChannelBind (RFC 8656 §11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelBindRequest {
    /// The channel number, within 0x4000..=0x7FFF.
    pub number: u16,
    /// The peer bound to it.
    pub peer: SocketAddr,
}

impl ChannelBindRequest {
    /// Parses CHANNEL-NUMBER and XOR-PEER-ADDRESS.
    pub fn parse(m: &Message) -> Result<Self, TurnError> {
        use crate::stun::channel_data::{MAX_CHANNEL, MIN_CHANNEL};
        let number = match m.get(attr::CHANNEL_NUMBER) {
            Some(&[a, b, _, _]) => u16::from_be_bytes([a, b]),
            _ => {
                return Err(TurnError::bad_request(
                    "CHANNEL-NUMBER missing or malformed",
                ));
            }
        };
        let Some(Ok(peer)) = m.get_xor_address(attr::XOR_PEER_ADDRESS) else {
            return Err(TurnError::bad_request(
                "XOR-PEER-ADDRESS missing or malformed",
            ));
        };
        if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&number) {
            return Err(TurnError::bad_request("channel number out of range"));
        }
        Ok(ChannelBindRequest { number, peer })
    }
}

/// A Send indication (RFC 8656 §11.1). Indications draw no error response: one that does not
/// parse is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendIndication {
    /// Where the payload goes.
    pub peer: SocketAddr,
    /// Where the payload lies in the message.
    pub data: Range<usize>,
}

impl SendIndication {
    /// Parses XOR-PEER-ADDRESS and DATA; None if either is missing or malformed.
    #[inline]
    pub fn parse(m: &Message) -> Option<Self> {
        let peer = m.get_xor_address(attr::XOR_PEER_ADDRESS)?.ok()?;
        let data = m.range_of(attr::DATA)?;
        Some(SendIndication { peer, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, Writer, method};

    fn msg(method: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        let mut w = Writer::new(&mut buf, method, Class::Request, &[3; 12]).unwrap();
        for (t, v) in attrs {
            w.attr(*t, v).unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    fn allocate(attrs: &[(u16, &[u8])]) -> Result<AllocateRequest, TurnError> {
        let b = msg(method::ALLOCATE, attrs);
        AllocateRequest::parse(&Message::decode(&b).unwrap())
    }

    const UDP: (u16, &[u8]) = (attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);

    #[test]
    fn allocate_defaults_and_fields() {
        let a = allocate(&[UDP]).unwrap();
        assert_eq!(a.family, Family::V4);
        assert_eq!(a.port, PortPolicy::Any);
        assert_eq!(
            (a.lifetime, a.reservation, a.dont_fragment),
            (None, None, false)
        );
        let a = allocate(&[
            UDP,
            (attr::LIFETIME, &[0, 0, 1, 0]),
            (attr::EVEN_PORT, &[0x80]),
            (attr::DONT_FRAGMENT, &[]),
            (attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]),
        ])
        .unwrap();
        assert_eq!(a.lifetime, Some(256));
        assert_eq!(a.port, PortPolicy::Even { reserve_next: true });
        assert!(a.dont_fragment);
        assert_eq!(a.family, Family::V6);
    }

    #[test]
    fn allocate_codes_per_rfc8656_section_7_2() {
        let code = |attrs: &[(u16, &[u8])]| allocate(attrs).map(|_| 0).unwrap_or_else(|e| e.code);
        assert_eq!(code(&[]), 400, "no REQUESTED-TRANSPORT");
        assert_eq!(code(&[(attr::REQUESTED_TRANSPORT, &[17, 0])]), 400);
        assert_eq!(
            code(&[(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0])]),
            442,
            "TCP"
        );
        assert_eq!(code(&[UDP, (attr::RESERVATION_TOKEN, &[1; 7])]), 400);
        assert_eq!(code(&[UDP, (attr::EVEN_PORT, &[])]), 400);
        let token: (u16, &[u8]) = (attr::RESERVATION_TOKEN, &[1; 8]);
        assert_eq!(code(&[UDP, token, (attr::EVEN_PORT, &[0])]), 400);
        assert_eq!(
            code(&[UDP, token, (attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0])]),
            400
        );
        let v6: (u16, &[u8]) = (attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        assert_eq!(code(&[UDP, v6, (attr::EVEN_PORT, &[0x80])]), 400);
        assert_eq!(
            code(&[UDP, v6, (attr::EVEN_PORT, &[0])]),
            0,
            "uclient's EVEN-PORT without R"
        );
        assert_eq!(
            code(&[UDP, v6, (attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0])]),
            400
        );
        assert_eq!(
            code(&[UDP, (attr::ADDITIONAL_ADDRESS_FAMILY, &[1, 0, 0, 0])]),
            400
        );
        assert_eq!(
            code(&[UDP, (attr::REQUESTED_ADDRESS_FAMILY, &[3, 0, 0, 0])]),
            440
        );
        assert_eq!(code(&[UDP, (attr::LIFETIME, &[1, 2])]), 400);
        assert_eq!(code(&[UDP, token]), 0);
    }

    #[test]
    fn draft_additional_family_codepoint_is_an_alias() {
        let a = allocate(&[UDP, (attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT, &[2, 0, 0, 0])]).unwrap();
        assert!(a.additional_v6);
    }

    #[test]
    fn refresh_permission_channel_bind() {
        let b = msg(
            method::REFRESH,
            &[(attr::REQUESTED_ADDRESS_FAMILY, &[9, 0, 0, 0])],
        );
        let e = RefreshRequest::parse(&Message::decode(&b).unwrap()).unwrap_err();
        assert_eq!(e.code, 440);
        let b = msg(method::REFRESH, &[(attr::LIFETIME, &[0, 0, 0, 0])]);
        let r = RefreshRequest::parse(&Message::decode(&b).unwrap()).unwrap();
        assert_eq!((r.lifetime, r.family), (Some(0), None));

        let b = msg(method::CREATE_PERMISSION, &[]);
        assert_eq!(
            PermissionRequest::parse(&Message::decode(&b).unwrap())
                .unwrap_err()
                .code,
            400
        );
        let mut buf = vec![0u8; 1500];
        let txid = [3; 12];
        let mut w =
            Writer::new(&mut buf, method::CREATE_PERMISSION, Class::Request, &txid).unwrap();
        for i in 0..=MAX_PEERS_PER_REQUEST {
            w.xor_address(
                attr::XOR_PEER_ADDRESS,
                SocketAddr::from(([198, 51, 100, i as u8], 9)),
            )
            .unwrap();
        }
        let n = w.finish();
        let e = PermissionRequest::parse(&Message::decode(&buf[..n]).unwrap()).unwrap_err();
        assert_eq!(e.reason, "too many XOR-PEER-ADDRESS");

        let mut w = Writer::new(&mut buf, method::CHANNEL_BIND, Class::Request, &txid).unwrap();
        w.attr(attr::CHANNEL_NUMBER, &[0x3F, 0xFF, 0, 0]).unwrap();
        w.xor_address(
            attr::XOR_PEER_ADDRESS,
            SocketAddr::from(([198, 51, 100, 1], 9)),
        )
        .unwrap();
        let n = w.finish();
        let e = ChannelBindRequest::parse(&Message::decode(&buf[..n]).unwrap()).unwrap_err();
        assert_eq!(e.reason, "channel number out of range");
    }
}
