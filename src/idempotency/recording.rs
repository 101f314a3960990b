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
use http::header::HeaderMap;
use http::request::Parts;
use http::{Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

use super::{count, storable, stored_headers, Answer, Later, Record, RecordKey, RecordStore};
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
            return std::pin::pin!(upstream.forward(parts, body, forwarded)).await;
        };
        let upstream = upstream.clone();
        let (answer, answered) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            // The record is made from the response's map.
            let sent = upstream.forward(parts, body, forwarded).await;
            let result = match sent.map(|mut response| {
                crate::body::headers_into_map(&mut response);
                response
            }) {
                Ok(response) if worth_keeping(&response, claim.max_body) => {
                    Ok(Pending(Some(claim)).keep(response))
                }
                // Released before the client hears back, so its retry (on any replica)
                // is forwarded, not answered 409.
                Ok(response) => {
                    count("not_stored");
                    claim.give_up().await;
                    Ok(response)
                }
                Err(error) => {
                    claim.give_up().await;
                    Err(error)
                }
            };
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
        if !worth_keeping(&response, claim.max_body) {
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
            committing: None,
            last: None,
        };
        if recording.inner.is_end_stream() {
            recording.committing = recording.finish();
            if recording.committing.is_none() {
                return Response::from_parts(
                    parts,
                    std::mem::replace(&mut recording.inner, Body::empty()),
                );
            }
        }
        Response::from_parts(parts, Body::recorded(recording))
    }
}

/// Whether `response` may be stored: a final answer not declared larger than `max_body`.
fn worth_keeping(response: &Response<Body>, max_body: u64) -> bool {
    let declared = crate::http1::declared_length(response.headers());
    storable(response.status()) && declared.is_none_or(|n| n <= max_body)
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
    /// Releases the key and waits until the store has it.
    async fn give_up(mut self) {
        self.done = true;
        let _ = self.store.release(&self.key, self.token).resolve().await;
    }

    /// Stores `record`; a remote store's answer is returned to wait for.
    fn commit(mut self, record: Record) -> Option<Later<()>> {
        self.done = true;
        match self.store.commit(&self.key, self.token, record) {
            Answer::Ready(Ok(true)) => count("stored"),
            Answer::Ready(_) => count("not_stored"),
            Answer::Later(later) => {
                return Some(Box::pin(async move {
                    count(if let Ok(true) = later.await {
                        "stored"
                    } else {
                        "not_stored"
                    });
                }));
            }
        }
        None
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
    /// A remote store's commit under way: the body's end waits for it, so a client that
    /// retries after reading the whole response is replayed, never answered 409.
    committing: Option<Later<()>>,
    /// The frame that ended the body, sent once the commit is done: a client that knows
    /// the length is done reading with the last byte, not with the end of the stream.
    last: Option<Frame<Bytes>>,
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

    /// The body ended cleanly: store the record (a remote store's answer is returned).
    fn finish(&mut self) -> Option<Later<()>> {
        let claim = self.claim.take()?;
        claim.commit(Record {
            status: self.status,
            headers: std::mem::take(&mut self.headers),
            body: std::mem::take(&mut self.copy).freeze(),
        })
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
    type Error = crate::body::BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(committing) = &mut this.committing {
            std::task::ready!(committing.as_mut().poll(cx));
            this.committing = None;
            // A commit starts only once the body has ended: what is left is its last
            // frame, if it had one, and the end.
            return Poll::Ready(this.last.take().map(Ok));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.data(data);
                }
                // The server stops polling once the body says it has ended; while a
                // commit is under way it does not say so (`is_end_stream`).
                if this.inner.is_end_stream() {
                    this.committing = this.finish();
                    if this.committing.is_some() {
                        let Poll::Ready(Some(Ok(frame))) = polled else {
                            unreachable!("matched above")
                        };
                        this.last = Some(frame);
                        return self.poll_frame(cx);
                    }
                }
            }
            Poll::Ready(None) => {
                this.committing = this.finish();
                if let Some(committing) = &mut this.committing {
                    std::task::ready!(committing.as_mut().poll(cx));
                    this.committing = None;
                }
            }
            Poll::Ready(Some(Err(_))) => this.abandon(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.committing.is_none() && self.last.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recording {
    /// Dropped before its end: the client went away mid-body. The rest is read in the
    /// background so the record is complete for the retry.
    fn drop(&mut self) {
        if let Some(committing) = self.committing.take() {
            // The client left before the end: the commit finishes on its own.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(committing);
            }
        }
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
            committing: None,
            last: None,
        };
        runtime.spawn(drain(Body::recorded(rest)));
    }
}
