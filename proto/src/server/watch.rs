//! Abuse signals (issue 25): what each allocation does that a call would not, counted without
//! an address or a name. Three patterns, each a few integers per allocation:
//!
//! * **permission bursts**: a client permitting many new peer addresses within a minute (a
//!   scan, or a tunnel fanning out), where a call's ICE agent permits its remote candidates,
//!   a handful;
//! * **payloads that are not media**: what an allocation relays either way, by its first bytes
//!   ([`media_like`]: STUN, ZRTP, DTLS, TURN ChannelData, RTP/RTCP, RFC 7983's demultiplexing);
//!   an allocation whose traffic in one direction is more than a quarter something else is
//!   counted once (a tunnel of raw or TLS traffic; WebRTC's media and data channels are all
//!   media-like by this test);
//! * **heavy allocations**: one that relayed more, since its start, than
//!   [`ServerConfig::heavy_bytes_per_second`](super::ServerConfig::heavy_bytes_per_second)
//!   sustained would (a call's audio and video are a few Mbit/s at most), counted once.
//!
//! Every allocation's relayed bytes also feed a histogram when it ends. The counts are node-wide
//! sums in [`Stats`](super::Stats); nothing here names the allocation, its user or its peers.

use super::{ClientKey, Server, Stats};

/// New peer addresses one allocation may permit within [`BURST_WINDOW_MS`] before it counts as
/// a burst. ICE permits each remote candidate's address: host (IPv4 and IPv6, a few), server
/// reflexive and relayed ones, rarely more than ten.
pub const BURST_PEERS: u32 = 16;
/// The window of [`BURST_PEERS`].
pub const BURST_WINDOW_MS: u64 = 60_000;
/// Datagrams a direction must have relayed before its share of non-media payloads is judged.
pub const INSPECT_MIN: u32 = 32;
/// Upper bounds of the relayed-bytes histogram's buckets (the last is +Inf).
pub const BYTES_BUCKETS: [u64; 6] = [
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
];
/// Heavy allocations are judged over at least this long (a call's first seconds are bursty).
const HEAVY_GRACE_MS: u64 = 60_000;
/// How often, in relayed bytes, an allocation's rate is judged.
const HEAVY_STEP: u64 = 1 << 20;

/// Whether a relayed payload looks like what WebRTC and VoIP send, by RFC 7983's first-byte
/// ranges and the least each kind's header needs: STUN (0–3, with the magic cookie), ZRTP
/// (16–19, with its magic), DTLS (20–63, a DTLS version's first byte 0xFE), TURN ChannelData
/// (64–79, a header whose length matches), RTP and RTCP (128–191, version 2, 8 bytes at
/// least). Random bytes pass a quarter of the time (as RTP); media always.
#[inline]
pub fn media_like(p: &[u8]) -> bool {
    match p {
        [0..=3, _, _, _, 0x21, 0x12, 0xA4, 0x42, ..] => p.len() >= 20,
        [16..=19, _, _, _, b'Z', b'R', b'T', b'P', ..] => true,
        [20..=63, 0xFE, ..] => p.len() >= 13,
        [64..=79, _, l0, l1, rest @ ..] => {
            // Its length field names what follows, padded to 4 bytes at most.
            let n = usize::from(u16::from_be_bytes([*l0, *l1]));
            n <= rest.len() && rest.len() - n < 4
        }
        [128..=191, ..] => p.len() >= 8,
        _ => false,
    }
}

/// One allocation's watcher.
#[derive(Debug, Default)]
pub(super) struct Watch {
    /// Start of the current permission window (the limiters' milliseconds) and the new peer
    /// addresses permitted in it; whether it was counted as a burst.
    window_start: u64,
    window_new: u32,
    window_counted: bool,
    /// Per direction: payloads judged, those not media-like, whether counted.
    seen: [u32; 2],
    other: [u32; 2],
    odd_counted: [bool; 2],
    /// When the allocation started (milliseconds), bytes relayed both ways, when its rate is
    /// next judged, whether it was counted as heavy.
    pub(super) born: u64,
    pub(super) bytes: u64,
    next_check: u64,
    heavy_counted: bool,
}

impl Watch {
    /// A watcher for an allocation created at `ms`.
    pub(super) fn new(ms: u64) -> Self {
        Watch {
            born: ms,
            window_start: ms,
            next_check: HEAVY_STEP,
            ..Watch::default()
        }
    }

    /// Adds `seen` payloads in `dir`, `other` of them not media-like; counts the allocation
    /// once when more than a quarter of at least [`INSPECT_MIN`] were.
    fn judge(&mut self, stats: &mut Stats, dir: usize, seen: u32, other: u32) {
        stats.payloads_other[dir] += u64::from(other);
        stats.payloads_media[dir] += u64::from(seen.saturating_sub(other));
        self.seen[dir] = self.seen[dir].saturating_add(seen);
        self.other[dir] = self.other[dir].saturating_add(other);
        if !self.odd_counted[dir]
            && self.seen[dir] >= INSPECT_MIN
            && u64::from(self.other[dir]) * 4 > u64::from(self.seen[dir])
        {
            self.odd_counted[dir] = true;
            stats.non_media_allocations[dir] += 1;
        }
    }
}

