//! The DPoP proofs this replica has accepted, until their window closes: a `jti` seen twice
//! within its window is a replay. Bounded; when full, new proofs are refused rather than an
//! entry forgotten before its time (which would let its replay through).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

/// Why a proof could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRecorded {
    /// Seen before, within its window.
    Replayed,
    /// The store holds `capacity` proofs, none expired.
    Full,
}

pub struct ReplayStore {
    /// A seeded hash of (key thumbprint, `jti`) -> when it may be forgotten (unix seconds). Two
    /// proofs with one hash count as a replay: a refusal, never a pass.
    seen: Mutex<Seen>,
    hasher: foldhash::fast::RandomState,
    /// `[dpop] max_proofs`; a reload may change it.
    capacity: std::sync::atomic::AtomicUsize,
}

struct Seen {
    entries: HashMap<u64, i64>,
    /// The last sweep, so a store full of live entries is not swept on every request.
    swept_at: i64,
}

impl ReplayStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: Mutex::new(Seen { entries: HashMap::new(), swept_at: i64::MIN }),
            hasher: foldhash::fast::RandomState::default(),
            capacity: capacity.into(),
        }
    }

    /// A new bound, from a reloaded config; what is held stays held.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records a proof's `jti` for the key `jkt` until `expires`.
    pub fn record(&self, jkt: &str, jti: &str, expires: i64, now: i64) -> Result<(), NotRecorded> {
        let key = self.hasher.hash_one((jkt, jti));
        let capacity = self.capacity.load(std::sync::atomic::Ordering::Relaxed);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.entries.get(&key).is_some_and(|e| *e >= now) {
            return Err(NotRecorded::Replayed);
        }
        if seen.entries.len() >= capacity && seen.swept_at < now {
            seen.entries.retain(|_, e| *e >= now);
            seen.swept_at = now;
        }
        if seen.entries.len() >= capacity && !seen.entries.contains_key(&key) {
            return Err(NotRecorded::Full);
        }
        seen.entries.insert(key, expires);
        Ok(())
    }

    /// Proofs held now.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_refused_twice_within_its_window_and_accepted_after() {
        let s = ReplayStore::new(10);
        assert_eq!(s.record("k", "a", 160, 100), Ok(()));
        assert_eq!(s.record("k", "a", 160, 150), Err(NotRecorded::Replayed));
        // Another key's proof may carry the same jti.
        assert_eq!(s.record("other", "a", 160, 150), Ok(()));
        assert_eq!(s.record("k", "a", 230, 170), Ok(()), "its window closed at 160");
    }

    #[test]
    fn a_full_store_refuses_until_entries_expire_and_never_forgets_one_early() {
        let s = ReplayStore::new(3);
        for jti in ["a", "b", "c"] {
            s.record("k", jti, 200, 100).unwrap();
        }
        assert_eq!(s.record("k", "d", 200, 101), Err(NotRecorded::Full));
        assert_eq!(s.record("k", "a", 200, 101), Err(NotRecorded::Replayed), "still remembered when full");
        assert_eq!(s.len(), 3);
        // Past 200 the three may go; a new one fits.
        assert_eq!(s.record("k", "d", 300, 201), Ok(()));
        assert_eq!(s.len(), 1);
    }
}
