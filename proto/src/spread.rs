//! How many networks each credential is used from at once (issue 25 §1): a stolen TURN
//! credential shows as one REST id allocating from many networks within minutes, where a caller
//! moving from Wi-Fi to mobile data shows two.
//!
//! Per credential (its REST id), the distinct source networks (an IPv4 /24, an IPv6 /48) of its
//! allocations in a sliding window, kept as a handful of keyed 32-bit hashes: the table holds
//! neither an id nor an address, only hashes under a key drawn at start and never shown, and
//! what leaves it is how many credentials reach each threshold, never which. Fixed memory:
//! at most [`TRACKED`] credentials and [`NETS`] networks each; past that, new credentials are
//! counted as untracked rather than evicting others (an attacker cannot flush a stolen
//! credential out by minting fresh ids).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;

use crate::peer_filter::canonical;

/// Credentials tracked at once (each ~140 bytes: ~2.3 MB at most).
pub const TRACKED: usize = 16_384;
/// Networks remembered per credential: counts saturate here.
pub const NETS: usize = 8;
/// The thresholds exported: credentials used from at least this many networks.
pub const THRESHOLDS: [usize; 3] = [2, 4, 8];

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// Keyed hashes of networks with the last time each was seen (ms), 0 for an empty slot.
    nets: [(u32, u64); NETS],
    last_ms: u64,
}

impl Entry {
    fn distinct(&self, since_ms: u64) -> usize {
        self.nets
            .iter()
            .filter(|(h, t)| *h != 0 && *t >= since_ms)
            .count()
    }
}

/// The sketch; see the module.
#[derive(Debug)]
pub struct Spread {
    key: RandomState,
    window_ms: u64,
    ids: HashMap<u64, Entry>,
    untracked: u64,
    next_purge_ms: u64,
}

/// What the sketch exports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpreadCounts {
    /// Credentials used from at least `THRESHOLDS[i]` networks in the window.
    pub at_least: [u64; 3],
    /// Credentials not tracked because the table was full (since start).
    pub untracked: u64,
}

/// The network an address belongs to for this purpose: its /24 (IPv4, IPv4-mapped IPv6
/// included) or its /48 (IPv6), as bytes with the family's tag.
fn network(ip: IpAddr) -> [u8; 7] {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            [4, o[0], o[1], o[2], 0, 0, 0]
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [6, o[0], o[1], o[2], o[3], o[4], o[5]]
        }
    }
}

impl Spread {
    /// An empty sketch over a window of `window_ms`.
    pub fn new(window_ms: u64) -> Self {
        Spread {
            key: RandomState::new(),
            window_ms: window_ms.max(1),
            ids: HashMap::new(),
            untracked: 0,
            next_purge_ms: 0,
        }
    }

    /// Notes that credential `id` allocated from `ip` at `now_ms`.
    pub fn note(&mut self, id: &str, ip: IpAddr, now_ms: u64) {
        let since = now_ms.saturating_sub(self.window_ms);
        if now_ms >= self.next_purge_ms {
            self.ids.retain(|_, e| e.last_ms >= since);
            self.next_purge_ms = now_ms.saturating_add(self.window_ms / 8);
        }
        let idh = self.key.hash_one(("id", id));
        // Never 0: 0 marks an empty slot.
        let net = (self.key.hash_one(("net", network(ip))) as u32).max(1);
        let full = self.ids.len() >= TRACKED;
        let e = match self.ids.get_mut(&idh) {
            Some(e) => e,
            None if full => {
                self.untracked = self.untracked.saturating_add(1);
                return;
            }
            None => self.ids.entry(idh).or_default(),
        };
        e.last_ms = now_ms;
        if let Some(slot) = e.nets.iter_mut().find(|(h, _)| *h == net) {
            slot.1 = now_ms;
            return;
        }
        // A new network: an empty or expired slot, else the one seen longest ago.
        let slot = e
            .nets
            .iter_mut()
            .min_by_key(|(h, t)| {
                if *h == 0 || *t < since {
                    0
                } else {
                    t.saturating_add(1)
                }
            })
            .expect("NETS > 0");
        *slot = (net, now_ms);
    }

    /// How many credentials reach each threshold at `now_ms`.
    pub fn counts(&self, now_ms: u64) -> SpreadCounts {
        let since = now_ms.saturating_sub(self.window_ms);
        let mut at_least = [0u64; 3];
        for e in self.ids.values().filter(|e| e.last_ms >= since) {
            let d = e.distinct(since);
            for (n, t) in at_least.iter_mut().zip(THRESHOLDS) {
                if d >= t {
                    *n += 1;
                }
            }
        }
        SpreadCounts {
            at_least,
            untracked: self.untracked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_distinct_networks_per_credential_within_the_window() {
        let mut s = Spread::new(600_000);
        // One caller moving between two networks; another at one address all along.
        s.note("mobile", ip("192.0.2.10"), 0);
        s.note("mobile", ip("198.51.100.7"), 1_000);
        s.note("home", ip("203.0.113.5"), 0);
        s.note("home", ip("203.0.113.99"), 500); // the same /24
        assert_eq!(s.counts(2_000).at_least, [1, 0, 0]);
        // A stolen credential used from nine /24s (and an IPv6 /48 twice, one network).
        for i in 0..9u8 {
            s.note("stolen", IpAddr::from([10, i, 0, 1]), 2_000);
        }
        s.note("stolen", ip("2001:db8:1:2::1"), 2_000);
        s.note("stolen", ip("2001:db8:1:ffff::1"), 2_000);
        assert_eq!(s.counts(3_000).at_least, [2, 1, 1]);
        // An IPv4-mapped address is its IPv4 network.
        s.note("home", ip("::ffff:203.0.113.1"), 3_000);
        assert_eq!(s.counts(3_000).at_least, [2, 1, 1]);
        // Past the window, what was seen before it no longer counts.
        assert_eq!(s.counts(601_500).at_least, [1, 1, 1], "only the stolen one");
        assert_eq!(s.counts(700_000).at_least, [0, 0, 0]);
    }

    #[test]
    fn fixed_memory_new_credentials_do_not_evict_tracked_ones() {
        let mut s = Spread::new(600_000);
        s.note("stolen", ip("10.0.0.1"), 0);
        s.note("stolen", ip("10.1.0.1"), 0);
        for i in 0..TRACKED + 100 {
            s.note(&format!("fresh{i}"), ip("10.2.0.1"), 1);
        }
        let c = s.counts(2);
        assert_eq!(c.at_least, [1, 0, 0], "the stolen credential is still seen");
        assert_eq!(c.untracked, 101);
        assert!(s.ids.len() <= TRACKED);
    }

    #[test]
    fn nothing_of_an_id_or_an_address_is_kept() {
        let mut s = Spread::new(600_000);
        s.note("alice", ip("192.0.2.1"), 0);
        let dump = format!("{s:?}");
        assert!(
            !dump.contains("alice") && !dump.contains("192.0.2"),
            "{dump}"
        );
    }
}
