//! Which verified tokens the cache takes: a token is cached the second time it is seen. A token
//! sent once (a fleet of short-lived clients, a scan with valid tokens) then costs no insert and
//! no eviction, and cannot push out the tokens that are sent again and again; a token in use
//! costs one extra verification in its lifetime.
//!
//! The first sighting is remembered in a direct-mapped table of token hashes, twice the cache's
//! size: a token's mark lasts until another token lands on its slot, so tokens sent again within
//! about a cache's worth of new tokens are taken.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct Doorkeeper {
    seen: Box<[AtomicU64]>,
}

impl Doorkeeper {
    pub fn new(cache_entries: u64) -> Self {
        let slots = (cache_entries.saturating_mul(2).clamp(64, 1 << 26) as usize).next_power_of_two();
        Self { seen: (0..slots).map(|_| AtomicU64::new(0)).collect() }
    }

    /// True when the token with this hash was marked before (it should be cached now).
    pub fn seen(&self, hash: u64) -> bool {
        self.slot(hash).load(Relaxed) == hash
    }

    /// Remembers a token that verified. Racing callers at worst take a token one sighting late
    /// or early.
    pub fn mark(&self, hash: u64) {
        self.slot(hash).store(hash, Relaxed);
    }

    fn slot(&self, hash: u64) -> &AtomicU64 {
        &self.seen[hash as usize & (self.seen.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The authenticator's use: look, and mark only what was not seen.
    fn admit(d: &Doorkeeper, hash: u64) -> bool {
        let seen = d.seen(hash);
        if !seen {
            d.mark(hash);
        }
        seen
    }

    #[test]
    fn a_token_is_admitted_on_its_second_sighting() {
        let d = Doorkeeper::new(10_000);
        assert!(!admit(&d, 42));
        assert!(admit(&d, 42));
        assert!(admit(&d, 42));
        assert!(!admit(&d, 43));
    }

    #[test]
    fn a_token_sharing_the_slot_takes_the_mark_over() {
        let d = Doorkeeper::new(10);
        let slots = d.seen.len() as u64;
        assert_eq!(slots, 64);
        assert!(!admit(&d, 5));
        assert!(!admit(&d, 5 + slots)); // same slot: 5's mark is gone
        assert!(!admit(&d, 5));
        assert!(admit(&d, 5));
    }

    #[test]
    fn looking_leaves_no_mark() {
        let d = Doorkeeper::new(10);
        assert!(!d.seen(7));
        assert!(!d.seen(7));
        d.mark(7);
        assert!(d.seen(7));
    }

    #[test]
    fn the_table_is_twice_the_cache_rounded_up() {
        assert_eq!(Doorkeeper::new(10_000).seen.len(), 32_768);
        assert_eq!(Doorkeeper::new(0).seen.len(), 64);
    }
}
