//! The audit trail of operator actions (issue 25 §4): what was done to a relay or an allocator
//! (reloads by setting path, revocations and removed secrets by count, drains, policy changes,
//! the cross-border record per hour), never who called whom. No record holds a client address,
//! a user id, a peer or a secret; the writers pass counts and setting paths only.
//!
//! # Format
//!
//! A directory of segments, one per UTC day (`trail-YYYY-MM-DD.jsonl`), each a file of JSON
//! lines, one record each, fields in this order:
//!
//! ```text
//! {"seq":7,"time":"2026-12-04T21:00:00Z","source":"relay","kind":"reload","detail":{…},
//!  "prev":"<SHA-256 of the previous line, hex>","key":"<key id>","sig":"<Ed25519, base64>"}
//! ```
//!
//! * `seq` counts from 0 with no gap but the ones retention made (below); `time` never goes
//!   back (a record is never older than the one before it, whatever the clock does);
//! * `prev` chains each line to the previous one byte for byte (64 zeros before the first);
//! * `sig` signs the line as written up to `,"sig":` with `}` closing it, with the writer's
//!   Ed25519 key; `key` names that key (the first 8 bytes of SHA-256 of its public key, hex).
//!
//! So changing any byte breaks that line's signature, and removing or reordering a line breaks
//! the next one's `prev` or the `seq` sequence. What the chain cannot show alone is the removal
//! of the newest lines: each record's hash is also written to the process log as it is appended
//! (`audit record`), and `veil_*_audit_records_total` counts them, both kept off the node, to
//! compare with the head that [`verify`] reports.
//!
//! # Retention and holds
//!
//! [`Trail::prune`] deletes whole segments older than the retention, except those a
//! **preservation hold** covers (`hold` records: a time range and a reason, in force until a
//! `release` record names them), and records what it deleted in a `pruned` record that lists
//! every gap left in the trail with the hashes on both sides, so that [`verify`] can bridge
//! them; a segment deleted without such a record is a chain that starts or breaks unexplained.
//!
//! Writers take an exclusive `flock` on the directory's `.lock` for each append, so the node
//! and `veil audit hold` can both append to one trail.

#![warn(missing_docs, unreachable_pub)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod verify;
pub use verify::{Summary, verify};

mod recorder;
pub use recorder::Recorder;

#[cfg(test)]
mod tests;

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest reason a hold may give (characters).
pub const MAX_REASON: usize = 200;

/// What can go wrong with a trail.
#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    /// A file of the trail or the key cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key file is not a key this tool wrote.
    #[error("{0}: not an Ed25519 signing key (veil audit keygen writes one)")]
    BadKey(String),
    /// The trail's last record cannot be read, so nothing can be appended after it.
    #[error("the trail's last record ({0}) does not parse; run veil audit verify")]
    BadHead(String),
    /// Something else the caller asked for is not possible.
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrailError + '_ {
    move |source| TrailError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A record as signed: every field but `sig`, in the order written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Position in the trail, from 0.
    pub seq: u64,
    /// When (UTC, to the second; never before the previous record).
    pub time: String,
    /// Which daemon wrote it (`relay`, `allocator`, `cli`).
    pub source: String,
    /// What happened: `start`, `reload`, `drain`, `drained`, `stop`, `cross_border`, `hold`,
    /// `release`, `pruned`, ….
    pub kind: String,
    /// The facts of it: counts and setting paths.
    pub detail: Value,
    /// SHA-256 of the previous line, hex ([`GENESIS`] for the first).
    pub prev: String,
    /// The signing key's id ([`key_id`]).
    pub key: String,
}

/// A signing key: an Ed25519 key pair read from a file [`keygen`] wrote.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("SigningKey").field("id", &self.id).finish()
    }
}

impl SigningKey {
    /// Reads a key file: the base64 of a PKCS#8 Ed25519 key on one line.
    pub fn load(path: &Path) -> Result<SigningKey, TrailError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let bad = || TrailError::BadKey(path.display().to_string());
        let der = B64.decode(text.trim()).map_err(|_| bad())?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| bad())?;
        let id = key_id(pair.public_key().as_ref());
        Ok(SigningKey { pair, id })
    }

    /// The public key, base64 (what `veil audit verify --public-key` takes).
    pub fn public(&self) -> String {
        B64.encode(self.pair.public_key().as_ref())
    }

    /// The key's id as records name it.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A new signing key: the key file's content (keep it secret) and the public key (base64).
