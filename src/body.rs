//! Body types: responses (sluice's own bytes, or the upstream's stream passed through) and
//! requests (the client's stream, cut off past the route's `max_body`).
//!
//! Bodies are never buffered: frames flow from one connection to the other as they arrive.
//! An upstream body may hold the request's concurrency slots: it lets go of them when the
//! stream ends or fails, and when it is dropped (the client left).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::limiter::concurrency::Held;

pin_project_lite::pin_project! {
    /// A response body.
    #[project = BodyProj]
    pub enum Body {
        /// A body sluice built itself.
        Full { data: Option<Bytes> },
        /// The upstream's body, streamed.
        Upstream { #[pin] inner: Incoming, held: Option<Held> },
    }
}

impl Body {
    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Body::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Body::Full { data: None }
    }

    /// The upstream's body.
    pub fn upstream(inner: Incoming) -> Self {
        Body::Upstream { inner, held: None }
    }

    /// Keeps `held` alive until the body ends (a body sluice built itself is complete
    /// already, so it lets go at once).
    pub fn hold(&mut self, held: Held) {
        if let Body::Upstream { held: slot, .. } = self {
            *slot = Some(held);
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            BodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyProj::Upstream { inner, held } => {
                let frame = inner.poll_frame(cx);
                if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
                    *held = None;
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full { data } => data.is_none(),
            Body::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Body::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body on its way upstream, ended with [`TooLarge`] once it passes `limit`
    /// bytes (for bodies whose size the headers did not announce).
    pub struct RequestBody {
        #[pin]
        inner: Incoming,
        remaining: u64,
        limit: u64,
    }
}

/// The request body passed the route's `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub struct TooLarge {
    /// The route's `max_body`.
    pub limit: u64,
}

impl RequestBody {
    /// `inner`, allowed at most `limit` bytes (`None`: unlimited).
    pub fn new(inner: Incoming, limit: Option<u64>) -> Self {
        let limit = limit.unwrap_or(u64::MAX);
        Self {
            inner,
            remaining: limit,
            limit,
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > *this.remaining {
                    let limit = *this.limit;
                    return Poll::Ready(Some(Err(Box::new(TooLarge { limit }))));
                }
                *this.remaining -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
