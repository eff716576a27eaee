//! Traffic shaping of what the relay sends to clients: padding to size buckets and re-clocking.
//!
//! Sans-I/O like the protocol core: time is passed in, nothing here touches a socket. One
//! [`Shaper`] belongs to one worker; it holds a bounded pool of preallocated packet buffers and
//! one timer heap, so shaping allocates nothing per packet and needs no sleep per packet.
//!
//! What each defence buys, honestly (the README repeats this for operators, per observer and leg,
//! with the on-the-wire measurements of `benches/shaping_wire.rs`):
//! * **One size per flow** (`flow:` buckets, the default of `--shaping`): every frame of a flow
//!   and its cover leave at one size, the largest bucket the flow needed recently (raised at once,
//!   lowered one bucket after [`FLOW_SIZE_HOLD`] without needing it). Per-frame buckets leak the
//!   talk spurts: voice frames fall into a larger bucket than silence and cover, so the bytes per
//!   time bin draw the speech.
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
    /// One size per flow: every frame of a flow (and its cover) is padded to the flow's size,
    /// the largest of these buckets the flow needed recently (see [`FLOW_SIZE_HOLD`]).
    Flow(Vec<u16>),
}

/// How long a flow keeps a bucket it no longer needs before it steps down one bucket. Longer
/// than a conversation's pauses (a listener's silence of seconds to tens of seconds), so a flow's
/// size follows what kind of media it carries (voice, video) and not when someone speaks.
pub const FLOW_SIZE_HOLD: Duration = Duration::from_secs(30);

impl Padding {
    /// Checks the sizes: buckets and multiples must be multiples of 4 (coturn's parser), at least
    /// 8 and at most 65 532.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |n: u16| n >= 8 && n % 4 == 0 && n <= 65_532;
        match self {
            Padding::Off => Ok(()),
            Padding::Buckets(b) | Padding::Flow(b) if b.is_empty() => Err("no buckets".into()),
            Padding::Buckets(b) | Padding::Flow(b) => match b.iter().find(|n| !ok(**n)) {
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

    /// The size a frame of `len` bytes is sent as on its own (never smaller than `len`; a
    /// multiple of 4). Under [`Padding::Flow`] the flow's size may be larger ([`Shaper`]).
    pub fn target(&self, len: usize) -> usize {
        self.target_at_least(len, 0)
    }

    /// The smallest size for a frame of `len` bytes that is at least `floor` (a bucket of the
    /// flow), or `len` aligned to 4 beyond the largest bucket.
    pub fn target_at_least(&self, len: usize, floor: usize) -> usize {
        self.target_where(len, floor, |_| true)
    }

    /// [`Padding::target_at_least`] among sizes `ok` accepts.
    fn target_where(&self, len: usize, floor: usize, ok: impl Fn(usize) -> bool) -> usize {
        let aligned = (len + 3) & !3;
        match self {
            Padding::Off => len,
            Padding::Buckets(b) | Padding::Flow(b) => b
                .iter()
                .map(|&n| n as usize)
                .find(|&n| n >= len && n >= floor && ok(n))
                .unwrap_or_else(|| {
                    // No bucket fits: the frame as it is, or, never below the flow's size, the
                    // first size at least that a filler can make (a stream frame a few bytes
                    // under the largest bucket cannot reach it: a filler needs 20 bytes).
                    let mut t = aligned.max(floor);
                    while t != aligned && !ok(t) {
                        t += 4;
                    }
                    t
                }),
            Padding::Multiple(n) => {
                let n = *n as usize;
                let mut t = len.max(floor).div_ceil(n) * n;
                while !ok(t) {
                    t += n;
                }
                t
            }
        }
    }

    /// The size a stream frame of `aligned` bytes is written as: the frame alone, or the frame and
    /// a filler of at least a STUN header ([`pad_stream_frame`]); at least `floor`.
    pub fn stream_target(&self, aligned: usize, floor: usize) -> usize {
        if *self == Padding::Off {
            return aligned;
        }
        self.target_where(aligned, floor, |t| {
            t == aligned || t >= aligned + stun::HEADER_LEN
        })
    }

    /// The largest bucket, if the padding has buckets.
    fn largest_bucket(&self) -> Option<u16> {
        match self {
            Padding::Buckets(b) | Padding::Flow(b) => b.last().copied(),
            _ => None,
        }
    }

    /// The buckets of a per-flow padding.
    fn flow_buckets(&self) -> Option<&[u16]> {
        match self {
            Padding::Flow(b) => Some(b),
            _ => None,
        }
    }
}

impl FromStr for Padding {
    type Err = String;
    /// `off`, `multiple:N`, a comma-separated bucket list `128,256,512,1200` (per frame), or
    /// `flow:128,256,512,1200` (one size per flow).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (flow, list) = match s.strip_prefix("flow:") {
            Some(rest) => (true, rest.trim()),
            None => (false, s),
        };
        let p = if flow {
            Padding::Flow(parse_sizes(list).map_err(|_| {
                format!("`{s}`: flow: and a list of sizes like flow:128,256,512,1200")
            })?)
        } else if s == "off" {
            Padding::Off
        } else if let Some(n) = s.strip_prefix("multiple:") {
            Padding::Multiple(
                n.trim()
                    .parse()
                    .map_err(|_| format!("`{s}`: multiple:N with N a number"))?,
            )
        } else {
            Padding::Buckets(
                parse_sizes(s)
                    .map_err(|_| format!("`{s}`: a list of sizes like 128,256,512,1200"))?,
            )
        };
        p.validate()?;
        Ok(p)
    }
}

