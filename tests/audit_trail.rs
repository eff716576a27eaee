//! Issue 25 §4 against the real binary: a relay records its operator actions in a signed,
//! hash-chained trail (its start, reloads by setting path with revocations and secrets by count,
//! a failed reload, the drain and the stop), `veil audit hold` adds a preservation hold, and
//! `veil audit verify` accepts the trail as written and refuses it after a changed byte or a
//! removed record. No caller's id, address or secret enters it.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{RawTurn, start_relay};

fn veil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("veil runs")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

fn wait_for(dir: &std::path::Path, n: usize) -> Vec<veil_trail::Record> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = veil_trail::records(dir).unwrap_or_default();
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn operator_actions_are_recorded_signed_verified_and_never_name_a_caller() {
    let work = common::TempDir(
        std::env::temp_dir().join(format!("veil-trail-e2e-{}", std::process::id())),
    );
    std::fs::create_dir_all(&work.0).unwrap();
    let key = work.0.join("audit.key");
    let trail = work.0.join("trail");
    let out = veil(&["audit", "keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let public = text(&out)
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .expect("the public key is printed")
        .to_string();
    assert!(
        !veil(&["audit", "keygen", "--out", key.to_str().unwrap()])
            .status
            .success(),
        "a key is never overwritten"
    );

    let config = work.0.join("relay.yaml");
    let base = format!(
        "audit: {{dir: {}, signing_key_file: {}, retention_days: 30}}\n",
        trail.display(),
        key.display()
    );
    std::fs::write(&config, format!("{base}auth: {{revoked_users: []}}\n")).unwrap();
    let admin = common::free_tcp_addr();
    let relay = start_relay(
        "13900-13999",
        &[
            "--config",
            config.to_str().unwrap(),
            "--admin",
            &admin.to_string(),
            "--watch-interval",
            "1",
        ],
    );
    let mut caller = RawTurn::rest("127.0.0.7:0", relay.addr, "mallory42");
    caller.allocate();
    assert_eq!(wait_for(&trail, 1)[0].kind, "start");

    // A revocation with a grace for removed secrets, and a setting that needs a restart.
    std::fs::write(
        &config,
        format!(
            "{base}auth: {{revoked_users: [mallory42], removed_secret_grace: 30}}\nquotas: {{total: 500}}\n"
        ),
    )
    .unwrap();
    let r = wait_for(&trail, 2);
    let reload = &r[1];
    assert_eq!(reload.kind, "reload");
    let d = &reload.detail;
    assert_eq!(d["result"], "success");
    assert_eq!(d["trigger"], "file change");
    assert_eq!(
        d["applied"],
        serde_json::json!(["auth.removed_secret_grace", "auth.revoked_users"])
    );
    assert_eq!(d["restart_needed"], serde_json::json!(["quotas.total"]));
    assert_eq!(d["revoked_users"]["added"], 1);
    assert_eq!(d["secrets"]["after"], 2);
    // A file that does not parse: a failed reload, recorded as such.
    std::fs::write(&config, format!("{base}auth: {{revoked_users: [unclosed\n")).unwrap();
    let r = wait_for(&trail, 3);
    assert_eq!(r[2].kind, "reload");
    assert_eq!(
        r[2].detail,
        serde_json::json!({"trigger": "file change", "result": "failure"})
    );
    let (_, m) = common::http_get(admin, "/metrics");
    assert_eq!(
        common::metric(&m, "veil_relay_audit_records"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        common::metric(&m, "veil_relay_audit_errors_total"),
        Some(0.0)
    );

    // An incident: the operator holds the last day's records, with the node's key.
    let out = veil(&[
        "audit",
        "hold",
        "--trail",
        trail.to_str().unwrap(),
        "--signing-key",
        key.to_str().unwrap(),
        "--from",
        "24h",
        "--reason",
        "INC-4711 stolen credential",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    common::signal(&relay.child, "TERM");
    let r = wait_for(&trail, 7);
    let kinds: Vec<&str> = r.iter().map(|x| x.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "start", "reload", "reload", "hold", "drain", "drained", "stop"
        ]
    );
    assert_eq!(r[4].detail["signal"], "SIGTERM");

    // The trail names no caller, address or secret.
    let all = std::fs::read_dir(&trail)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    for needle in [
        "mallory",
        "127.0.0.7",
        "127.0.0.1",
        common::SECRET,
        &caller.username,
    ] {
        assert!(!all.contains(needle), "{needle} in the trail");
    }

    let verify = || {
        veil(&[
            "audit",
            "verify",
            "--trail",
            trail.to_str().unwrap(),
            "--public-key",
            &public,
        ])
    };
    let out = verify();
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("verified, 7 records"), "{t}");
    assert!(t.contains("head: record 6, sha256 "), "{t}");
    assert!(t.contains("INC-4711 stolen credential"), "{t}");

    // One byte changed anywhere, or a record removed: refused, naming where.
    let seg = std::fs::read_dir(&trail)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let good = std::fs::read_to_string(&seg).unwrap();
    let bad = good.replacen("\"result\":\"success\"", "\"result\":\"suckess\"", 1);
    std::fs::write(&seg, bad).unwrap();
    let out = verify();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("NOT VERIFIED") && text(&out).contains("line 2"),
        "{}",
        text(&out)
    );
    let lines: Vec<&str> = good.lines().collect();
    std::fs::write(&seg, [&lines[..3], &lines[4..]].concat().join("\n") + "\n").unwrap();
    let out = verify();
    assert!(!out.status.success());
    assert!(text(&out).contains("missing"), "{}", text(&out));
}
