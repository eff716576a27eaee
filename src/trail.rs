//! The daemons' side of the audit trail (README: The audit trail): a [`Recorder`] appends a
//! record per operator action, logs each record's hash (`audit record`, a witness kept off the
//! node when logs are shipped), reports it to the node's metrics, and prunes by the retention.
//! What the relay records of a reload is built here from the two configurations: setting paths
//! and counts, never a value.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use veil_relay::config::Resolved;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Appends records to a trail, if the node keeps one.
pub(crate) struct Recorder {
    trail: Option<veil_trail::Trail>,
    /// Told each record's seq, or None when one could not be written.
    count: Box<dyn Fn(Option<u64>) + Send + Sync>,
}

impl Recorder {
    /// Opens the trail `settings` name, writing as `source`.
    pub(crate) fn open(
        settings: &veil_trail::Settings,
        source: &str,
        count: impl Fn(Option<u64>) + Send + Sync + 'static,
    ) -> Result<Recorder> {
        let trail = settings
            .open(source)
            .with_context(|| "the audit trail (audit.dir, audit.signing_key_file)")?;
        if let Some(t) = &trail {
            tracing::info!(dir = %t.dir().display(), "audit trail open");
        }
        Ok(Recorder {
            trail,
            count: Box::new(count),
        })
    }

    /// Appends a record of `kind`.
    pub(crate) fn record(&self, kind: &str, detail: Value) {
        let Some(t) = &self.trail else {
            return;
        };
        match t.append(unix_now(), kind, detail) {
            Ok(a) => {
                tracing::info!(seq = a.seq, hash = %a.hash, kind, "audit record");
                (self.count)(Some(a.seq));
            }
            Err(e) => {
                tracing::error!(error = %e, kind, "audit record not written");
                (self.count)(None);
            }
        }
    }

    /// Deletes what the retention lets go (and records that it did).
    pub(crate) fn prune(&self) {
        let Some(t) = &self.trail else {
            return;
        };
        match t.prune(unix_now()) {
            Ok((gone, Some(a))) => {
                tracing::info!(seq = a.seq, hash = %a.hash, segments = ?gone, "audit record (pruned)");
                (self.count)(Some(a.seq));
            }
            Ok((_, None)) => {}
            Err(e) => tracing::error!(error = %e, "audit trail not pruned"),
        }
    }
}

/// What changed between two sets, by count: before, after, added, removed.
fn delta<T: Eq + std::hash::Hash>(
    before: impl IntoIterator<Item = T>,
    after: impl IntoIterator<Item = T>,
) -> Value {
    let a: std::collections::HashSet<T> = before.into_iter().collect();
    let b: std::collections::HashSet<T> = after.into_iter().collect();
    json!({
        "before": a.len(),
        "after": b.len(),
        "added": b.difference(&a).count(),
        "removed": a.difference(&b).count(),
    })
}

/// A relay's reload as the trail records it: the settings that changed by path (those in force
/// now, and those waiting for a restart), and how the secrets and the revocation list changed,
/// by count (a secret file's content changes no path).
pub(crate) fn relay_reload(trigger: &str, old: &Resolved, new: &Resolved) -> Value {
    let changed = old.changed(new);
    let paths = |reloads: bool| -> Vec<&String> {
        changed
            .iter()
            .filter(|(_, r)| *r == reloads)
            .map(|(p, _)| p)
            .collect()
    };
    let ids = |r: &Resolved| -> Vec<[u8; 8]> {
        r.credentials
            .secrets
            .iter()
            .map(|s| veil_relay::proto::auth::secret_id(s))
            .collect()
    };
    json!({
        "trigger": trigger,
        "result": "success",
        "applied": paths(true),
        "restart_needed": paths(false),
        "secrets": delta(ids(old), ids(new)),
        "revoked_users": delta(
            old.credentials.revoked_users.iter(),
            new.credentials.revoked_users.iter(),
        ),
        "static_users": new.credentials.static_users.len(),
        "removed_secret_grace_s": new.credentials.removed_secret_grace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_is_recorded_by_path_and_count_never_by_value() {
        let mut a = veil_relay::config::RelayConfig {
            relay_ips: vec!["127.0.0.1".parse().unwrap()],
            ..Default::default()
        };
        a.auth.secrets = vec!["old-secret-value".into(), "kept-secret-value".into()];
        a.auth.revoked_users = vec!["mallory-id".into()];
        let mut b = a.clone();
        b.auth.secrets = vec!["new-secret-value".into(), "kept-secret-value".into()];
        b.auth.revoked_users = vec!["mallory-id".into(), "eve-id".into()];
        b.auth.removed_secret_grace = Some(60);
        b.quotas.total = 5;
        let d = relay_reload("SIGHUP", &a.resolve().unwrap(), &b.resolve().unwrap());
        assert_eq!(
            d["applied"],
            json!([
                "auth.removed_secret_grace",
                "auth.revoked_users",
                "auth.secrets"
            ])
        );
        assert_eq!(d["restart_needed"], json!(["quotas.total"]));
        assert_eq!(
            d["secrets"],
            json!({"before": 2, "after": 2, "added": 1, "removed": 1})
        );
        assert_eq!(d["revoked_users"]["added"], 1);
        assert_eq!(d["removed_secret_grace_s"], 60);
        let text = d.to_string();
        for secret in [
            "old-secret",
            "new-secret",
            "kept-secret",
            "mallory",
            "eve-id",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
