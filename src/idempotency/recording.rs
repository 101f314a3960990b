//! The response side of a first request: its claim, forwarding it so the exchange
//! finishes even if the client leaves, and copying the response into the record.
//!
//! A retry after a client timeout is the case idempotency keys exist for, so a client that
//! goes away must not cancel the upstream exchange or lose its answer: the upstream call
//! runs in its own task, and a response body nobody reads any more is drained into the
//! record in the background. Only an answer that is not final (5xx…), too large, or broken
//! releases the key.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

use super::{count, storable, stored_headers, Answer, Record, RecordKey, RecordStore};
use crate::body::{Body, RequestBody};
use crate::limiter::concurrency::Held;
use crate::upstream::{Forwarded, Upstream, UpstreamError};

/// The first request's claim on its key, if it has one. Dropped unfilled (limited, or
/// the upstream failed), it releases the key so a retry is forwarded.
pub struct Pending(Option<Claim>);

impl Pending {
    /// No claim: the response is not recorded.
    pub fn none() -> Self {
        Self(None)
    }

    pub(super) fn claimed(
        store: Arc<dyn RecordStore>,
        key: RecordKey,
        token: u64,
        max_body: u64,
    ) -> Self {
        Self(Some(Claim {
            store,
            key,
            token,
            max_body,
            done: false,
        }))
    }

    /// Forwards the request. With a claim, the exchange runs in its own task and its
    /// response is recorded as it streams, so it completes and is stored even when the
    /// client leaves first.
    pub async fn forward(
        self,
        upstream: &Upstream,
        parts: Parts,
        body: RequestBody,
        forwarded: Forwarded,
    ) -> Result<Response<Body>, UpstreamError> {
        let Some(claim) = self.0 else {
            return upstream.forward(parts, body, &forwarded).await;
        };
        let upstream = upstream.clone();
        let (answer, answered) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let result = upstream.forward(parts, body, &forwarded).await;
            let result = result.map(|response| Pending(Some(claim)).keep(response));
            if let Err(Ok(response)) = answer.send(result) {
                // The client left before the response: read it here, into the record.
                drain(response.into_body()).await;
            }
        });
        match answered.await {
            Ok(result) => result,
            // The task ended without answering: it panicked, and so does this request,
            // as it would have without the task.
            Err(_) => match task.await {
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                _ => panic!("the forwarding task ended without an answer"),
            },
        }
    }

    /// Records `response` as it streams to the client, when it is worth storing.
    pub(super) fn keep(self, response: Response<Body>) -> Response<Body> {
        let Some(claim) = self.0 else {
            return response;
        };
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if !storable(response.status()) || declared.is_some_and(|n| n > claim.max_body) {
            count("not_stored");
            return response;
        }
        let (parts, body) = response.into_parts();
        let mut recording = Recording {
            inner: body,
            status: parts.status,
            headers: stored_headers(&parts.headers),
            copy: BytesMut::new(),
            claim: Some(claim),
        };
        if recording.inner.is_end_stream() {
            recording.finish();
            return Response::from_parts(
                parts,
                std::mem::replace(&mut recording.inner, Body::empty()),
            );
        }
        Response::from_parts(parts, Body::recorded(recording))
    }
}

/// Reads a body to its end (or until its recording stops), dropping the data.
async fn drain(mut body: Body) {
    while let Some(Ok(_)) = body.frame().await {}
}

pub(super) struct Claim {
    store: Arc<dyn RecordStore>,
    key: RecordKey,
    token: u64,
    max_body: u64,
    done: bool,
}

impl Claim {
    fn commit(mut self, record: Record) {
        self.done = true;
        match self.store.commit(&self.key, self.token, record) {
            Answer::Ready(Ok(true)) => count("stored"),
            Answer::Ready(_) => count("not_stored"),
            Answer::Later(later) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        count(if let Ok(true) = later.await {
                            "stored"
                        } else {
                            "not_stored"
                        });
                    });
                }
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.done {
            self.store.release(&self.key, self.token).detach();
        }
    }
}

/// A response body on its way to the client, copied into its record as it passes.
pub struct Recording {
    inner: Body,
    status: StatusCode,
    headers: HeaderMap,
    copy: BytesMut,
    /// `None` once stored or given up.
    claim: Option<Claim>,
}

impl Recording {
    /// Keeps the request's concurrency slots until the body ends (here or in the
    /// background, if the client leaves first).
    pub fn hold(&mut self, held: Held) {
        self.inner.hold(held);
    }

    fn data(&mut self, chunk: &Bytes) {
        let Some(claim) = &self.claim else { return };
        if (self.copy.len() + chunk.len()) as u64 > claim.max_body {
            self.abandon();
            return;
        }
        self.copy.extend_from_slice(chunk);
    }

    /// The body ended cleanly: store the record.
    fn finish(&mut self) {
        if let Some(claim) = self.claim.take() {
            claim.commit(Record {
                status: self.status,
                headers: std::mem::take(&mut self.headers),
                body: std::mem::take(&mut self.copy).freeze(),
            });
        }
    }

    /// The body failed or grew too large: release the key, free the copy.
    fn abandon(&mut self) {
        if self.claim.take().is_some() {
            count("not_stored");
        }
        self.copy = BytesMut::new();
    }
}

impl http_body::Body for Recording {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.data(data);
                }
                // The server stops polling once the body says it has ended.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.abandon(),
            Poll::Pending => {}
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

impl Drop for Recording {
    /// Dropped before its end: the client went away mid-body. The rest is read in the
    /// background so the record is complete for the retry.
    fn drop(&mut self) {
        if self.claim.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            count("not_stored");
            return; // the claim releases itself
        };
        let rest = Recording {
            inner: std::mem::replace(&mut self.inner, Body::empty()),
            status: self.status,
            headers: std::mem::take(&mut self.headers),
            copy: std::mem::take(&mut self.copy),
            claim: self.claim.take(),
        };
        runtime.spawn(drain(Body::recorded(rest)));
    }
}
