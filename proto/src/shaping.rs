//! Traffic shaping of what the relay sends to clients: padding to size buckets and re-clocking.
//!
//! Sans-I/O like the protocol core: time is passed in, nothing here touches a socket. One
//! [`Shaper`] belongs to one worker; it holds a bounded pool of preallocated packet buffers and
//! one timer heap, so shaping allocates nothing per packet and needs no sleep per packet.
//!
//! What each defence buys, honestly (the README repeats this for operators):
//! * **Padding** on UDP adds zero bytes after a ChannelData payload (clients accept trailing bytes
//!   when the length after the header is a multiple of 4, hence buckets are multiples of 4) and a
//!   comprehension-optional attribute inside a Data indication. The ChannelData Length field stays
//!   cleartext, so padding only defeats observers that see datagram sizes (flow records), not a
//!   TURN-aware observer on the path. Inside TLS it hides sizes for real.
//! * **Slots** release frames on a fixed grid shared by all flows of the node, at most one frame
//!   per flow per slot: a lone frame waits less than one interval, a frame bunched behind its
//!   flow's previous one takes the next slot (two intervals at most). A constant-rate stream then
//!   leaves strictly periodic, so the peer leg's timing (network jitter, watermarks) does not
//!   reach the client leg. It cannot hide when a flow starts, stops or falls silent (DTX).
//! * **Jitter** adds a random bounded delay, keeping order within a flow. Weaker: the original
//!   timing survives on average, and a receiver's jitter buffer pays about twice the mean.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::ops::Range;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::rng::{TxidPrf, XorShift};
use crate::stun::{self, attr};

/// The comprehension-optional attribute veil pads Data indications with (zero bytes). In the
/// 0xC000–0xFFFF range; clients ignore comprehension-optional attributes they do not know.
pub const PADDING_ATTR: u16 = 0xFF56;

/// Largest frame the shaper queues; bigger ones (rare for media) leave unshaped and are counted.
pub const MAX_QUEUED_FRAME: usize = 2048;

/// How frames are padded.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Padding {
    #[default]
    /// Frames leave at their own size.
    Off,
    /// Up to the smallest bucket that fits (sorted, each a multiple of 4); frames larger than
    /// every bucket are only aligned to 4.
    Buckets(Vec<u16>),
    /// Up to the next multiple of N (a multiple of 4).
    Multiple(u16),
}

impl Padding {
    /// Checks the sizes: buckets and multiples must be multiples of 4 (coturn's parser), at least
    /// 8 and at most 65 532.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |n: u16| n >= 8 && n % 4 == 0 && n <= 65_532;
        match self {
            Padding::Off => Ok(()),
            Padding::Buckets(b) if b.is_empty() => Err("no buckets".into()),
            Padding::Buckets(b) => match b.iter().find(|n| !ok(**n)) {
                Some(n) => Err(format!(
                    "bucket {n}: must be a multiple of 4 between 8 and 65532"
                )),
                None if b.windows(2).any(|w| w[0] >= w[1]) => {
                    Err("buckets must be increasing".into())
                }
                None => Ok(()),
            },
            Padding::Multiple(n) if !ok(*n) => {
                Err(format!("{n}: must be a multiple of 4 between 8 and 65532"))
            }
            Padding::Multiple(_) => Ok(()),
        }
    }

    /// The size a frame of `len` bytes is sent as (never smaller than `len`; a multiple of 4).
    pub fn target(&self, len: usize) -> usize {
        let aligned = (len + 3) & !3;
        match self {
            Padding::Off => len,
            Padding::Buckets(b) => b
                .iter()
                .map(|&n| n as usize)
                .find(|&n| n >= len)
                .unwrap_or(aligned),
            Padding::Multiple(n) => {
                let n = *n as usize;
                len.div_ceil(n) * n
            }
        }
    }
}

impl FromStr for Padding {
    type Err = String;
    /// `off`, `multiple:N`, or a comma-separated bucket list `128,256,512,1200`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let p = if s == "off" {
            Padding::Off
        } else if let Some(n) = s.strip_prefix("multiple:") {
            Padding::Multiple(
                n.trim()
                    .parse()
                    .map_err(|_| format!("`{s}`: multiple:N with N a number"))?,
            )
        } else {
            let mut v = Vec::new();
            for part in s.split(',') {
                v.push(
                    part.trim()
                        .parse::<u16>()
                        .map_err(|_| format!("`{s}`: a list of sizes like 128,256,512,1200"))?,
                );
            }
            Padding::Buckets(v)
        };
        p.validate()?;
        Ok(p)
    }
}

impl fmt::Display for Padding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Padding::Off => f.write_str("off"),
            Padding::Multiple(n) => write!(f, "multiple:{n}"),
            Padding::Buckets(b) => {
                let s: Vec<String> = b.iter().map(|n| n.to_string()).collect();
                f.write_str(&s.join(","))
            }
        }
    }
}

/// When frames leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Timing {
    #[default]
    /// Frames leave as they arrive.
    Off,
    /// On a fixed grid of this interval shared by every flow of the node.
    Slots(Duration),
    /// After a random delay in [0, max), order kept within a flow.
    Jitter(Duration),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        (s, 1)
    };
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: a duration like 10ms"))?;
    Ok(Duration::from_millis(n * unit))
}

