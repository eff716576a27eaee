//! `veil check-config`: validates a relay or allocator config file exactly as the binary would
//! at start, so a Helm chart (or any generator) and the binary cannot drift apart.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use veil_relay::config::RelayConfig;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Kind {
    Relay,
    Allocator,
}

#[derive(Args)]
pub(crate) struct CheckArgs {
    /// Which binary's format the files are in.
    kind: Kind,
    /// Config files to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Do not read the files a config names (secret files, geo DB): they live in Secrets and
    /// volumes of the cluster, not where the config is rendered. Their paths must be absolute.
    #[arg(long = "no-files")]
    no_files: bool,
    /// Relay IP the relay gets as `--relay-ip` at run time (a Kubernetes pod passes the node's
    /// or its own IP), repeatable; relay files only.
    #[arg(long = "relay-ip", value_name = "IP")]
    relay_ip: Vec<std::net::IpAddr>,
}

/// A placeholder secret standing in for unread secret files.
const PLACEHOLDER: &str = "check-config-placeholder-secret";

fn absolute(field: &str, p: &Path) -> Result<()> {
    if !p.is_absolute() {
        bail!("{field}: `{}` must be an absolute path", p.display());
    }
    Ok(())
}

fn check_relay(path: &Path, no_files: bool, relay_ips: &[std::net::IpAddr]) -> Result<Vec<String>> {
    let mut cfg = RelayConfig::load(path)?;
    if !relay_ips.is_empty() {
        cfg.relay_ips = relay_ips.to_vec();
    }
    if no_files {
        for f in &cfg.auth.secret_files {
            absolute("auth.secret_files", f)?;
        }
        if !cfg.auth.secret_files.is_empty() {
            cfg.auth.secret_files.clear();
            cfg.auth.secrets.push(PLACEHOLDER.into());
        }
        // The certificate lives in a Secret too: check its paths, not its contents.
        for (field, f) in [("tls.cert", &cfg.tls.cert), ("tls.key", &cfg.tls.key)] {
            match f {
                Some(p) => absolute(field, p)?,
                None if !cfg.listen_tls.is_empty() => {
                    bail!("{field}: required by listen_tls")
                }
                None => {}
            }
        }
        if cfg.listen_tls.iter().any(|l| l.port() == 0) {
            bail!("listen_tls: port 0 is not a TURN port");
        }
        cfg.listen_tls.clear();
        // The site's settings but its certificate (which the TLS listeners hold).
        if let Some(site) = cfg.tls.site.take() {
            site.check()?;
        }
    }
    Ok(cfg.resolve()?.warnings)
}

fn check_allocator(path: &Path, no_files: bool) -> Result<Vec<String>> {
    use veil_allocator::service::{AllocatorConfig, App};
    let mut cfg = AllocatorConfig::load(path)?;
    let mut placeholder = None;
    if no_files {
        for f in &cfg.secret_files {
            absolute("secret_files", f)?;
        }
        if let Some(g) = &cfg.geo_db {
            absolute("geo_db", g)?;
        }
        if !cfg.secret_files.is_empty() {
            let dir = std::env::temp_dir().join(format!("veil-check-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let f = dir.join("secret");
            std::fs::write(&f, PLACEHOLDER)?;
            cfg.secret_files = vec![f];
            placeholder = Some(dir);
        }
        cfg.geo_db = None;
    }
    let r = App::new(cfg);
    if let Some(dir) = placeholder {
        let _ = std::fs::remove_dir_all(dir);
    }
    r?;
    Ok(Vec::new())
}

pub(crate) fn run(args: CheckArgs) -> Result<()> {
    let mut failed = 0;
    for f in &args.files {
        let r = match args.kind {
            Kind::Relay => check_relay(f, args.no_files, &args.relay_ip),
            Kind::Allocator => check_allocator(f, args.no_files),
        };
        match r {
            Ok(warnings) => {
                println!("{}: ok", f.display());
                for w in warnings {
                    println!("{}: warning: {w}", f.display());
                }
            }
            Err(e) => {
                // Parse errors already start with the file's name.
                let msg = e.to_string();
                let name = f.display().to_string();
                let msg = msg.strip_prefix(&format!("{name}: ")).unwrap_or(&msg);
                let msg = msg.strip_prefix("error: ").unwrap_or(msg);
                println!("{name}: error: {msg}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} files are invalid", args.files.len());
    }
    Ok(())
}
