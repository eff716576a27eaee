//! `veil audit`: the allocator's cross-border record for a period, as CSV or JSON.
//!
//! It asks `GET /v1/audit` of one allocator replica, which keeps hourly buckets for its
//! `audit_retention_hours`. With several replicas, each holds the placements it made: ask each,
//! or read the Prometheus counters, which add up across replicas and keep as long as Prometheus
//! does (README, "The cross-border record").

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args)]
pub struct AuditArgs {
    /// The allocator, `http://host:port`.
    #[arg(long, env = "VEIL_ALLOCATOR_URL")]
    allocator: String,
    /// An API key of the allocator.
    #[arg(long, env = "VEIL_API_KEY", hide_env_values = true)]
    key: String,
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

pub fn run(a: AuditArgs) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let host = a
        .allocator
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
        a.key
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