fn parse_sizes(s: &str) -> Result<Vec<u16>, std::num::ParseIntError> {
    s.split(',').map(|p| p.trim().parse::<u16>()).collect()
}

impl fmt::Display for Padding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Padding::Off => f.write_str("off"),
            Padding::Multiple(n) => write!(f, "multiple:{n}"),
            Padding::Buckets(b) | Padding::Flow(b) => {
                if matches!(self, Padding::Flow(_)) {
                    f.write_str("flow:")?;
                }
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
/// its client until its allocation ends or it has had no real frame for [`COVER_IDLE`], filling
/// gaps (silences) with filler frames. Real frames count towards the rate; cover never delays
/// them.
///
/// A filler is as large as the flow's frames: under [`Padding::Flow`] the flow's size, otherwise
/// the padded size of the flow's last frame; `RATE:SIZE` fixes the size instead (which, with
/// media of other sizes, lets the byte volume per time bin tell media from cover).
///
/// On UDP the filler is a STUN Binding *indication* grown with the padding attribute: libwebrtc,
/// pion, webrtc-rs, aioice and coturn's uclient discard an indication of a method they do not use
/// (the end-to-end tests prove it for webrtc-rs and uclient). Never ChannelData on an unbound
/// channel: pion and webrtc-rs end their receive loop on it. A TURN-aware observer of plain UDP
/// tells the two apart by their first byte; inside TLS they are records of one size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cover {
    /// At most this long between two frames of a flow.
    pub interval: Duration,
    /// A fixed size of cover frames; `None`: the flow's size.
    pub size: Option<u16>,
}

