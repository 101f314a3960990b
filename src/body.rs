//! Body types: responses (sluice's own bytes, or the upstream's stream passed through) and
//! requests sent upstream (the client's stream, or a body read whole to hash it).
//!
//! Upstream bodies are never buffered: frames flow from the upstream connection to the
//! client as they arrive. A body being recorded for an idempotency key is copied as it
//! passes, never held back.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::idempotency::Recording;

pin_project_lite::pin_project! {
    /// A response body.
    #[project = BodyProj]
    pub enum Body {
        /// A body sluice built itself.
        Full { data: Option<Bytes> },
        /// The upstream's body, streamed.
        Upstream { #[pin] inner: Incoming },
        /// A body streamed to the client and copied into an idempotency record.
        Recorded { inner: Box<Recording> },
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
        Body::Upstream { inner }
    }

    /// A body copied into an idempotency record as it streams.
    pub fn recorded(recording: Recording) -> Self {
        Body::Recorded {
            inner: Box::new(recording),
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
            BodyProj::Upstream { inner } => inner.poll_frame(cx),
            BodyProj::Recorded { inner } => Pin::new(&mut **inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full { data } => data.is_none(),
            Body::Upstream { inner } => inner.is_end_stream(),
            Body::Recorded { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Body::Upstream { inner } => inner.size_hint(),
            Body::Recorded { inner } => inner.size_hint(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body sent upstream.
    #[project = RequestBodyProj]
    pub enum RequestBody {
        /// The client's body, streamed.
        Incoming { #[pin] inner: Incoming },
        /// A body read whole (to hash it for an idempotency key).
        Full { data: Option<Bytes> },
    }
}

impl RequestBody {
    /// The client's body, streamed.
    pub fn incoming(inner: Incoming) -> Self {
        RequestBody::Incoming { inner }
    }

    /// A complete body.
    pub fn full(data: Bytes) -> Self {
        RequestBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl From<Incoming> for RequestBody {
    fn from(inner: Incoming) -> Self {
        RequestBody::incoming(inner)
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            RequestBodyProj::Incoming { inner } => inner.poll_frame(cx),
            RequestBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming { inner } => inner.is_end_stream(),
            RequestBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming { inner } => inner.size_hint(),
            RequestBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
