//! What shaping buys, measured: sizes a client-leg observer sees, how well an observer of both
//! relay legs matches flows by timing, and what each mode costs in latency and CPU.
//!
//! Run by hand: `cargo bench -p veil-relay --bench shaping_measure` (add `-- --quick` for a
//! shorter trace). It drives the relay's own shaper (`veil_relay::shaping`, the code the driver
//! runs) with ChannelData framed as the core frames it, on a virtual clock: the numbers are the
//! policy's, free of this machine's scheduling noise. Traffic models:
//! * **DTX voice**: Opus-like VBR with talk spurts and silences (one SID frame per 400 ms).
//! * **CBR voice**: a frame every 20 ms of one size (what the README asks integrators to use).
//!
//! Both pass a network with 20 ms base delay and exponential jitter (mean 2 ms) before the relay.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use veil_relay::proto::stun::channel_data;
use veil_relay::shaping::{Cover, Decision, Padding, Policy, Shaper, Timing};

/// Small deterministic PRNG (xorshift64*), so runs are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let (u, v) = (self.unit().max(1e-12), self.unit());
        mean + sd * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Model {
    Dtx,
    Cbr,
}

/// One packet arriving at the relay from a peer: (arrival µs, flow, payload bytes).
type Arrival = (u64, usize, usize);

/// Media payload sizes (RTP + SRTP included) of one flow's frames and their send times.
fn flow_trace(model: Model, rng: &mut Rng, duration_us: u64) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    let mut t = (rng.unit() * 20_000.0) as u64;
    let mut talking = rng.unit() < 0.5;
    let mut state_end = t + (rng.exp(if talking { 1.0e6 } else { 1.5e6 })) as u64;
    let mut last_sid = 0;
    while t < duration_us {
        if model == Model::Dtx && t >= state_end {
            talking = !talking;
            state_end = t + (rng.exp(if talking { 1.0e6 } else { 1.5e6 })) as u64;
        }
        match model {
            Model::Cbr => out.push((t, 12 + 80 + 10)),
            Model::Dtx if talking => {
                let opus = rng.normal(70.0, 22.0).clamp(20.0, 160.0) as usize;
                out.push((t, 12 + opus + 10));
            }
            Model::Dtx => {
                if t - last_sid >= 400_000 {
                    out.push((t, 12 + 3 + 10));
                    last_sid = t;
                }
            }
        }
        t += 20_000;
    }
    out
}

fn arrivals(model: Model, flows: usize, duration_us: u64, seed: u64) -> Vec<Arrival> {
    let mut rng = Rng(seed);
    let mut all = Vec::new();
    for f in 0..flows {
        for (t, size) in flow_trace(model, &mut rng, duration_us) {
            let arrive = t + 20_000 + rng.exp(2_000.0) as u64;
            all.push((arrive, f, size));
        }
    }
    all.sort_unstable();
    all
}

/// Runs arrivals through a shaper; returns (arrival µs, departure µs, flow, client-leg size).
fn run(policy: &Policy, arrivals: &[Arrival]) -> Vec<(u64, u64, usize, usize)> {
    let epoch = Instant::now();
    let at = |us: u64| epoch + Duration::from_micros(us);
    let us_of = |t: Instant| t.duration_since(epoch).as_micros() as u64;
    let mut shaper: Shaper<usize> = Shaper::new(policy.clone(), epoch, 42);
    let flows = arrivals.iter().map(|a| a.1 + 1).max().unwrap_or(0);
    // The shaper keeps order within a flow, so a per-flow FIFO of arrival times pairs each
    // departure with its arrival.
    let mut pending: Vec<std::collections::VecDeque<u64>> = vec![Default::default(); flows];
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(arrivals.len());
    let drain = |shaper: &mut Shaper<usize>,
                 until: u64,
                 out: &mut Vec<_>,
                 pending: &mut Vec<std::collections::VecDeque<u64>>| {
        loop {
            let release = shaper.next_release();
            let cover = shaper.next_cover_tick();
            match (release, cover) {
                (Some(r), c) if us_of(r) <= until && c.is_none_or(|c| r <= c) => {
                    let when = us_of(r);
                    shaper.pop_due(r, |flow, frame| {
                        let arrived = pending[flow]
                            .pop_front()
                            .expect("a departure follows an arrival");
                        out.push((arrived, when, flow, frame.len()))
                    });
                }
                (_, Some(c)) if us_of(c) <= until => {
                    let when = us_of(c);
                    shaper.cover_due(
                        c,
                        |_| true,
                        |flow, frame| out.push((COVER, when, flow, frame.len())),
                    );
                }
                _ => break,
            }
        }
    };
    for &(t, flow, size) in arrivals {
        drain(&mut shaper, t, &mut out, &mut pending);
        let hdr: &mut [u8; 4] = (&mut buf[64..68]).try_into().unwrap();
        channel_data::write_header(hdr, 0x4000, size as u16);
        match shaper.submit(at(t), flow, &mut buf, 64..68 + size) {
            (Decision::SendNow, r) => {
                assert!(pending[flow].is_empty(), "no overtaking within a flow");
                out.push((t, t, flow, r.len()))
            }
            (Decision::Queued, _) => pending[flow].push_back(t),
        }
    }
    let end = arrivals.last().map_or(0, |a| a.0) + 100_000;
    drain(&mut shaper, end, &mut out, &mut pending);
    assert!(pending.iter().all(|p| p.is_empty()), "every frame left");
    out
}

