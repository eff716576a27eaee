//! The driver: owns every socket, feeds the sans-I/O core and executes what it returns. It holds
//! no protocol rule of its own: what to answer, what to forward, when state expires and what a
//! reservation is are the core's ([`crate::proto::server`]); how bytes move is this module's.
//!
//! Each worker is an OS thread running a current-thread tokio runtime. It has its own
//! SO_REUSEPORT socket on every listen address (the kernel hashes a client's 4-tuple to one
//! of them, so a client always reaches the same worker) and owns the relayed sockets of the
//! allocations it created. A worker's state sits in an `Rc<RefCell<_>>` that only its own
//! tasks touch: a packet crosses no lock and no channel between receive and send, and nothing
//! is allocated per packet (the core writes headers in place, in preallocated batches).
//!
//! The UDP plane (listeners and relayed sockets) does not go through tokio's reactor one
//! socket at a time: the worker keeps its own edge-triggered epoll set of them, and tokio
//! waits on that set's fd as one source. Each round asks the set which sockets received
//! datagrams and reads each with one `recvmmsg` (a socket whose batch came back full is read
//! again next round); what goes to UDP clients is queued per listener and leaves with one
//! `sendmmsg` at the end of the round. A relayed socket costs no task and no buffer.
//! What goes to peers leaves with one `sendto` each: every allocation has its own socket, and
//! `sendmmsg` batches only within a socket.
//!
//! Where a packet goes, by file:
//!
//! * `worker`: a worker's sockets and core; its `dispatch` carries out every
//!   [`crate::proto::server::Action`] (UDP and streams alike), its `deliver` every peer datagram;
//! * `peers`: the peer path behind each relayed address (a UDP socket; the home of later
//!   transports such as links between relays);
//! * `ports`: the port budget, port choice, parked reservation sockets, the core's `Env`;
//! * `sockets`: socket construction; `stream`: TCP/TLS connections; `tasks`: the worker's
//!   thread and tasks; `node`: starting, reloading and stopping the workers;
//! * `health`: whether each worker still turns its loop (a panic, an ended task or a stall
//!   makes the node not ready, and the process exits to be replaced).
//!
//! Shared between workers, and touched only when allocations are created or deleted: the
//! quota counters and reservation tokens in the core's `Shared`, the count of relayed sockets
//! per IP, and the sockets parked for reservations (any worker may claim one).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

mod fast;
#[cfg(debug_assertions)]
mod faults;
mod health;
mod node;
mod peers;
mod ports;
mod sockets;
mod stream;
mod tasks;
mod worker;

pub use health::{Failure, Fault, Health};
pub use node::{Node, shutdown_signal};
pub use sockets::bind_listeners;

use crate::proto::server::Now;

/// Ready sockets reported per round.
const EVENTS: usize = 256;

/// The current time for the core.
pub fn now() -> Now {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Now {
        mono: Instant::now(),
        unix,
    }
}