impl Server {
    /// Notes `new` peer addresses newly permitted by the allocation in `slot`.
    pub(super) fn watch_peers(&mut self, slot: usize, new: usize, now: std::time::Instant) {
        if new == 0 {
            return;
        }
        let ms = self.millis(now);
        self.stats.peers_permitted += new as u64;
        let w = &mut self.allocs[slot].watch;
        if ms.saturating_sub(w.window_start) >= BURST_WINDOW_MS {
            w.window_start = ms;
            w.window_new = 0;
            w.window_counted = false;
        }
        w.window_new = w.window_new.saturating_add(new as u32);
        if w.window_new >= BURST_PEERS && !w.window_counted {
            w.window_counted = true;
            self.stats.permission_bursts += 1;
        }
    }

    /// Judges a payload the allocation in `slot` relayed in `dir` (user space; what the
    /// kernel fast path carries is judged there and handed over by
    /// [`Server::fast_path_judged`]).
    #[inline]
    pub(super) fn watch_payload(&mut self, slot: usize, dir: usize, payload: &[u8]) {
        let other = u32::from(!media_like(payload));
        self.watch_counts(slot, dir, 1, other);
    }

    /// Adds `seen` payloads, `other` of them not media-like, to the allocation's direction.
    pub(super) fn watch_counts(&mut self, slot: usize, dir: usize, seen: u32, other: u32) {
        self.allocs[slot]
            .watch
            .judge(&mut self.stats, dir, seen, other);
    }

    /// What the kernel fast path carried for `client` since the last call, per direction
    /// (client to peer first): `carried` datagrams, `other` of them not media-like, judged by
    /// the program as [`media_like`] judges what the user-space path relays.
    pub fn fast_path_judged(&mut self, client: &ClientKey, carried: [u64; 2], other: [u64; 2]) {
        // An allocation that ended while the kernel carried for it is judged to its end: its
        // watcher waits for the driver's last reading ([`Server::fast_path_settle`]).
        let w = match self.by_client.get(client) {
            Some(&slot) => &mut self.allocs[slot].watch,
            None => match self.fast.ended.get_mut(client) {
                Some(w) => w,
                None => return,
            },
        };
        for dir in 0..2 {
            if carried[dir] > 0 {
                let seen = u32::try_from(carried[dir]).unwrap_or(u32::MAX);
                let other = u32::try_from(other[dir]).unwrap_or(u32::MAX).min(seen);
                w.judge(&mut self.stats, dir, seen, other);
            }
        }
    }

    /// Adds `len` relayed bytes to the allocation in `slot`, and judges its rate every
    /// [`HEAVY_STEP`] bytes.
    #[inline]
    pub(super) fn watch_bytes(&mut self, slot: usize, ms: u64, len: u64) {
        let rate = self.shared.config.heavy_bytes_per_second;
        let w = &mut self.allocs[slot].watch;
        w.bytes = w.bytes.saturating_add(len);
        if w.bytes < w.next_check || w.heavy_counted {
            return;
        }
        w.next_check = w.bytes.saturating_add(HEAVY_STEP);
        let age_ms = ms.saturating_sub(w.born).max(HEAVY_GRACE_MS);
        let allowed = rate.saturating_mul(age_ms) / 1000;
        if rate > 0 && w.bytes > allowed {
            w.heavy_counted = true;
            self.stats.heavy_allocations += 1;
        }
    }

    /// Observes an ending allocation's relayed bytes in the histogram.
    pub(super) fn watch_end(&mut self, bytes: u64) {
        let i = BYTES_BUCKETS
            .iter()
            .position(|b| bytes <= *b)
            .unwrap_or(BYTES_BUCKETS.len());
        self.stats.allocation_bytes_hist[i] += 1;
        self.stats.allocation_bytes_sum = self.stats.allocation_bytes_sum.saturating_add(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_is_media_like_and_other_traffic_is_not() {
        // A STUN Binding request, an RTP packet, an RTCP receiver report, a DTLS 1.2
        // ClientHello record, TURN ChannelData, a ZRTP Hello.
        let mut stun = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
        stun.extend([7u8; 12]);
        assert!(media_like(&stun));
        assert!(media_like(&[0x80, 111, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 9]));
        assert!(media_like(&[0x81, 201, 0, 7, 1, 2, 3, 4]));
        assert!(media_like(&[22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64]));
        assert!(media_like(&[0x40, 0x00, 0, 4, 1, 2, 3, 4]));
        assert!(media_like(b"\x10\x00\x00\x01ZRTPhello"));
        // HTTP, a TLS (not DTLS) record, SSH, a DNS query, a STUN-looking byte without the
        // cookie, a truncated RTP header, nothing at all.
        assert!(!media_like(b"GET / HTTP/1.1\r\n"));
        assert!(!media_like(&[22, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3, 0, 0]));
        assert!(!media_like(b"SSH-2.0-OpenSSH_9.6\r\n"));
        assert!(!media_like(&[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]));
        assert!(!media_like(&[
            0, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16
        ]));
        assert!(!media_like(&[0x80, 111, 0]));
        assert!(!media_like(&[]));
    }

    #[test]
    fn random_bytes_are_mostly_not_media_like() {
        // A deterministic spread of first bytes: what a tunnel of encrypted data looks like.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut other = 0;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = x.to_le_bytes().repeat(4);
            other += usize::from(!media_like(&p));
        }
        // The 64 RTP values of 256 pass; the rest (~75 %) do not.
        assert!((7_000..8_000).contains(&other), "{other}");
    }
}
