//! `veil audit`: the allocator's cross-border record for a period, as CSV or JSON; and, as
//! subcommands, the audit trail of operator actions (README: The audit trail): `keygen`,
//! `verify`, `hold`, `release`.
//!
//! It asks `GET /v1/audit` of one allocator replica, which keeps hourly buckets for its
//! `audit_retention_hours`. With several replicas, each holds the placements it made: ask each,
//! or read the Prometheus counters, which add up across replicas and keep as long as Prometheus
//! does (README, "The cross-border record").

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// The audit trail of operator actions, instead of the cross-border report.
    #[command(subcommand)]
    trail: Option<TrailCommand>,
    /// The allocator, `http://host:port`.
    #[arg(long, env = "VEIL_ALLOCATOR_URL")]
    allocator: Option<String>,
    /// An API key of the allocator.
    #[arg(long, env = "VEIL_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Start of the period: unix seconds, or a duration before now (`24h`, `7d`). Default: all
    /// that is kept.
    #[arg(long, value_parser = parse_when)]
    from: Option<Since>,
    /// End of the period, as --from. Default: now.
    #[arg(long, value_parser = parse_when)]
    to: Option<Since>,
    /// csv or json.
    #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
    format: String,
}

/// A point in time as given on the command line.
#[derive(Clone, Copy, Debug)]
pub enum Since {
    At(u64),
    Ago(u64),
}

fn parse_when(s: &str) -> Result<Since, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Since::At(n));
    }
    crate::parse_ttl(s).map(Since::Ago)
}

fn resolve(w: Since, now: u64) -> u64 {
    match w {
        Since::At(t) => t,
        Since::Ago(d) => now.saturating_sub(d),
    }
}

#[derive(clap::Subcommand)]
enum TrailCommand {
    /// Writes a new signing key for `audit.signing_key_file` (mode 0600) and prints its public
    /// key, which `verify` takes.
    Keygen {
        /// Where to write it (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Verifies a trail: every signature, the chain, the sequence, the gaps retention left.
    /// Prints what it holds and its head (compare with the `audit record` log lines and the
    /// records metric kept off the node); exits 1 at the first thing wrong.
    Verify {
        /// The trail's directory (`audit.dir`).
        #[arg(long)]
        trail: PathBuf,
        /// A public key whose records are accepted (base64, or a file holding it); repeat for
        /// each writer (the node, and whoever recorded holds).
        #[arg(long = "public-key", required = true)]
        public_keys: Vec<String>,
    },
    /// Records a preservation hold: the records of [--from, --to] stay past their retention
    /// until released. The hold itself is a record.
    Hold {
        /// The trail's directory.
        #[arg(long)]
        trail: PathBuf,
        /// The key to sign the record with (the node's, or one of your own whose public key
        /// the verifiers get).
        #[arg(long = "signing-key")]
        signing_key: PathBuf,
        /// Start: YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ, unix seconds, or a duration before now
        /// (`72h`).
        #[arg(long, value_parser = parse_instant)]
        from: Since,
        /// End, as --from. Default: now.
        #[arg(long, value_parser = parse_instant)]
        to: Option<Since>,
        /// Why: an incident reference (one line, at most 200 characters; no personal data).
        #[arg(long)]
        reason: String,
    },
    /// Records the end of a hold (by the seq `hold` printed, or `verify` lists).
    Release {
        /// The trail's directory.
        #[arg(long)]
        trail: PathBuf,
        /// The key to sign the record with.
        #[arg(long = "signing-key")]
        signing_key: PathBuf,
        /// The hold's record.
        #[arg(long)]
        hold: u64,
    },
}

fn parse_instant(s: &str) -> Result<Since, String> {
    if let Some(t) = veil_ops::time::parse_rfc3339(s) {
        return Ok(Since::At(t));
    }
    parse_when(s)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn run_trail(cmd: TrailCommand) -> Result<()> {
    use veil_trail::{SigningKey, Trail};
    let now = unix_now();
    match cmd {
        TrailCommand::Keygen { out } => {
            let (file, public) = veil_trail::keygen()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("{} (never overwritten)", out.display()))?;
            f.write_all(file.as_bytes())?;
            println!("signing key written to {}", out.display());
            println!("public key: {public}");
        }
        TrailCommand::Verify { trail, public_keys } => {
            let keys = public_keys
                .iter()
                .map(|k| {
                    let text = match std::fs::read_to_string(k) {
                        Ok(t) => t,
                        Err(_) => k.clone(),
                    };
                    veil_trail::public_key(&text).with_context(|| "--public-key".to_string())
                })
                .collect::<Result<Vec<_>>>()?;
            let s = veil_trail::verify(&trail, &keys)
                .map_err(|why| anyhow::anyhow!("{}: NOT VERIFIED: {why}", trail.display()))?;
            println!(
                "{}: verified, {} records in {} segments, signed by {}",
                trail.display(),
                s.records,
                s.segments,
                s.keys.join(", ")
            );
            match &s.head {
                Some((seq, hash)) => println!("head: record {seq}, sha256 {hash}"),
                None => println!("head: none (no record)"),
            }
            for (first, last) in &s.gaps {
                println!("deleted by retention (recorded): records {first} to {last}");
            }
            for (kind, n) in &s.kinds {
                println!("{kind}: {n}");
            }
            for h in &s.holds {
                println!(
                    "hold in force (record {}): {} to {}: {}",
                    h.seq,
                    veil_ops::time::rfc3339(h.from),
                    veil_ops::time::rfc3339(h.to),
                    h.reason
                );
            }
        }
        TrailCommand::Hold {
            trail,
            signing_key,
            from,
            to,
            reason,
        } => {
            let t = Trail::open(&trail, SigningKey::load(&signing_key)?, "cli", u32::MAX)?;
            let (from, to) = (resolve(from, now), to.map_or(now, |t| resolve(t, now)));
            let a = t.hold(now, from, to, &reason)?;
            println!("hold recorded: record {}, sha256 {}", a.seq, a.hash);
        }
        TrailCommand::Release {
            trail,
            signing_key,
            hold,
        } => {
            let t = Trail::open(&trail, SigningKey::load(&signing_key)?, "cli", u32::MAX)?;
            let a = t.release(now, hold)?;
            println!("release recorded: record {}, sha256 {}", a.seq, a.hash);
        }
    }
    Ok(())
}

pub fn run(a: AuditArgs) -> Result<()> {
    if let Some(cmd) = a.trail {
        return run_trail(cmd);
    }
    let now = unix_now();
    let (Some(allocator), Some(key)) = (a.allocator, a.key) else {
        bail!(
            "--allocator and --key (or VEIL_ALLOCATOR_URL, VEIL_API_KEY) name the allocator to ask"
        );
    };
    let host = allocator
        .strip_prefix("http://")
        .context("--allocator: an http:// URL (the allocator serves plain HTTP behind your TLS terminator)")?
        .trim_end_matches('/');
    let mut query = format!("format={}", a.format);
    if let Some(f) = a.from {
        query += &format!("&from={}", resolve(f, now));
    }
    query += &format!("&to={}", a.to.map_or(now, |t| resolve(t, now)));
    let mut s = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /v1/audit?{query} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        key
    )?;
    let mut raw = Vec::new();
    s.take(64 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the allocator's answer has no body")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "the allocator answered {}: {}",
            head.lines().next().unwrap_or(""),
            body.trim()
        );
    }
    print!("{body}");
    if !body.ends_with('\n') {
        println!();
    }
    Ok(())
}
