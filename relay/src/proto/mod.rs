//! The sans-I/O protocol core: STUN/TURN codec, credentials and nonces, the peer filter and the
//! server state machine. Nothing here opens a socket or reads a clock; time is passed in.

pub mod auth;
pub mod framing;
pub mod peer_filter;
pub mod server;
pub mod stun;
