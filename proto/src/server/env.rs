//! What the core asks of its driver: relayed transport addresses, opened and closed. The core
//! decides when (allocations, reservations, expiry); the driver decides how (which socket, which
//! port, or, for a later transport, which link).

use std::net::SocketAddr;

use super::{RelayAddr, RelayId};

/// Which port a new relayed address should get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortPolicy {
    /// Any port of the range.
    Any,
    /// An even port (EVEN-PORT, RFC 8656 §7.2); with `reserve_next` the next (odd) port is
    /// bound too and parked for a later allocation that presents the core's reservation token.
    Even {
        /// Whether to hold the next port (the R bit).
        reserve_next: bool,
    },
}

/// A relayed address the driver opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Its local address (the core advertises the configured public IP for it).
    pub bound: SocketAddr,
    /// With [`PortPolicy::Even`] `reserve_next`: the next port, bound and parked by the driver
    /// until [`Env::adopt_reserved`] or [`Env::release_reserved`]. The core keeps the token
    /// and its 30 s expiry.
    pub reserved: Option<SocketAddr>,
}

/// The operations the core asks of its driver.
pub trait Env {
    /// Opens a relayed address on one of `on` (the driver picks the least used) within the
    /// port range, named `id`; None if no port is free on any.
    fn open_relay(
        &mut self,
        id: RelayId,
        on: &[RelayAddr],
        policy: PortPolicy,
        dont_fragment: bool,
    ) -> Option<Opened>;
    /// Takes over the address parked at `parked` (any worker of the node may have parked it)
    /// and names it `id`; false if it is gone.
    fn adopt_reserved(&mut self, id: RelayId, parked: SocketAddr, dont_fragment: bool) -> bool;
    /// Closes a parked address nobody claimed in time.
    fn release_reserved(&mut self, parked: SocketAddr);
    /// Closes a relayed address.
    fn close_relay(&mut self, id: RelayId);
}