impl FromStr for Timing {
    type Err = String;
    /// `off`, `slots:10ms` or `jitter:20ms`; 1–200 ms.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let t = match s.split_once(':') {
            None if s == "off" => return Ok(Timing::Off),
            Some(("slots", d)) => Timing::Slots(parse_duration(d)?),
            Some(("jitter", d)) => Timing::Jitter(parse_duration(d)?),
            _ => {
                return Err(format!(
                    "`{s}`: off, slots:INTERVAL or jitter:MAX (e.g. slots:10ms)"
                ));
            }
        };
        let (Timing::Slots(d) | Timing::Jitter(d)) = t else {
            unreachable!()
        };
        if d < Duration::from_millis(1) || d > Duration::from_millis(200) {
            return Err(format!(
                "`{s}`: between 1ms and 200ms (voice budgets 20-40 ms per relay)"
            ));
        }
        Ok(t)
    }
}

impl fmt::Display for Timing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timing::Off => f.write_str("off"),
            Timing::Slots(d) => write!(f, "slots:{}ms", d.as_millis()),
            Timing::Jitter(d) => write!(f, "jitter:{}ms", d.as_millis()),
        }
    }
}

/// Cover traffic: once a flow has carried media, keep at least `rate` frames per second going to
/// its client until its allocation ends, filling gaps (silences) with filler frames of `size`
/// bytes. Real frames count towards the rate; cover never delays them.
///
/// On UDP the filler is a STUN Binding *indication* grown to `size` with the padding attribute:
/// libwebrtc, pion, webrtc-rs, aioice and coturn's uclient discard an indication of a method they
/// do not use (the end-to-end tests prove it for webrtc-rs and uclient). Never ChannelData on an
/// unbound channel: pion and webrtc-rs end their receive loop on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cover {
    /// At most this long between two frames of a flow.
    pub interval: Duration,
    /// The size of a cover frame.
    pub size: u16,
}

impl FromStr for Cover {
    type Err = String;
    /// `RATE:SIZE`: frames per second and bytes, e.g. `50:128`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}`: RATE:SIZE, e.g. 50:128 (1-200 frames/s, 28-1200 bytes, size a multiple of 4)"
            )
        };
        let (r, z) = s.trim().split_once(':').ok_or_else(bad)?;
        let rate: u32 = r.trim().parse().map_err(|_| bad())?;
        let size: u16 = z.trim().parse().map_err(|_| bad())?;
        if !(1..=200).contains(&rate) || !(28..=1200).contains(&size) || size % 4 != 0 {
            return Err(bad());
        }
        Ok(Cover {
            interval: Duration::from_nanos(1_000_000_000 / rate as u64),
            size,
        })
    }
}

impl fmt::Display for Cover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = (1_000_000_000 / self.interval.as_nanos().max(1)) as u64;
        write!(f, "{rate}:{}", self.size)
    }
}

/// A node's shaping policy.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Policy {
    /// How frames are padded.
    pub padding: Padding,
    /// When frames leave.
    pub timing: Timing,
    /// Cover traffic for flows that carry media.
    pub cover: Option<Cover>,
    /// Frames a worker holds at most; over it the one due soonest is dropped and counted.
    pub queue_limit: usize,
}

impl Policy {
    /// Whether this policy changes nothing.
    pub fn is_off(&self) -> bool {
        self.padding == Padding::Off && self.timing == Timing::Off && self.cover.is_none()
    }
}

/// Writes a filler frame: a Binding indication of exactly `size` bytes (a multiple of 4, 20 with
/// no attribute or at least 24 with the padding attribute). Returns its length, 0 if `size` is
/// impossible or `out` too small.
pub fn write_cover_frame(out: &mut [u8], size: usize, txid: &[u8; 12]) -> usize {
    if size % 4 != 0 || size < stun::HEADER_LEN || (size > 20 && size < 24) || size > out.len() {
        return 0;
    }
    let f = &mut out[..size];
    f[0..2].copy_from_slice(
        &stun::message_type(stun::method::BINDING, stun::Class::Indication).to_be_bytes(),
    );
    f[2..4].copy_from_slice(&((size - stun::HEADER_LEN) as u16).to_be_bytes());
    f[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
    f[8..20].copy_from_slice(txid);
    if size >= 24 {
        f[20..22].copy_from_slice(&PADDING_ATTR.to_be_bytes());
        f[22..24].copy_from_slice(&((size - 24) as u16).to_be_bytes());
        f[24..].fill(0);
    }
    size
}

/// Pads a frame for a stream transport (TCP, TLS), where every client delimits frames by their
/// own lengths: ChannelData is aligned to 4 (required on streams) and the frame is followed by a
/// filler Binding indication, so that what is written together — one TLS record — is a bucket
/// size. A gap too small for a filler (under 20 bytes) moves to the next bucket. Returns the range
/// to write, frame and filler together.
pub fn pad_stream_frame(
    padding: &Padding,
    buf: &mut [u8],
    frame: Range<usize>,
    txid: &[u8; 12],
) -> Range<usize> {
    let aligned = (frame.len() + 3) & !3;
    if frame.start + aligned > buf.len() {
        return frame;
    }
    buf[frame.end..frame.start + aligned].fill(0);
    let mut target = padding.target(aligned);
    if target > aligned && target - aligned < stun::HEADER_LEN {
        target = padding.target(aligned + stun::HEADER_LEN);
    }
    let gap = target.saturating_sub(aligned);
    let filler_at = frame.start + aligned;
    if gap == 0 || filler_at + gap > buf.len() {
        return frame.start..filler_at;
    }
    let n = write_cover_frame(&mut buf[filler_at..], gap, txid);
    frame.start..filler_at + n
}

/// Pads a frame the core framed at `buf[frame]` for a client over UDP, in place, zero-filling
/// what it adds. Returns the padded range (unchanged if padding is off, the frame is not
/// ChannelData or a Data indication, or the buffer has no room).
pub fn pad_frame(padding: &Padding, buf: &mut [u8], frame: Range<usize>) -> Range<usize> {
    let len = frame.len();
    let target = padding.target(len);
    if target <= len || frame.start + target > buf.len() {
        return frame;
    }
    let end = frame.start + target;
    match buf[frame.start] >> 6 {
        // ChannelData: trailing zeros after the payload; the Length field is unchanged.
        1 => {
            buf[frame.end..end].fill(0);
            frame.start..end
        }
        // A Data indication: grow inside the STUN length with the padding attribute. Both sizes
        // are multiples of 4, so the gap is at least the 4-byte attribute header.
        0 if len % 4 == 0 && target - len >= 4 && len >= stun::HEADER_LEN => {
            let value = target - len - 4;
            let b = &mut buf[frame.start..end];
            b[len..len + 2].copy_from_slice(&PADDING_ATTR.to_be_bytes());
            b[len + 2..len + 4].copy_from_slice(&(value as u16).to_be_bytes());
            b[len + 4..].fill(0);
            let body = (target - stun::HEADER_LEN) as u16;
            b[2..4].copy_from_slice(&body.to_be_bytes());
            debug_assert!(stun::find_attr(b, attr::DATA).is_some());
            frame.start..end
        }
        _ => frame,
    }
}

crate::counters! {
    /// Counters for the metrics issue; per worker, summed by the reader.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ShapingStats {
        /// Frames padded.
        pub padded_frames: u64,
        /// Bytes of padding added.
        pub padding_bytes: u64,
        /// Frames held for re-clocking.
        pub delayed_frames: u64,
        /// Added delay histogram, upper bounds 1, 5, 10, 20, 40 ms and beyond.
        pub delay_ms_hist: [u64; 6],
        /// Frames dropped because the queue was full.
        pub queue_drops: u64,
        /// Frames larger than the largest bucket, sent as they are.
        pub oversize_unshaped: u64,
        /// Cover frames sent.
        pub cover_frames: u64,
        /// Bytes of cover sent.
        pub cover_bytes: u64,
        /// Sum of added delays, microseconds.
        pub delay_us_sum: u64,
    }
}

