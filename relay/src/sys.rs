//! Batched UDP I/O and a small epoll set: what the relay's UDP plane, the load generator and
//! the reference forwarder use to move many datagrams per system call.
//!
//! * [`RecvBatch`] receives up to N datagrams with one `recvmmsg`, each into its own slot with
//!   room before and after it, so the relay can frame and pad a payload in place.
//! * [`SendQueue`] collects datagrams for one socket, packed into one arena, and sends them
//!   with `sendmmsg`; one bad destination costs that datagram, not the rest of the batch.
//! * [`Epoll`] is an epoll set of sockets keyed by a `u64` token. Its own fd is
//!   pollable, so a tokio runtime can wait on the whole set as one source.
//!
//! Nothing here allocates after construction.

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Writes `addr` as a C socket address.
pub fn to_storage(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
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

/// Reads a C socket address the kernel wrote; None for a family other than IPv4/IPv6.
pub fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
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

fn empty_iovec() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

fn empty_mmsghdr() -> libc::mmsghdr {
    // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
    unsafe { MaybeUninit::zeroed().assume_init() }
}

/// Up to `slots` received datagrams, each in a slot of `headroom + max + tailroom` bytes.
pub struct RecvBatch {
    buf: Box<[u8]>,
    stride: usize,
    headroom: usize,
    max: usize,
    addrs: Box<[libc::sockaddr_storage]>,
    lens: Box<[usize]>,
    iovs: Box<[libc::iovec]>,
    /// Point into `buf`, `addrs` and `iovs`, set once: boxed slices never move.
    hdrs: Box<[libc::mmsghdr]>,
    /// Datagrams the last receive returned (their address lengths to restore).
    count: usize,
}

impl RecvBatch {
    /// Room for `slots` datagrams of up to `max` bytes, with `headroom` bytes free before each
    /// and `tailroom` after it. Pages of the slots are touched only as datagrams fill them.
    pub fn new(slots: usize, max: usize, headroom: usize, tailroom: usize) -> RecvBatch {
        let slots = slots.max(1);
        let stride = headroom + max + tailroom;
        let mut b = RecvBatch {
            buf: vec![0u8; slots * stride].into_boxed_slice(),
            stride,
            headroom,
            max,
            // SAFETY: all-zero is a valid sockaddr_storage.
            addrs: vec![unsafe { std::mem::zeroed() }; slots].into_boxed_slice(),
            lens: vec![0; slots].into_boxed_slice(),
            iovs: (0..slots).map(|_| empty_iovec()).collect(),
            hdrs: (0..slots).map(|_| empty_mmsghdr()).collect(),
            count: slots,
        };
        for i in 0..slots {
            b.iovs[i] = libc::iovec {
                iov_base: b.buf[i * stride + headroom..].as_mut_ptr().cast(),
                iov_len: max,
            };
            let h = &mut b.hdrs[i].msg_hdr;
            h.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut b.iovs[i];
            h.msg_iovlen = 1;
        }
        b
    }

    /// Slots in the batch: the most one [`RecvBatch::recv`] returns.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Receives what is waiting on `fd`, up to the capacity, without blocking. Ok(0) when
    /// nothing is; errors other than "would block" (an ICMP error reported on the socket) are
    /// returned and the batch is empty.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let slots = self.capacity();
        // The kernel wrote the address lengths of what it returned; nothing else changes.
        for h in &mut self.hdrs[..self.count] {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
        }
        // SAFETY: every header points into buffers owned by self that outlive the call, and
        // each iovec lies inside its slot.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let n = n as usize;
        for i in 0..n {
            // A datagram longer than a slot is cut at the slot (the kernel reports its length).
            self.lens[i] = (self.hdrs[i].msg_len as usize).min(self.max);
        }
        self.count = n;
        Ok(n)
    }

    /// The payload of datagram `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        let at = i * self.stride + self.headroom;
        &self.buf[at..at + self.lens[i]]
    }

    /// Datagram `i`'s whole slot and where its payload lies in it: the room around the payload
    /// is the caller's to write (framing, padding).
    pub fn slot_mut(&mut self, i: usize) -> (&mut [u8], Range<usize>) {
        let at = i * self.stride;
        let payload = self.headroom..self.headroom + self.lens[i];
        (&mut self.buf[at..at + self.stride], payload)
    }

    /// Who sent datagram `i`.
    pub fn addr(&self, i: usize) -> Option<SocketAddr> {
        from_storage(&self.addrs[i])
    }
}

