//! The allocator's audit trail (README: The audit trail): its start with a fingerprint of the
//! residency policy (so a changed policy shows between two starts), a changed signing secret,
//! a geo database taken up or refused, and the cross-border record of every hour that ended.
//! Counts and zone names only: no address, user or call id.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

use super::App;

/// The trail and what the metrics say of it.
#[derive(Debug, Default)]
pub(super) struct Trail {
    recorder: OnceLock<veil_trail::Recorder>,
    count: Arc<Count>,
    /// The next hour whose cross-border record is due (its start, Unix seconds).
    next_hour: Mutex<Option<u64>>,
}

/// Records written (the head's seq + 1) and appends that failed.
#[derive(Debug, Default)]
pub(super) struct Count {
    pub(super) on: AtomicBool,
    pub(super) records: AtomicU64,
    pub(super) errors: AtomicU64,
}

impl Trail {
    fn record(&self, kind: &str, detail: Value) {
        if let Some(r) = self.recorder.get() {
            r.record(kind, detail);
        }
    }

    pub(super) fn count(&self) -> &Count {
        &self.count
    }
}

impl App {
    /// Opens the trail `audit` names, if any, and records the start: the version, the zones, the
    /// policy's fingerprint and whether it changed since the last start recorded there.
    pub fn start_trail(&self, now: u64) -> Result<(), veil_trail::TrailError> {
        let count = self.trail.count.clone();
        let recorder = veil_trail::Recorder::open(&self.cfg.audit, "allocator", move |seq| {
            count.on.store(true, Ordering::Relaxed);
            match seq {
                Some(s) => count.records.store(s.saturating_add(1), Ordering::Relaxed),
                None => {
                    count.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        })?;
        let policy = serde_json::to_string(&self.cfg.policy).unwrap_or_default();
        let fingerprint = veil_trail::line_hash(&policy);
        let zones: Vec<&String> = self.cfg.policy.zones.keys().collect();
        let last = recorder.last("start");
        let changed = last
            .as_ref()
            .map(|r| r.detail["policy"] != json!(fingerprint));
        let before: Vec<String> = last
            .as_ref()
            .and_then(|r| serde_json::from_value(r.detail["zones"].clone()).ok())
            .unwrap_or_default();
        recorder.record(
            "start",
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "policy": fingerprint,
                "policy_changed": changed,
                "zones": zones,
                "zones_added": zones.iter().filter(|z| !before.contains(z)).collect::<Vec<_>>(),
                "zones_removed": before.iter().filter(|z| !zones.contains(z)).collect::<Vec<_>>(),
                "rules": self.cfg.policy.rules.len(),
                "relays": self.cfg.relays.len(),
                "api_keys": self.cfg.api_keys.len(),
                "geo_db": if self.cfg.geo_db.is_some() { "file" } else { "embedded" },
            }),
        );
        recorder.prune();
        let _ = self.trail.recorder.set(recorder);
        *self
            .trail
            .next_hour
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(now / 3600 * 3600 + 3600);
        Ok(())
    }

    /// The signing secret changed on disk and was taken up.
    pub(super) fn trail_secret_changed(&self) {
        self.trail.record(
            "secret_reload",
            json!({"secret_files": self.cfg.secret_files.len()}),
        );
    }

    /// A changed geo database was taken up, or refused (it did not match the policy).
    pub(super) fn trail_geo(&self, taken: bool) {
        self.trail.record(
            "geo_reload",
            json!({"result": if taken { "success" } else { "refused" }}),
        );
    }