const DELAY_BOUNDS_MS: [u64; 5] = [1, 5, 10, 20, 40];

impl ShapingStats {
    fn record_delay(&mut self, d: Duration) {
        self.delay_us_sum += d.as_micros() as u64;
        let ms = d.as_micros() as u64 / 1000;
        let i = DELAY_BOUNDS_MS
            .iter()
            .position(|b| ms < *b)
            .unwrap_or(DELAY_BOUNDS_MS.len());
        self.delay_ms_hist[i] += 1;
    }
}

/// What to do with a frame now.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send it now.
    SendNow,
    /// Queued; it leaves from [`Shaper::pop_due`].
    Queued,
}

/// One worker's shaper: release-time computation, a bounded pool of frame buffers and a heap of
/// release times. `K` names the destination (the client's 5-tuple). Each flow is shaped by one of
/// several profiles: 0 is the node's policy, the others are named profiles a credential selects.
pub struct Shaper<K> {
    profiles: Vec<Policy>,
    /// The grid origin; all workers use the same one so slots line up node-wide.
    epoch: Instant,
    /// Jitter and cover choices; its state never appears on the wire.
    rng: XorShift,
    /// Transaction ids of cover and filler frames (a keyed PRF over a counter).
    txids: TxidPrf,
    /// Release time of each flow's last queued frame: order under jitter, pacing under slots.
    last_release: HashMap<K, Instant>,
    pool: Vec<u8>,
    free: Vec<u32>,
    entries: Vec<Option<(K, u16, u8)>>,
    heap: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    seq: u64,
    stats: ShapingStats,
    /// Flows under cover: when a frame last left for each, and its profile.
    covered: HashMap<K, (Instant, u8)>,
    /// The next point of the cover grid to check, while any flow is covered.
    cover_next: Option<Instant>,
    /// The cover grid: the shortest cover interval of any profile.
    cover_tick: Option<Duration>,
    cover_buf: Vec<u8>,
}

impl<K: Copy + Eq + Hash> Shaper<K> {
    /// A shaper for one policy whose slot grid starts at `epoch`.
    pub fn new(policy: Policy, epoch: Instant, seed: u64) -> Self {
        Self::with_profiles(vec![policy], epoch, seed)
    }

    /// A shaper for the node policy (`profiles[0]`) and named profiles (`profiles[1..]`).
    pub fn with_profiles(profiles: Vec<Policy>, epoch: Instant, seed: u64) -> Self {
        let profiles = if profiles.is_empty() {
            vec![Policy::default()]
        } else {
            profiles
        };
        let slots = profiles
            .iter()
            .filter(|p| p.timing != Timing::Off)
            .map(|p| p.queue_limit.max(1))
            .max()
            .unwrap_or(0);
        let cover_tick = profiles
            .iter()
            .filter_map(|p| p.cover.map(|c| c.interval))
            .min();
        let cover_size = profiles
            .iter()
            .filter_map(|p| p.cover.map(|c| c.size as usize))
            .max()
            .unwrap_or(0);
        Shaper {
            profiles,
            epoch,
            rng: XorShift::new(seed),
            txids: TxidPrf::new(),
            last_release: HashMap::new(),
            pool: vec![0u8; slots * MAX_QUEUED_FRAME],
            free: (0..slots as u32).rev().collect(),
            entries: vec![None; slots],
            heap: BinaryHeap::with_capacity(slots),
            seq: 0,
            stats: ShapingStats::default(),
            covered: HashMap::new(),
            cover_next: None,
            cover_tick,
            cover_buf: vec![0u8; cover_size],
        }
    }