/// What a [`SendQueue::send`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams and bytes the kernel took.
    pub packets: usize,
    /// Bytes sent.
    pub bytes: usize,
    /// Datagrams dropped: the socket buffer was full, or the destination was refused.
    pub dropped: usize,
}

/// Datagrams waiting to leave one socket, packed back to back in one arena.
pub struct SendQueue {
    arena: Box<[u8]>,
    used: usize,
    addrs: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    /// Point into `addrs` and `iovs`, set once: boxed slices never move.
    hdrs: Box<[libc::mmsghdr]>,
    count: usize,
}

impl SendQueue {
    /// Room for `max` datagrams totalling `arena` bytes.
    pub fn new(max: usize, arena: usize) -> SendQueue {
        let max = max.max(1);
        let mut q = SendQueue {
            arena: vec![0u8; arena].into_boxed_slice(),
            used: 0,
            // SAFETY: all-zero is a valid sockaddr_storage.
            addrs: vec![unsafe { std::mem::zeroed() }; max].into_boxed_slice(),
            iovs: (0..max).map(|_| empty_iovec()).collect(),
            hdrs: (0..max).map(|_| empty_mmsghdr()).collect(),
            count: 0,
        };
        for i in 0..max {
            let h = &mut q.hdrs[i].msg_hdr;
            h.msg_name = (&mut q.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut q.iovs[i];
            h.msg_iovlen = 1;
        }
        q
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Queues a copy of `data` for `to`; false (nothing queued) when it does not fit.
    pub fn push(&mut self, data: &[u8], to: SocketAddr) -> bool {
        let i = self.count;
        if i == self.hdrs.len() || self.used + data.len() > self.arena.len() {
            return false;
        }
        let slot = &mut self.arena[self.used..self.used + data.len()];
        slot.copy_from_slice(data);
        self.iovs[i] = libc::iovec {
            iov_base: slot.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let (ss, sl) = to_storage(to);
        self.addrs[i] = ss;
        self.hdrs[i].msg_hdr.msg_namelen = sl;
        self.used += data.len();
        self.count += 1;
        true
    }

    /// Sends everything queued from `fd` and empties the queue. A datagram the kernel refuses
    /// (unreachable, not permitted) is dropped alone; when the socket buffer is full, the rest
    /// is dropped, as a full buffer drops a datagram.
    pub fn send(&mut self, fd: RawFd) -> Sent {
        let total = self.count;
        let mut out = Sent::default();
        let mut done = 0;
        while done < total {
            // SAFETY: only prepared headers are passed; they point into self's buffers.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[done..].as_mut_ptr(),
                    (total - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                for i in done..done + n as usize {
                    out.bytes += self.iovs[i].iov_len;
                }
                done += n as usize;
                out.packets += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => break,
                _ if e.raw_os_error() == Some(libc::ENOBUFS) => break,
                // This datagram's destination was refused: skip it, send the rest.
                _ => {
                    out.dropped += 1;
                    done += 1;
                }
            }
        }
        out.dropped += total - done;
        self.count = 0;
        self.used = 0;
        out
    }
}

/// An epoll set; each socket is registered with a `u64` token, level- or edge-triggered.
pub struct Epoll {
    fd: OwnedFd,
    events: Box<[libc::epoll_event]>,
    ready: usize,
}

impl Epoll {
    /// An epoll set that reports up to `max_events` ready sockets per wait.
    pub fn new(max_events: usize) -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: a fresh fd that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; max_events.max(1)]
                .into_boxed_slice(),
            ready: 0,
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, flags: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32 | flags,
            u64: token,
        };
        // SAFETY: valid fds and event pointer.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// A second fd for the same set (to hand to a reactor that wants to own what it watches).
    pub fn duplicate_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// Watches `sock` for datagrams to read: reported at every wait while some are waiting.
    pub fn add(&self, sock: &impl AsRawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, sock.as_raw_fd(), token, 0)
    }

