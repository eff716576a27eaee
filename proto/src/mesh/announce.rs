//! What each side of a link says about itself once the handshake is done: its zone and the
//! relayed address ranges it owns. Records name addresses by their index in these lists, so a
//! linked relay can only ever speak for the ranges it announced, and an announcement that
//! overlaps what another linked relay (or this node) owns is refused by the driver
//! ([`Announce::overlaps`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::Endpoint;

/// Most ranges one relay may announce (an index is one byte).
pub const MAX_RANGES: usize = 64;
/// Longest zone name.
pub const MAX_ZONE: usize = 63;
/// Largest encoded announcement.
pub const MAX_ANNOUNCE: usize = 2 + MAX_ZONE + MAX_RANGES * 21;

/// One relayed IP and its port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayRange {
    /// The relayed IP.
    pub ip: IpAddr,
    /// First and last relayed port (inclusive).
    pub ports: (u16, u16),
}

impl RelayRange {
    /// Whether `addr` is in this range.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        addr.ip() == self.ip && (self.ports.0..=self.ports.1).contains(&addr.port())
    }

    fn overlaps(&self, o: &RelayRange) -> bool {
        self.ip == o.ip && self.ports.0 <= o.ports.1 && o.ports.0 <= self.ports.1
    }
}

/// A relay's announcement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announce {
    /// The relay's zone (may be empty).
    pub zone: String,
    /// Its relayed ranges, indexed by records.
    pub ranges: Vec<RelayRange>,
}

/// Why an announcement was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnounceError {
    /// Not in the format.
    #[error("malformed announcement")]
    Malformed,
    /// More ranges, or a longer zone, than allowed.
    #[error("announcement too large")]
    TooLarge,
    /// A range whose first port is above its last, or port 0.
    #[error("bad port range")]
    BadRange,
}

impl Announce {
    /// The endpoint naming `addr` in this announcement.
    pub fn endpoint(&self, addr: SocketAddr) -> Option<Endpoint> {
        let i = self.ranges.iter().position(|r| r.contains(addr))?;
        Some(Endpoint {
            range: u8::try_from(i).ok()?,
            port: addr.port(),
        })
    }

    /// The address an endpoint names, if it is inside the announced ranges.
    pub fn addr(&self, e: Endpoint) -> Option<SocketAddr> {
        let r = self.ranges.get(usize::from(e.range))?;
        let a = SocketAddr::new(r.ip, e.port);
        r.contains(a).then_some(a)
    }

    /// Whether any range of this announcement overlaps one of `other`.
    pub fn overlaps(&self, other: &[RelayRange]) -> bool {
        self.ranges
            .iter()
            .any(|r| other.iter().any(|o| r.overlaps(o)))
    }

    /// Encodes it: version, zone length and bytes, range count, then per range the family
    /// (4 or 6), the IP and the two ports.
    pub fn encode(&self) -> Result<Vec<u8>, AnnounceError> {
        if self.zone.len() > MAX_ZONE || self.ranges.len() > MAX_RANGES {
            return Err(AnnounceError::TooLarge);
        }
        let mut out = Vec::with_capacity(MAX_ANNOUNCE + 1);
        out.push(1);
        out.push(self.zone.len() as u8);
        out.extend_from_slice(self.zone.as_bytes());
        out.push(self.ranges.len() as u8);
        for r in &self.ranges {
            match r.ip {
                IpAddr::V4(v4) => {
                    out.push(4);
                    out.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    out.push(6);
                    out.extend_from_slice(&v6.octets());
                }
            }
            out.extend_from_slice(&r.ports.0.to_be_bytes());
            out.extend_from_slice(&r.ports.1.to_be_bytes());
        }
        Ok(out)
    }

    /// Decodes one; the whole input must be one announcement.
    pub fn decode(b: &[u8]) -> Result<Announce, AnnounceError> {
        let mut r = Reader(b);
        if r.u8()? != 1 {
            return Err(AnnounceError::Malformed);
        }
        let zl = usize::from(r.u8()?);
        if zl > MAX_ZONE {
            return Err(AnnounceError::TooLarge);
        }
        let zone = std::str::from_utf8(r.take(zl)?).map_err(|_| AnnounceError::Malformed)?;
        if !zone
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        {
            return Err(AnnounceError::Malformed);
        }
        let n = usize::from(r.u8()?);
        if n > MAX_RANGES {
            return Err(AnnounceError::TooLarge);
        }
        let mut ranges = Vec::with_capacity(n);
        for _ in 0..n {
            let ip = match r.u8()? {
                4 => IpAddr::V4(Ipv4Addr::from(
                    <[u8; 4]>::try_from(r.take(4)?).unwrap_or_default(),
                )),
                6 => IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(r.take(16)?).unwrap_or_default(),
                )),
                _ => return Err(AnnounceError::Malformed),
            };
            let lo = r.u16()?;
            let hi = r.u16()?;
            if lo == 0 || lo > hi {
                return Err(AnnounceError::BadRange);
            }
            ranges.push(RelayRange {
                ip,
                ports: (lo, hi),
            });
        }
        if !r.0.is_empty() {
            return Err(AnnounceError::Malformed);
        }
        Ok(Announce {
            zone: zone.to_string(),
            ranges,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AnnounceError> {
        if self.0.len() < n {
            return Err(AnnounceError::Malformed);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, AnnounceError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, AnnounceError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}