    /// Puts new policies in force (a reload), keeping the counters. Frames waiting leave at once
    /// through `send`: nothing is lost, only those frames' timing at that instant is unshaped.
    /// Covered flows stay covered if their profile still has cover.
    pub fn set_profiles(
        &mut self,
        now: Instant,
        profiles: Vec<Policy>,
        mut send: impl FnMut(K, &[u8]),
    ) {
        while let Some(Reverse((_, _, slot))) = self.heap.pop() {
            if let Some((flow, len, _)) = self.entries[slot as usize].take() {
                let at = slot as usize * MAX_QUEUED_FRAME;
                send(flow, &self.pool[at..at + len as usize]);
            }
        }
        let mut next = Self::with_profiles(profiles, self.epoch, self.rng.state());
        next.stats = self.stats;
        next.covered = std::mem::take(&mut self.covered);
        let still = |p: u8| {
            next.profiles
                .get(p as usize)
                .is_some_and(|x| x.cover.is_some())
        };
        let keep: HashMap<K, (Instant, u8)> = next
            .covered
            .iter()
            .filter(|(_, (_, p))| still(*p))
            .map(|(k, v)| (*k, *v))
            .collect();
        next.covered = keep;
        if !next.covered.is_empty() {
            next.cover_next = next.cover_tick.map(|t| next_slot(next.epoch, t, now));
        }
        *self = next;
    }

    /// Pads a response to a TCP/TLS client under the node policy (a filler after it), so that
    /// control traffic on a stream leaves at bucket sizes too. `buf` must have room after the
    /// frame for the largest bucket.
    pub fn pad_stream_reply(&mut self, buf: &mut [u8], frame: Range<usize>) -> Range<usize> {
        if self.profiles[0].padding == Padding::Off {
            return frame;
        }
        let txid = self.txids.next_txid();
        pad_stream_frame(&self.profiles[0].padding, buf, frame, &txid)
    }

    /// True if no profile shapes anything: the driver can skip the shaper.
    pub fn is_off(&self) -> bool {
        self.profiles.iter().all(Policy::is_off)
    }

    fn profile(&self, i: u8) -> &Policy {
        self.profiles.get(i as usize).unwrap_or(&self.profiles[0])
    }

    /// What this shaper did so far.
    pub fn stats(&self) -> ShapingStats {
        self.stats
    }

    /// Frames waiting.
    pub fn queued(&self) -> usize {
        self.heap.len()
    }

    fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// When a frame arriving at `now` for `flow` under the node policy leaves.
    pub fn release_time(&mut self, now: Instant, flow: K) -> Instant {
        self.release_time_in(now, flow, 0)
    }

    fn release_time_in(&mut self, now: Instant, flow: K, profile: u8) -> Instant {
        match self.profile(profile).timing {
            Timing::Off => now,
            Timing::Slots(interval) => {
                // At most one frame per flow per slot: a frame that arrives bunched behind the
                // flow's previous one takes the following slot (at most one extra), so a
                // constant-rate stream leaves strictly periodic whatever jitter it arrived with.
                let first = next_slot(self.epoch, interval, now);
                let t = match self.last_release.get(&flow) {
                    Some(last) if *last + interval > first => {
                        (*last + interval).min(first + interval)
                    }
                    _ => first,
                };
                self.last_release.insert(flow, t);
                t
            }
            Timing::Jitter(max) => {
                let max_ns = max.as_nanos().max(1) as u64;
                let t = now + Duration::from_nanos(self.random() % max_ns);
                let t = self.last_release.get(&flow).map_or(t, |last| t.max(*last));
                self.last_release.insert(flow, t);
                t
            }
        }
    }

    /// Pads `buf[frame]` in place under the node policy and either says to send it now or
    /// copies it into the queue.
    pub fn submit(
        &mut self,
        now: Instant,
        flow: K,
        buf: &mut [u8],
        frame: Range<usize>,
    ) -> (Decision, Range<usize>) {
        self.submit_in(now, flow, 0, false, buf, frame)
    }