/// Marks a cover frame's "arrival": it has none.
const COVER: u64 = u64::MAX;

/// Pearson correlation of two equal-length series.
fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

fn series(times: impl Iterator<Item = u64>, bin_us: u64, bins: usize) -> Vec<f64> {
    let mut s = vec![0.0; bins];
    for t in times {
        if let Some(x) = s.get_mut((t / bin_us) as usize) {
            *x += 1.0;
        }
    }
    s
}

/// Top-1 accuracy of an observer who sees every flow's ingress times (peer side) and egress
/// times (client side), bins both into packet counts, and matches each egress flow to the
/// ingress flow of highest correlation, allowing the relay's delay as a lag of 0..max_lag bins.
fn correlation_accuracy(
    records: &[(u64, u64, usize, usize)],
    flows: usize,
    bin_us: u64,
    duration_us: u64,
) -> f64 {
    let bins = (duration_us / bin_us) as usize + 8;
    let max_lag = (60_000 / bin_us).max(1) as usize;
    let ingress: Vec<Vec<f64>> = (0..flows)
        .map(|f| {
            series(
                records
                    .iter()
                    .filter(|r| r.2 == f && r.0 != COVER)
                    .map(|r| r.0),
                bin_us,
                bins,
            )
        })
        .collect();
    let egress: Vec<Vec<f64>> = (0..flows)
        .map(|f| {
            series(
                records.iter().filter(|r| r.2 == f).map(|r| r.1),
                bin_us,
                bins,
            )
        })
        .collect();
    let mut right = 0;
    for (e, eg) in egress.iter().enumerate() {
        let mut best = (f64::MIN, usize::MAX);
        for (i, ing) in ingress.iter().enumerate() {
            let score = (0..=max_lag)
                .map(|lag| pearson(&ing[..bins - lag], &eg[lag..]))
                .fold(f64::MIN, f64::max);
            if score > best.0 {
                best = (score, i);
            }
        }
        if best.1 == e {
            right += 1;
        }
    }
    right as f64 / flows as f64
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn policy(padding: Padding, timing: Timing) -> Policy {
    Policy {
        padding,
        timing,
        cover: None,
        queue_limit: 1 << 16,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let duration_us: u64 = if quick { 20_000_000 } else { 60_000_000 };
    let buckets = Padding::Buckets(vec![128, 256, 512, 1200]);
    let ms = Duration::from_millis;

    println!(
        "# veil shaping measurement ({} s of traffic per run, virtual clock)\n",
        duration_us / 1_000_000
    );

    // 1. Sizes on the client leg (UDP datagram sizes), DTX voice, one flow.
    println!("## 1. Sizes a client-leg observer sees (DTX VBR voice, UDP datagram sizes)\n");
    println!("| padding | distinct sizes | bytes sent | overhead | most common sizes |");
    println!("|---|---|---|---|---|");
    let one = arrivals(Model::Dtx, 1, duration_us, 7);
    for (name, pad) in [
        ("off", Padding::Off),
        ("128,256,512,1200", buckets.clone()),
        ("multiple:64", Padding::Multiple(64)),
    ] {
        let recs = run(&policy(pad, Timing::Off), &one);
        let mut hist: BTreeMap<usize, u64> = BTreeMap::new();
        for r in &recs {
            *hist.entry(r.3).or_default() += 1;
        }
        let bytes: u64 = recs.iter().map(|r| r.3 as u64).sum();
        let raw: u64 = one.iter().map(|a| 4 + a.2 as u64).sum();
        let mut top: Vec<_> = hist.iter().map(|(s, n)| (*n, *s)).collect();
        top.sort_unstable_by(|a, b| b.cmp(a));
        let top: Vec<String> = top
            .iter()
            .take(4)
            .map(|(n, s)| format!("{s} B ×{n}"))
            .collect();
        println!(
            "| {name} | {} | {bytes} | {:+.1}% | {} |",
            hist.len(),
            (bytes as f64 / raw as f64 - 1.0) * 100.0,
            top.join(", ")
        );
    }

    // 2. Flow correlation and latency.
    println!(
        "\n## 2. Flow correlation across the relay (top-1 accuracy; chance = 1/N) and added latency\n"
    );
    let cover = Some(Cover {
        interval: ms(20),
        size: Some(128),
    });
    let modes = [
        ("off", Timing::Off, None),
        ("jitter:10ms", Timing::Jitter(ms(10)), None),
        ("jitter:30ms", Timing::Jitter(ms(30)), None),
        ("slots:10ms", Timing::Slots(ms(10)), None),
        ("slots:20ms", Timing::Slots(ms(20)), None),
        ("slots:20ms + cover 50:128", Timing::Slots(ms(20)), cover),
    ];
    let bins_us = [2_000u64, 5_000, 20_000, 100_000];
    println!(
        "Observer bins packet counts at 2, 5, 20 and 100 ms and cross-correlates (lag 0-60 ms); the best bin is reported.\n"
    );
    println!(
        "| traffic | N | timing | accuracy (best bin) | per bin 2/5/20/100 ms | added delay p50 | p99 | cover frames |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (model, mname) in [(Model::Cbr, "CBR"), (Model::Dtx, "DTX VBR")] {
        for n in [20usize, 50] {
            let arr = arrivals(model, n, duration_us, 1000 + n as u64);
            for (tname, timing, cover) in modes {
                let p = Policy {
                    cover,
                    ..policy(buckets.clone(), timing)
                };
                let recs = run(&p, &arr);
                let real = recs.iter().filter(|r| r.0 != COVER).count();
                assert_eq!(real, arr.len(), "the measurement queue never drops");
                let cover_frames = recs.len() - real;
                let per_bin: Vec<f64> = bins_us
                    .iter()
                    .map(|b| correlation_accuracy(&recs, n, *b, duration_us + 200_000))
                    .collect();
                let best = per_bin.iter().cloned().fold(0.0, f64::max);
                let mut delays: Vec<u64> = recs
                    .iter()
                    .filter(|r| r.0 != COVER)
                    .map(|r| r.1 - r.0)
                    .collect();
                delays.sort_unstable();
                let per: Vec<String> = per_bin
                    .iter()
                    .map(|a| format!("{:.0}%", a * 100.0))
                    .collect();
                println!(
                    "| {mname} | {n} | {tname} | {:.0}% | {} | {:.1} ms | {:.1} ms | {:+.0}% |",
                    best * 100.0,
                    per.join(" / "),
                    percentile(&delays, 0.5) as f64 / 1000.0,
                    percentile(&delays, 0.99) as f64 / 1000.0,
                    cover_frames as f64 / real as f64 * 100.0
                );
            }
        }
    }

    // 3. CPU cost per frame of each mode, against off, in the same run.
    println!("\n## 3. Shaper CPU per frame (padding + queueing + release), ratio to off\n");
    let arr = arrivals(Model::Cbr, 50, duration_us, 5);
    let mut base = 0.0;
    println!("| mode | ns/frame | ratio |");
    println!("|---|---|---|");
    for (name, p) in [
        ("off", policy(Padding::Off, Timing::Off)),
        ("buckets only", policy(buckets.clone(), Timing::Off)),
        (
            "buckets + slots:20ms",
            policy(buckets.clone(), Timing::Slots(ms(20))),
        ),
        (
            "buckets + jitter:30ms",
            policy(buckets.clone(), Timing::Jitter(ms(30))),
        ),
    ] {
        let reps = 5;
        let start = Instant::now();
        let mut frames = 0;
        for _ in 0..reps {
            frames += std::hint::black_box(run(&p, &arr)).len();
        }
        let ns = start.elapsed().as_nanos() as f64 / frames as f64;
        if name == "off" {
            base = ns;
        }
        println!("| {name} | {ns:.1} | {:.2}× |", ns / base);
    }
}
