//! What shaping hides, measured on the wire: N flows of DTX voice through the real `veil relay`
//! binary to webrtc-rs `turn` clients over UDP and over TLS at once, both legs captured on `lo`
//! (AF_PACKET, root), and the flow-matching observer of `tests/common/observe.rs` (Pearson of
//! packets or bytes per 20 ms or 100 ms bin, lag search 0-100 ms) run per mode and leg.
//!
//! Run by hand, as root: `cargo bench --bench shaping_wire` (`-- --flows N --secs S` to change
//! the default 20 flows per transport for 40 s). Reports top-1 accuracy against chance (1/N),
//! bandwidth on the client leg against what the peers sent, and the relay's delay (UDP: on the
//! wire; TLS: to the client application).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::observe::{By, Flow, percentile, top1};
use common::wire::{self, Outcome, Spec};

const MODES: [(&str, &[&str]); 4] = [
    ("off", &[]),
    (
        "slots (buckets 128,256,512,1200 + slots:20ms)",
        &[
            "--pad-buckets",
            "128,256,512,1200",
            "--timing",
            "slots:20ms",
            "--cover",
            "off",
        ],
    ),
    (
        "slots + cover 50:128 (per-frame buckets)",
        &[
            "--pad-buckets",
            "128,256,512,1200",
            "--timing",
            "slots:20ms",
            "--cover",
            "50:128",
        ],
    ),
    (
        "--shaping (flow:128,256,512,1200, slots:20ms, cover 50)",
        &["--shaping"],
    ),
];

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The relay's own counts, read from its `/metrics` after the run: frames held for a slot and
/// frames that left later than the timing's bound (both legs together).
struct Counted {
    delayed: f64,
    late: f64,
}

fn report(mode: &str, out: &Outcome, baseline: Option<&Outcome>, counted: &Counted) {
    for tls in [false, true] {
        let flows = out.of(tls);
        let n = flows.len();
        let ins: Vec<Flow> = flows.iter().map(|f| f.peer_leg.clone()).collect();
        let outs: Vec<Flow> = flows.iter().map(|f| f.client_leg.clone()).collect();
        let mut cells = Vec::new();
        for (by, bin) in [
            (By::Packets, 20_000),
            (By::Packets, 100_000),
            (By::Bytes, 20_000),
            (By::Bytes, 100_000),
        ] {
            let a = top1(&ins, &outs, by, bin, out.from_us, out.to_us);
            cells.push(format!("{:.2}", a));
        }
        let turn = if tls {
            "n/a (encrypted)".to_string()
        } else {
            let cd: Vec<Flow> = flows.iter().map(|f| f.client_turn.clone()).collect();
            let a = [By::Packets, By::Bytes]
                .map(|by| top1(&ins, &cd, by, 100_000, out.from_us, out.to_us));
            format!("{:.2} / {:.2}", a[0], a[1])
        };
        let secs = (out.to_us - out.from_us) as f64 / 1e6;
        let peer_bytes: usize = flows.iter().flat_map(|f| &f.peer_leg).map(|p| p.1).sum();
        let client_bytes: usize = flows.iter().flat_map(|f| &f.client_leg).map(|p| p.1).sum();
        let kbps = client_bytes as f64 * 8.0 / 1000.0 / secs / n as f64;
        let vs_off = baseline
            .map(|b| {
                let base: usize = b
                    .of(tls)
                    .iter()
                    .flat_map(|f| &f.client_leg)
                    .map(|p| p.1)
                    .sum();
                format!("{:.2}x", client_bytes as f64 / base.max(1) as f64)
            })
            .unwrap_or_else(|| "1.00x".into());
        let mut d: Vec<u64> = flows.iter().flat_map(|f| f.delays_us.clone()).collect();
        d.sort_unstable();
        let ms = |p: f64| percentile(&d, p) as f64 / 1000.0;
        let lost: usize = flows.iter().map(|f| f.sent - f.received.min(f.sent)).sum();
        // One relay serves both legs: its counts are the node's.
        let late = format!("{} of {} held (node)", counted.late, counted.delayed);
        println!(
            "| {mode} | {} | {} | {turn} | {:.0}% ({:.1} kbit/s per flow, {vs_off} of off) | {:.1} / {:.1} / {:.1} / {:.1} | {late} | {lost} |",
            if tls { "TLS" } else { "UDP" },
            cells.join(" | "),
            (client_bytes as f64 / peer_bytes.max(1) as f64 - 1.0) * 100.0,
            kbps,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            d.last().copied().unwrap_or(0) as f64 / 1000.0,
        );
    }
}

fn main() {
    let flows = arg("--flows", 20) as usize;
    let secs = arg("--secs", 40);
    println!(
        "# shaping on the wire: {flows} UDP + {flows} TLS flows of DTX voice, {secs} s, chance = {:.2}\n",
        1.0 / flows as f64
    );
    println!(
        "| mode | leg | packets 20 ms | packets 100 ms | bytes 20 ms | bytes 100 ms | TURN-aware (ChannelData only) packets / bytes 100 ms | client-leg bytes over peer payload | delay ms p50 / p99 / p99.9 / max | late frames (relay's count) | lost |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut baseline: Option<Outcome> = None;
    for (i, (mode, flags)) in MODES.iter().enumerate() {
        let ports = format!("{}-{}", 13800 + i * 50, 13849 + i * 50);
        let admin = common::free_tcp_addr();
        let admin_arg = admin.to_string();
        let mut args = vec![
            "--allow-peer",
            "127.0.0.0/8",
            "--set",
            "limits.unauthenticated.per_second=0",
            "--user-quota",
            "1000",
            "--source-quota",
            "0",
            "--admin",
            &admin_arg,
        ];
        args.extend_from_slice(flags);
        let (relay, _tcp, tls) = common::start_stream_relay(&ports, &args);
        let cert = common::stream_relay_cert(&ports);
        let spec = Spec {
            udp_flows: flows,
            tls_flows: flows,
            duration: Duration::from_secs(secs),
            seed: 42,
        };
        let out = rt.block_on(wire::run(spec, relay.addr, tls, &cert, common::SECRET));
        // Workers publish their counters every tick.
        std::thread::sleep(Duration::from_millis(1_500));
        let (_, text) = common::http_get(admin, "/metrics");
        let count = |series: &str| common::metric(&text, series).unwrap_or(0.0);
        let counted = Counted {
            delayed: count("veil_relay_shaping_delayed_frames_total"),
            late: count("veil_relay_shaping_late_frames_total"),
        };
        drop(relay);
        report(mode, &out, baseline.as_ref(), &counted);
        if baseline.is_none() {
            baseline = Some(out);
        }
    }
}
