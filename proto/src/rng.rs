//! Two generators with different jobs. [`XorShift`]: fast and deterministic from its seed, for
//! port choice, jitter, tests and fuzzing — its state must never appear on the wire. [`TxidPrf`]:
//! what does appear on the wire (transaction ids of Data indications, cover and filler frames),
//! a keyed PRF over a counter, so a client learns neither the counter (how many frames the worker
//! sent to others) nor any generator's state. Secrets and tokens come from the OS random source.

use std::hash::{BuildHasher, RandomState};

/// Marsaglia's xorshift64 (13, 7, 17).
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a seed (its low bit is set: the state must never be zero).
    pub fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }

    /// A generator seeded from the OS random source (a fixed seed if that fails: the values
    /// are not security-relevant).
    pub fn from_os() -> Self {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        XorShift::new(u64::from_le_bytes(b))
    }

    /// The next value.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The current state (to seed a successor that continues the same sequence).
    pub fn state(&self) -> u64 {
        self.0
    }
}

/// Transaction ids from a keyed pseudo-random function (SipHash-1-3 under a random key, std's
/// [`RandomState`]) over a counter: distinct while the counter does not wrap (2^64 ids), and
/// without the key unlinkable to the counter, to each other and to any [`XorShift`].
pub struct TxidPrf {
    key: RandomState,
    tail_key: u64,
    counter: u64,
}

impl Default for TxidPrf {
    fn default() -> Self {
        TxidPrf::new()
    }
}

impl TxidPrf {
    /// A PRF under a fresh random key.
    pub fn new() -> Self {
        let key = RandomState::new();
        TxidPrf {
            tail_key: key.hash_one(u64::MAX),
            key,
            counter: 0,
        }
    }

    /// The next transaction id.
    #[inline]
    pub fn next_txid(&mut self) -> [u8; 12] {
        self.counter = self.counter.wrapping_add(1);
        // One PRF call per id (this is on the Data indication path): 64 bits of output make the
        // ids distinct; the last 4 bytes are a keyed function of them, carrying no counter.
        let h = self.key.hash_one(self.counter);
        let tail = (h ^ self.tail_key).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&h.to_le_bytes());
        t[8..].copy_from_slice(&(tail as u32).to_le_bytes());
        t
    }
}

#[cfg(test)]
mod tests {
    use super::{TxidPrf, XorShift};

    #[test]
    fn txids_are_distinct_and_carry_no_counter() {
        let mut p = TxidPrf::new();
        let ids: Vec<[u8; 12]> = (0..10_000).map(|_| p.next_txid()).collect();
        // Distinct, and no 4-byte window of consecutive ids counts up by one (a counter in
        // clear would, nearly every time).
        crate::testing::assert_no_counter(&ids);
        // Another key, other ids for the same counter.
        assert_ne!(TxidPrf::new().next_txid(), ids[0]);
    }

    #[test]
    fn never_stuck_at_zero_and_deterministic() {
        let mut a = XorShift::new(0);
        let mut b = XorShift::new(0);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        assert!(xs.iter().all(|&x| x != 0));
        assert_eq!(xs, (0..100).map(|_| b.next_u64()).collect::<Vec<_>>());
        let mut seen = std::collections::HashSet::new();
        assert!(
            xs.iter().all(|x| seen.insert(*x)),
            "no repeats in a short run"
        );
    }
}
