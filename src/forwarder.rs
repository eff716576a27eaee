//! `veil bench-forwarder` (hidden): the machine's ceiling for a relay's work without TURN. It
//! listens on one UDP socket; each client address gets its own upstream socket to `--to` (as
//! each allocation gets a relayed socket), and what comes back on it goes to the client from
//! the listening socket. recvmmsg/sendmmsg, one thread, no protocol, no checks.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use veil_relay::sys::{Epoll, SendQueue, raise_fd_limit};

use crate::load::{BATCH, SLOT, batches};

#[derive(Args)]
pub(crate) struct ForwarderArgs {
    /// Where clients send.
    #[arg(long)]
    listen: SocketAddr,
    /// The peer every datagram is forwarded to.
    #[arg(long)]
    to: SocketAddr,
    /// Seconds to run (it stops by itself).
    #[arg(long, default_value_t = 600)]
    seconds: u64,
}

/// Token of the listening socket; upstream sockets use their index.
const LISTENER: u64 = u64::MAX;

/// Each round drains every socket that received (edge-triggered, one recvmmsg per batch);
/// what goes to clients leaves in one sendmmsg per round, what goes upstream in one per
/// client and batch.
pub(crate) fn run(a: ForwarderArgs) -> Result<()> {
    raise_fd_limit(100_000);
    // The listening socket is set up exactly as a relay's (buffers, SO_REUSEPORT).
    let listener = veil_relay::io::bind_listeners(&[a.listen], 1)
        .context("listen")?
        .pop()
        .and_then(|mut w| w.pop())
        .context("listen")?;
    let mut poll = Epoll::new(256)?;
    poll.add_edge(&listener, LISTENER)?;
    let mut upstream: Vec<(UdpSocket, SocketAddr)> = Vec::new();
    let mut by_client: HashMap<SocketAddr, usize> = HashMap::new();
    let (mut inb, mut to_peer) = batches();
    let mut to_clients = SendQueue::new(4 * BATCH, 4 * BATCH * SLOT);
    let end = Instant::now() + Duration::from_secs(a.seconds.min(3600));
    let lfd = listener.as_raw_fd();
    while Instant::now() < end {
        for e in 0..poll.wait(100) {
            let token = poll.token(e);
            if token == LISTENER {
                loop {
                    let n = inb.recv(lfd).unwrap_or(0);
                    // Consecutive datagrams of one client leave in one sendmmsg.
                    let mut current: Option<usize> = None;
                    for k in 0..n {
                        let Some(from) = inb.addr(k) else { continue };
                        let idx = match by_client.get(&from) {
                            Some(i) => *i,
                            None => {
                                let s = UdpSocket::bind(SocketAddr::new(a.listen.ip(), 0))?;
                                s.set_nonblocking(true)?;
                                poll.add_edge(&s, upstream.len() as u64)?;
                                upstream.push((s, from));
                                by_client.insert(from, upstream.len() - 1);
                                upstream.len() - 1
                            }
                        };
                        if let Some(c) = current.filter(|&c| c != idx) {
                            to_peer.send(upstream[c].0.as_raw_fd());
                        }
                        current = Some(idx);
                        to_peer.push(inb.get(k), a.to);
                    }
                    if let Some(c) = current {
                        to_peer.send(upstream[c].0.as_raw_fd());
                    }
                    if n < BATCH {
                        break;
                    }
                }
            } else {
                let (s, client) = &upstream[token as usize];
                loop {
                    let n = inb.recv(s.as_raw_fd()).unwrap_or(0);
                    for k in 0..n {
                        if !to_clients.push(inb.get(k), *client) {
                            to_clients.send(lfd);
                            to_clients.push(inb.get(k), *client);
                        }
                    }
                    if n < BATCH {
                        break;
                    }
                }
            }
        }
        to_clients.send(lfd);
    }
    Ok(())
}