    /// Watches `sock` edge-triggered: reported once when datagrams arrive; the caller reads
    /// until it has seen the socket empty (a batch that came back short) before it may wait.
    pub fn add_edge(&self, sock: &impl AsRawFd, token: u64) -> io::Result<()> {
        self.ctl(
            libc::EPOLL_CTL_ADD,
            sock.as_raw_fd(),
            token,
            libc::EPOLLET as u32,
        )
    }

    /// Stops watching `sock` (closing it does as well).
    pub fn remove(&self, sock: &impl AsRawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, sock.as_raw_fd(), 0, 0)
    }

    /// Waits up to `timeout_ms` (0: only look; -1: forever) and returns how many sockets are
    /// ready; read their tokens with [`Epoll::token`].
    pub fn wait(&mut self, timeout_ms: i32) -> usize {
        // SAFETY: the events buffer is valid for its length.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        self.ready = n.max(0) as usize;
        self.ready
    }

    /// The token of the `i`-th ready socket of the last wait.
    pub fn token(&self, i: usize) -> u64 {
        self.events[..self.ready][i].u64
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Every address configured on the host's interfaces (getifaddrs(3)), for the peer filter: a
/// socket bound to an unspecified address answers on each of them. Empty if the call fails
/// (the filter then still denies the listeners' ports at every IP).
pub fn interface_addresses() -> Vec<std::net::IpAddr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its real size; we copy
            // only as many bytes as that family's struct holds.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
            let len = match family {
                libc::AF_INET => std::mem::size_of::<libc::sockaddr_in>(),
                libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
                _ => 0,
            };
            if len > 0 {
                let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                // SAFETY: both regions are at least `len` bytes and do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        ifa.ifa_addr as *const u8,
                        &mut ss as *mut _ as *mut u8,
                        len,
                    )
                };
                if let Some(a) = from_storage(&ss) {
                    out.push(a.ip());
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort_unstable();
    out.dedup();
    out
}

