//! A fast, seeded hasher for the graph's maps (the Fx multiply-rotate hash
//! used by rustc, with a caller-chosen seed mixed in). SipHash, the standard
//! library's default, costs more than the rest of an ingest; the seed keeps
//! crafted 5-tuples from colliding on purpose when the caller picks it at
//! random (the daemon does; the graph itself has no source of randomness).

use std::hash::{BuildHasher, Hasher};

const K: u64 = 0xf135_7aea_2e62_a9c5;

/// Builds [`FxHasher`]s with a seed.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeededState(pub u64);

impl BuildHasher for SeededState {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher { hash: self.0 }
    }
}

/// The hasher.
#[derive(Debug, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.hash = (self.hash.rotate_left(26) ^ w).wrapping_mul(K);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // Final avalanche so that low bits (used by the table) depend on all input.
        let h = self.hash;
        (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (h >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    fn h<T: Hash>(seed: u64, t: &T) -> u64 {
        SeededState(seed).hash_one(t)
    }

    #[test]
    fn the_seed_changes_every_hash() {
        assert_ne!(h(1, &"default/frontend"), h(2, &"default/frontend"));
        assert_eq!(h(1, &"default/frontend"), h(1, &"default/frontend"));
        assert_ne!(h(1, &"ab"), h(1, &"ab\0"));
    }
}
