//! A response body that holds a guard until it ends: the upstream slot a body occupies
//! (`crate::proxy`), the end of a request (`crate::request_end`). Below both.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

/// What a body's guard is told when the body is dropped before its end.
pub trait Guard {
    /// The body was dropped unfinished: the client left mid-body.
    fn cut_short(&mut self) {}
}

/// `inner`, with `guard` dropped the moment the body ends (its last frame, or a failure), or
/// when the body is dropped; `Guard::cut_short` first when that is before its end.
pub struct Guarded<B: Body, G: Guard> {
    inner: B,
    guard: Option<G>,
}

impl<B: Body, G: Guard> Guarded<B, G> {
    pub fn new(inner: B, guard: Option<G>) -> Self {
        Self { inner, guard }
    }
}

impl<B: Body + Unpin, G: Guard + Unpin> Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body, G: Guard> Drop for Guarded<B, G> {
    fn drop(&mut self) {
        // hyper drops a body it has written whole without asking past its last frame; one it
        // has not finished is a client that left mid-body.
        if let Some(guard) = self.guard.as_mut() {
            if !self.inner.is_end_stream() {
                guard.cut_short();
            }
        }
    }
}
