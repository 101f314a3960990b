//! Body types: responses (sluice's own bytes, or the upstream's stream passed through) and
//! requests (the client's stream, cut off past the route's `max_body`, or a body read whole
//! to hash it for an idempotency key).
//!
//! Bodies are never buffered: frames flow from one connection to the other as they arrive.
//! An upstream body may hold the request's concurrency slots: it lets go of them when the
//! stream ends or fails, and when it is dropped (the client left).
//! A response recorded for an idempotency key is copied as it passes, never held back.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::http1::RawHeaders;
use crate::idempotency::Recording;
use crate::limiter::concurrency::Held;

pin_project_lite::pin_project! {
    /// A response body.
    #[project = BodyProj]
    pub enum Body {
        /// A body sluice built itself.
        Full { data: Option<Bytes> },
        /// The upstream's body, streamed (hyper's client).
        Upstream { #[pin] inner: Incoming, held: Option<Held> },
        /// The upstream's body, streamed (sluice's HTTP/1.1 client).
        Direct { inner: crate::upstream::DirectBody, held: Option<Held> },
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
        Body::Upstream { inner, held: None }
    }

    /// The upstream's body, from sluice's own client.
    pub fn direct(inner: crate::upstream::DirectBody) -> Self {
        Body::Direct { inner, held: None }
    }

    /// Keeps `held` alive until the body ends (a body sluice built itself is complete
    /// already, so it lets go at once).
    pub fn hold(&mut self, held: Held) {
        match self {
            Body::Upstream { held: slot, .. } | Body::Direct { held: slot, .. } => {
                *slot = Some(held)
            }
            Body::Recorded { inner } => inner.hold(held),
            Body::Full { .. } => {}
        }
    }

    /// The response's headers when they are still kept raw in the body (sluice's
    /// HTTP/1.1 client leaves the response's map empty; see [`RawHeaders`]).
    pub fn raw_headers(&self) -> Option<&RawHeaders> {
        match self {
            Body::Direct { inner, .. } => inner.raw_headers(),
            _ => None,
        }
    }

    /// A body copied into an idempotency record as it streams.
    pub fn recorded(recording: Recording) -> Self {
        Body::Recorded {
            inner: Box::new(recording),
        }
    }
}

/// Moves headers kept raw in the body into the response's map, for whatever reads or
/// writes the map (hyper's server, an idempotency record).
pub fn headers_into_map(response: &mut Response<Body>) {
    if let Body::Direct { inner, .. } = response.body_mut() {
        if let Some(raw) = inner.take_raw_headers() {
            raw.into_map(response.headers_mut());
        }
    }
}

/// Why a response body failed.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Passes an upstream body's frame on, letting go of `held` once the body ended or failed;
/// a failure is the upstream's (`reset_body`): the client's side of a response is written
/// by the server, which never fails this body.
fn release_at_end<E: Into<BodyError> + std::fmt::Display>(
    frame: Poll<Option<Result<Frame<Bytes>, E>>>,
    held: &mut Option<Held>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    match &frame {
        Poll::Ready(None) => *held = None,
        Poll::Ready(Some(Err(error))) => {
            *held = None;
            crate::upstream::report(crate::upstream::Failure::ResetBody, error, None);
        }
        _ => {}
    }
    frame.map_err(Into::into)
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            BodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyProj::Upstream { inner, held } => release_at_end(inner.poll_frame(cx), held),
            BodyProj::Direct { inner, held } => {
                release_at_end(Pin::new(inner).poll_frame(cx), held)
            }
            BodyProj::Recorded { inner } => Pin::new(&mut **inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full { data } => data.is_none(),
            Body::Upstream { inner, .. } => inner.is_end_stream(),
            Body::Direct { inner, .. } => inner.is_end_stream(),
            Body::Recorded { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Body::Upstream { inner, .. } => inner.size_hint(),
            Body::Direct { inner, .. } => inner.size_hint(),
            Body::Recorded { inner } => inner.size_hint(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body as the client sends it.
    #[project = ClientBodyProj]
    pub enum ClientBody {
        /// Read by hyper's server (HTTP/2, TLS, and what sluice's own server hands over).
        Hyper { #[pin] inner: Incoming },
        /// Read by sluice's own HTTP/1.1 server.
        Direct { inner: crate::server::BodyReader },
        /// No body.
        Empty,
    }
}

/// The client's request body broke its own framing (a malformed chunk), as sluice's own
/// server reads it: the client's error, answered 400, never blamed on the upstream.
#[derive(Debug, thiserror::Error)]
#[error("malformed request body: {0}")]
pub struct Malformed(pub &'static str);

impl From<Incoming> for ClientBody {
    fn from(inner: Incoming) -> Self {
        ClientBody::Hyper { inner }
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            ClientBodyProj::Hyper { inner } => inner.poll_frame(cx).map_err(Into::into),
            ClientBodyProj::Direct { inner } => Pin::new(inner).poll_frame(cx),
            ClientBodyProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper { inner } => inner.is_end_stream(),
            ClientBody::Direct { inner } => inner.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper { inner } => inner.size_hint(),
            ClientBody::Direct { inner } => inner.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body on its way upstream.
    #[project = RequestBodyProj]
    pub enum RequestBody {
        /// The client's stream, ended with [`TooLarge`] once it passes `limit` bytes (for
        /// bodies whose size the headers did not announce).
        Stream {
            #[pin]
            inner: ClientBody,
            remaining: u64,
            limit: u64,
        },
        /// A body read whole (to hash it for an idempotency key).
        Whole { data: Option<Bytes> },
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
    pub fn new(inner: ClientBody, limit: Option<u64>) -> Self {
        let limit = limit.unwrap_or(u64::MAX);
        RequestBody::Stream {
            inner,
            remaining: limit,
            limit,
        }
    }

    /// A body already read whole.
    pub fn whole(data: Bytes) -> Self {
        RequestBody::Whole {
            data: (!data.is_empty()).then_some(data),
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
        let (inner, remaining, limit) = match self.project() {
            RequestBodyProj::Whole { data } => {
                return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))));
            }
            RequestBodyProj::Stream {
                inner,
                remaining,
                limit,
            } => (inner, remaining, limit),
        };
        match inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > *remaining {
                    let limit = *limit;
                    return Poll::Ready(Some(Err(Box::new(TooLarge { limit }))));
                }
                *remaining -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream { inner, .. } => inner.is_end_stream(),
            RequestBody::Whole { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream { inner, .. } => inner.size_hint(),
            RequestBody::Whole { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
