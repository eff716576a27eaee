//! The trail verifies as written, and fails to verify after any byte of it changes, a record is
//! removed, inserted or reordered, a segment is deleted by hand, or another key signs; retention
//! deletes only what no hold covers, and what it deletes still verifies.

use super::*;

const DAY: u64 = 86_400;
/// 2026-12-01T00:00:00Z.
const T0: u64 = 1_796_083_200;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("veil-trail-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    Dir(d)
}

fn key(d: &Path) -> (SigningKey, Vec<u8>) {
    let (file, public) = keygen().unwrap();
    let path = d.with_extension("key");
    std::fs::write(&path, file).unwrap();
    let k = SigningKey::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(k.public(), public);
    (k, public_key(&public).unwrap())
}

fn trail(d: &Dir, retention_days: u32) -> (Trail, Vec<u8>) {
    std::fs::create_dir_all(&d.0).unwrap();
    let (k, public) = key(&d.0);
    (
        Trail::open(&d.0, k, "relay", retention_days).unwrap(),
        public,
    )
}

fn reload(n: u64) -> Value {
    serde_json::json!({"result": "success", "changed": ["auth.revoked_users"], "revoked_users": {"added": n, "removed": 0}})
}

#[test]
fn a_written_trail_verifies_and_reports_its_head() {
    let d = dir("ok");
    let (t, public) = trail(&d, 365);
    t.append(T0, "start", serde_json::json!({"version": "0.1.0"}))
        .unwrap();
    for i in 0..3 {
        t.append(T0 + 10 + i, "reload", reload(i)).unwrap();
    }
    // The clock went back: the record keeps the previous time.
    let last = t
        .append(T0 - 100, "drain", serde_json::json!({"allocations": 4}))
        .unwrap();
    let s = verify(&d.0, &[public]).unwrap();
    assert_eq!((s.records, s.first_seq, s.segments), (5, 0, 1));
    assert_eq!(s.head, Some((4, last.hash)));
    assert_eq!(s.kinds["reload"], 3);
    let text = std::fs::read_to_string(d.0.join("trail-2026-12-01.jsonl")).unwrap();
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains("\"time\":\"2026-12-01T00:00:12Z\"")
    );
    // Another key's public half does not verify it.
    let (_, other) = key(&d.0);
    let e = verify(&d.0, &[other]).unwrap_err();
    assert!(e.contains("which was not given"), "{e}");
}

#[test]
fn any_changed_byte_fails_verification() {
    let d = dir("bytes");
    let (t, public) = trail(&d, 365);
    for i in 0..4 {
        t.append(T0 + i, "reload", reload(i)).unwrap();
    }
    let path = d.0.join("trail-2026-12-01.jsonl");
    let good = std::fs::read(&path).unwrap();
    let keys = [public];
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        assert!(
            verify(&d.0, &keys).is_err(),
            "byte {i} ({:?}) changed and the trail still verifies",
            good[i] as char
        );
    }
    std::fs::write(&path, &good).unwrap();
    assert!(verify(&d.0, &keys).is_ok());
}

#[test]
fn removed_inserted_or_reordered_records_fail_verification() {
    let d = dir("order");
    let (t, public) = trail(&d, 365);
    for i in 0..5 {
        t.append(T0 + i, "reload", reload(i)).unwrap();
    }
    let path = d.0.join("trail-2026-12-01.jsonl");
    let good = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let keys = [public];
    let check = |ls: Vec<&str>, want: &str| {
        std::fs::write(&path, ls.join("\n") + "\n").unwrap();
        let e = verify(&d.0, &keys).unwrap_err();
        assert!(e.contains(want), "{want}: {e}");
    };
    check([&lines[..2], &lines[3..]].concat(), "missing");
    check(lines[1..].to_vec(), "no signed pruned record");
    check(
        vec![lines[0], lines[2], lines[1], lines[3], lines[4]],
        "missing",
    );
    check(
        vec![lines[0], lines[1], lines[1], lines[2]],
        "reordered or repeated",
    );
    // The newest lines removed: the chain alone cannot tell, the head can (the log and the
    // records-total metric off the node say 4).
    std::fs::write(&path, lines[..3].join("\n") + "\n").unwrap();
    assert_eq!(verify(&d.0, &keys).unwrap().head.unwrap().0, 2);
}

