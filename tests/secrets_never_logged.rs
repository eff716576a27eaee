//! Issue 21 §4 against the real binary: a configuration that fails to parse, at start or at a
//! reload, of the relay and of the allocator, is reported by path, line and column, and no line
//! the process writes holds a secret of it (an inline REST secret, a static user's password, an
//! API key), wherever the fault is.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TempDir, free_udp_port, signal, wait_ready};

const SECRET: &str = "inline-secret-A1b2C3d4";
const PASSWORD: &str = "static-pass-Z9y8x7";
const API_KEY: &str = "backend-api-key-Q1w2E3r4";

fn dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("veil-secrets-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

fn assert_no_secret(output: &str) {
    for s in [SECRET, PASSWORD, API_KEY, "A1b2C3d4", "Z9y8x7", "Q1w2E3r4"] {
        assert!(!output.contains(s), "`{s}` in the output:\n{output}");
    }
}

/// Runs `veil <args>` to its end (10 s at most); stdout and stderr together.
fn run(args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(args)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// Relay configs with the secrets and a fault at, next to or after them.
fn broken_relay_configs(listen: &str) -> Vec<(&'static str, String)> {
    let head = format!(
        "listen: [{listen}]\nport_range: 11600-11699\nauth:\n  secrets: [{SECRET}]\n  \
         static_users:\n    - {{username: dev, password: {PASSWORD}}}\n"
    );
    vec![
        ("unclosed bracket", format!("{head}relay_ips: [127.0.0.1\n")),
        (
            "secret where a number goes",
            format!("{head}  max_session: {SECRET}\n"),
        ),
        (
            "secret as an enum",
            format!("{head}log: {{format: {SECRET}}}\n"),
        ),
        (
            "secret where a list goes",
            format!("listen: [{listen}]\nauth:\n  secrets: {SECRET}\n"),
        ),
        ("tab", format!("{head}\tzone: eu\n")),
        ("a password as a key", format!("{head}  {PASSWORD}: 1\n")),
    ]
}

#[test]
fn a_relay_config_that_fails_at_start_names_the_place_not_the_secret() {
    let d = dir("relay-start");
    for (what, text) in broken_relay_configs("127.0.0.1:1") {
        let f = d.0.join("relay.yaml");
        std::fs::write(&f, &text).unwrap();
        let (out, log) = run(&["relay", "--config", f.to_str().unwrap()]);
        assert!(!out.status.success(), "{what}: {log}");
        assert!(log.contains("line"), "{what}: names a line: {log}");
        assert_no_secret(&log);
        let (_, log) = run(&["check-config", f.to_str().unwrap()]);
        assert_no_secret(&log);
    }
    // A `--set` value is named by its path only.
    let (out, log) = run(&[
        "relay",
        "--set",
        &format!("auth.secrets=[{SECRET}"),
        "--set",
        &format!("auth.max_session={PASSWORD}"),
    ]);
    assert!(!out.status.success());
    assert!(log.contains("--set auth.secrets"), "{log}");
    assert_no_secret(&log);
}

#[test]
fn a_failed_relay_reload_logs_no_secret() {
    let d = dir("relay-reload");
    let port = free_udp_port();
    let listen = format!("127.0.0.1:{port}");
    let f = d.0.join("relay.yaml");
    std::fs::write(
        &f,
        format!(
            "listen: [{listen}]\nport_range: 11600-11699\nauth:\n  secrets: [{SECRET}]\n  \
             static_users:\n    - {{username: dev, password: {PASSWORD}}}\n\
             lifecycle: {{watch_interval: 0}}\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["relay", "--config", f.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|r| {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        })
    })
    .collect();
    wait_ready(listen.parse().unwrap());
    let configs = broken_relay_configs(&listen);
    for (i, (what, text)) in configs.iter().enumerate() {
        std::fs::write(&f, text).unwrap();
        signal(&child, "HUP");
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.lock().unwrap().matches("reload failed").count() <= i {
            assert!(
                Instant::now() < deadline,
                "{what}: no reload failure logged"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    wait_ready(listen.parse().unwrap());
    let _ = child.kill();
    let _ = child.wait();
    for r in readers {
        let _ = r.join();
    }
    let log = log.lock().unwrap().clone();
    assert_no_secret(&log);
    assert_eq!(log.matches("reload failed").count(), configs.len(), "{log}");
}

#[test]
fn an_allocator_config_that_fails_names_the_place_not_the_key() {
    let d = dir("allocator");
    let secrets = d.0.join("secrets");
    std::fs::write(&secrets, format!("{SECRET}\n")).unwrap();
    let base = format!(
        "secret_files: [{}]\npolicy: {{zones: {{eu: {{relays: [eu-1]}}}}, rules: [], default: [eu]}}\n\
         relays: [{{name: eu-1, admin: \"127.0.0.1:9\"}}]\n",
        secrets.display()
    );
    for (what, text) in [
        (
            "a typo after the key",
            format!("api_keys: [{{key: {API_KEY}, backend: tru}}]\n{base}"),
        ),
        (
            "unclosed",
            format!("api_keys: [{{key: {API_KEY}, backend: true}}\n{base}"),
        ),
        (
            "key where a number goes",
            format!("api_keys: [{{key: {API_KEY}}}]\nttl: {API_KEY}\n{base}"),
        ),
        (
            "key where a float goes",
            format!("api_keys: [{{key: {API_KEY}}}]\n{base}distance: {{ms_per_km: {API_KEY}}}\n"),
        ),
    ] {
        let f = d.0.join("allocator.yaml");
        std::fs::write(&f, &text).unwrap();
        let (out, log) = run(&["allocator", "--config", f.to_str().unwrap()]);
        assert!(!out.status.success(), "{what}: {log}");
        assert!(log.contains("line"), "{what}: {log}");
        assert_no_secret(&log);
    }
}
