//! A tiny xorshift generator: fast and deterministic from its seed, for port choice, jitter,
//! tests and fuzzing. Never for secrets or anything an attacker must not predict: tokens and
//! keys come from the OS random source.

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

#[cfg(test)]
mod tests {
    use super::XorShift;

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
