//! veil's allocator: decides which relays may carry a client's media and which of them to use.
//!
//! [`placement`] is the pure decision: (client facts, relay view, policy) → a primary and a backup
//! relay, never outside the zones the residency policy allows; [`audit`] is the cross-border
//! record (counts only) and [`join`] the stateless join tokens of calls. The HTTP API and the
//! relay registry (health polling) in [`service`] are the I/O around them.
//!
//! What this crate must never do: place a client in a zone its rule forbids, or log or store a
//! client address.
#![warn(missing_docs, unreachable_pub)]

pub mod audit;
pub mod join;
pub mod placement;
pub mod request;
#[cfg(feature = "server")]
pub mod service;
