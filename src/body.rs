//! The response body type: sluice's own bytes, or the upstream's stream passed through.
//!
//! Upstream bodies are never buffered: frames flow from the upstream connection to the
//! client as they arrive.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

pin_project_lite::pin_project! {
    /// A response body.
    #[project = BodyProj]
    pub enum Body {
        /// A body sluice built itself.
        Full { data: Option<Bytes> },
        /// The upstream's body, streamed.
        Upstream { #[pin] inner: Incoming },
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full { data } => data.is_none(),
            Body::Upstream { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Body::Upstream { inner } => inner.size_hint(),
        }
    }
}