impl FromStr for Cover {
    type Err = String;
    /// `RATE` (frames per second, fillers at the flow's size) or `RATE:SIZE` (bytes), e.g. `50`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}`: RATE or RATE:SIZE, e.g. 50 (1-200 frames/s; SIZE 28-1200 bytes, a multiple of 4)"
            )
        };
        let (r, z) = match s.trim().split_once(':') {
            Some((r, z)) => (r, Some(z)),
            None => (s.trim(), None),
        };
        let rate: u32 = r.trim().parse().map_err(|_| bad())?;
        let size: Option<u16> = match z {
            Some(z) => Some(z.trim().parse().map_err(|_| bad())?),
            None => None,
        };
        if !(1..=200).contains(&rate)
            || size.is_some_and(|z| !(28..=1200).contains(&z) || z % 4 != 0)
        {
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
        match self.size {
            Some(z) => write!(f, "{rate}:{z}"),
            None => write!(f, "{rate}"),
        }
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
    /// The longest a frame should wait under this timing: two slots (a frame bunched behind its
    /// flow's previous one takes the next slot), or the jitter maximum. A frame that leaves later
    /// (the worker woke late) is counted in [`ShapingStats::late_frames`].
    pub fn delay_bound(&self) -> Option<Duration> {
        match self.timing {
            Timing::Off => None,
            Timing::Slots(iv) => Some(2 * iv),
            Timing::Jitter(max) => Some(max),
        }
    }

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
/// size, at least `floor` ([`Padding::stream_target`]: a gap too small for a filler, under 20
/// bytes, moves to the next bucket). Returns the range to write, frame and filler together.
pub fn pad_stream_frame(
    padding: &Padding,
    buf: &mut [u8],
    frame: Range<usize>,
    floor: usize,
    txid: &[u8; 12],
) -> Range<usize> {
    let aligned = (frame.len() + 3) & !3;
    if frame.start + aligned > buf.len() {
        return frame;
    }
    buf[frame.end..frame.start + aligned].fill(0);
    let target = padding.stream_target(aligned, floor);
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
    let target = padding.target(frame.len());
    pad_frame_to(buf, frame, target)
}

/// [`pad_frame`] to a given size (a multiple of 4 for Data indications).
pub fn pad_frame_to(buf: &mut [u8], frame: Range<usize>, target: usize) -> Range<usize> {
    let len = frame.len();
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
        0 if len % 4 == 0 && target % 4 == 0 && target - len >= 4 && len >= stun::HEADER_LEN => {
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
        /// Frames that left later than their timing's bound ([`Policy::delay_bound`]): the
        /// worker woke late. They leave at once when it wakes, never later.
        pub late_frames: u64,
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
    /// Each flow's size under [`Padding::Flow`].
    sizes: HashMap<K, FlowSize>,
    pool: Vec<u8>,
    free: Vec<u32>,
    entries: Vec<Option<Queued<K>>>,
    heap: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    seq: u64,
    stats: ShapingStats,
    /// Flows under cover.
    covered: HashMap<K, Covered>,
    /// The next point of the cover grid to check, while any flow is covered.
    cover_next: Option<Instant>,
    /// The cover grid: the shortest cover interval of any profile.
    cover_tick: Option<Duration>,
    cover_buf: Vec<u8>,
}

/// A frame waiting in the pool.
#[derive(Clone, Copy)]
struct Queued<K> {
    flow: K,
    len: u16,
    profile: u8,
    /// When the shaper got it: the delay counted at release is measured from here.
    arrived: Instant,
}

/// A flow's size under [`Padding::Flow`].
#[derive(Clone, Copy, Debug)]
struct FlowSize {
    /// The bucket every frame of the flow is padded to.
    size: u16,
    /// When a frame last needed `size` (or the flow stepped down to it).
    needed_at: Instant,
}

/// The size `flow`'s frame of `need` bytes (its own smallest padded size) is padded to under
/// per-flow `buckets`: the flow's size, raised at once to what this frame needs, lowered one
/// bucket once the flow has not needed its size for [`FLOW_SIZE_HOLD`].
fn flow_floor<K: Eq + Hash>(
    sizes: &mut HashMap<K, FlowSize>,
    flow: K,
    now: Instant,
    need: usize,
    buckets: &[u16],
) -> usize {
    let largest = buckets.last().copied().unwrap_or(0);
    let need_b = need.min(largest as usize) as u16;
    let f = sizes.entry(flow).or_insert(FlowSize {
        size: need_b,
        needed_at: now,
    });
    if need_b >= f.size {
        f.size = need_b;
        f.needed_at = now;
    } else if now.saturating_duration_since(f.needed_at) >= FLOW_SIZE_HOLD {
        // One step down, never below what this frame needs.
        let below = buckets.iter().rev().find(|b| **b < f.size).copied();
        f.size = below.map_or(need_b, |b| b.max(need_b));
        f.needed_at = now;
    }
    f.size as usize
}

/// How long a covered flow gets cover after its last real frame. A live call never goes this
/// long without one (Opus DTX sends a frame every 400 ms, RTCP and ICE consent checks come every
/// few seconds), so cover ends only with the media, which an observer sees anyway; without an
/// end, one stray datagram would keep 50 frames/s of the flow's size going to the client for
/// the allocation's whole life.
pub const COVER_IDLE: Duration = Duration::from_secs(15);

/// A flow under cover.
#[derive(Clone, Copy, Debug)]
struct Covered {
    /// When a frame last left for it (a grid time for released frames).
    last: Instant,
    /// When a real frame last left for it.
    real: Instant,
    profile: u8,
    /// The size of its last frame: the size its cover takes unless the profile fixes one.
    size: u16,
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
            .filter_map(|p| {
                p.cover
                    .map(|c| c.size.map_or(MAX_QUEUED_FRAME, usize::from))
            })
            .max()
            .unwrap_or(0);
        Shaper {
            profiles,
            epoch,
            rng: XorShift::new(seed),
            txids: TxidPrf::new(),
            last_release: HashMap::new(),
            sizes: HashMap::new(),
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
    /// Covered flows stay covered if their profile still has cover; flows keep their sizes if
    /// their profile still pads per flow.
    pub fn set_profiles(
        &mut self,
        now: Instant,
        profiles: Vec<Policy>,
        mut send: impl FnMut(K, &[u8]),
    ) {
        while let Some(Reverse((_, _, slot))) = self.heap.pop() {
            if let Some(q) = self.entries[slot as usize].take() {
                let at = slot as usize * MAX_QUEUED_FRAME;
                send(q.flow, &self.pool[at..at + q.len as usize]);
                self.stats
                    .record_delay(now.saturating_duration_since(q.arrived));
            }
        }
        let mut next = Self::with_profiles(profiles, self.epoch, self.rng.state());
        next.stats = self.stats;
        let still = |p: u8| {
            next.profiles
                .get(p as usize)
                .is_some_and(|x| x.cover.is_some())
        };
        next.covered = std::mem::take(&mut self.covered);
        next.covered.retain(|_, c| still(c.profile));
        if next
            .profiles
            .iter()
            .any(|p| p.padding.flow_buckets().is_some())
        {
            next.sizes = std::mem::take(&mut self.sizes);
        }
        if !next.covered.is_empty() {
            next.cover_next = next.cover_tick.map(|t| next_slot(next.epoch, t, now));
        }
        *self = next;
    }

    /// Pads a response to a TCP/TLS client under the node policy (a filler after it), so that
    /// control traffic on a stream leaves at bucket sizes too (under per-flow padding, at the
    /// flow's size when it has one). `buf` must have room after the frame for the largest bucket.
    pub fn pad_stream_reply(
        &mut self,
        flow: K,
        buf: &mut [u8],
        frame: Range<usize>,
    ) -> Range<usize> {
        if self.profiles[0].padding == Padding::Off {
            return frame;
        }
        let floor = self.sizes.get(&flow).map_or(0, |f| f.size as usize);
        let txid = self.txids.next_txid();
        pad_stream_frame(&self.profiles[0].padding, buf, frame, floor, &txid)
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

    /// The size `flow` is padded to under per-flow padding, if it has one yet.
    pub fn flow_size(&self, flow: &K) -> Option<u16> {
        self.sizes.get(flow).map(|f| f.size)
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
                // flow's previous one takes the following slot, but never a later one, so no
                // frame waits two intervals or more and a constant-rate stream leaves strictly
                // periodic whatever jitter it arrived with (a burst shares the second slot).
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

    /// Pads `buf[frame]` for `flow` under its profile, in place: to its own bucket, or to the
    /// flow's size under per-flow padding; `stream` for a TCP/TLS client, whose frames are
    /// followed by a filler frame ([`pad_stream_frame`]) so stream framing holds.
    fn pad(
        &mut self,
        now: Instant,
        flow: K,
        profile: u8,
        stream: bool,
        buf: &mut [u8],
        frame: Range<usize>,
    ) -> Range<usize> {
        let Shaper {
            profiles,
            sizes,
            txids,
            ..
        } = self;
        let padding = &profiles[profile as usize].padding;
        if *padding == Padding::Off {
            return frame;
        }
        let len = if stream {
            (frame.len() + 3) & !3
        } else {
            frame.len()
        };
        let need = if stream {
            padding.stream_target(len, 0)
        } else {
            padding.target(len)
        };
        let floor = match padding.flow_buckets() {
            Some(b) => flow_floor(sizes, flow, now, need, b),
            None => 0,
        };
        if stream {
            let txid = txids.next_txid();
            let r = pad_stream_frame(padding, buf, frame, floor, &txid);
            // A gap under a filler's size moved the frame to a larger bucket: that is the
            // flow's size now.
            if floor > 0
                && r.len() > floor
                && r.len() <= MAX_QUEUED_FRAME
                && let Some(f) = sizes.get_mut(&flow)
            {
                f.size = r.len() as u16;
                f.needed_at = now;
            }
            r
        } else {
            let target = padding.target_at_least(len, floor);
            pad_frame_to(buf, frame, target)
        }
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
        let frame = self.pad(now, flow, profile, stream, buf, frame);
        if frame.len() > before {
            self.stats.padded_frames += 1;
            self.stats.padding_bytes += (frame.len() - before) as u64;
        }
        let size = frame.len();
        if self.profiles[profile as usize].timing == Timing::Off || self.entries.is_empty() {
            self.note_sent(flow, now, profile, size);
            return (Decision::SendNow, frame);
        }
        if frame.len() > MAX_QUEUED_FRAME {
            self.stats.oversize_unshaped += 1;
            self.note_sent(flow, now, profile, size);
            return (Decision::SendNow, frame);
        }
        let release = self.release_time_in(now, flow, profile);
        if release <= now {
            self.stats.record_delay(Duration::ZERO);
            self.note_sent(flow, now, profile, size);
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
        self.entries[slot as usize] = Some(Queued {
            flow,
            len: frame.len() as u16,
            profile,
            arrived: now,
        });
        self.seq += 1;
        self.heap.push(Reverse((release, self.seq, slot)));
        self.stats.delayed_frames += 1;
        (Decision::Queued, frame)
    }

    /// The earliest release time waiting, if any.
    pub fn next_release(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Hands every frame due by `now` to `send`, in release order (FIFO within a time). A frame
    /// whose release time passed while the worker was busy leaves now, at once; if that is past
    /// its timing's bound it is counted as late.
    pub fn pop_due(&mut self, now: Instant, mut send: impl FnMut(K, &[u8])) {
        while let Some(&Reverse((t, _, slot))) = self.heap.peek() {
            if t > now {
                break;
            }
            self.heap.pop();
            if let Some(q) = self.entries[slot as usize].take() {
                let at = slot as usize * MAX_QUEUED_FRAME;
                send(q.flow, &self.pool[at..at + q.len as usize]);
                let waited = now.saturating_duration_since(q.arrived);
                self.stats.record_delay(waited);
                if self.profiles[q.profile as usize]
                    .delay_bound()
                    .is_some_and(|b| waited > b)
                {
                    self.stats.late_frames += 1;
                }
                // Its slot, not the (later) moment the task woke: cover compares grid times.
                self.note_sent(q.flow, t, q.profile, q.len as usize);
            }
            self.free.push(slot);
        }
    }

    /// Records that a real frame of `size` bytes left for `flow`; if its profile has cover, the
    /// flow is covered from now on.
    fn note_sent(&mut self, flow: K, at: Instant, profile: u8, size: usize) {
        let policy = &self.profiles[profile as usize];
        if policy.cover.is_none() {
            return;
        }
        // Cover after a frame beyond the largest bucket (sent as it is) takes the largest
        // bucket: cover is never larger than the padding's sizes.
        let cap = policy
            .padding
            .largest_bucket()
            .map_or(MAX_QUEUED_FRAME, usize::from);
        let size = size.min(cap).clamp(24, MAX_QUEUED_FRAME).div_ceil(4) * 4;
        self.covered.insert(
            flow,
            Covered {
                last: at,
                real: at,
                profile,
                size: size as u16,
            },
        );
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
            sizes,
            cover_buf,
            txids,
            stats,
            cover_next,
            epoch,
            profiles,
            ..
        } = self;
        // Allocations gone, and flows whose media is gone: no more cover (a real frame starts it
        // again).
        let mut ended = false;
        covered.retain(|k, c| {
            let alive = alive(k);
            ended |= !alive;
            alive && due.saturating_duration_since(c.real) < COVER_IDLE
        });
        if ended {
            sizes.retain(|k, _| alive(k));
        }
        *cover_next =
            (!covered.is_empty()).then(|| next_slot(*epoch, tick, now + Duration::from_nanos(1)));
        // Tolerance for a tick that fires a little late or a frame released on the same tick.
        let slack = Duration::from_micros(500);
        for (flow, c) in covered.iter_mut() {
            let Some(cover) = profiles[c.profile as usize].cover else {
                continue;
            };
            if c.last + cover.interval > due + slack {
                continue;
            }
            let size = cover.size.unwrap_or(c.size) as usize;
            let txid = txids.next_txid();
            let n = write_cover_frame(cover_buf, size, &txid);
            emit(*flow, &cover_buf[..n]);
            c.last = due;
            stats.cover_frames += 1;
            stats.cover_bytes += n as u64;
        }
    }

    /// Forgets per-flow state that can no longer matter: ordering state of flows with nothing
    /// waiting, and the sizes of flows idle and uncovered for longer than [`FLOW_SIZE_HOLD`].
    pub fn housekeeping(&mut self, now: Instant) {
        self.last_release.retain(|_, t| *t > now);
        let covered = &self.covered;
        self.sizes.retain(|k, f| {
            covered.contains_key(k) || now.saturating_duration_since(f.needed_at) < FLOW_SIZE_HOLD
        });
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

    /// Found by the fuzzer: a stream frame a few bytes under the largest bucket cannot reach
    /// it (a filler needs 20 bytes) and was written below its flow's size.
    #[test]
    fn a_stream_frame_never_falls_below_its_flows_size() {
        let p: Padding = "flow:128,256,1200".parse().unwrap();
        assert_eq!(p.stream_target(1196, 1200), 1216);
        assert_eq!(p.stream_target(1200, 1200), 1200);
        // Above a smaller flow size the frame goes as it is.
        assert_eq!(p.stream_target(1196, 256), 1196);
    }

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
            let out = pad_stream_frame(&p, &mut buf, f, 0, &[1; 12]);
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
        assert_eq!(pad_stream_frame(&p, &mut buf, f, 0, &[1; 12]).len(), 308);
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
                size: Some(128)
            })
        );
        for bad in ["0:128", "50:130", "50:8", "500:128", "x:y"] {
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
                size: Some(128),
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

    /// One real frame, then nothing: cover runs for [`COVER_IDLE`] after it and ends (a stray
    /// datagram buys the client 15 s of cover, not the allocation's life); a real frame starts
    /// it again.
    #[test]
    fn cover_ends_when_media_stops_and_resumes_with_it() {
        let epoch = Instant::now();
        let iv = Duration::from_millis(20);
        let mut s: Shaper<u8> = Shaper::new(slots_with_cover(iv), epoch, 3);
        let mut buf = vec![0u8; 64];
        let f = channel_frame(&mut buf, 0, b"stray");
        s.submit(epoch + Duration::from_millis(3), 1, &mut buf, f);
        s.pop_due(epoch + iv, |_, _| {});
        let (mut n, mut last) = (0u64, epoch);
        let horizon = epoch + Duration::from_secs(60);
        while let Some(t) = s.next_cover_tick().filter(|t| *t < horizon) {
            s.cover_due(
                t,
                |_| true,
                |_, _| {
                    n += 1;
                    last = t;
                },
            );
        }
        assert_eq!(s.next_cover_tick(), None, "cover ended by itself");
        let idle = COVER_IDLE.as_millis() as u64 / 20;
        assert_eq!(
            n,
            idle - 1,
            "one per slot after the frame's, until 15 s after it"
        );
        assert!(last - (epoch + iv) < COVER_IDLE);
        // Media again: cover again.
        let t = epoch + Duration::from_secs(61);
        let f = channel_frame(&mut buf, 0, b"back");
        s.submit(t, 1, &mut buf, f);
        s.pop_due(t + iv, |_, _| {});
        let mut again = 0;
        for _ in 0..2 {
            let tick = s.next_cover_tick().expect("covered again");
            s.cover_due(tick, |_| true, |_, _| again += 1);
        }
        assert_eq!(again, 1, "the frame's own slot, then one cover frame");

        // A voice profile's buckets bound cover: a 1 200-byte frame beyond them leaves as it
        // is, and the cover after it is 256, not 1 200.
        let voice = Policy {
            padding: Padding::Flow(vec![128, 256]),
            cover: Some(Cover {
                interval: iv,
                size: None,
            }),
            ..slots_with_cover(iv)
        };
        let mut s: Shaper<u8> = Shaper::new(voice, epoch, 3);
        let mut big = vec![0u8; 1300];
        let f = channel_frame(&mut big, 0, &[7u8; 1196]);
        s.submit(epoch + Duration::from_millis(3), 1, &mut big, f);
        let mut out = Vec::new();
        s.pop_due(epoch + iv, |_, b| out.push(b.len()));
        assert_eq!(out, vec![1200], "sent as it is");
        let mut sizes = Vec::new();
        for _ in 0..3 {
            let tick = s.next_cover_tick().unwrap();
            s.cover_due(tick, |_| true, |_, b| sizes.push(b.len()));
        }
        assert_eq!(sizes, vec![256, 256], "cover at the largest bucket");
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

    /// Per-flow padding under DTX voice: once the flow has needed 256, every frame and every
    /// cover frame is 256 through talk and silence alike; only after [`FLOW_SIZE_HOLD`] of
    /// small frames does it step down, one bucket.
    #[test]
    fn flow_padding_gives_media_and_cover_one_size_through_talk_and_silence() {
        let epoch = Instant::now();
        let iv = Duration::from_millis(20);
        let p = Policy {
            padding: "flow:128,256,512,1200".parse().unwrap(),
            timing: Timing::Slots(iv),
            cover: Some("50".parse().unwrap()),
            queue_limit: 64,
        };
        let mut s: Shaper<u8> = Shaper::new(p, epoch, 11);
        let mut buf = vec![0u8; 4096];
        let mut sizes = Vec::new();
        let mut run = |s: &mut Shaper<u8>, from_ms: u64, to_ms: u64, payload: usize, every: u64| {
            let mut out = Vec::new();
            let mut t = from_ms;
            while t < to_ms {
                let now = epoch + Duration::from_millis(t) + Duration::from_micros(300);
                s.pop_due(now, |_, b| out.push(b.len()));
                s.cover_due(now, |_| true, |_, b| out.push(b.len()));
                if (t - from_ms) % every == 0 {
                    let f = channel_frame(&mut buf, 0, &vec![7u8; payload]);
                    let (d, r) = s.submit(now, 1, &mut buf, f);
                    if d == Decision::SendNow {
                        out.push(r.len());
                    }
                }
                t += 1;
            }
            out
        };
        // Silence first (SID frames of 20 bytes every 400 ms): the flow is at 128.
        sizes.extend(run(&mut s, 0, 2_000, 20, 400));
        assert!(sizes.iter().all(|n| *n == 128), "{sizes:?}");
        assert_eq!(s.flow_size(&1), Some(128));
        // Talk (180-byte frames every 20 ms), silence, talk: everything is 256 from the first
        // talk frame on, cover included.
        let mut after = Vec::new();
        after.extend(run(&mut s, 2_000, 4_000, 180, 20));
        after.extend(run(&mut s, 4_000, 9_000, 20, 400));
        after.extend(run(&mut s, 9_000, 10_000, 180, 20));
        let covered = s.stats().cover_frames;
        assert!(covered > 200, "silences are filled: {covered}");
        // (The 2 s tick's cover leaves before the first talk frame of that millisecond.)
        let first = after.iter().position(|n| *n == 256).unwrap();
        assert!(first <= 1, "{:?}", &after[..4]);
        let after = &after[first..];
        assert!(
            after.iter().all(|n| *n == 256),
            "one size: {:?}",
            &after[..20]
        );
        // Roughly one frame per 20 ms slot throughout: counts carry no speech either.
        assert!((after.len() as i64 - 400).abs() < 12, "{}", after.len());
        // Thirty seconds of silence, then a SID frame: one step down, not a flap.
        let late = run(
            &mut s,
            10_000,
            10_000 + FLOW_SIZE_HOLD.as_millis() as u64 + 500,
            20,
            400,
        );
        assert_eq!(s.flow_size(&1), Some(128));
        let steps = late.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(steps, 1, "one step down");
    }

    #[test]
    fn flow_padding_on_streams_writes_the_flows_size_per_record() {
        let epoch = Instant::now();
        let p = Policy {
            padding: "flow:128,256,512,1200".parse().unwrap(),
            timing: Timing::Off,
            cover: None,
            queue_limit: 8,
        };
        let mut s: Shaper<u8> = Shaper::new(p, epoch, 3);
        let mut buf = vec![0xEEu8; 4096];
        let mut got = Vec::new();
        for (i, payload) in [300usize, 10, 100, 105, 480, 2].into_iter().enumerate() {
            let now = epoch + Duration::from_millis(i as u64 * 20);
            let f = channel_frame(&mut buf, 0, &vec![1u8; payload]);
            let (_, r) = s.submit_in(now, 1, 0, true, &mut buf, f);
            let frames = split_stream(&buf[r.clone()]);
            let (_, data) = channel_data::decode(frames[0]).unwrap();
            assert_eq!(data.len(), payload);
            got.push(r.len());
        }
        assert_eq!(
            got,
            vec![512; 6],
            "the first frame needed 512: the flow stays there"
        );
        // A reply on the connection takes the flow's size too.
        let mut reply = vec![0u8; 2048];
        let n = {
            let mut w = Writer::new(&mut reply, method::REFRESH, Class::Success, &[2; 12]).unwrap();
            w.attr(attr::LIFETIME, &600u32.to_be_bytes()).unwrap();
            w.finish()
        };
        assert_eq!(s.pad_stream_reply(1, &mut reply, 0..n).len(), 512);
        assert_eq!(
            s.pad_stream_reply(2, &mut reply, 0..n).len(),
            128,
            "another flow"
        );
    }

    /// Bunched arrivals on the virtual clock: a burst landing just after a slot boundary behind
    /// a frame already placed in the next slot waits less than two intervals; a worker that
    /// wakes late sends each frame at once when it wakes and counts it as late.
    #[test]
    fn bunched_arrivals_wait_under_two_slots_and_late_wakeups_are_counted() {
        let epoch = Instant::now();
        let iv = Duration::from_millis(20);
        let mut s: Shaper<u8> = Shaper::new(policy(Timing::Slots(iv), 64), epoch, 7);
        let mut buf = vec![0u8; 64];
        // A frame at 19.9 ms takes the 20 ms slot; of a burst of five at 20.1 ms (the slot has
        // just passed) the first takes the 40 ms slot and the others the 60 ms one, the latest
        // any may take: 39.9 ms of wait.
        let t0 = epoch + Duration::from_micros(19_900);
        let f = channel_frame(&mut buf, 0, b"a");
        s.submit(t0, 1, &mut buf, f);
        let t1 = epoch + Duration::from_micros(20_100);
        s.pop_due(epoch + iv, |_, _| {});
        for _ in 0..5 {
            let f = channel_frame(&mut buf, 0, b"b");
            assert_eq!(s.submit(t1, 1, &mut buf, f).0, Decision::Queued);
        }
        assert_eq!(s.next_release(), Some(epoch + 2 * iv));
        let mut sent = 0;
        s.pop_due(epoch + 2 * iv, |_, _| sent += 1);
        assert_eq!(sent, 1, "one frame per flow per slot");
        assert_eq!(
            s.next_release(),
            Some(epoch + 3 * iv),
            "no later than the next slot"
        );
        s.pop_due(epoch + 3 * iv, |_, _| sent += 1);
        assert_eq!(sent, 5, "the rest of the burst shares the second slot");
        assert_eq!(s.stats().late_frames, 0, "39.9 ms: within the bound");
        // The worker stalls 25 ms past a release: the frame leaves at the wake-up, counted.
        let t2 = epoch + Duration::from_millis(101);
        let f = channel_frame(&mut buf, 0, b"c");
        s.submit(t2, 2, &mut buf, f);
        let f = channel_frame(&mut buf, 0, b"d");
        s.submit(t2, 2, &mut buf, f);
        let mut got = Vec::new();
        s.pop_due(epoch + Duration::from_millis(165), |_, b| got.push(b[4]));
        assert_eq!(got, vec![b'c', b'd'], "both leave at once, in order");
        assert_eq!(s.stats().late_frames, 2, "64 ms > two slots");
        assert_eq!(s.stats().delay_ms_hist[5], 2, "counted beyond 40 ms");
    }

    #[test]
    fn cover_takes_the_flows_size_unless_fixed() {
        assert_eq!("50".parse::<Cover>().unwrap().size, None);
        assert_eq!("50".parse::<Cover>().unwrap().to_string(), "50");
        assert_eq!("50:256".parse::<Cover>().unwrap().to_string(), "50:256");
        let p: Padding = "flow:128,256".parse().unwrap();
        assert_eq!(p.to_string(), "flow:128,256");
        assert_eq!(p.target(100), 128, "alone, a frame takes its own bucket");
        assert_eq!(p.target_at_least(100, 256), 256);
        for bad in ["flow:", "flow:130", "flow:256,128", "flow:x"] {
            assert!(bad.parse::<Padding>().is_err(), "{bad}");
        }
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
