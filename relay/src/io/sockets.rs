//! Socket construction: listener and relayed UDP sockets, TCP listeners, the DF policy, and the
//! check that no other process already listens where the node is told to.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer asked for on listener sockets.
const LISTENER_BUFFER: usize = 4 << 20;

fn domain_of(addr: SocketAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

/// Opens a UDP socket the way relayed and listener sockets need it.
pub(super) fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(domain_of(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Sets whether the kernel sets DF on what this socket sends: only when the client asked
/// (DONT-FRAGMENT); otherwise the relay lets routers fragment, as RFC 8656 expects.
pub(super) fn set_dont_fragment(sock: &std::net::UdpSocket, v6: bool, df: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name, value) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            if df {
                libc::IPV6_PMTUDISC_DO
            } else {
                libc::IPV6_PMTUDISC_DONT
            },
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            if df {
                libc::IP_PMTUDISC_DO
            } else {
                libc::IP_PMTUDISC_DONT
            },
        )
    };
    // SAFETY: a valid fd, and a c_int option value of the documented size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Binds listener sockets: `workers` SO_REUSEPORT sockets per listen address.
pub fn bind_listeners(
    listen: &[SocketAddr],
    workers: usize,
) -> io::Result<Vec<Vec<std::net::UdpSocket>>> {
    let mut per_worker: Vec<Vec<std::net::UdpSocket>> = (0..workers).map(|_| Vec::new()).collect();
    for addr in listen {
        if addr.port() != 0 {
            port_is_free(*addr, Type::DGRAM)?;
        }
        for w in per_worker.iter_mut() {
            let s = udp_socket(*addr, true)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            // Every client of the worker shares this socket: room for bursts (the kernel caps
            // the request at net.core.rmem_max / wmem_max).
            let s2 = socket2::SockRef::from(&s);
            let _ = s2.set_recv_buffer_size(LISTENER_BUFFER);
            let _ = s2.set_send_buffer_size(LISTENER_BUFFER);
            w.push(s);
        }
    }
    Ok(per_worker)
}

/// Binds the TCP listeners: `workers` SO_REUSEPORT sockets per address.
pub(super) fn bind_stream_listeners(
    listen: &[SocketAddr],
    workers: usize,
) -> io::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    for addr in listen {
        if addr.port() != 0 {
            port_is_free(*addr, Type::STREAM)?;
        }
        for w in per_worker.iter_mut() {
            w.push(bind_tcp(*addr)?);
        }
    }
    Ok(per_worker)
}

/// Fails when another process listens on `addr`. SO_REUSEPORT, which spreads a node's
/// clients over its workers, would otherwise let a second relay (same user) bind the same
/// port silently and take part of the clients. A socket bound without it fails where any
/// other socket is bound; it is closed before the workers bind theirs.
fn port_is_free(addr: SocketAddr, ty: Type) -> io::Result<()> {
    let s = Socket::new(domain_of(addr), ty, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if ty == Type::STREAM {
        // Connections of an earlier run in TIME_WAIT do not count; a listener does.
        s.set_reuse_address(true)?;
    }
    let proto = if ty == Type::STREAM { "tcp" } else { "udp" };
    s.bind(&addr.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {proto} {addr}: another process listens there"),
            )
        } else {
            io::Error::new(e.kind(), format!("cannot listen on {proto} {addr}: {e}"))
        }
    })
}

/// A listening TCP socket with SO_REUSEPORT, one per worker and address.
fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(domain_of(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on tcp {addr}: {e}")))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on tcp {addr}: {e}")))?;
    s.listen(1024)?;
    Ok(s.into())
}
