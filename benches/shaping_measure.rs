//! What shaping buys, measured on a model: sizes a client-leg observer sees, how well an
//! observer of both relay legs matches flows by packet counts and by byte volume, and what each
//! mode costs in bandwidth, latency and CPU.
//!
//! Run by hand: `cargo bench -p veil-relay --bench shaping_measure` (add `-- --quick` for a
//! shorter trace). It drives the relay's own shaper (`veil_relay::shaping`, the code the driver
//! runs) with ChannelData framed as the core frames it, on a virtual clock: the numbers are the
//! policy's, free of this machine's scheduling noise. The traffic model and the observer are the
//! ones the wire bench (`benches/shaping_wire.rs`) runs on captured packets
//! (`tests/common/observe.rs`); the README's claims come from the wire, this is the fast model.
//! Traffic models:
//! * **DTX voice**: VBR with talk spurts and silences (one SID frame per 400 ms).
//! * **CBR voice**: a frame every 20 ms of one size (what the README asks integrators to use).
//!
//! Both cross a network with exponential jitter (mean 2 ms) before the relay.

#[path = "../tests/common/observe.rs"]
mod observe;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use observe::{By, Flow, Rng, percentile, top1};
use veil_relay::proto::stun::channel_data;
use veil_relay::shaping::{Cover, Decision, Padding, Policy, Shaper, Timing};

#[derive(Clone, Copy, PartialEq)]
enum Model {
    Dtx,
    Cbr,
}

/// One packet arriving at the relay from a peer: (arrival µs, flow, payload bytes).
type Arrival = (u64, usize, usize);

/// One flow's frames as the peer sends them: (send time µs from the flow's start, bytes).
fn flow_trace(model: Model, rng: &mut Rng, duration_us: u64) -> Vec<(u64, usize)> {
    match model {
        Model::Dtx => observe::dtx_voice(rng, duration_us),
        Model::Cbr => (0..duration_us / 20_000)
            .map(|i| (i * 20_000 + rng.exp(2_000.0) as u64, 12 + 80 + 10))
            .scan(0, |last, (t, n)| {
                *last = t.max(*last);
                Some((*last, n))
            })
            .collect(),
    }
}

/// Every flow's frames, each flow starting at a random point of the first 20 ms and crossing
/// 20 ms of network before the relay, merged in arrival order.
fn arrivals(model: Model, flows: usize, duration_us: u64, seed: u64) -> Vec<Arrival> {
    let mut rng = Rng::new(seed);
    let mut all = Vec::new();
    for f in 0..flows {
        let start = 20_000 + (rng.unit() * 20_000.0) as u64;
        for (t, size) in flow_trace(model, &mut rng, duration_us) {
            all.push((start + t, f, size));
        }
    }
    all.sort_unstable();
    all
}

/// One datagram to a client: (arrival µs or [`COVER`], departure µs, flow, client-leg size,
/// the ChannelData size it arrived as).
type Record = (u64, u64, usize, usize, usize);

