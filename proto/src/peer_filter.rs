//! Which peers a client may reach through the relay.
//!
//! A TURN relay that forwards to any address is an open proxy into the network it sits in:
//! loopback services, cloud metadata at 169.254.169.254, the cluster's private ranges. coturn's
//! deny list was bypassed by writing the same address another way (CVE-2020-26262: `0.0.0.0`,
//! `[::1]`, `[::]`; CVE-2026-27624: `::ffff:127.0.0.1`; later IPv4-compatible, 6to4 and NAT64
//! forms). So every peer address is first reduced to its canonical form — the IPv4 address
//! embedded in an IPv4-mapped, IPv4-translated (SIIT), IPv4-compatible, 6to4, NAT64 or Teredo
//! IPv6 address — and the decision is made on that form and on the address as written.
//!
//! Order of the rules: the node's own addresses are refused first; then the operator's `deny`
//! ranges, which win over everything else; then the operator's `allow` ranges, which carve
//! exceptions out of the built-in list only; then the built-in list.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An address prefix such as `10.0.0.0/8` or `fc00::/7`. A bare address means a single host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an address or address/prefix (e.g. 10.0.0.0/8, fc00::/7)")]
pub struct CidrError(String);

impl Cidr {
    /// The prefix `addr/prefix`; bits past the prefix are ignored.
    pub const fn new(addr: IpAddr, prefix: u8) -> Cidr {
        Cidr { addr, prefix }
    }

    /// True if `ip` (of the same family) lies inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u32::from(net) as u128,
                u32::from(ip) as u128,
                self.prefix,
                32,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = (bits - prefix.min(bits)) as u32;
    (a >> shift) == (b >> shift)
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_string());
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| err())?)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

serde_via_str!(Cidr);

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
    Cidr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix)
}

#[allow(clippy::too_many_arguments)]
const fn v6(s: [u16; 8], prefix: u8) -> Cidr {
    Cidr::new(
        IpAddr::V6(Ipv6Addr::new(
            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
        )),
        prefix,
    )
}

/// Ranges no client may reach by default: special-purpose, private, loopback, link-local (cloud
/// metadata), documentation, benchmarking, multicast and reserved space (IANA special-purpose
/// registries), and the IPv6 prefixes that embed IPv4 addresses.
pub const DEFAULT_DENY: &[Cidr] = &[
    v4(0, 0, 0, 0, 8),
    v4(10, 0, 0, 0, 8),
    v4(100, 64, 0, 0, 10),
    v4(127, 0, 0, 0, 8),
    v4(169, 254, 0, 0, 16),
    v4(172, 16, 0, 0, 12),
    v4(192, 0, 0, 0, 24),
    v4(192, 0, 2, 0, 24),
    v4(192, 88, 99, 0, 24),
    v4(192, 168, 0, 0, 16),
    v4(198, 18, 0, 0, 15),
    v4(198, 51, 100, 0, 24),
    v4(203, 0, 113, 0, 24),
    v4(224, 0, 0, 0, 4),
    v4(240, 0, 0, 0, 4), // includes 255.255.255.255
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96), // IPv4-compatible (deprecated)
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),
    v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96), // IPv4-translated (SIIT, RFC 2765)
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), // IETF protocol assignments, Teredo 2001::/32
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
];

/// The IPv4 address an IPv6 address stands for, if it embeds one: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`, SIIT), IPv4-compatible (`::a.b.c.d`, also `::` and `::1`), NAT64 well-known
/// prefix (`64:ff9b::a.b.c.d`), 6to4 (`2002:AABB:CCDD::/48`) and Teredo (`2001:0::/32`, whose
/// client address is the last 32 bits inverted).
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        // `::` and `::1` are the unspecified and loopback addresses, not IPv4-compatible ones.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(last),
        [0, 0, 0, 0, 0, 0, _, _] => Some(last),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last),
        [0x2002, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        [0x2001, 0, ..] => Some(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15])),
        _ => None,
    }
}

/// The Teredo server address (bits 32–63) of a Teredo address: a second IPv4 address that
/// address carries, checked too.
fn teredo_server(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = ip.octets();
    (ip.segments()[0] == 0x2001 && ip.segments()[1] == 0)
        .then(|| Ipv4Addr::new(o[4], o[5], o[6], o[7]))
}

