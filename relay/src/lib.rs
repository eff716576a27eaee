//! veil's relay node: the driver around the sans-I/O core.
//!
//! * [`proto`] (the `veil-proto` crate, re-exported here with [`privacy`] and [`shaping`]) is
//!   the sans-I/O core: the STUN/TURN codec (zero-copy, our own), REST-API credentials,
//!   stateless nonces, the peer filter and the server state machine that turns
//!   `(now, datagram, from)` into datagrams to send, and the shaping policy. It never touches a
//!   socket or the clock, and depends on no async runtime, HTTP or TLS crate.
//! * [`io`] is the tokio driver: one current-thread runtime per worker, each owning its
//!   SO_REUSEPORT listener sockets and the relayed sockets of the allocations it serves, so a
//!   forwarded packet crosses no lock and no channel.
//! * [`config`] is the YAML configuration with validation that names the bad field.
//!
//! What this crate must never do: log a client IP, peer address or username unless the operator
//! opted in ([`privacy`]), keep per-request state for unauthenticated traffic, or panic on input.

#![warn(missing_docs, unreachable_pub)]

pub use veil_proto as proto;
pub use veil_proto::{privacy, shaping};

pub mod admin;
pub mod config;
pub mod fastpath;
pub mod io;
pub mod mesh;
pub mod metrics;
pub mod site;
pub mod sys;
pub mod tls;
