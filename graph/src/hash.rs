//! A fast, seeded hasher for the graph's maps: the Fx hash of the
//! `rustc-hash` crate (the one rustc uses), with a caller-chosen seed mixed
//! in. SipHash, the standard library's default, costs more than the rest of
//! an ingest; the seed keeps crafted 5-tuples from colliding on purpose when
//! the caller picks it at random (the daemon does; the graph itself has no
//! source of randomness).

/// Builds [`FxHasher`]s with a seed: `SeededState::with_seed(seed)`.
pub type SeededState = rustc_hash::FxSeededState;

/// The hasher.
pub type FxHasher = rustc_hash::FxHasher;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn h<T: Hash>(seed: u64, t: &T) -> u64 {
        SeededState::with_seed(seed as usize).hash_one(t)
    }

    #[test]
    fn the_seed_changes_every_hash() {
        assert_ne!(h(1, &"default/frontend"), h(2, &"default/frontend"));
        assert_eq!(h(1, &"default/frontend"), h(1, &"default/frontend"));
        assert_ne!(h(1, &"ab"), h(1, &"ab\0"));
    }
}