/// The form an address is judged in: the embedded IPv4 address if there is one, else itself.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why a peer is refused. Only ever logged as this kind, never with the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// In a denied range (default or configured) and not explicitly allowed.
    Range,
    /// One of the relay cluster's own listening or relayed addresses.
    OwnAddress,
}

/// The peer policy of a node.
///
/// Two questions are asked of it. [`PeerFilter::check`] decides a permission or a channel
/// binding (the IP ranges and the node's own addresses, once per request). [`PeerFilter::admits`]
/// decides every datagram a client sends to a peer by Send indication, whose port the client
/// chooses per packet: only the node's own addresses, a few compares.
#[derive(Debug, Clone, Default)]
pub struct PeerFilter {
    /// The operator's `deny` ranges: they win over `allow`.
    deny: Vec<Cidr>,
    /// The operator's `allow` ranges: exceptions to [`DEFAULT_DENY`].
    allow: Vec<Cidr>,
    /// Ports of our listeners bound to an unspecified address: denied at every IP (we cannot
    /// know every address such a socket answers on).
    any_ip_ports: Vec<u16>,
    /// Exact addresses of our listeners bound to one IP (canonical form).
    own_sockets: Vec<SocketAddr>,
    /// Every IP of this node (relay IPs bound and advertised, listener IPs, the interface
    /// addresses), canonical. On these only the relayed port range is ever reachable.
    own_ips: Vec<IpAddr>,
    relay_ports: (u16, u16),
    /// Whether one allocation may reach another's relayed address on this node (see
    /// [`PeerFilter::relay_to_relay`]).
    relay_to_relay: bool,
    /// Whether ports outside the relayed range on the node's own IPs are reachable (see
    /// [`PeerFilter::host_peers`]).
    host_peers: bool,
}

impl PeerFilter {
    /// The default deny list with `allow` carving exceptions out of it, and `extra_deny`, which
    /// wins over `allow` (so a deny range can take a hole out of an allowed one).
    pub fn new(extra_deny: &[Cidr], allow: &[Cidr]) -> Self {
        PeerFilter {
            deny: extra_deny.to_vec(),
            allow: allow.to_vec(),
            ..Default::default()
        }
    }

    /// The node's own addresses: its `listeners` (UDP, TCP, TLS, admin; an unspecified IP
    /// stands for every IP at that port), its `own_ips` (relay IPs, interface addresses) and
    /// the relayed port range on them. On an own IP only the relayed range can ever be reached,
    /// and only with [`PeerFilter::relay_to_relay`]; the listeners never, whatever `allow` says.
    pub fn with_own_addresses(
        mut self,
        listeners: &[SocketAddr],
        own_ips: &[IpAddr],
        relay_ports: (u16, u16),
    ) -> Self {
        self.any_ip_ports.clear();
        self.own_sockets.clear();
        self.own_ips.clear();
        for l in listeners {
            if l.ip().is_unspecified() {
                self.any_ip_ports.push(l.port());
            } else {
                self.own_sockets
                    .push(SocketAddr::new(canonical(l.ip()), l.port()));
                self.own_ips.push(canonical(l.ip()));
            }
        }
        self.own_ips.extend(
            own_ips
                .iter()
                .map(|ip| canonical(*ip))
                .filter(|ip| !ip.is_unspecified()),
        );
        self.any_ip_ports.sort_unstable();
        self.any_ip_ports.dedup();
        self.own_sockets.sort_unstable();
        self.own_sockets.dedup();
        self.own_ips.sort_unstable();
        self.own_ips.dedup();
        self.relay_ports = relay_ports;
        self
    }

    /// Lets allocations reach each other's relayed addresses on this node: the two parties of
    /// a call placed on one relay, both with relay-only ICE, need exactly that path. The
    /// listeners stay denied; the relay IPs still go through the range rules.
    pub fn relay_to_relay(mut self, allow: bool) -> Self {
        self.relay_to_relay = allow;
        self
    }

    /// Lets allocations reach ports outside the relayed range on the node's own IPs: only for a
    /// development setup whose peers run on the relay's one address (`::1` has no sibling
    /// loopback address). It exposes every other UDP service of the host, so never in
    /// production. The listeners stay denied.
    pub fn host_peers(mut self, allow: bool) -> Self {
        self.host_peers = allow;
        self
    }

