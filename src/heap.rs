//! Gives memory the allocator holds free back to the system. glibc returns freed memory only from
//! the top of each arena; what a burst of connections or a churning token cache frees in the
//! middle stays resident until `malloc_trim`. A sidecar's memory limit is set from its resident
//! size, so after a burst the gateway should come back down rather than keep its high-water mark.

use std::time::{Duration, Instant};

/// How often the heap is trimmed. A trim of a few tens of MiB took 0.5-6.5 ms on the build machine.
pub(crate) const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Trims the heap every `every`, on a blocking thread (the trim takes the allocator's locks).
pub(crate) async fn trim_periodically(every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = Instant::now();
        match tokio::task::spawn_blocking(trim).await {
            Ok(released) => tracing::debug!(released, took = ?started.elapsed(), "heap trimmed"),
            Err(e) => tracing::warn!(error = %e, "heap trim failed"),
        }
    }
}

/// Returns free pages to the system; true when there were any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
// The crate's one unsafe block (the crate denies `unsafe_code`): a call into glibc, which has no
// safe binding.
#[allow(unsafe_code)]
pub(crate) fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers; it only walks and releases the allocator's own
    // free lists, under the allocator's locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl's, macOS's) return memory on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn trim() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// Memory freed below a live allocation stays resident until the trim gives it back.
    #[test]
    fn a_trim_returns_memory_freed_in_the_middle_of_the_heap() {
        let mut blocks: Vec<Vec<u8>> = (0..64 * 1024).map(|i| vec![i as u8; 1024]).collect();
        let pin = vec![1u8; 1024]; // allocated last: keeps the arena's top in use
        blocks.clear();
        blocks.shrink_to_fit();
        let before = resident_bytes();
        assert!(super::trim());
        let after = resident_bytes();
        assert!(before - after.min(before) > 32 << 20, "resident {before} before the trim, {after} after");
        drop(pin);
    }
}
