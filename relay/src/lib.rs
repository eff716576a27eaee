//! veil's relay node.
//!
//! * [`proto`] is the sans-I/O core: the STUN/TURN codec (zero-copy, our own), REST-API
//!   credentials, stateless nonces, the peer filter and the server state machine that turns
//!   `(now, datagram, from)` into datagrams to send. It never touches a socket or the clock.
//! * [`io`] is the tokio driver: one current-thread runtime per worker, each owning its
//!   SO_REUSEPORT listener sockets and the relayed sockets of the allocations it serves, so a
//!   forwarded packet crosses no lock and no channel.
//! * [`shaping`] pads and re-clocks what goes to clients, and fills silences with cover.
//! * [`config`] is the YAML configuration with validation that names the bad field.
//!
//! What this crate must never do: log a client IP, peer address or username unless the operator
//! opted in ([`privacy`]), keep per-request state for unauthenticated traffic, or panic on input.

/// Serde for a type written in YAML as a string: through its `Display` and `FromStr`, so the
/// parse error names what is wrong.
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

pub mod admin;
pub mod config;
pub mod io;
pub mod metrics;
pub mod privacy;
pub mod proto;
pub mod shaping;
pub mod sys;
pub mod tls;
