//! Batched UDP I/O for the load generator and the reference forwarder: `recvmmsg`/`sendmmsg`
//! over preallocated buffers (no allocation per packet), and a small epoll wrapper.

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

/// Datagrams moved per system call at most.
pub const BATCH: usize = 64;
/// Largest datagram handled.
pub const SLOT: usize = 2048;

fn to_storage(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(sin.sin_addr.s_addr).into(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Buffers for up to [`BATCH`] datagrams with their addresses and lengths.
pub struct Batch {
    bufs: Box<[u8]>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    lens: Vec<usize>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Datagrams held.
    pub count: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            bufs: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            // SAFETY: all-zero is valid for these C structs.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            addr_lens: vec![0; BATCH],
            lens: vec![0; BATCH],
            iovs: (0..BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: as above.
            hdrs: vec![unsafe { MaybeUninit::zeroed().assume_init() }; BATCH],
            count: 0,
        }
    }
}

impl Batch {
    /// The payload of datagram `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.bufs[i * SLOT..i * SLOT + self.lens[i]]
    }

    /// The peer address of datagram `i`.
    pub fn addr(&self, i: usize) -> Option<SocketAddr> {
        from_storage(&self.addrs[i])
    }

    /// True when no more datagram fits.
    pub fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// Room for one more datagram to `to`: write it into the returned slice, then call
    /// [`Batch::commit`] with its length. None when the batch is full.
    pub fn slot(&mut self) -> Option<&mut [u8]> {
        (self.count < BATCH).then(|| {
            let i = self.count;
            &mut self.bufs[i * SLOT..(i + 1) * SLOT]
        })
    }

    /// Adds the datagram written into [`Batch::slot`].
    pub fn commit(&mut self, len: usize, to: SocketAddr) {
        let i = self.count;
        let (ss, sl) = to_storage(to);
        self.addrs[i] = ss;
        self.addr_lens[i] = sl;
        self.lens[i] = len.min(SLOT);
        self.count += 1;
    }

    /// Adds a copy of `data` addressed to `to`; false when full.
    pub fn push(&mut self, data: &[u8], to: SocketAddr) -> bool {
        let Some(slot) = self.slot() else {
            return false;
        };
        let n = data.len().min(SLOT);
        slot[..n].copy_from_slice(&data[..n]);
        self.commit(n, to);
        true
    }

    fn prepare(&mut self, n: usize, receive: bool) {
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * SLOT..].as_mut_ptr().cast(),
                iov_len: if receive { SLOT } else { self.lens[i] },
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = if receive {
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t
            } else {
                self.addr_lens[i]
            };
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
    }

    /// Receives up to [`BATCH`] datagrams without blocking; Ok(0) when none is waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.prepare(BATCH, true);
        // SAFETY: every header points into buffers owned by self that outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.count = 0;
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        self.count = n;
        Ok(n)
    }

    /// Sends every datagram held (retrying on a partial send), then empties the batch. Returns
    /// how many the kernel took; the rest were dropped (buffer full).
    pub fn send(&mut self, fd: RawFd) -> usize {
        let total = self.count;
        self.prepare(total, false);
        let mut done = 0;
        while done < total {
            // SAFETY: as in recv; only the prepared headers are passed.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[done..].as_mut_ptr(),
                    (total - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                break;
            }
            done += n as usize;
        }
        self.count = 0;
        done
    }
}

/// A level-triggered epoll set of sockets, each registered with a `u64` token.
pub struct Poll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Poll {
    pub fn new() -> io::Result<Poll> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poll {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
        })
    }

    pub fn add(&self, sock: &impl AsRawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: valid fds and event pointer.
        let rc =
            unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, sock.as_raw_fd(), &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` and puts the tokens of readable sockets into `ready` (cleared
    /// first; no allocation once it has grown).
    pub fn wait(&mut self, timeout_ms: i32, ready: &mut Vec<u64>) {
        // SAFETY: the events buffer is valid for its length.
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        ready.clear();
        ready.extend(self.events[..n.max(0) as usize].iter().map(|e| e.u64));
    }
}

impl Drop for Poll {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

/// Raises the soft limit on open files to the hard limit (many sockets per process).
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_crosses_a_socket_pair_with_addresses() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut out = Batch::default();
        for i in 0..10u8 {
            assert!(out.push(&[i; 100], ba));
        }
        assert_eq!(out.send(a.as_raw_fd()), 10);
        let mut inb = Batch::default();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < 10 && std::time::Instant::now() < deadline {
            let n = inb.recv(b.as_raw_fd()).unwrap();
            for i in 0..n {
                assert_eq!(inb.addr(i), Some(aa));
                got.push(inb.get(i).to_vec());
            }
        }
        assert_eq!(got.len(), 10);
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g, &vec![i as u8; 100]);
        }
        assert_eq!(inb.recv(b.as_raw_fd()).unwrap(), 0, "nothing more");
    }
}