    /// Records the cross-border record of every hour that ended since the last one recorded
    /// (at each registry poll), and prunes once a day's worth of hours went by.
    pub(super) fn trail_hours(&self, now: u64) {
        if self.trail.recorder.get().is_none() {
            return;
        }
        let mut next = self
            .trail
            .next_hour
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while let Some(end) = *next
            && end <= now
        {
            let hour = end - 3600;
            let report = self
                .audit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .report(hour, hour);
            let placements: Vec<Value> = report
                .placements
                .iter()
                .filter(|r| r.hour == hour)
                .map(|r| json!([r.country, r.zone, r.count]))
                .collect();
            let calls: Vec<Value> = report
                .cross_zone_calls
                .iter()
                .filter(|r| r.hour == hour)
                .map(|r| json!([r.zone_a, r.zone_b, r.count]))
                .collect();
            self.trail.record(
                "cross_border",
                json!({
                    "hour": veil_ops::time::rfc3339(hour),
                    "placements": placements,
                    "cross_zone_calls": calls,
                }),
            );
            if end % 86_400 == 0
                && let Some(r) = self.trail.recorder.get()
            {
                r.prune();
            }
            *next = Some(end + 3600);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AllocatorConfig, App, IceRequest};
    use std::path::Path;

    /// 2026-12-01T00:00:00Z.
    const T0: u64 = 1_796_083_200;

    fn config(dir: &Path) -> AllocatorConfig {
        let mut cfg: AllocatorConfig =
            serde_saphyr::from_str(include_str!("../../allocator.example.yaml")).unwrap();
        cfg.secret_files = vec![dir.join("s")];
        cfg.audit = veil_trail::Settings {
            dir: Some(dir.join("trail")),
            signing_key_file: Some(dir.join("k")),
            retention_days: 30,
        };
        cfg
    }

    fn records(dir: &Path) -> Vec<veil_trail::Record> {
        veil_trail::records(&dir.join("trail")).unwrap()
    }

    #[tokio::test]
    async fn the_allocator_records_its_policy_secrets_and_each_hours_cross_border_record() {
        let dir = std::env::temp_dir().join(format!("veil-alloc-trail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s"), "secret-0123456789abcdef\n").unwrap();
        let (key, public) = veil_trail::keygen().unwrap();
        std::fs::write(dir.join("k"), key).unwrap();

        let app = App::new(config(&dir)).unwrap();
        for (i, t) in app.relays.write().unwrap().iter_mut().enumerate() {
            t.view.healthy = true;
            t.view.capacity = 100;
            t.uris = vec![format!("turn:127.0.0.1:{}?transport=udp", 3478 + i)];
        }
        app.start_trail(T0 + 600).unwrap();
        for i in 1..=3 {
            let ip = format!("127.0.1.{i}").parse().unwrap();
            app.allocate(ip, &IceRequest::default()).unwrap();
        }
        // Placements are bucketed by the wall clock: the hour recorded is the one they fell in.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        *app.trail.next_hour.lock().unwrap() = Some(now / 3600 * 3600 + 3600);
        app.trail_hours(now + 3600);
        std::fs::write(dir.join("s"), "rotated-0123456789abcdef\n").unwrap();
        app.reload_secret();
        let r = records(&dir);
        let kinds: Vec<&str> = r.iter().map(|x| x.kind.as_str()).collect();
        assert_eq!(kinds, ["start", "cross_border", "secret_reload"]);
        assert_eq!(
            r[0].detail["policy_changed"],
            serde_json::Value::Null,
            "first start"
        );
        let placements = r[1].detail["placements"].as_array().unwrap();
        assert_eq!(placements.len(), 1, "{placements:?}");
        assert_eq!(placements[0][0], "DE");
        assert_eq!(placements[0][2], 3);
        assert!(
            app.render_metrics()
                .contains("veil_allocator_audit_records 3\n")
        );

        // A restart with another policy: the start says it changed, and how.
        let mut cfg = config(&dir);
        let mut relay = cfg.relays[0].clone();
        relay.name = "zz-1".into();
        cfg.relays.push(relay);
        let mut extra = cfg.policy.zones.values().next().unwrap().clone();
        extra.relays = vec!["zz-1".into()];
        cfg.policy.zones.insert("zz-new".into(), extra);
        let again = App::new(cfg).unwrap();
        again.start_trail(T0 + 7200).unwrap();
        let r = records(&dir);
        let d = &r.last().unwrap().detail;
        assert_eq!(d["policy_changed"], true);
        assert_eq!(d["zones_added"], serde_json::json!(["zz-new"]));
        assert_ne!(d["policy"], r[0].detail["policy"]);

        let text: String = std::fs::read_dir(dir.join("trail"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .collect();
        for needle in ["127.0.1", "secret-0123", "rotated-0123"] {
            assert!(!text.contains(needle), "{needle} in the trail");
        }
        let keys = [veil_trail::public_key(&public).unwrap()];
        assert_eq!(
            veil_trail::verify(&dir.join("trail"), &keys)
                .unwrap()
                .records,
            4
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
