//! The traffic analyst of the shaping claims, as pure functions: a voice traffic model and the
//! flow-matching observer. Used on a virtual clock (`benches/shaping_measure.rs`) and on packets
//! captured on the wire (`tests/shaping_wire.rs`, `benches/shaping_wire.rs`).
//!
//! The observer sees every flow on both legs of the relay (peer → relayed address, relay →
//! client), bins each flow's packets into counts or byte sums per time bin, and matches each
//! client-leg flow to the peer-leg flow whose series correlates best (Pearson), searching a lag
//! of 0 to 100 ms. Top-1 accuracy against chance (1/N) is the measure.

#![allow(dead_code)]

/// Small deterministic PRNG (xorshift64*), so runs are reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
    pub fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let (u, v) = (self.unit().max(1e-12), self.unit());
        mean + sd * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// DTX voice as a peer sends it: talk spurts (mean 1.0 s) and silences (mean 1.35 s, Brady's
/// conversation model), 20 ms frames of 60-200 bytes (VBR, SRTP included) while talking, one
/// 15-byte SID frame per 400 ms while silent; starts talking (a call starts with "hello").
/// Each frame then crosses a network with exponential jitter (mean 2 ms), order kept. Returns
/// (send time µs from the flow's start, payload bytes).
pub fn dtx_voice(rng: &mut Rng, duration_us: u64) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    let mut talking = true;
    let mut t = 0u64;
    let mut state_end = (rng.exp(1.0e6) as u64).max(200_000);
    let mut last = 0u64;
    let mut last_sid = 0u64;
    while t < duration_us {
        if t >= state_end {
            talking = !talking;
            let mean = if talking { 1.0e6 } else { 1.35e6 };
            state_end = t + (rng.exp(mean) as u64).max(200_000);
        }
        let size = if talking {
            Some(rng.normal(120.0, 35.0).clamp(60.0, 200.0) as usize)
        } else if t >= last_sid + 400_000 {
            last_sid = t;
            Some(15)
        } else {
            None
        };
        if let Some(size) = size {
            let at = (t + rng.exp(2_000.0) as u64).max(last);
            last = at;
            out.push((at, size));
        }
        t += 20_000;
    }
    out
}

/// Pearson correlation of two equal-length series (0 if either is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let (ma, mb) = (
        a[..n].iter().sum::<f64>() / n as f64,
        b[..n].iter().sum::<f64>() / n as f64,
    );
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (a[i] - ma, b[i] - mb);
        cov += x * y;
        va += x * x;
        vb += y * y;
    }
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

/// What the observer sums per bin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// Packets (or TLS records) per bin.
    Packets,
    /// Bytes per bin.
    Bytes,
}

impl By {
    pub fn name(self) -> &'static str {
        match self {
            By::Packets => "packets",
            By::Bytes => "bytes",
        }
    }
}

/// One flow on one leg: (time µs on a clock common to all flows, bytes) of each packet.
pub type Flow = Vec<(u64, usize)>;

/// A flow's series over `[from, from + bins * bin_us)`.
pub fn series(flow: &Flow, by: By, from: u64, bin_us: u64, bins: usize) -> Vec<f64> {
    let mut s = vec![0.0; bins];
    for &(t, n) in flow {
        if t < from {
            continue;
        }
        let i = ((t - from) / bin_us) as usize;
        if i < bins {
            s[i] += match by {
                By::Packets => 1.0,
                By::Bytes => n as f64,
            };
        }
    }
    s
}

/// Top-1 accuracy of the observer: each client-leg flow `egress[i]` is matched to the
/// peer-leg flow of highest correlation at the best lag of 0 to 100 ms (`ingress[i]` is the
/// truth), over the window `[from, to)` µs with bins of `bin_us`.
pub fn top1(ingress: &[Flow], egress: &[Flow], by: By, bin_us: u64, from: u64, to: u64) -> f64 {
    let bins = ((to.saturating_sub(from)) / bin_us) as usize;
    let max_lag = (100_000 / bin_us).max(1) as usize;
    let ins: Vec<Vec<f64>> = ingress
        .iter()
        .map(|f| series(f, by, from, bin_us, bins))
        .collect();
    let outs: Vec<Vec<f64>> = egress
        .iter()
        .map(|f| series(f, by, from, bin_us, bins))
        .collect();
    let mut hits = 0;
    for (truth, out) in outs.iter().enumerate() {
        let mut best = (f64::MIN, usize::MAX);
        for (j, inp) in ins.iter().enumerate() {
            let r = (0..=max_lag.min(bins.saturating_sub(2)))
                .map(|lag| pearson(&out[lag..], &inp[..bins - lag]))
                .fold(f64::MIN, f64::max);
            if r > best.0 {
                best = (r, j);
            }
        }
        if best.1 == truth {
            hits += 1;
        }
    }
    hits as f64 / egress.len().max(1) as f64
}

/// The `p`-quantile (0..=1) of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
