//! `veil load` against veil and against coturn's `turnserver` (a server we did not write): the
//! clients allocate, exchange packets with the generator's echo peer without loss, and the
//! summary line says so in a form scripts can parse. Low rates, loopback only, bounded.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{SECRET, start_relay};

fn summary(out: &std::process::Output) -> HashMap<String, String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("veil-load "))
        .unwrap_or_else(|| {
            panic!(
                "no summary line:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// 20 clients at 50 packets/s for 1.5 s, and `extra`: the summary.
fn load(server: &str, secret_file: &std::path::Path, extra: &[&str]) -> HashMap<String, String> {
    let mut args = vec!["--clients", "20", "--rate", "50", "--duration", "1.5"];
    args.extend_from_slice(extra);
    load_with(server, secret_file, &args)
}

/// `veil load` against `server` with `args`, which must succeed: its summary.
fn load_with(
    server: &str,
    secret_file: &std::path::Path,
    args: &[&str],
) -> HashMap<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["load", "--server", server, "--secret-file"])
        .arg(secret_file)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "veil load failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    summary(&out)
}

fn assert_clean(s: &HashMap<String, String>, what: &str) {
    let n = |k: &str| {
        s[k].parse::<f64>()
            .unwrap_or_else(|_| panic!("{k} in {s:?}"))
    };
    assert_eq!(n("clients"), 20.0, "{what}: {s:?}");
    assert_eq!(n("setup_failures"), 0.0, "{what}: {s:?}");
    assert!(
        n("sent") >= 20.0 * 50.0 * 1.4,
        "{what}: paced at the asked rate: {s:?}"
    );
    assert_eq!(n("received"), n("sent"), "{what}: nothing lost: {s:?}");
    assert_eq!(n("loss_pct"), 0.0, "{what}: {s:?}");
    assert!(
        n("rtt_p50_us") > 0.0 && n("rtt_p99_us") >= n("rtt_p50_us"),
        "{what}: {s:?}"
    );
    assert!(n("setup_per_s") > 0.0, "{what}: {s:?}");
}

#[test]
fn drives_veil_over_channels_and_send_indications() {
    let admin = common::free_tcp_addr();
    let relay = start_relay(
        "15000-15499",
        &["--allow-peer", "127.0.0.0/8", "--admin", &admin.to_string()],
    );
    let secrets = relay.dir.0.join("secrets");
    let server = relay.addr.to_string();
    let s = load(&server, &secrets, &[]);
    assert_eq!(s["mode"], "channel");
    assert_clean(&s, "veil, channels");
    let s = load(&server, &secrets, &["--send-indications", "--size", "1200"]);
    assert_eq!(s["mode"], "send");
    assert_clean(&s, "veil, Send indications");
    // The generator deletes its allocations when it is done.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = common::http_get(admin, "/metrics");
        if common::metric(&m, "veil_relay_allocations") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "allocations left behind:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 21 §8: clients keep their allocations, permissions and channels alive. With a relay
/// whose allocations last 4 s and permissions and channels 3 s, 12 s of traffic lose nothing
/// (without refreshes, every packet after the third second was lost), and the summary counts
/// the refreshes.
#[test]
fn clients_keep_their_allocations_permissions_and_channels_alive() {
    let relay = start_relay(
        "15600-15699",
        &[
            "--allow-peer",
            "127.0.0.0/8",
            "--default-lifetime",
            "4",
            "--set",
            "lifetimes={default_allocation: 4, max_allocation: 60, permission: 3, channel: 3}",
        ],
    );
    let secrets = relay.dir.0.join("secrets");
    let server = relay.addr.to_string();
    for mode in [&[][..], &["--send-indications"][..]] {
        let mut args = vec![
            "--duration",
            "12",
            "--clients",
            "5",
            "--rate",
            "50",
            "--bind-every",
            "2",
        ];
        args.extend_from_slice(mode);
        let s = load_with(&server, &secrets, &args);
        let n = |k: &str| s[k].parse::<f64>().unwrap();
        assert_eq!(n("loss_pct"), 0.0, "{mode:?}: {s:?}");
        assert_eq!(n("received"), n("sent"), "{mode:?}: {s:?}");
        // Per client: a Refresh every 2 s and a bind every 2 s, over 12 s.
        assert!(n("refreshes_ok") >= 5.0 * 2.0 * 5.0, "{mode:?}: {s:?}");
        assert_eq!(n("refreshes_failed"), 0.0, "{mode:?}: {s:?}");
        assert_eq!(s["keepalive"], "refresh_half_lifetime+bind_every_2s");
    }
}

struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn drives_coturn_too() {
    let found = Command::new("sh")
        .args(["-c", "command -v turnserver"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "turnserver not found: apt-get install coturn (.ci/run installs it)"
    );
    let port = common::free_udp_port();
    let dir = common::TempDir(
        std::env::temp_dir().join(format!("veil-load-coturn-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    let secrets = dir.0.join("secret");
    std::fs::write(&secrets, format!("{SECRET}\n")).unwrap();
    let _coturn = Coturn(
        Command::new("turnserver")
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--relay-ip=127.0.0.1",
                "--min-port=14000",
                "--max-port=14499",
                "--use-auth-secret",
                &format!("--static-auth-secret={SECRET}"),
                "--realm=veil",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "--no-cli",
                "--allow-loopback-peers",
                "--no-stdout-log",
                "--log-file=/dev/null",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver starts"),
    );
    common::wait_ready(format!("127.0.0.1:{port}").parse().unwrap());
    let s = load(&format!("127.0.0.1:{port}"), &secrets, &[]);
    assert_clean(&s, "coturn, channels");
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    for (args, want) in [
        (vec!["--clients", "0"], "--clients"),
        (vec!["--size", "8"], "--size"),
        (vec!["--duration", "0"], "--duration"),
        (vec![], "credentials"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_veil"))
            .args(["load", "--server", "127.0.0.1:9"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// A relay that stalls while clients keep sending catches up without losing anything: the
/// datagrams queued on its listeners (over three batches' worth) are read batch after batch
/// although no new one arrives to report the socket again (edge-triggered set), and the
/// echoes come back through the per-round send queues. The stall is timed to end after the
/// generator stopped sending, inside its drain window.
#[test]
fn a_relay_stalled_at_the_end_of_a_run_catches_up_without_loss() {
    use std::io::{BufRead, BufReader};
    let relay = start_relay("15500-15599", &["--allow-peer", "127.0.0.0/8"]);
    let secrets = relay.dir.0.join("secrets");
    let mut generator = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["load", "--server", &relay.addr.to_string(), "--secret-file"])
        .arg(&secrets)
        .args(["--clients", "20", "--rate", "100", "--duration", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(generator.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the generator ended before its setup line"
        );
        if line.contains("allocations in") {
            break;
        }
    }
    // Traffic runs for 1 s from here; stop the relay for its last 100 ms and 100 ms more
    // (about 200 datagrams queue up), then let it go within the 500 ms drain.
    std::thread::sleep(Duration::from_millis(900));
    common::signal(&relay.child, "STOP");
    std::thread::sleep(Duration::from_millis(200));
    common::signal(&relay.child, "CONT");
    let out = generator.wait_with_output().unwrap();
    assert!(out.status.success());
    let s = summary(&out);
    let n = |k: &str| s[k].parse::<f64>().unwrap();
    assert!(n("sent") >= 20.0 * 100.0 * 0.9, "{s:?}");
    assert_eq!(n("received"), n("sent"), "nothing lost: {s:?}");
}
