//! A count of things still out that someone waits to see come back: the open connections a
//! shutdown drains, and the tunnel leases a connection waits for. Each is held by a `Held`
//! guard, so it comes back however its holder ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Outstanding {
    open: AtomicUsize,
    none_left: Notify,
}

impl Outstanding {
    /// One more out, until the returned guard drops.
    pub(crate) fn hold(self: &Arc<Self>) -> Held {
        self.open.fetch_add(1, Ordering::AcqRel);
        Held(self.clone())
    }

    pub(crate) fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until none is out, or `limit` has passed; returns how many are still out.
    pub(crate) async fn wait(&self, limit: Option<Duration>) -> usize {
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        loop {
            let notified = self.none_left.notified();
            if self.count() == 0 {
                return 0;
            }
            match deadline {
                None => notified.await,
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        return self.count();
                    }
                }
            }
        }
    }
}

/// One thing out; dropping it brings it back.
pub(crate) struct Held(Arc<Outstanding>);

impl Drop for Held {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_the_last_comes_back() {
        let out = Arc::new(Outstanding::default());
        assert_eq!(out.wait(None).await, 0, "none out: no wait");
        let (a, b) = (out.hold(), out.hold());
        assert_eq!(out.wait(Some(Duration::from_millis(20))).await, 2, "the limit passes with two out");
        drop(a);
        let waiter = tokio::spawn({
            let out = out.clone();
            async move { out.wait(None).await }
        });
        tokio::task::yield_now().await;
        drop(b);
        assert_eq!(waiter.await.unwrap(), 0);
    }
}