    /// [`Shaper::submit`] under the flow's profile; `stream` for a TCP/TLS client, whose frames
    /// are padded with a filler frame after them ([`pad_stream_frame`]) so stream framing holds.
    pub fn submit_in(
        &mut self,
        now: Instant,
        flow: K,
        profile: u8,
        stream: bool,
        buf: &mut [u8],
        frame: Range<usize>,
    ) -> (Decision, Range<usize>) {
        let profile = if (profile as usize) < self.profiles.len() {
            profile
        } else {
            0
        };
        let before = frame.len();
        let padding = &self.profiles[profile as usize].padding;
        let frame = if !stream {
            pad_frame(padding, buf, frame)
        } else if *padding == Padding::Off {
            frame
        } else {
            let txid = self.txids.next_txid();
            let padding = &self.profiles[profile as usize].padding;
            pad_stream_frame(padding, buf, frame, &txid)
        };
        if frame.len() > before {
            self.stats.padded_frames += 1;
            self.stats.padding_bytes += (frame.len() - before) as u64;
        }
        if self.profiles[profile as usize].timing == Timing::Off || self.entries.is_empty() {
            self.note_sent(flow, now, profile);
            return (Decision::SendNow, frame);
        }
        if frame.len() > MAX_QUEUED_FRAME {
            self.stats.oversize_unshaped += 1;
            self.note_sent(flow, now, profile);
            return (Decision::SendNow, frame);
        }
        let release = self.release_time_in(now, flow, profile);
        if release <= now {
            self.stats.record_delay(Duration::ZERO);
            self.note_sent(flow, now, profile);
            return (Decision::SendNow, frame);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                // Full: drop the frame due soonest and reuse its buffer.
                let Some(Reverse((_, _, s))) = self.heap.pop() else {
                    return (Decision::SendNow, frame);
                };
                self.entries[s as usize] = None;
                self.stats.queue_drops += 1;
                s
            }
        };
        let at = slot as usize * MAX_QUEUED_FRAME;
        self.pool[at..at + frame.len()].copy_from_slice(&buf[frame.clone()]);
        self.entries[slot as usize] = Some((flow, frame.len() as u16, profile));
        self.seq += 1;
        self.heap.push(Reverse((release, self.seq, slot)));
        self.stats.delayed_frames += 1;
        self.stats.record_delay(release - now);
        (Decision::Queued, frame)
    }

    /// The earliest release time waiting, if any.
    pub fn next_release(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Hands every frame due by `now` to `send`, in release order (FIFO within a time).
    pub fn pop_due(&mut self, now: Instant, mut send: impl FnMut(K, &[u8])) {
        while let Some(&Reverse((t, _, slot))) = self.heap.peek() {
            if t > now {
                break;
            }
            self.heap.pop();
            if let Some((flow, len, profile)) = self.entries[slot as usize].take() {
                let at = slot as usize * MAX_QUEUED_FRAME;
                send(flow, &self.pool[at..at + len as usize]);
                // Its slot, not the (later) moment the task woke: cover compares grid times.
                self.note_sent(flow, t, profile);
            }
            self.free.push(slot);
        }
    }

    /// Records that a real frame left for `flow`; if its profile has cover, the flow is covered
    /// from now on.
    fn note_sent(&mut self, flow: K, at: Instant, profile: u8) {
        if self.profiles[profile as usize].cover.is_none() {
            return;
        }
        self.covered.insert(flow, (at, profile));
        if let (None, Some(tick)) = (self.cover_next, self.cover_tick) {
            self.cover_next = Some(next_slot(self.epoch, tick, at));
        }
    }

    /// When the shaper next has work: a release or a cover tick.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.next_release(), self.next_cover_tick()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When cover frames are next checked (a point of the cover grid), if any flow is covered.
    pub fn next_cover_tick(&self) -> Option<Instant> {
        self.cover_next
    }

    /// Sends a cover frame to every covered flow that has had nothing for its cover interval,
    /// and forgets flows whose allocation is gone (`alive`).
    pub fn cover_due(
        &mut self,
        now: Instant,
        alive: impl Fn(&K) -> bool,
        mut emit: impl FnMut(K, &[u8]),
    ) {
        let Some(tick) = self.cover_tick else { return };
        // The grid point being served; comparisons use it rather than the wake-up time, so a
        // late wake-up neither skips a flow nor shifts the grid.
        let due = match self.cover_next {
            Some(t) if t <= now => t,
            _ => return,
        };
        let Shaper {
            covered,
            cover_buf,
            txids,
            stats,
            cover_next,
            epoch,
            profiles,
            ..
        } = self;
        covered.retain(|k, _| alive(k));
        *cover_next =
            (!covered.is_empty()).then(|| next_slot(*epoch, tick, now + Duration::from_nanos(1)));
        // Tolerance for a tick that fires a little late or a frame released on the same tick.
        let slack = Duration::from_micros(500);
        for (flow, (last, profile)) in covered.iter_mut() {
            let Some(c) = profiles[*profile as usize].cover else {
                continue;
            };
            if *last + c.interval > due + slack {
                continue;
            }
            let txid = txids.next_txid();
            let n = write_cover_frame(cover_buf, c.size as usize, &txid);
            emit(*flow, &cover_buf[..n]);
            *last = due;
            stats.cover_frames += 1;
            stats.cover_bytes += n as u64;
        }
    }

    /// Forgets per-flow ordering state that can no longer matter.
    pub fn housekeeping(&mut self, now: Instant) {
        self.last_release.retain(|_, t| *t > now);
    }
}

/// The first grid point at or after `now`.
pub fn next_slot(epoch: Instant, interval: Duration, now: Instant) -> Instant {
    let since = now.saturating_duration_since(epoch).as_nanos();
    let step = interval.as_nanos().max(1);
    let slots = since.div_ceil(step);
    epoch + Duration::from_nanos((slots * step) as u64)
}