pub fn keygen() -> Result<(String, String), TrailError> {
    let rng = ring::rand::SystemRandom::new();
    let der = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| TrailError::Invalid("no randomness for a key".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(der.as_ref())
        .map_err(|_| TrailError::Invalid("generated key does not parse".into()))?;
    Ok((
        format!("{}\n", B64.encode(der.as_ref())),
        B64.encode(pair.public_key().as_ref()),
    ))
}

/// A public key's id: the first 8 bytes of its SHA-256, hex.
pub fn key_id(public: &[u8]) -> String {
    hex(&ring::digest::digest(&ring::digest::SHA256, public).as_ref()[..8])
}

/// A public key from its base64 form.
pub fn public_key(b64: &str) -> Result<Vec<u8>, TrailError> {
    match B64.decode(b64.trim()) {
        Ok(k) if k.len() == 32 => Ok(k),
        _ => Err(TrailError::Invalid(
            "a public key is 32 bytes in base64 (veil audit keygen prints it)".into(),
        )),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256 of a line, hex: what the next record's `prev` holds.
pub fn line_hash(line: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, line.as_bytes()).as_ref())
}

/// Splits a line into the signed part (closed with `}`) and its signature, if it has the shape
/// a writer gives it.
pub(crate) fn split_signed(line: &str) -> Option<(String, Vec<u8>)> {
    let at = line.rfind(",\"sig\":\"")?;
    let sig = line[at + 8..].strip_suffix("\"}")?;
    let sig = B64.decode(sig).ok()?;
    Some((format!("{}}}", &line[..at]), sig))
}

/// Checks a line's signature against `keys` (public key bytes); the record it signs.
pub(crate) fn check_line(line: &str, keys: &[Vec<u8>]) -> Result<Record, String> {
    let (signed, sig) = split_signed(line).ok_or("not a signed record")?;
    let record: Record = serde_json::from_str(&signed).map_err(|e| format!("not a record: {e}"))?;
    let key = keys
        .iter()
        .find(|k| key_id(k) == record.key)
        .ok_or_else(|| format!("signed by key {}, which was not given", record.key))?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| "its signature does not match its content".to_string())?;
    // What was signed is exactly what a writer writes: no field reordered, added or spaced.
    if serde_json::to_string(&record).ok().as_deref() != Some(signed.as_str()) {
        return Err("not in the form a writer writes".into());
    }
    Ok(record)
}

/// A segment's file name for a UTC day.
fn segment_name(day: &str) -> String {
    format!("trail-{day}.jsonl")
}