/// Raises the limit on open files for a process that holds a socket per allocation: to
/// `want` when the process may raise its hard limit (CAP_SYS_RESOURCE, up to
/// `fs.nr_open`), else the soft limit to the hard one. Returns the limit in force.
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_max < want {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(lim.rlim_max);
        let to = want.min(nr_open).max(lim.rlim_max);
        let higher = libc::rlimit {
            rlim_cur: to,
            rlim_max: to,
        };
        // SAFETY: valid pointer; refused (EPERM) without the capability, which is fine.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &higher) } == 0 {
            return to;
        }
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: valid pointer; raising the soft limit up to the hard one is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return lim.rlim_max;
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn drain(rx: &mut RecvBatch, fd: RawFd, want: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < want && Instant::now() < deadline {
            let n = rx.recv(fd).unwrap();
            for i in 0..n {
                got.push((rx.get(i).to_vec(), rx.addr(i).unwrap()));
            }
        }
        got
    }

    #[test]
    fn a_batch_of_mixed_sizes_crosses_with_addresses_and_order() {
        let (a, b) = pair();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut q = SendQueue::new(16, 8192);
        let sizes = [1usize, 100, 1200, 3, 0, 1500];
        for (i, &n) in sizes.iter().enumerate() {
            assert!(q.push(&vec![i as u8; n], ba));
        }
        assert!(!q.is_empty());
        let sent = q.send(a.as_raw_fd());
        assert_eq!(
            sent,
            Sent {
                packets: sizes.len(),
                bytes: sizes.iter().sum(),
                dropped: 0
            }
        );
        assert!(q.is_empty());
        let mut rx = RecvBatch::new(4, 2048, 48, 4);
        let got = drain(&mut rx, b.as_raw_fd(), sizes.len());
        assert_eq!(got.len(), sizes.len());
        for (i, (data, from)) in got.iter().enumerate() {
            assert_eq!(*from, aa);
            assert_eq!(data, &vec![i as u8; sizes[i]]);
        }
        assert_eq!(rx.recv(b.as_raw_fd()).unwrap(), 0, "nothing more");
    }

    #[test]
    fn the_queue_refuses_what_does_not_fit_in_count_or_bytes() {
        let to = "127.0.0.1:9".parse().unwrap();
        let mut q = SendQueue::new(2, 100);
        assert!(!q.push(&[0; 101], to));
        assert!(q.is_empty());
        assert!(q.push(&[7; 60], to));
        assert!(!q.push(&[1; 41], to), "41 bytes do not fit in the 40 left");
        assert!(q.push(&[1; 40], to));
        assert!(!q.push(&[], to), "two datagrams at most");
    }

    #[test]
    fn a_refused_destination_costs_one_datagram_not_the_batch() {
        let (a, b) = pair();
        let ba = b.local_addr().unwrap();
        let mut q = SendQueue::new(8, 4096);
        assert!(q.push(b"first", ba));
        // An IPv6 destination on an IPv4 socket: the kernel refuses this one datagram.
        assert!(q.push(b"bad", "[::1]:9".parse().unwrap()));
        assert!(q.push(b"third", ba));
        let sent = q.send(a.as_raw_fd());
        assert_eq!(sent.packets, 2);
        assert_eq!(sent.dropped, 1);
        let mut rx = RecvBatch::new(8, 64, 0, 0);
        let got: Vec<_> = drain(&mut rx, b.as_raw_fd(), 2)
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        assert_eq!(got, vec![b"first".to_vec(), b"third".to_vec()]);
    }

    #[test]
    fn slots_keep_their_room_and_long_datagrams_are_cut_at_the_slot() {
        let (a, b) = pair();
        let ba = b.local_addr().unwrap();
        a.send_to(&[9u8; 10], ba).unwrap();
        a.send_to(&[8u8; 100], ba).unwrap();
        let mut rx = RecvBatch::new(2, 64, 8, 4);
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(2);
        while seen < 2 && Instant::now() < deadline {
            let n = rx.recv(b.as_raw_fd()).unwrap();
            for i in 0..n {
                let (slot, payload) = rx.slot_mut(i);
                assert_eq!(slot.len(), 8 + 64 + 4);
                assert_eq!(payload.start, 8);
                if seen == 0 {
                    assert_eq!(&slot[payload], &[9u8; 10]);
                } else {
                    assert_eq!(&slot[payload], &[8u8; 64], "cut at the slot");
                }
                seen += 1;
            }
        }
        assert_eq!(seen, 2);
    }

    #[test]
    fn epoll_reports_the_tokens_of_readable_sockets_until_drained() {
        let (a, b) = pair();
        let (_c, d) = pair();
        let mut ep = Epoll::new(8).unwrap();
        ep.add(&b, 7).unwrap();
        ep.add(&d, 9).unwrap();
        assert_eq!(ep.wait(0), 0);
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        assert_eq!(ep.wait(1000), 1);
        assert_eq!(ep.token(0), 7);
        // Level-triggered: still ready until read.
        assert_eq!(ep.wait(0), 1);
        let mut rx = RecvBatch::new(4, 64, 0, 0);
        assert_eq!(rx.recv(b.as_raw_fd()).unwrap(), 1);
        assert_eq!(ep.wait(0), 0);
        ep.remove(&b).unwrap();
        a.send_to(b"y", b.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(ep.wait(0), 0, "removed sockets are not reported");
    }

    #[test]
    fn edge_triggered_sockets_are_reported_once_per_arrival() {
        let (a, b) = pair();
        let mut ep = Epoll::new(8).unwrap();
        ep.add_edge(&b, 3).unwrap();
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        assert_eq!(ep.wait(1000), 1);
        assert_eq!(ep.token(0), 3);
        assert_eq!(
            ep.wait(0),
            0,
            "not again while nothing new arrives, even unread"
        );
        a.send_to(b"y", b.local_addr().unwrap()).unwrap();
        assert_eq!(ep.wait(1000), 1, "a new arrival reports it again");
        let mut rx = RecvBatch::new(4, 64, 0, 0);
        assert_eq!(rx.recv(b.as_raw_fd()).unwrap(), 2);
    }
}
