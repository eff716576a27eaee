//! Verifying a trail: every signature, the chain, the sequence, the days, and the gaps that
//! retention left (each must be one a signed `pruned` record lists, with matching hashes on
//! both sides).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{GENESIS, Hold, Record, TrailError, active_holds, check_line, line_hash, lines};

/// A run of records retention deleted: seqs `first..=last`, the hash of the line before it
/// (what `first`'s `prev` was; [`GENESIS`] at the start) and of its last line (what the next
/// record's `prev` is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Gap {
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) before: String,
    pub(crate) after: String,
}

/// The gaps the latest `pruned` record lists (every gap the trail had after that pruning).
pub(crate) fn known_gaps(all: &[(String, usize, String)]) -> Vec<Gap> {
    all.iter()
        .rev()
        .filter_map(|(_, _, l)| {
            let (signed, _) = super::split_signed(l)?;
            let r: Record = serde_json::from_str(&signed).ok()?;
            (r.kind == "pruned").then(|| serde_json::from_value(r.detail["gaps"].clone()).ok())?
        })
        .next()
        .unwrap_or_default()
}

/// Sorts gaps and joins those that touch.
pub(crate) fn merge_gaps(mut gaps: Vec<Gap>) -> Vec<Gap> {
    gaps.sort_by_key(|g| g.first);
    let mut out: Vec<Gap> = Vec::new();
    for g in gaps {
        match out.last_mut() {
            Some(p) if p.last.saturating_add(1) == g.first => {
                p.last = g.last;
                p.after = g.after;
            }
            _ => out.push(g),
        }
    }
    out
}

/// What a verified trail holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records present.
    pub records: usize,
    /// Segments present.
    pub segments: usize,
    /// The first record present (0 unless retention deleted the oldest).
    pub first_seq: u64,
    /// The newest record and its line's hash: compare them with the `audit record` log lines
    /// and the records-total metric kept off the node, which show a truncated tail.
    pub head: Option<(u64, String)>,
    /// Runs of records retention deleted (first, last seq).
    pub gaps: Vec<(u64, u64)>,
    /// Records by kind.
    pub kinds: BTreeMap<String, usize>,
    /// The keys that signed them.
    pub keys: Vec<String>,
    /// Holds in force.
    pub holds: Vec<Hold>,
}

/// Verifies the trail in `dir` against the public keys `keys` (raw 32-byte Ed25519): Ok with
/// what it holds, or the first thing wrong, named by segment and line.
pub fn verify(dir: &Path, keys: &[Vec<u8>]) -> Result<Summary, String> {
    let all = lines(dir).map_err(|e: TrailError| e.to_string())?;
    let mut s = Summary {
        segments: super::segments(dir).map_err(|e| e.to_string())?.len(),
        ..Summary::default()
    };
    let mut records = Vec::with_capacity(all.len());
    for (day, n, line) in &all {
        let at = || format!("trail-{day}.jsonl line {n}");
        let r = check_line(line, keys).map_err(|why| format!("{}: {why}", at()))?;
        if r.time.get(..10) != Some(day.as_str()) {
            return Err(format!(
                "{}: a record of {} in the segment of another day (moved)",
                at(),
                r.time
            ));
        }
        records.push((at(), r, line_hash(line)));
    }
    let gaps = known_gaps(&all);
    let gap_at = |first: u64| gaps.iter().find(|g| g.first == first);
    let mut last: Option<(&Record, &String)> = None;
    for (at, r, hash) in &records {
        match last {
            None if r.seq == 0 => {
                if r.prev != GENESIS {
                    return Err(format!("{at}: the first record does not start the chain"));
                }
            }
            None => match gap_at(0) {
                Some(g)
                    if g.last.checked_add(1) == Some(r.seq)
                        && g.after == r.prev
                        && g.before == GENESIS => {}
                _ => {
                    return Err(format!(
                        "{at}: the trail starts at record {} and no signed pruned record \
                         accounts for the records before it (deleted)",
                        r.seq
                    ));
                }
            },
            Some((p, p_hash)) => {
                if let Some(t) = (p.time > r.time).then_some(&r.time) {
                    return Err(format!(
                        "{at}: its time {t} is before the previous record's"
                    ));
                }
                if r.seq <= p.seq {
                    return Err(format!(
                        "{at}: record {} after record {} (reordered or repeated)",
                        r.seq, p.seq
                    ));
                }
                if Some(r.seq) == p.seq.checked_add(1) {
                    if r.prev != **p_hash {
                        return Err(format!(
                            "{at}: record {} does not chain to record {} (a line before it \
                             was changed, removed or inserted)",
                            r.seq, p.seq
                        ));
                    }
                } else {
                    match gap_at(p.seq.saturating_add(1)) {
                        Some(g)
                            if g.last.checked_add(1) == Some(r.seq)
                                && g.before == **p_hash
                                && g.after == r.prev => {}
                        _ => {
                            return Err(format!(
                                "{at}: records {} to {} are missing and no signed pruned record \
                                 accounts for them (removed)",
                                p.seq.saturating_add(1),
                                r.seq - 1
                            ));
                        }
                    }
                }
            }
        }
        *s.kinds.entry(r.kind.clone()).or_default() += 1;
        if !s.keys.contains(&r.key) {
            s.keys.push(r.key.clone());
        }
        last = Some((r, hash));
    }
    s.records = records.len();
    s.first_seq = records.first().map_or(0, |(_, r, _)| r.seq);
    s.head = records.last().map(|(_, r, h)| (r.seq, h.clone()));
    s.gaps = gaps
        .iter()
        .filter(|g| g.last < s.head.as_ref().map_or(0, |h| h.0))
        .map(|g| (g.first, g.last))
        .collect();
    s.holds = active_holds(dir).map_err(|e| e.to_string())?;
    Ok(s)
}
