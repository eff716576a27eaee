//! The relay registry: the relays the allocator knows of (static and DNS pools) and their health,
//! from polling each relay's `/status`; the signing secret is read again at each poll.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use veil_geo::Location;
use veil_geo::policy::Policy;

use veil_ops::Status;

use super::config::RelayEntry;
use super::mint::signing_secret;
use super::{App, check_policy_against};
use crate::placement::RelayView;
#[derive(Clone, Debug)]
pub(super) struct Tracked {
    pub(super) entry: RelayEntry,
    pub(super) view: RelayView,
    pub(super) uris: Vec<String>,
    /// Profiles the relay admits only over TLS (from its `/status`).
    pub(super) tls_only: Vec<String>,
    /// The TURN realm it signs in (from its `/status`).
    pub(super) realm: Option<String>,
    pub(super) good: u32,
    pub(super) bad: u32,
}

impl Tracked {
    /// It can serve a client of `profile`: the profile is not TLS-only here, or it offers TLS.
    pub(super) fn serves(&self, profile: Option<&str>) -> bool {
        let tls_only = profile.is_some_and(|p| self.tls_only.iter().any(|x| x == p));
        !tls_only || self.uris.iter().any(|u| u.starts_with("turns:"))
    }

    pub(super) fn new(name: String, entry: RelayEntry, policy: &Policy) -> Tracked {
        Tracked {
            view: RelayView {
                name,
                zone: policy.zone_of(&entry.name).unwrap_or_default().to_string(),
                healthy: false,
                draining: false,
                load: 0,
                capacity: 0,
                location: Location {
                    coords: entry.latitude.zip(entry.longitude),
                    ..Location::default()
                },
            },
            entry,
            uris: Vec::new(),
            tls_only: Vec::new(),
            realm: None,
            good: 0,
            bad: 0,
        }
    }
}

impl App {
    /// Resolves DNS pools into relays: new addresses join (down until polled), vanished ones
    /// leave. A pool whose lookup fails keeps its relays; their polls decide.
    pub(super) async fn discover(&self) {
        let mut targets: Vec<(String, RelayEntry)> = Vec::new();
        let mut failed_pools: Vec<String> = Vec::new();
        for e in self.cfg.relays.iter().filter(|e| e.dns) {
            match tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::lookup_host(e.admin.as_str()),
            )
            .await
            {
                Ok(Ok(addrs)) => {
                    for a in addrs {
                        let entry = RelayEntry {
                            admin: a.to_string(),
                            dns: false,
                            ..e.clone()
                        };
                        targets.push((format!("{}/{}", e.name, a.ip()), entry));
                    }
                }
                _ => failed_pools.push(e.name.clone()),
            }
        }
        let mut relays = self.relays.write().unwrap_or_else(|e| e.into_inner());
        relays.retain(|t| {
            let from_pool = self
                .cfg
                .relays
                .iter()
                .any(|e| e.dns && e.name == t.entry.name);
            !from_pool
                || failed_pools.contains(&t.entry.name)
                || targets.iter().any(|(n, _)| *n == t.view.name)
        });
        for (name, entry) in targets {
            if !relays.iter().any(|t| t.view.name == name) {
                tracing::info!(relay = %name, "relay discovered");
                relays.push(Tracked::new(name, entry, &self.policy));
            }
        }
    }

    /// Reads the signing secret again; a change takes effect for the next credential. A file
    /// that cannot be read or holds no secret leaves the current one in force.
    pub fn reload_secret(&self) {
        match signing_secret(&self.cfg.secret_files) {
            Ok(new) => {
                let mut cur = self.secret.write().unwrap_or_else(|e| e.into_inner());
                if *cur != new {
                    let old = std::mem::replace(&mut *cur, new);
                    drop(cur);
                    *self
                        .previous_secret
                        .write()
                        .unwrap_or_else(|e| e.into_inner()) = Some(old);
                    self.metrics
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .secret_reloads += 1;
                    tracing::info!("signing secret changed on disk: new credentials use it");
                    self.trail_secret_changed();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the signing secret; keeping the current one")
            }
        }
    }

    /// Polls every relay's `/status` once and updates its health.
    pub async fn poll_once(&self) {
        self.reload_secret();
        self.discover().await;
        let targets: Vec<(String, String)> = self
            .relays
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|t| (t.view.name.clone(), t.entry.admin.clone()))
            .collect();
        for (name, admin) in targets {
            let status = fetch_status(&admin).await;
            let mut relays = self.relays.write().unwrap_or_else(|e| e.into_inner());
            let Some(t) = relays.iter_mut().find(|t| t.view.name == name) else {
                continue;
            };
            match status {
                Some(s) if s.zone.as_deref() == Some(t.view.zone.as_str()) => {
                    t.good += 1;
                    t.bad = 0;
                    t.view.load = s.allocations;
                    t.view.capacity = s.capacity;
                    t.view.draining = s.draining || !s.ready;
                    t.uris = s.uris;
                    t.tls_only = s.tls_only_profiles;
                    t.realm = s.realm;
                    if !t.view.healthy && t.good >= self.cfg.up_after {
                        tracing::info!(relay = %t.view.name, "relay up");
                        t.view.healthy = true;
                    }
                }
                other => {
                    if other.is_some() {
                        tracing::warn!(relay = %t.view.name, "relay reports another zone than the policy's; not used");
                        t.view.healthy = false;
                    }
                    t.bad += 1;
                    t.good = 0;
                    if t.view.healthy && t.bad >= self.cfg.down_after {
                        tracing::warn!(relay = %t.view.name, "relay down");
                        t.view.healthy = false;
                    }
                }
            }
        }
        match self
            .geo
            .reload_if_changed_checked(|db| check_policy_against(&self.policy, db).map(drop))
        {
            Ok(true) => {
                tracing::info!(db = self.geo.get().origin(), "geo DB reloaded");
                self.trail_geo(true);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "geo DB reload refused; keeping the previous one");
                self.trail_geo(false);
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.trail_hours(now);
    }
}

/// GETs `http://{admin}/status` with a 1 s budget. A tiny HTTP/1.1 client: the admin endpoint is
/// plain HTTP on a private network and this is all the allocator asks of it.
pub(super) async fn fetch_status(admin: &str) -> Option<Status> {
    let go = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        let req = format!("GET /status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(1024);
        (&mut s).take(64 * 1024).read_to_end(&mut buf).await.ok()?;
        let text = std::str::from_utf8(&buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_str::<Status>(body).ok()
    };
    tokio::time::timeout(Duration::from_secs(1), go)
        .await
        .ok()
        .flatten()
}
