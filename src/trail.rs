//! What the relay records in its audit trail of a reload (README: The audit trail), built from
//! the two configurations: setting paths and counts, never a value.

pub(crate) use veil_trail::Recorder;

use serde_json::{Value, json};
use veil_relay::config::Resolved;

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