/// Runs arrivals through a shaper.
fn run(policy: &Policy, arrivals: &[Arrival]) -> Vec<Record> {
    let epoch = Instant::now();
    let at = |us: u64| epoch + Duration::from_micros(us);
    let us_of = |t: Instant| t.duration_since(epoch).as_micros() as u64;
    let mut shaper: Shaper<usize> = Shaper::new(policy.clone(), epoch, 42);
    let flows = arrivals.iter().map(|a| a.1 + 1).max().unwrap_or(0);
    // The shaper keeps order within a flow, so a per-flow FIFO of arrival times pairs each
    // departure with its arrival.
    let mut pending: Vec<std::collections::VecDeque<(u64, usize)>> =
        vec![Default::default(); flows];
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(arrivals.len());
    let drain = |shaper: &mut Shaper<usize>,
                 until: u64,
                 out: &mut Vec<_>,
                 pending: &mut Vec<std::collections::VecDeque<(u64, usize)>>| {
        loop {
            let release = shaper.next_release();
            let cover = shaper.next_cover_tick();
            match (release, cover) {
                (Some(r), c) if us_of(r) <= until && c.is_none_or(|c| r <= c) => {
                    let when = us_of(r);
                    shaper.pop_due(r, |flow, frame| {
                        let (arrived, raw) = pending[flow]
                            .pop_front()
                            .expect("a departure follows an arrival");
                        out.push((arrived, when, flow, frame.len(), raw))
                    });
                }
                (_, Some(c)) if us_of(c) <= until => {
                    let when = us_of(c);
                    shaper.cover_due(
                        c,
                        |_| true,
                        |flow, frame| out.push((COVER, when, flow, frame.len(), 0)),
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
                out.push((t, t, flow, r.len(), 4 + size))
            }
            (Decision::Queued, _) => pending[flow].push_back((t, 4 + size)),
        }
    }
    let end = arrivals.last().map_or(0, |a| a.0) + 100_000;
    drain(&mut shaper, end, &mut out, &mut pending);
    assert!(pending.iter().all(|p| p.is_empty()), "every frame left");
    out
}

/// Marks a cover frame's "arrival": it has none.
const COVER: u64 = u64::MAX;

/// The two legs the observer sees, per flow: (peer leg: arrival and ChannelData size of each
/// frame; client leg: departure and size of each datagram, cover included).
fn legs(records: &[Record], flows: usize) -> (Vec<Flow>, Vec<Flow>) {
    let mut ins = vec![Flow::new(); flows];
    let mut outs = vec![Flow::new(); flows];
    for &(arrived, left, flow, size, raw) in records {
        if arrived != COVER {
            ins[flow].push((arrived, raw));
        }
        outs[flow].push((left, size));
    }
    for f in &mut ins {
        f.sort_unstable();
    }
    for f in &mut outs {
        f.sort_unstable();
    }
    (ins, outs)
}

fn policy(padding: Padding, timing: Timing) -> Policy {
    Policy {
        padding,
        timing,
        cover: None,
        queue_limit: 1 << 16,
    }
}

/// The modes compared: (name, padding, timing, cover).
fn modes() -> Vec<(&'static str, Policy)> {
    let ms = Duration::from_millis;
    let buckets = Padding::Buckets(vec![128, 256, 512, 1200]);
    let flow = Padding::Flow(vec![128, 256, 512, 1200]);
    let with = |padding: &Padding, timing, cover| Policy {
        cover,
        ..policy(padding.clone(), timing)
    };
    let cover = |size| {
        Some(Cover {
            interval: ms(20),
            size,
        })
    };
    vec![
        ("off", with(&Padding::Off, Timing::Off, None)),
        (
            "buckets, jitter:30ms",
            with(&buckets, Timing::Jitter(ms(30)), None),
        ),
        (
            "buckets, slots:10ms",
            with(&buckets, Timing::Slots(ms(10)), None),
        ),
        (
            "buckets, slots:20ms",
            with(&buckets, Timing::Slots(ms(20)), None),
        ),
        (
            "buckets, slots:20ms, cover 50:128 (the old default)",
            with(&buckets, Timing::Slots(ms(20)), cover(Some(128))),
        ),
        (
            "flow:, slots:20ms, cover 50 (--shaping)",
            with(&flow, Timing::Slots(ms(20)), cover(None)),
        ),
        (
            "flow:, slots:10ms, cover 50",
            with(&flow, Timing::Slots(ms(10)), cover(None)),
        ),
    ]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let duration_us: u64 = if quick { 20_000_000 } else { 60_000_000 };
    let buckets = Padding::Buckets(vec![128, 256, 512, 1200]);
    let ms = Duration::from_millis;

    println!(
        "# veil shaping model ({} s of traffic per run, virtual clock)\n",
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
        (
            "flow:128,256,512,1200",
            Padding::Flow(vec![128, 256, 512, 1200]),
        ),
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

    // 2. Flow correlation, bandwidth and latency.
    println!(
        "\n## 2. Flow matching across the relay (top-1 accuracy; chance = 1/N), bandwidth, added latency\n"
    );
    println!(
        "The observer bins each flow's packets (counts) or bytes (sums) at 20 and 100 ms on both legs and \
         matches by Pearson correlation with a lag search of 0-100 ms (`tests/common/observe.rs`).\n"
    );
    println!(
        "| traffic | N | mode | packets 20/100 ms | bytes 20/100 ms | client-leg bytes | delay p50 | p99 | max | cover frames |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (model, mname) in [(Model::Cbr, "CBR"), (Model::Dtx, "DTX VBR")] {
        for n in [20usize, 50] {
            let arr = arrivals(model, n, duration_us, 1000 + n as u64);
            let raw: u64 = arr.iter().map(|a| 4 + a.2 as u64).sum();
            for (mode, p) in modes() {
                let recs = run(&p, &arr);
                let real = recs.iter().filter(|r| r.0 != COVER).count();
                assert_eq!(real, arr.len(), "the measurement queue never drops");
                let cover_frames = recs.len() - real;
                let (ins, outs) = legs(&recs, n);
                let to = duration_us + 40_000;
                let acc = |by, bin| top1(&ins, &outs, by, bin, 0, to);
                let mut delays: Vec<u64> = recs
                    .iter()
                    .filter(|r| r.0 != COVER)
                    .map(|r| r.1 - r.0)
                    .collect();
                delays.sort_unstable();
                let sent: u64 = recs.iter().map(|r| r.3 as u64).sum();
                let ms_at = |q| percentile(&delays, q) as f64 / 1000.0;
                println!(
                    "| {mname} | {n} | {mode} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2}× | {:.1} ms | {:.1} ms | {:.1} ms | {:+.0}% |",
                    acc(By::Packets, 20_000),
                    acc(By::Packets, 100_000),
                    acc(By::Bytes, 20_000),
                    acc(By::Bytes, 100_000),
                    sent as f64 / raw as f64,
                    ms_at(0.5),
                    ms_at(0.99),
                    ms_at(1.0),
                    cover_frames as f64 / real as f64 * 100.0
                );
            }
        }
    }

    // 3. CPU cost per frame of each mode, against off, in the same run.
    println!(
        "\n## 3. Shaper CPU per media frame (padding, queueing, release, cover), ratio to off\n"
    );
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
    ]
    .into_iter()
    .chain(
        modes()
            .into_iter()
            .filter(|(name, _)| name.ends_with("(--shaping)")),
    ) {
        let reps = 5;
        let start = Instant::now();
        let mut frames = 0;
        for _ in 0..reps {
            std::hint::black_box(run(&p, &arr));
            frames += arr.len();
        }
        let ns = start.elapsed().as_nanos() as f64 / frames as f64;
        if name == "off" {
            base = ns;
        }
        println!("| {name} | {ns:.1} | {:.2}× |", ns / base);
    }
}
