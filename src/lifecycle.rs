//! The life of a relay process after its workers start: serve the admin endpoint, reload on
//! SIGHUP or when a watched file changes, drain on SIGTERM/SIGINT, exit; or, when a worker
//! fails (panics, loses a task, stalls), answer not ready at once and exit non-zero.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use veil_relay::admin::AdminState;
use veil_relay::config::Resolved;
use veil_relay::io::Node;
use veil_relay::proto::server::{Live, Shared};

/// How often a draining node checks whether its last allocation ended.
const DRAIN_POLL: Duration = Duration::from_millis(200);
/// How often the workers' heartbeats are checked.
const HEALTH_POLL: Duration = Duration::from_millis(250);
/// How long a node whose worker failed keeps answering its probes (503, `ready: false`) before
/// it exits: longer than the allocator's default poll, so the registry drops it at once rather
/// than after missed polls.
const FAILED_LINGER: Duration = Duration::from_secs(2);
/// How often the audit trail's retention runs.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How the node's run ended.
enum Ended {
    /// A signal, then the drain.
    Drained,
    /// A worker failed.
    Failed(veil_relay::io::Failure),
}

struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

/// A running relay and what it needs to reload itself.
pub(crate) struct Running {
    pub node: Node,
    pub shared: Arc<Shared>,
    pub current: Resolved,
    /// Reads the configuration again: the config file, then the same flags on top.
    pub reload: Box<dyn Fn() -> Result<Resolved>>,
    /// The config file, watched with the secret files.
    pub config_file: Option<PathBuf>,
    /// The admin endpoint's socket, bound before the workers start: once the relay answers
    /// clients, its probes and metrics answer too.
    pub admin: Option<std::net::TcpListener>,
    /// The audit trail: reloads, drains, failures and stops are recorded there.
    pub audit: crate::trail::Recorder,
}