    /// Decides whether a client may reach `peer` (a channel binding; a permission asks this
    /// of each address it names, and then holds its IP).
    pub fn check(&self, peer: SocketAddr) -> Result<(), Denied> {
        if self.is_own(canonical(peer.ip()), peer.port()) {
            return Err(Denied::OwnAddress);
        }
        self.check_ip(peer.ip())
    }

    /// The range rules alone, for an IP in any port: what a permission, once installed,
    /// stands for.
    pub fn check_ip(&self, raw: IpAddr) -> Result<(), Denied> {
        let canon = canonical(raw);
        let mut forms = [Some(raw), Some(canon), None];
        if let IpAddr::V6(v6) = raw {
            forms[2] = teredo_server(v6).map(IpAddr::V4);
        }
        let in_any = |list: &[Cidr]| {
            forms
                .iter()
                .flatten()
                .any(|ip| list.iter().any(|c| c.contains(*ip)))
        };
        if in_any(&self.deny) {
            return Err(Denied::Range);
        }
        if self
            .allow
            .iter()
            .any(|c| c.contains(canon) || c.contains(raw))
        {
            return Ok(());
        }
        if in_any(DEFAULT_DENY) {
            Err(Denied::Range)
        } else {
            Ok(())
        }
    }

    /// Whether a datagram may go to `peer`, whose IP already holds a permission (so passed the
    /// range rules): false for the node's own addresses. Run on every Send indication.
    #[inline]
    pub fn admits(&self, peer: SocketAddr) -> bool {
        let ip = match peer.ip() {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            v6 => canonical(v6),
        };
        !self.is_own(ip, peer.port())
    }