#[test]
fn retention_deletes_what_no_hold_covers_and_the_rest_still_verifies() {
    let d = dir("prune");
    let (t, public) = trail(&d, 2);
    let keys = [public];
    // Five days of records: 2026-12-01 .. 12-05, two a day.
    for day in 0..5 {
        for i in 0..2 {
            t.append(T0 + day * DAY + 3600 * i, "reload", reload(i))
                .unwrap();
        }
    }
    // An incident on the 2nd: held, and the hold is a record too.
    let h = t
        .hold(
            T0 + 4 * DAY + 7200,
            T0 + DAY + 60,
            T0 + DAY + 120,
            "INC-42 credential abuse",
        )
        .unwrap();
    assert_eq!(active_holds(&d.0).unwrap().len(), 1);
    // On the 6th, with 2 days' retention: the 1st goes, the 2nd is held, the 3rd goes (wholly
    // past retention too), the 4th (partly within it) and the 5th stay.
    let (gone, _) = t.prune(T0 + 5 * DAY + 100).unwrap();
    assert_eq!(gone, ["trail-2026-12-01.jsonl", "trail-2026-12-03.jsonl"]);
    let s = verify(&d.0, &keys).unwrap();
    assert_eq!(s.gaps, [(0, 1), (4, 5)]);
    assert_eq!((s.first_seq, s.records, s.holds.len()), (2, 8, 1));
    // Released, and pruned again: the 2nd goes; the gaps merge and still verify.
    t.release(T0 + 5 * DAY + 9000, h.seq).unwrap();
    assert!(
        t.release(T0 + 5 * DAY + 9001, h.seq).is_err(),
        "released already"
    );
    let (gone, rec) = t.prune(T0 + 5 * DAY + 9500).unwrap();
    assert_eq!(gone, ["trail-2026-12-02.jsonl"]);
    let s = verify(&d.0, &keys).unwrap();
    assert_eq!(s.gaps, [(0, 5)]);
    assert_eq!(
        s.head.map(|h| h.0),
        rec.map(|r| r.seq),
        "the pruned record is the head"
    );
    assert_eq!(s.kinds["pruned"], 2);
    assert!(s.holds.is_empty());
    // A segment deleted by hand, without a pruned record: detected.
    std::fs::remove_file(d.0.join("trail-2026-12-04.jsonl")).unwrap();
    let e = verify(&d.0, &keys).unwrap_err();
    assert!(e.contains("no signed pruned record"), "{e}");
}

#[test]
fn holds_take_a_short_reason_and_writers_share_a_trail() {
    let d = dir("share");
    let (t, public) = trail(&d, 30);
    for bad in ["", "two\nlines", &"x".repeat(MAX_REASON + 1)] {
        assert!(t.hold(T0, T0, T0 + 1, bad).is_err(), "{bad:?}");
    }
    assert!(t.hold(T0, T0 + 1, T0, "backwards").is_err());
    // The node and `veil audit hold` append to one trail, each with its own key.
    let (k2, public2) = key(&d.0);
    let cli = Trail::open(&d.0, k2, "cli", 30).unwrap();
    for i in 0..6 {
        if i % 2 == 0 {
            t.append(T0 + i, "reload", reload(i)).unwrap();
        } else {
            cli.hold(T0 + i, T0, T0 + i, "INC-7").unwrap();
        }
    }
    let s = verify(&d.0, &[public.clone(), public2]).unwrap();
    assert_eq!((s.records, s.keys.len(), s.holds.len()), (6, 2, 3));
    assert!(
        verify(&d.0, &[public]).is_err(),
        "the CLI's key was not given"
    );
    // A key file that is not one: a clear error that quotes nothing of it.
    let junk = d.0.join("junk.key");
    std::fs::write(&junk, "hunter2-not-a-key").unwrap();
    let e = SigningKey::load(&junk).unwrap_err().to_string();
    assert!(
        e.contains("not an Ed25519 signing key") && !e.contains("hunter2"),
        "{e}"
    );
}