/// Modification time and length of each watched file (None when unreadable), to notice changes.
/// Kubernetes updates mounted Secrets and ConfigMaps by swapping a symlink, which changes what
/// the path resolves to; `metadata` follows it.
fn fingerprint(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Running {
    fn watched(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.config_file.iter().cloned().collect();
        v.extend(self.current.secret_files.iter().cloned());
        if let Some(tls) = &self.node.tls {
            v.extend(tls.files().map(|p| p.to_path_buf()));
        }
        if let Some(m) = &self.current.mesh {
            v.extend([m.cert.clone(), m.key.clone(), m.ca.clone()]);
        }
        v
    }

    /// Reads the configuration again and puts what can change at run time in force.
    fn reload(&mut self, why: &str) {
        let next = match (self.reload)() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(trigger = why, error = %format!("{e:#}"), "reload failed; the running configuration stays");
                self.node.reports.count_reload(false, unix_now());
                // The error names a file and a setting, but the trail keeps to the fact.
                self.audit.record(
                    "reload",
                    serde_json::json!({"trigger": why, "result": "failure"}),
                );
                return;
            }
        };
        self.audit.record(
            "reload",
            crate::trail::relay_reload(why, &self.current, &next),
        );
        for w in &next.warnings {
            tracing::warn!("{w}");
        }
        let fixed = self.current.restart_needed(&next);
        if !fixed.is_empty() {
            tracing::warn!(
                fields = ?fixed,
                "these settings changed but take effect only at a restart; their old values stay"
            );
        }
        // The certificate: new handshakes use it; connections in progress keep theirs.
        if let Some(tls) = &self.node.tls
            && let Err(e) = tls.reload()
        {
            tracing::error!(error = %e, "TLS certificate not reloaded; the current one stays");
        }
        // The mesh's certificates and CA, read again from the same files: new link handshakes
        // use them; links up stay up.
        if let Some(m) = &self.node.mesh
            && let Err(e) = m.reload_tls()
        {
            tracing::error!(error = %e, "mesh certificates not reloaded; the current ones stay");
        }
        self.shared.replace_live(Live {
            credentials: next.credentials.clone(),
            filter: next.filter.clone(),
            bandwidth: next.bandwidth.clone(),
        });
        if !self.current.profiles_renamed(&next) {
            self.node.reload_shaping(next.shaping.clone());
            self.current.shaping = next.shaping.clone();
        }
        self.current.credentials = next.credentials;
        self.current.filter = next.filter;
        self.current.bandwidth = next.bandwidth;
        self.current.secret_files = next.secret_files;
        self.node.reports.count_reload(true, unix_now());
        tracing::info!(
            trigger = why,
            secrets = self.current.credentials.secrets.len(),
            static_users = self.current.credentials.static_users.len(),
            padding = %self.current.shaping[0].padding,
            timing = %self.current.shaping[0].timing,
            "configuration reloaded"
        );
    }

    /// Serves the admin endpoint (if configured), reloads on SIGHUP and file changes until
    /// SIGTERM or SIGINT, drains, stops the workers.
    pub fn run(mut self) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Handlers first: SIGHUP's default action would end the process.
        let signals = {
            let _in_runtime = rt.enter();
            Signals {
                hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
                term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
                int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            }
        };
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = match self.admin.take() {
            None => None,
            Some(listener) => {
                let state = AdminState::new(
                    self.shared.clone(),
                    &self.node.endpoints,
                    Some((self.node.reports.clone(), self.node.port_range.len())),
                    Some(self.node.health.clone()),
                    self.node.mesh.as_ref().map(|m| m.status()),
                );
                let addr = listener.local_addr()?;
                listener.set_nonblocking(true)?;
                let listener = {
                    let _in_runtime = rt.enter();
                    tokio::net::TcpListener::from_std(listener)
                        .with_context(|| format!("admin endpoint on {addr}"))?
                };
                tracing::info!(%addr, "admin endpoint ready");
                Some(rt.spawn(veil_relay::admin::serve(listener, state, async {
                    let _ = admin_stopped.await;
                })))
            }
        };
        if let Ended::Failed(f) = rt.block_on(self.until_drained(signals)) {
            self.audit
                .record("failed", serde_json::json!({"why": f.to_string()}));
            // Probes answer 503 meanwhile; no drain (the failed worker's clients get nothing)
            // and no join (a stalled thread never returns).
            rt.block_on(async { tokio::time::sleep(FAILED_LINGER).await });
            anyhow::bail!("{f}: exiting so that the node is replaced");
        }
        let _ = stop_admin.send(());
        if let Some(a) = admin {
            rt.block_on(a)
                .context("admin task")?
                .context("admin endpoint")?;
        }
        tracing::info!("stopping");
        self.node.stop().context("stopping the workers")?;
        self.audit.record("stop", serde_json::json!({}));
        Ok(())
    }

    async fn until_drained(&mut self, signals: Signals) -> Ended {
        let Signals {
            mut hup,
            mut term,
            mut int,
        } = signals;
        let mut seen = fingerprint(&self.watched());
        let interval = self.current.watch_interval;
        let mut tick = tokio::time::interval(interval.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health = tokio::time::interval(HEALTH_POLL);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Retention: at start, then hourly.
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stall = self.current.worker_stall;
        let signal = loop {
            tokio::select! {
                _ = health.tick() => {
                    if let Some(f) = self.node.health.check(Instant::now(), stall) {
                        return Ended::Failed(f);
                    }
                    self.node.publish_fast_path();
                }
                _ = hup.recv() => {
                    self.reload("SIGHUP");
                    seen = fingerprint(&self.watched());
                }
                _ = tick.tick(), if interval.is_some() => {
                    let now = fingerprint(&self.watched());
                    if now != seen {
                        self.reload("file change");
                        seen = fingerprint(&self.watched());
                    }
                }
                _ = prune.tick() => self.audit.prune(),
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
            }
        };
        // Drain: not ready at once, no new allocations, existing ones go on.
        self.shared.set_draining(true);
        self.node.withdraw_fast_path();
        let started = Instant::now();
        let deadline = started + self.current.drain_timeout;
        self.audit.record(
            "drain",
            serde_json::json!({
                "signal": signal,
                "allocations": self.shared.allocations(),
                "timeout_s": self.current.drain_timeout.as_secs(),
            }),
        );
        tracing::info!(
            signal,
            allocations = self.shared.allocations(),
            timeout_s = self.current.drain_timeout.as_secs(),
            "draining: new allocations are refused, existing ones relay until they end or the timeout"
        );
        let ended = loop {
            let left = self.shared.allocations();
            if left == 0 {
                tracing::info!("drained: no allocation left");
                break "empty";
            }
            if Instant::now() >= deadline {
                tracing::info!(
                    allocations = left,
                    "drain timeout: ending the remaining allocations"
                );
                break "timeout";
            }
            if let Some(f) = self.node.health.check(Instant::now(), stall) {
                return Ended::Failed(f);
            }
            tokio::select! {
                _ = tokio::time::sleep(DRAIN_POLL) => {}
                _ = term.recv() => { tracing::info!(allocations = left, "second signal: stopping now"); break "second signal"; }
                _ = int.recv() => { tracing::info!(allocations = left, "second signal: stopping now"); break "second signal"; }
                _ = hup.recv() => self.reload("SIGHUP"),
            }
        };
        self.audit.record(
            "drained",
            serde_json::json!({
                "ended": ended,
                "allocations_left": self.shared.allocations(),
                "seconds": started.elapsed().as_secs(),
            }),
        );
        Ended::Drained
    }
}