    #[inline]
    fn is_own(&self, ip: IpAddr, port: u16) -> bool {
        if self.any_ip_ports.contains(&port) {
            return true;
        }
        if !self.own_ips.contains(&ip) {
            return false;
        }
        if port >= self.relay_ports.0 && port <= self.relay_ports.1 {
            // Another allocation's relayed address (a listener there stays refused).
            !self.relay_to_relay || self.own_sockets.contains(&SocketAddr::new(ip, port))
        } else {
            !self.host_peers || self.own_sockets.contains(&SocketAddr::new(ip, port))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.255.1.2".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(
            !c.contains("::a00:1".parse().unwrap()),
            "families never match"
        );
        let h: Cidr = "2001:db8::1".parse().unwrap();
        assert!(h.contains("2001:db8::1".parse().unwrap()));
        assert!(!h.contains("2001:db8::2".parse().unwrap()));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains("fe80::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    /// Every range of the default list, written every way a client can write it, is refused.
    #[test]
    fn default_deny_in_every_form() {
        let f = PeerFilter::new(&[], &[]);
        let denied = [
            "0.0.0.0:80",
            "10.1.2.3:80",
            "100.64.0.1:80",
            "127.0.0.1:80",
            "127.255.255.254:80",
            "169.254.169.254:80",
            "172.16.0.1:80",
            "172.31.255.255:80",
            "192.0.0.8:80",
            "192.0.2.1:80",
            "192.88.99.1:80",
            "192.168.1.1:80",
            "198.18.0.1:80",
            "198.19.255.255:80",
            "198.51.100.7:80",
            "203.0.113.9:80",
            "224.0.0.1:80",
            "239.255.255.250:80",
            "240.0.0.1:80",
            "255.255.255.255:80",
            "[::]:80",
            "[::1]:80",
            "[::127.0.0.1]:80",
            "[::ffff:127.0.0.1]:80",
            "[::ffff:169.254.169.254]:80",
            "[::ffff:10.0.0.1]:80",
            "[64:ff9b::7f00:1]:80",
            "[64:ff9b::a9fe:a9fe]:80",
            "[64:ff9b:1::1]:80",
            "[100::1]:80",
            "[2001::1]:80",
            "[2001:1ff::1]:80",
            "[2001:db8::1]:80",
            "[2002:7f00:1::]:80",
            "[2002:a9fe:a9fe::1]:80",
            "[fc00::1]:80",
            "[fd12:3456::1]:80",
            "[fe80::1]:80",
            "[fec0::1]:80",
            "[ff02::1]:80",
        ];
        for p in denied {
            assert_eq!(f.check(sa(p)), Err(Denied::Range), "{p} must be denied");
        }
        for p in [
            "8.8.8.8:53",
            "1.1.1.1:443",
            "[2606:4700::1111]:443",
            "[2a00:1450::1]:80",
        ] {
            assert_eq!(f.check(sa(p)), Ok(()), "{p} is public");
        }
    }

    #[test]
    fn embedded_forms_reduce_to_ipv4() {
        let want = Ipv4Addr::new(127, 0, 0, 1);
        for s in [
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::127.0.0.1",
            "2002:7f00:1::1",
        ] {
            assert_eq!(embedded_v4(s.parse().unwrap()), Some(want), "{s}");
        }
        // Teredo: client address is the last 32 bits inverted (127.0.0.1 -> 80ff:fffe).
        assert_eq!(
            embedded_v4("2001:0:4136:e378:8000:63bf:80ff:fffe".parse().unwrap()),
            Some(want)
        );
        assert_eq!(embedded_v4("2a00:1450::1".parse().unwrap()), None);
    }

    /// Allowing a range allows it in every form that reduces to it, and nothing else.
    #[test]
    fn an_explicit_deny_wins_over_allow() {
        let f = PeerFilter::new(
            &["10.1.0.0/16".parse().unwrap()],
            &["10.0.0.0/8".parse().unwrap()],
        );
        assert_eq!(
            f.check(sa("10.2.0.1:80")),
            Ok(()),
            "allowed out of the built-in list"
        );
        assert_eq!(
            f.check(sa("10.1.2.3:80")),
            Err(Denied::Range),
            "the hole deny carves"
        );
        assert_eq!(
            f.check(sa("[::ffff:10.1.2.3]:80")),
            Err(Denied::Range),
            "in every form"
        );
        // A public range denied and allowed: deny wins.
        let f = PeerFilter::new(
            &["93.184.216.0/24".parse().unwrap()],
            &["93.184.0.0/16".parse().unwrap()],
        );
        assert_eq!(f.check(sa("93.184.216.34:443")), Err(Denied::Range));
        assert_eq!(f.check(sa("93.184.1.1:443")), Ok(()));
    }

    #[test]
    fn ipv4_translated_siit_is_reduced_to_ipv4() {
        let siit: Ipv6Addr = "::ffff:0:7f00:1".parse().unwrap();
        assert_eq!(embedded_v4(siit), Some(Ipv4Addr::new(127, 0, 0, 1)));
        let f = PeerFilter::new(&[], &[]);
        for denied in [
            "[::ffff:0:7f00:1]:80",
            "[::ffff:0:a9fe:a9fe]:80",
            "[::ffff:0:5db8:d822]:80",
        ] {
            assert_eq!(f.check(sa(denied)), Err(Denied::Range), "{denied}");
        }
        // Allowing loopback allows its SIIT form too, as it does the mapped one.
        let f = PeerFilter::new(&[], &["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(f.check(sa("[::ffff:0:7f00:1]:80")), Ok(()));
    }

    #[test]
    fn allow_list_carves_out_canonical_forms_only() {
        let f = PeerFilter::new(&[], &["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(f.check(sa("127.0.0.1:9")), Ok(()));
        assert_eq!(f.check(sa("[::ffff:127.0.0.1]:9")), Ok(()));
        assert_eq!(f.check(sa("10.0.0.1:9")), Err(Denied::Range));
        assert_eq!(f.check(sa("[::1]:9")), Err(Denied::Range));
        assert_eq!(f.check(sa("169.254.169.254:80")), Err(Denied::Range));
        // IPv6 loopback is its own address, not the IPv4-compatible 0.0.0.1.
        let f = PeerFilter::new(&[], &["::1/128".parse().unwrap()]);
        assert_eq!(f.check(sa("[::1]:9")), Ok(()));
        assert_eq!(f.check(sa("[::]:9")), Err(Denied::Range));
        assert_eq!(f.check(sa("[::2]:9")), Err(Denied::Range));
        assert_eq!(f.check(sa("127.0.0.1:9")), Err(Denied::Range));
    }

    #[test]
    fn own_addresses_are_denied_even_when_allowed() {
        let f = PeerFilter::new(&[], &["127.0.0.0/8".parse().unwrap()]).with_own_addresses(
            &[sa("127.0.0.1:3478"), sa("0.0.0.0:3479")],
            &["127.0.0.1".parse().unwrap()],
            (20000, 20999),
        );
        assert_eq!(f.check(sa("127.0.0.1:3478")), Err(Denied::OwnAddress));
        assert_eq!(
            f.check(sa("[::ffff:127.0.0.1]:3478")),
            Err(Denied::OwnAddress)
        );
        assert_eq!(f.check(sa("127.0.0.5:3479")), Err(Denied::OwnAddress));
        assert_eq!(f.check(sa("127.0.0.1:20500")), Err(Denied::OwnAddress));
        // Outside the relayed range, the node's own IP is the host's other services.
        for p in ["127.0.0.1:21000", "127.0.0.1:53", "[::ffff:127.0.0.1]:9100"] {
            assert_eq!(f.check(sa(p)), Err(Denied::OwnAddress), "{p}");
        }
        assert_eq!(f.check(sa("127.0.0.2:20500")), Ok(()));
        assert_eq!(f.check(sa("127.0.0.2:53")), Ok(()));
        // Relay to relay on this node: relayed ports open, listeners and the rest still denied.
        let f = f.relay_to_relay(true);
        assert_eq!(f.check(sa("127.0.0.1:20500")), Ok(()));
        assert_eq!(f.check(sa("127.0.0.1:3478")), Err(Denied::OwnAddress));
        assert_eq!(f.check(sa("127.0.0.1:21000")), Err(Denied::OwnAddress));
        // Host peers (development on one address): the host's ports open, listeners never.
        let h = f.clone().host_peers(true);
        assert_eq!(h.check(sa("127.0.0.1:21000")), Ok(()));
        assert_eq!(h.check(sa("127.0.0.1:3478")), Err(Denied::OwnAddress));
        assert_eq!(h.check(sa("127.0.0.9:3479")), Err(Denied::OwnAddress));
        // The range rules still apply to the relay's own IP.
        let f = PeerFilter::new(&[], &[])
            .with_own_addresses(&[], &["127.0.0.1".parse().unwrap()], (20000, 20999))
            .relay_to_relay(true);
        assert_eq!(f.check(sa("127.0.0.1:20500")), Err(Denied::Range));
    }

    /// The per-datagram question: any port a Send indication names on an own IP outside the
    /// relayed range, or a listener anywhere, is refused; other addresses pass (their IP holds
    /// a permission, so the range rules already passed).
    #[test]
    fn admits_refuses_own_addresses_in_every_form() {
        let f = PeerFilter::new(&[], &[])
            .with_own_addresses(
                &[
                    sa("192.0.2.10:3478"),
                    sa("[::]:5349"),
                    sa("[2001:db8::10]:3478"),
                ],
                &[
                    "192.0.2.10".parse().unwrap(),
                    "2001:db8::10".parse().unwrap(),
                ],
                (49152, 65535),
            )
            .relay_to_relay(true);
        for p in [
            "192.0.2.10:3478",
            "[::ffff:192.0.2.10]:3478",
            "[::ffff:0:c000:20a]:3478",
            "[64:ff9b::c000:20a]:22",
            "192.0.2.10:9100",
            "198.51.100.1:5349",
            "[2001:db8::10]:3478",
            "[2001:db8::10]:8080",
        ] {
            assert!(!f.admits(sa(p)), "{p} is the node's own");
            assert_eq!(f.check(sa(p)), Err(Denied::OwnAddress), "{p}");
        }
        for p in [
            "192.0.2.10:50000",
            "[2001:db8::10]:50000",
            "198.51.100.1:3478",
        ] {
            assert!(f.admits(sa(p)), "{p}");
        }
        assert!(
            !f.clone()
                .relay_to_relay(false)
                .admits(sa("192.0.2.10:50000"))
        );
    }

    #[test]
    fn extra_deny_ranges_apply() {
        let f = PeerFilter::new(&["8.8.8.0/24".parse().unwrap()], &[]);
        assert_eq!(f.check(sa("8.8.8.8:53")), Err(Denied::Range));
        assert_eq!(f.check(sa("[::ffff:8.8.8.8]:53")), Err(Denied::Range));
        assert_eq!(f.check(sa("8.8.4.4:53")), Ok(()));
    }
}
