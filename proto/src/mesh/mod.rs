//! The relay mesh's link protocol, sans-I/O: what two veil relays send each other over their
//! one QUIC connection so that the calls they carry do not show.
//!
//! * [`cell`]: the fixed-size cell, records (one relayed datagram each) running across cells,
//!   and the [`cell::Reassembler`] that takes them apart again, surviving lost cells.
//! * [`sched`]: the [`sched::LinkScheduler`], a constant cell rate from a short ladder, cover
//!   cells when there is too little media, a queue of a few milliseconds that drops the oldest
//!   of the heaviest flow.
//! * [`announce`]: what each side owns (zone and relayed ranges), exchanged once per link; a
//!   record names addresses by their index in them, so a link can only speak for its own.
//! * [`breaker`]: the circuit breaker that replaces QUIC's congestion response.
//!
//! The driver (the relay's `mesh` module) only moves cells: it runs QUIC, calls
//! [`sched::LinkScheduler::poll_cell`] on time, and routes what the reassembler hands out.

pub mod announce;
pub mod breaker;
pub mod cell;
pub mod sched;

#[cfg(test)]
mod tests;

/// UDP payload bytes of every QUIC packet of a link: QUIC's minimum MTU is pinned to the
/// initial one and path-MTU discovery is off, and every packet is padded to it.
pub const QUIC_PACKET: u16 = 1280;

/// A relayed address as a record names it: the index of its range in an announcement, and
/// the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Index in the announcing relay's ranges.
    pub range: u8,
    /// The port.
    pub port: u16,
}
