//! Request ids: the caller's when it is sane, else a process-unique one. Both sides of the hop
//! log the same id, and every answer carries it.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderName, HeaderValue};

pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub(crate) struct RequestIds {
    seed: u64,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self { seed: RandomState::new().hash_one(std::process::id()), counter: AtomicU64::new(0) }
    }
}

impl RequestIds {
    pub(crate) fn take_or_mint(&self, headers: &http::HeaderMap) -> HeaderValue {
        if let Some(v) = headers.get(&REQUEST_ID) {
            let b = v.as_bytes();
            if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
                return v.clone();
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:016x}{:016x}", self.seed, n);
        HeaderValue::from_str(&id).expect("hex is a valid header value")
    }
}

/// A request id as log fields show it: the text itself, not its `Debug` form (which quotes it a
/// second time inside a JSON string).
pub(crate) fn shown(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}
