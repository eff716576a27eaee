//! veil's sans-I/O protocol core, shared by the relay (the driver around it), the allocator,
//! the fuzz targets and the benches.
//!
//! * [`stun`]: the zero-copy STUN/TURN codec (RFC 8489, RFC 8656), MESSAGE-INTEGRITY(-SHA256),
//!   FINGERPRINT; [`framing`]: STUN and ChannelData framing on TCP/TLS byte streams.
//! * [`auth`]: TURN REST API credentials with claims, long-term keys, stateless nonces.
//! * [`peer_filter`]: which peers a client may reach (private, loopback, metadata, the node's own
//!   addresses), with every IPv4-embedding IPv6 form reduced first.
//! * [`server`]: the TURN server state machine, `(now, datagram, from)` → datagrams to send.
//! * [`shaping`]: padding, re-clocking and cover traffic policy and scheduler.
//! * [`privacy`]: what logs may say about callers (keyed, rotating hashes).
//! * [`limiter`]: token buckets, and a fixed-size table of them per source prefix.
//!
//! What this crate must never do: open a socket, read a clock (time is passed in; the one
//! exception is [`privacy`]'s fallback secret when the OS random source fails), depend on an
//! async runtime, an HTTP or a TLS crate, log a client address or username unless the operator
//! opted in, or panic on input.

#![warn(missing_docs, unreachable_pub)]

/// Serde for a type written in YAML as a string: through its `Display` and `FromStr`, so the
/// parse error names what is wrong.
#[macro_export]
macro_rules! serde_via_str {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub mod auth;
pub mod counters;
pub mod framing;
pub mod limiter;
pub mod mesh;
pub mod peer_filter;
pub mod privacy;
pub mod rng;
pub mod server;
pub mod shaping;
pub mod site;
pub mod spread;
pub mod stun;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