/// The segments of a trail, oldest first: (day, path).
pub(crate) fn segments(dir: &Path) -> Result<Vec<(String, PathBuf)>, TrailError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(day) = name
            .strip_prefix("trail-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            && veil_ops::time::parse_rfc3339(day).is_some()
        {
            out.push((day.to_string(), e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Every line of every segment, oldest first: (segment day, line number from 1, line).
pub(crate) fn lines(dir: &Path) -> Result<Vec<(String, usize, String)>, TrailError> {
    let mut out = Vec::new();
    for (day, path) in segments(dir)? {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        for (i, l) in text.lines().enumerate() {
            out.push((day.clone(), i + 1, l.to_string()));
        }
    }
    Ok(out)
}

/// Every record of the trail in `dir` as written, oldest first, without checking anything
/// ([`verify`] checks); a line that is not a record is skipped.
pub fn records(dir: &Path) -> Result<Vec<Record>, TrailError> {
    Ok(lines(dir)?
        .into_iter()
        .filter_map(|(_, _, l)| {
            let (signed, _) = split_signed(&l)?;
            serde_json::from_str(&signed).ok()
        })
        .collect())
}

/// An exclusive lock on a trail for one append (released when dropped).
struct Lock {
    _file: File,
}

impl Lock {
    fn take(dir: &Path) -> Result<Lock, TrailError> {
        let path = dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        // SAFETY: flock on a file descriptor this File owns; it blocks until the lock is ours.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(&path)(std::io::Error::last_os_error()));
        }
        Ok(Lock { _file: f })
    }
}

/// A trail to append to.
#[derive(Debug)]
pub struct Trail {
    dir: PathBuf,
    key: SigningKey,
    source: String,
    retention_days: u32,
}

/// What [`Trail::append`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The record's position.
    pub seq: u64,
    /// SHA-256 of its line (the next `prev`).
    pub hash: String,
}

impl Trail {
    /// Opens (creates) the trail in `dir`, writing as `source` with `key`; segments older than
    /// `retention_days` days go at [`Trail::prune`] unless held.
    pub fn open(
        dir: &Path,
        key: SigningKey,
        source: &str,
        retention_days: u32,
    ) -> Result<Trail, TrailError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let trail = Trail {
            dir: dir.to_path_buf(),
            key,
            source: source.to_string(),
            retention_days,
        };
        // The head must parse, or nothing can be chained after it.
        trail.head()?;
        Ok(trail)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last record and its line's hash; None for an empty trail.
    fn head(&self) -> Result<Option<(Record, String)>, TrailError> {
        for (_, path) in segments(&self.dir)?.iter().rev() {
            let text = std::fs::read_to_string(path).map_err(io(path))?;
            if let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                let (signed, _) = split_signed(line)
                    .ok_or_else(|| TrailError::BadHead(path.display().to_string()))?;
                let r: Record = serde_json::from_str(&signed)
                    .map_err(|_| TrailError::BadHead(path.display().to_string()))?;
                return Ok(Some((r, line_hash(line))));
            }
        }
        Ok(None)
    }

    /// Appends a record of `kind` with `detail` at `now` (Unix seconds).
    pub fn append(&self, now: u64, kind: &str, detail: Value) -> Result<Appended, TrailError> {
        let _lock = Lock::take(&self.dir)?;
        self.append_locked(now, kind, detail)
    }

    fn append_locked(&self, now: u64, kind: &str, detail: Value) -> Result<Appended, TrailError> {
        let head = self.head()?;
        let (seq, prev, after) = match &head {
            None => (0, GENESIS.to_string(), 0),
            Some((r, hash)) => (
                r.seq.saturating_add(1),
                hash.clone(),
                veil_ops::time::parse_rfc3339(&r.time).unwrap_or(0),
            ),
        };
        let at = now.max(after);
        let record = Record {
            seq,
            time: veil_ops::time::rfc3339(at),
            source: self.source.clone(),
            kind: kind.to_string(),
            detail,
            prev,
            key: self.key.id.clone(),
        };
        let signed = serde_json::to_string(&record)
            .map_err(|e| TrailError::Invalid(format!("record: {e}")))?;
        let sig = self.key.pair.sign(signed.as_bytes());
        let line = format!(
            "{},\"sig\":\"{}\"}}",
            &signed[..signed.len() - 1],
            B64.encode(sig.as_ref())
        );
        let path = self.dir.join(segment_name(&veil_ops::time::day(at)));
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(format!("{line}\n").as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(io(&path))?;
        Ok(Appended {
            seq,
            hash: line_hash(&line),
        })
    }

    /// Records a preservation hold over `[from, to]` (Unix seconds) for `reason`: segments of
    /// those days stay past their retention until a [`Trail::release`] of it.
    pub fn hold(&self, now: u64, from: u64, to: u64, reason: &str) -> Result<Appended, TrailError> {
        if from > to {
            return Err(TrailError::Invalid(
                "a hold's start is after its end".into(),
            ));
        }
        let reason = reason.trim();
        if reason.is_empty()
            || reason.chars().count() > MAX_REASON
            || reason.chars().any(char::is_control)
        {
            return Err(TrailError::Invalid(format!(
                "a hold's reason is one line of 1 to {MAX_REASON} characters (an incident \
                 reference, not personal data)"
            )));
        }
        self.append(
            now,
            "hold",
            serde_json::json!({
                "from": veil_ops::time::rfc3339(from),
                "to": veil_ops::time::rfc3339(to),
                "reason": reason,
            }),
        )
    }

    /// Records the end of the hold recorded at `hold_seq`.
    pub fn release(&self, now: u64, hold_seq: u64) -> Result<Appended, TrailError> {
        let _lock = Lock::take(&self.dir)?;
        let holds = active_holds(&self.dir)?;
        if !holds.iter().any(|h| h.seq == hold_seq) {
            return Err(TrailError::Invalid(format!(
                "no hold in force was recorded at {hold_seq}"
            )));
        }
        self.append_locked(now, "release", serde_json::json!({ "hold": hold_seq }))
    }

    /// Deletes the segments older than the retention that no hold in force covers, and records
    /// what it deleted with every gap the trail now has: the names of the deleted segments and
    /// that record (none when nothing was deleted).
    pub fn prune(&self, now: u64) -> Result<(Vec<String>, Option<Appended>), TrailError> {
        let _lock = Lock::take(&self.dir)?;
        let keep_from = now.saturating_sub(u64::from(self.retention_days).saturating_mul(86_400));
        let holds = active_holds(&self.dir)?;
        let segs = segments(&self.dir)?;
        // Never the newest segment: the chain goes on from it.
        let Some((newest, _)) = segs.last().cloned() else {
            return Ok((Vec::new(), None));
        };
        let mut doomed = Vec::new();
        for (day, path) in &segs {
            let start = veil_ops::time::parse_rfc3339(day).unwrap_or(0);
            let end = start + 86_399;
            if *day == newest || end >= keep_from {
                continue;
            }
            if holds.iter().any(|h| h.from <= end && start <= h.to) {
                continue;
            }
            doomed.push((day.clone(), path.clone()));
        }
        if doomed.is_empty() {
            return Ok((Vec::new(), None));
        }
        // The gaps after deletion: runs of missing seqs with the hashes around them.
        let all = lines(&self.dir)?;
        let doomed_days: Vec<&String> = doomed.iter().map(|(d, _)| d).collect();
        let mut gaps: Vec<verify::Gap> = verify::known_gaps(&all);
        let mut open: Option<verify::Gap> = None;
        for (day, _, line) in &all {
            let Some((signed, _)) = split_signed(line) else {
                return Err(TrailError::BadHead(day.clone()));
            };
            let r: Record =
                serde_json::from_str(&signed).map_err(|_| TrailError::BadHead(day.clone()))?;
            if doomed_days.contains(&day) {
                let g = open.get_or_insert(verify::Gap {
                    first: r.seq,
                    last: r.seq,
                    before: r.prev.clone(),
                    after: String::new(),
                });
                g.last = r.seq;
                g.after = line_hash(line);
            } else if let Some(g) = open.take() {
                gaps.push(g);
            }
        }
        if let Some(g) = open.take() {
            gaps.push(g);
        }
        let gaps = verify::merge_gaps(gaps);
        for (_, path) in &doomed {
            std::fs::remove_file(path).map_err(io(path))?;
        }
        let names: Vec<String> = doomed.iter().map(|(d, _)| segment_name(d)).collect();
        let record = self.append_locked(
            now,
            "pruned",
            serde_json::json!({
                "segments": names,
                "retention_days": self.retention_days,
                "gaps": gaps,
            }),
        )?;
        Ok((names, Some(record)))
    }
}

/// A hold in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Where it was recorded.
    pub seq: u64,
    /// Its range (Unix seconds).
    pub from: u64,
    /// Its end.
    pub to: u64,
    /// Why.
    pub reason: String,
}

/// The holds recorded in the trail and not released.
pub fn active_holds(dir: &Path) -> Result<Vec<Hold>, TrailError> {
    let mut holds = Vec::new();
    for r in records(dir)? {
        match r.kind.as_str() {
            "hold" => {
                let t = |k: &str| {
                    r.detail[k]
                        .as_str()
                        .and_then(veil_ops::time::parse_rfc3339)
                        .unwrap_or(0)
                };
                holds.push(Hold {
                    seq: r.seq,
                    from: t("from"),
                    to: t("to"),
                    reason: r.detail["reason"].as_str().unwrap_or("").to_string(),
                });
            }
            "release" => {
                let seq = r.detail["hold"].as_u64();
                holds.retain(|h| Some(h.seq) != seq);
            }
            _ => {}
        }
    }
    Ok(holds)
}

/// The `audit` section of the relay's and the allocator's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The trail's directory (created if missing); none: no trail.
    pub dir: Option<PathBuf>,
    /// The Ed25519 key the node signs with (`veil audit keygen`); required with `dir`.
    pub signing_key_file: Option<PathBuf>,
    /// Days a segment is kept before it is deleted, unless a hold covers it.
    pub retention_days: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dir: None,
            signing_key_file: None,
            retention_days: 365,
        }
    }
}

impl Settings {
    /// What is wrong with the settings: the setting's path and why (never a value).
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        match (&self.dir, &self.signing_key_file) {
            (Some(_), None) => Err(("audit.signing_key_file", "required with audit.dir")),
            (None, Some(_)) => Err(("audit.dir", "required with audit.signing_key_file")),
            _ if self.retention_days == 0 => Err((
                "audit.retention_days",
                "at least 1 (a hold keeps records longer)",
            )),
            _ => Ok(()),
        }
    }

    /// Opens the trail the settings name, writing as `source`; None when there is none.
    pub fn open(&self, source: &str) -> Result<Option<Trail>, TrailError> {
        let (Some(dir), Some(key)) = (&self.dir, &self.signing_key_file) else {
            return Ok(None);
        };
        Trail::open(dir, SigningKey::load(key)?, source, self.retention_days).map(Some)
    }
}
