//! [`Recorder`]: how a daemon writes its trail.

use serde_json::Value;

use super::{Record, Settings, Trail, TrailError};

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A daemon's trail, if it keeps one: appends a record per operator action, logs each
/// record's hash (`audit record`: a witness off the node where logs are shipped), tells the
/// daemon's metrics its seq, and prunes by the retention. A record that cannot be written is
/// logged and counted; the action it records goes on.
pub struct Recorder {
    trail: Option<Trail>,
    /// Told each record's seq, or None when one could not be written.
    count: Box<dyn Fn(Option<u64>) + Send + Sync>,
}

impl Recorder {
    /// Opens the trail `settings` name, writing as `source`; `count` is told each record's
    /// seq, or None when one could not be written.
    pub fn open(
        settings: &Settings,
        source: &str,
        count: impl Fn(Option<u64>) + Send + Sync + 'static,
    ) -> Result<Recorder, TrailError> {
        let trail = settings.open(source)?;
        if let Some(t) = &trail {
            tracing::info!(dir = %t.dir().display(), "audit trail open");
        }
        Ok(Recorder {
            trail,
            count: Box::new(count),
        })
    }

    /// Appends a record of `kind`.
    pub fn record(&self, kind: &str, detail: Value) {
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
    pub fn prune(&self) {
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

    /// The newest record of `kind` this trail holds (a daemon compares its start with the
    /// last one's); None without a trail.
    pub fn last(&self, kind: &str) -> Option<Record> {
        let t = self.trail.as_ref()?;
        super::records(t.dir())
            .ok()?
            .into_iter()
            .rev()
            .find(|r| r.kind == kind && r.source == t.source)
    }

    /// Whether a trail is kept.
    pub fn is_on(&self) -> bool {
        self.trail.is_some()
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("trail", &self.trail)
            .finish()
    }
}