// Written in YAML as their flag syntax (`128,256,512`, `slots:20ms`, `50:128`).
serde_via_str!(Padding);
serde_via_str!(Timing);
serde_via_str!(Cover);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, Message, Writer, channel_data, method};

    #[test]
    fn bucket_choice() {
        let p: Padding = "128,256,512,1200".parse().unwrap();
        assert_eq!(p.target(1), 128);
        assert_eq!(p.target(128), 128);
        assert_eq!(p.target(129), 256);
        assert_eq!(p.target(1200), 1200);
        assert_eq!(
            p.target(1201),
            1204,
            "beyond the largest bucket: aligned to 4"
        );
        let m: Padding = "multiple:64".parse().unwrap();
        assert_eq!((m.target(1), m.target(64), m.target(65)), (64, 64, 128));
        assert_eq!(Padding::Off.target(13), 13);
        for bad in [
            "",
            "127",
            "128,64",
            "multiple:30",
            "multiple:x",
            "4",
            "128,128",
        ] {
            assert!(bad.parse::<Padding>().is_err(), "{bad}");
        }
        assert_eq!("128,256".parse::<Padding>().unwrap().to_string(), "128,256");
    }

    #[test]
    fn timing_parse() {
        assert_eq!(
            "slots:10ms".parse(),
            Ok(Timing::Slots(Duration::from_millis(10)))
        );
        assert_eq!(
            "jitter:20ms".parse(),
            Ok(Timing::Jitter(Duration::from_millis(20)))
        );
        assert_eq!("off".parse(), Ok(Timing::Off));
        for bad in ["slots", "slots:0ms", "slots:1s", "wobble:5ms", "jitter:abc"] {
            assert!(bad.parse::<Timing>().is_err(), "{bad}");
        }
    }

    fn channel_frame(buf: &mut [u8], at: usize, payload: &[u8]) -> Range<usize> {
        let hdr: &mut [u8; 4] = (&mut buf[at..at + 4]).try_into().unwrap();
        channel_data::write_header(hdr, 0x4001, payload.len() as u16);
        buf[at + 4..at + 4 + payload.len()].copy_from_slice(payload);
        at..at + 4 + payload.len()
    }

    #[test]
    fn channel_data_padding_is_zeroed_and_parses_as_before() {
        let p: Padding = "64,128".parse().unwrap();
        let mut buf = vec![0xEEu8; 256]; // stale bytes that must not leak
        let f = channel_frame(&mut buf, 8, b"hello");
        let out = pad_frame(&p, &mut buf, f);
        assert_eq!(out.len(), 64);
        assert!(
            buf[8 + 9..8 + 64].iter().all(|b| *b == 0),
            "padding is zeros, not old buffer bytes"
        );
        let (ch, payload) = channel_data::decode(&buf[out.clone()]).unwrap();
        assert_eq!((ch, payload), (0x4001, &b"hello"[..]));
        assert_eq!(
            (out.len() - 4) % 4,
            0,
            "coturn accepts excess only when aligned"
        );
        // No room in the buffer: unchanged.
        let mut small = vec![0u8; 12];
        let f = channel_frame(&mut small, 0, b"hello");
        assert_eq!(pad_frame(&p, &mut small, f.clone()), f);
    }

    #[test]
    fn data_indication_grows_inside_its_stun_length() {
        let p: Padding = "128".parse().unwrap();
        let mut buf = vec![0xEEu8; 256];
        let n = {
            let mut w = Writer::new(&mut buf, method::DATA, Class::Indication, &[1; 12]).unwrap();
            w.xor_address(
                attr::XOR_PEER_ADDRESS,
                "93.184.216.34:5000".parse().unwrap(),
            )
            .unwrap();
            w.attr(attr::DATA, b"voice").unwrap();
            w.finish()
        };
        let out = pad_frame(&p, &mut buf, 0..n);
        assert_eq!(out, 0..128);
        let m = Message::decode(&buf[..128]).expect("still one valid STUN message");
        assert_eq!(m.get(crate::stun::attr::DATA), Some(&b"voice"[..]));
        assert!(
            m.unknown_required().is_empty(),
            "the padding attribute is comprehension-optional"
        );
        assert!(
            stun::find_attr(&buf[..128], PADDING_ATTR)
                .unwrap()
                .iter()
                .all(|b| *b == 0)
        );
    }

    fn policy(timing: Timing, limit: usize) -> Policy {
        Policy {
            padding: Padding::Off,
            timing,
            cover: None,
            queue_limit: limit,
        }
    }

    /// Splits a stream into frames the way clients do: ChannelData by 4 + Length rounded up to
    /// 4, STUN by 20 + Length.
    fn split_stream(mut b: &[u8]) -> Vec<&[u8]> {
        let mut frames = Vec::new();
        while b.len() >= 4 {
            let len = u16::from_be_bytes([b[2], b[3]]) as usize;
            let total = if b[0] >> 6 == 1 {
                (4 + len + 3) & !3
            } else {
                20 + len
            };
            frames.push(&b[..total]);
            b = &b[total..];
        }
        assert!(b.is_empty(), "no trailing bytes between frames");
        frames
    }

    #[test]
    fn stream_frames_are_followed_by_a_filler_to_the_bucket() {
        let p: Padding = "128,256".parse().unwrap();
        for payload_len in [1usize, 5, 100, 101, 104, 120, 200] {
            let mut buf = vec![0xEEu8; 512];
            let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
            let f = channel_frame(&mut buf, 16, &payload);
            let out = pad_stream_frame(&p, &mut buf, f, &[1; 12]);
            let total = out.len();
            assert!(total == 128 || total == 256, "{payload_len}: {total}");
            let frames = split_stream(&buf[out]);
            let (ch, data) = channel_data::decode(frames[0]).unwrap();
            assert_eq!((ch, data), (0x4001, &payload[..]));
            for filler in &frames[1..] {
                let m = Message::decode(filler).expect("the filler is one valid STUN message");
                assert_eq!((m.method, m.class), (method::BINDING, Class::Indication));
            }
            assert!(frames.len() <= 2);
        }
        // Beyond the largest bucket: only aligned.
        let mut buf = vec![0u8; 512];
        let f = channel_frame(&mut buf, 0, &[7; 301]);
        assert_eq!(pad_stream_frame(&p, &mut buf, f, &[1; 12]).len(), 308);
    }

    #[test]
    fn cover_frame_is_an_ignorable_binding_indication_of_the_exact_size() {
        let mut out = [0xEEu8; 256];
        let n = write_cover_frame(&mut out, 128, &[5; 12]);
        assert_eq!(n, 128);
        let m = Message::decode(&out[..n]).expect("a valid STUN message");
        assert_eq!((m.method, m.class), (method::BINDING, Class::Indication));
        assert!(
            m.unknown_required().is_empty(),
            "nothing a client must understand"
        );
        assert!(out[24..128].iter().all(|b| *b == 0), "no stale bytes");
        assert_eq!(
            "50:128".parse(),
            Ok(Cover {
                interval: Duration::from_millis(20),
                size: 128
            })
        );
        for bad in ["50", "0:128", "50:130", "50:8", "500:128", "x:y"] {
            assert!(bad.parse::<Cover>().is_err(), "{bad}");
        }
    }

    /// Slots of `iv` with 128-byte cover every `iv`, no padding.
    fn slots_with_cover(iv: Duration) -> Policy {
        Policy {
            padding: Padding::Off,
            timing: Timing::Slots(iv),
            cover: Some(Cover {
                interval: iv,
                size: 128,
            }),
            queue_limit: 64,
        }
    }

    /// Cover transaction ids reveal neither the generator that draws jitter (before, they were
    /// its raw state: the next one, and every jitter delay, followed) nor a counter.
    #[test]
    fn cover_txids_reveal_no_generator_state_and_no_counter() {
        let epoch = Instant::now();
        let iv = Duration::from_millis(20);
        let p = slots_with_cover(iv);
        let mut s: Shaper<u8> = Shaper::new(p, epoch, 7);
        let mut buf = vec![0u8; 64];
        for flow in 0..8u8 {
            let f = channel_frame(&mut buf, 0, b"media");
            s.submit(epoch + Duration::from_millis(1), flow, &mut buf, f);
        }
        s.pop_due(epoch + iv, |_, _| {});
        let mut ids: Vec<[u8; 12]> = Vec::new();
        for k in 2..40u32 {
            s.cover_due(
                epoch + iv * k,
                |_| true,
                |_, b| ids.push(b[8..20].try_into().unwrap()),
            );
        }
        assert!(ids.len() > 100, "{}", ids.len());
        let step = |mut x: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for w in ids.windows(2) {
            let a = u64::from_le_bytes(w[0][..8].try_into().unwrap());
            let b = u64::from_le_bytes(w[1][..8].try_into().unwrap());
            assert_ne!(
                step(a),
                b,
                "the next id follows from the last: generator state on the wire"
            );
        }
        crate::testing::assert_no_counter(&ids);
    }

    #[test]
    fn cover_fills_silences_of_covered_flows_only() {
        let epoch = Instant::now();
        let iv = Duration::from_millis(20);
        let p = slots_with_cover(iv);
        let mut s: Shaper<u8> = Shaper::new(p, epoch, 3);
        assert_eq!(
            s.next_cover_tick(),
            None,
            "nothing covered before media flows"
        );
        let mut buf = vec![0u8; 64];
        let f = channel_frame(&mut buf, 0, b"media");
        s.submit(epoch + Duration::from_millis(3), 1, &mut buf, f);
        s.pop_due(epoch + iv, |_, _| {});
        let mut sent = Vec::new();
        // The first tick is the slot the frame left on: nothing to fill.
        assert_eq!(s.next_cover_tick(), Some(epoch + iv));
        s.cover_due(
            epoch + iv + Duration::from_micros(300),
            |_| true,
            |k, b| sent.push((k, b.len())),
        );
        assert!(sent.is_empty());
        // At the 40 ms tick flow 1 has been silent for a slot: cover. A late wake-up still counts.
        let tick = s.next_cover_tick().unwrap();
        assert_eq!(tick, epoch + 2 * iv);
        s.cover_due(
            tick - Duration::from_millis(1),
            |_| true,
            |_, _| panic!("not due yet"),
        );
        s.cover_due(
            tick + Duration::from_micros(200),
            |_| true,
            |k, b| sent.push((k, b.len())),
        );
        assert_eq!(sent, vec![(1, 128)]);
        // A real frame in the slot suppresses cover for that tick.
        let f = channel_frame(&mut buf, 0, b"more");
        s.submit(tick + Duration::from_millis(5), 1, &mut buf, f);
        s.pop_due(tick + iv, |_, _| {});
        sent.clear();
        s.cover_due(tick + iv, |_| true, |k, b| sent.push((k, b.len())));
        assert!(sent.is_empty(), "{sent:?}");
        // The allocation ends: cover stops.
        s.cover_due(tick + 2 * iv, |_| false, |k, b| sent.push((k, b.len())));
        assert!(sent.is_empty());
        assert_eq!(s.next_cover_tick(), None);
        assert_eq!(s.stats().cover_frames, 1);
        assert_eq!(s.stats().cover_bytes, 128);
    }

    #[test]
    fn slots_align_to_a_shared_grid_with_at_most_one_interval_of_wait() {
        let epoch = Instant::now();
        let iv = Duration::from_millis(10);
        let mut s: Shaper<u8> = Shaper::new(policy(Timing::Slots(iv), 64), epoch, 7);
        for (flow, us) in [1u64, 3_000, 9_999, 10_000, 10_001, 123_456]
            .into_iter()
            .enumerate()
        {
            let now = epoch + Duration::from_micros(us);
            let r = s.release_time(now, flow as u8);
            assert!(
                r >= now && r - now < iv,
                "{us}: a lone frame waits less than one slot"
            );
            assert_eq!(
                (r - epoch).as_nanos() % iv.as_nanos(),
                0,
                "{us}: on the grid"
            );
        }
    }

    #[test]
    fn slots_pace_each_flow_to_one_frame_per_slot_waiting_at_most_two() {
        let epoch = Instant::now();
        let iv = Duration::from_millis(20);
        let mut s: Shaper<u8> = Shaper::new(policy(Timing::Slots(iv), 64), epoch, 7);
        // A constant-rate flow arriving with jitter leaves strictly periodic.
        let mut releases = Vec::new();
        for (i, jitter_us) in [0u64, 4_000, 200, 7_000, 1_000, 6_500, 300]
            .into_iter()
            .enumerate()
        {
            let now = epoch + Duration::from_micros(5_000 + i as u64 * 20_000 + jitter_us);
            let r = s.release_time(now, 1);
            assert!(r - now <= 2 * iv, "waits at most two slots");
            releases.push(r);
        }
        for w in releases.windows(2) {
            assert_eq!(w[1] - w[0], iv, "one frame per slot: {releases:?}");
        }
        // A burst from one flow takes consecutive slots, capped at two slots of wait.
        let now = epoch + Duration::from_millis(1_001);
        let burst: Vec<_> = (0..4).map(|_| s.release_time(now, 2)).collect();
        assert_eq!(burst[1] - burst[0], iv);
        assert!(burst.iter().all(|r| *r - now <= 2 * iv));
        // Another flow is not held back by it.
        assert_eq!(s.release_time(now, 3), burst[0]);
    }

    #[test]
    fn queue_releases_in_order_on_time_and_bounds_memory() {
        let epoch = Instant::now();
        let iv = Duration::from_millis(20);
        let mut s: Shaper<u8> = Shaper::new(policy(Timing::Slots(iv), 4), epoch, 7);
        let mut buf = vec![0u8; 64];
        let t = epoch + Duration::from_millis(5);
        for i in 0..6u8 {
            let f = channel_frame(&mut buf, 0, &[i; 8]);
            let (d, _) = s.submit(t, i, &mut buf, f);
            assert_eq!(d, Decision::Queued);
        }
        assert_eq!(s.queued(), 4, "bounded");
        assert_eq!(s.stats().queue_drops, 2);
        assert_eq!(s.next_release(), Some(epoch + iv));
        let mut got = Vec::new();
        s.pop_due(epoch + iv - Duration::from_micros(1), |_, _| {
            panic!("not yet")
        });
        s.pop_due(epoch + iv, |k, b| got.push((k, b[4])));
        assert_eq!(
            got,
            vec![(2, 2), (3, 3), (4, 4), (5, 5)],
            "the two due soonest were dropped; order kept"
        );
        assert_eq!(s.queued(), 0);
    }

    #[test]
    fn new_profiles_release_what_waits_and_apply_to_what_follows() {
        let epoch = Instant::now();
        let iv = Duration::from_millis(20);
        let mut s: Shaper<u8> = Shaper::new(policy(Timing::Slots(iv), 8), epoch, 7);
        let mut buf = vec![0u8; 2048];
        let t = epoch + Duration::from_millis(5);
        for i in 0..3u8 {
            let f = channel_frame(&mut buf, 0, &[i; 8]);
            assert_eq!(s.submit(t, i, &mut buf, f).0, Decision::Queued);
        }
        // Reload to padding only: the three waiting frames leave at once, in order.
        let mut flushed = Vec::new();
        s.set_profiles(
            t,
            vec![Policy {
                padding: Padding::Multiple(64),
                ..Policy::default()
            }],
            |k, b| flushed.push((k, b[4])),
        );
        assert_eq!(flushed, vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(s.queued(), 0);
        assert_eq!(s.stats().delayed_frames, 3, "counters survive the reload");
        let f = channel_frame(&mut buf, 0, &[9; 8]);
        let (d, r) = s.submit(t, 0, &mut buf, f);
        assert_eq!(d, Decision::SendNow, "no re-clocking any more");
        assert_eq!(r.len(), 64, "padded under the new policy");
    }

    #[test]
    fn jitter_is_bounded_and_keeps_order_within_a_flow() {
        let epoch = Instant::now();
        let max = Duration::from_millis(30);
        let mut s: Shaper<u8> = Shaper::new(policy(Timing::Jitter(max), 1024), epoch, 99);
        let mut last = [epoch; 3];
        let mut delays = Vec::new();
        for i in 0..600u64 {
            let now = epoch + Duration::from_millis(i);
            let flow = (i % 3) as u8;
            let r = s.release_time(now, flow);
            assert!(r >= last[flow as usize], "order within a flow");
            assert!(
                r - now < max + Duration::from_millis(3),
                "bounded (plus ordering carry-over)"
            );
            delays.push((r - now).as_micros());
            last[flow as usize] = r;
        }
        let distinct: std::collections::HashSet<_> = delays.iter().map(|d| d / 1000).collect();
        assert!(distinct.len() > 10, "delays are spread, not constant");
    }

    #[test]
    fn each_flow_is_shaped_by_its_profile() {
        let epoch = Instant::now();
        let node = Policy::default();
        let voice = Policy {
            padding: "128".parse().unwrap(),
            timing: Timing::Slots(Duration::from_millis(20)),
            cover: None,
            queue_limit: 16,
        };
        let mut s: Shaper<u8> = Shaper::with_profiles(vec![node, voice], epoch, 5);
        assert!(!s.is_off());
        let mut buf = vec![0u8; 256];
        let now = epoch + Duration::from_millis(3);
        let f = channel_frame(&mut buf, 0, b"plain");
        assert_eq!(
            s.submit_in(now, 1, 0, false, &mut buf, f),
            (Decision::SendNow, 0..9),
            "node policy: off"
        );
        let f = channel_frame(&mut buf, 0, b"voice");
        let (d, r) = s.submit_in(now, 2, 1, false, &mut buf, f);
        assert_eq!(
            (d, r.len()),
            (Decision::Queued, 128),
            "profile: padded and re-clocked"
        );
        // An unknown profile index falls back to the node policy.
        let f = channel_frame(&mut buf, 0, b"x");
        assert_eq!(
            s.submit_in(now, 3, 9, false, &mut buf, f).0,
            Decision::SendNow
        );
    }

    #[test]
    fn off_sends_immediately_and_counts_padding() {
        let mut s: Shaper<u8> = Shaper::new(
            Policy {
                padding: "64".parse().unwrap(),
                timing: Timing::Off,
                cover: None,
                queue_limit: 8,
            },
            Instant::now(),
            1,
        );
        let mut buf = vec![0u8; 128];
        let f = channel_frame(&mut buf, 0, b"abc");
        let (d, r) = s.submit(Instant::now(), 0, &mut buf, f);
        assert_eq!((d, r.len()), (Decision::SendNow, 64));
        assert_eq!(s.stats().padding_bytes, 64 - 7);
        assert_eq!(s.queued(), 0);
    }
}
