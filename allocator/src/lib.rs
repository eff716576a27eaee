//! veil's allocator: decides which relays may carry a client's media and which of them to use.
//!
//! [`placement`] is the pure decision: (client facts, relay view, policy) → a primary and a backup
//! relay, never outside the zones the residency policy allows. The HTTP API and the relay
//! registry (health polling) are the I/O around it.
//!
//! What this crate must never do: place a client in a zone its rule forbids, or log or store a
//! client address.

pub mod placement;
pub mod service;
