//! Idempotency keys at the edge: a retried request is never sent upstream twice.
//!
//! A route opts in with `idempotency`. The first request carrying the key header claims a
//! record (scoped to the caller, the route and the key) and is forwarded; its response is
//! copied into the record as it streams to the client and stored when it ends. A retry with
//! the same key and the same request (method, path and query, body digest) gets the stored
//! response, marked `Idempotent-Replayed: true`, without reaching the upstream or the
//! limiter. Owns the rules (what is stored, what a retry gets) and the `RecordStore` trait;
//! the `memory` backend holds records in this process, the `redis` one in the limiter
//! store's Redis, shared by every replica. Does not decide limits or render
//! replies: the proxy does, with the answer it gets from here.

pub mod memory;
mod recording;
pub mod redis;

pub use recording::{Pending, Recording};

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sha2::{Digest, Sha256};

use crate::body::{Body, RequestBody, TooLarge};
use crate::config::Config;
use crate::identity::{Identifier, Identity, Kind};
use crate::limiter::clock::Nanos;
use crate::response::{self, Rejection};
use crate::telemetry;

/// `Idempotency-Key`, the default key header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `Idempotent-Replayed`, set on every replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Default record lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default largest request body hashed and response body stored.
pub const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// Default cap on records.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// Default cap on stored response bytes.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// One route's idempotency settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The request header holding the key.
    pub header: HeaderName,
    /// How long a record lives, from the first request's arrival.
    pub ttl: Nanos,
    /// Largest request body hashed (larger: 413) and response body stored (larger: not stored).
    pub max_body: u64,
}

/// The compiled idempotency settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Per route, in route order: `None` = the route does not take idempotency keys.
    pub routes: Vec<Option<Rule>>,
    /// Cap on records (stored and in flight).
    pub max_entries: usize,
    /// Cap on stored response bytes.
    pub max_bytes: u64,
}

/// Names a record: SHA-256 of the caller's credential, the route and the key.
pub type RecordKey = [u8; 32];
/// What a retry must repeat: SHA-256 of method, path and query, and body.
pub type Fingerprint = [u8; 32];

/// A stored response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its status.
    pub status: StatusCode,
    /// Its headers, minus those that describe one response only (see [`stored_headers`]).
    pub headers: HeaderMap,
    /// Its whole body.
    pub body: Bytes,
}

impl Record {
    /// Bytes it accounts for against `max_bytes`: body, header names and values.
    pub fn size(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        (self.body.len() + headers) as u64
    }

    /// The stored response as a reply: its status, headers and body, marked replayed.
    pub fn replay(&self) -> Response<Body> {
        let mut response = Response::new(Body::full(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        response
    }
}

/// What the store holds for a key, as seen by a new request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// Nothing: the request now owns the key (`token` proves it on commit and release).
    Owned(u64),
    /// The same request is still in flight (or the store is full of requests in flight).
    InFlight,
    /// The same request's response.
    Stored(Arc<Record>),
    /// The key was used with a different request.
    Mismatch,
}

/// Why a record store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The store is unreachable or answered with an error.
    #[error("idempotency store unavailable: {0}")]
    Unavailable(String),
}

/// A remote store's answer in flight.
pub type Later<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A store's answer: at once (a local store, no allocation), or later (a remote one).
pub enum Answer<T> {
    /// Answered without waiting.
    Ready(T),
    /// In flight.
    Later(Later<T>),
}

impl<T: Send + 'static> Answer<T> {
    /// Waits for the answer.
    pub async fn resolve(self) -> T {
        match self {
            Answer::Ready(value) => value,
            Answer::Later(future) => future.await,
        }
    }

    /// Lets a remote answer finish on its own (commits and releases from a body or a drop).
    pub fn detach(self) {
        if let (Answer::Later(future), Ok(runtime)) = (self, tokio::runtime::Handle::try_current())
        {
            runtime.spawn(future);
        }
    }
}

/// Where records live.
pub trait RecordStore: Send + Sync + 'static {
    /// Looks `key` up for a request with `fingerprint`; when nothing is there, claims it
    /// until `expires` (unix nanoseconds). Expired records count as nothing.
    fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        expires: Nanos,
        now: Nanos,
    ) -> Answer<Result<Claimed, RecordError>>;

    /// Stores the response of the claim `token`; answers whether it was stored (a claim
    /// that expired meanwhile, or a record that cannot fit, is not).
    fn commit(
        &self,
        key: &RecordKey,
        token: u64,
        record: Record,
    ) -> Answer<Result<bool, RecordError>>;

    /// Gives up the claim `token` so a retry is forwarded again.
    fn release(&self, key: &RecordKey, token: u64) -> Answer<Result<(), RecordError>>;

    /// Drops expired records. Called periodically.
    fn sweep(&self, now: Nanos);

    /// Records held and bytes of stored responses, for the metrics.
    fn usage(&self) -> (usize, u64);
}

/// Sets the entries and bytes gauges from `store`.
pub fn report(store: &dyn RecordStore) {
    let (entries, bytes) = store.usage();
    metrics::gauge!(telemetry::IDEMPOTENCY_ENTRIES).set(entries as f64);
    metrics::gauge!(telemetry::IDEMPOTENCY_BYTES).set(bytes as f64);
}

/// A request answered here instead of being forwarded.
#[derive(Debug)]
pub enum Early {
    /// The stored response of the same request.
    Replay(Arc<Record>),
    /// A 409, 422 or 413 in the configured envelope.
    Refuse(Rejection),
    /// The request body could not be read (the client went away or broke the framing).
    Unreadable,
}

/// The idempotency layer of the gateway: the record store and the request-side rules.
pub struct Idempotency {
    /// Where records live.
    pub store: Arc<dyn RecordStore>,
}

impl Idempotency {
    /// A layer over `store`.
    pub fn new(store: Arc<dyn RecordStore>) -> Self {
        Self { store }
    }

    /// Whether `route` takes idempotency keys at all; when not, [`Idempotency::begin`] has
    /// nothing to do (and the request path need not build its future).
    pub fn applies(config: &Config, route: Option<usize>) -> bool {
        route.is_some_and(|r| {
            config
                .idempotency
                .routes
                .get(r)
                .is_some_and(Option::is_some)
        })
    }

    /// Decides what happens to a request before any limit is checked: forwarded with a
    /// claim to fill (first request), forwarded untouched (no rule or no key), or answered
    /// here (replay, 409, 422, 413). Reads the body when a key is present, to hash it.
    #[allow(clippy::too_many_arguments)]
    pub async fn begin(
        &self,
        config: &Config,
        route: Option<usize>,
        identity: &Identity,
        client_ip: IpAddr,
        parts: &Parts,
        body: RequestBody,
        now: Nanos,
    ) -> Result<(RequestBody, Pending), Early> {
        let untouched = |body| Ok((body, Pending::none()));
        let Some((route, rule)) = route.and_then(|r| {
            let rule = config.idempotency.routes.get(r)?.as_ref()?;
            Some((&*config.policy.routes[r].name, rule))
        }) else {
            return untouched(body);
        };
        let Some(value) = parts
            .headers
            .get(&rule.header)
            .filter(|v| !v.as_bytes().trim_ascii().is_empty())
        else {
            return untouched(body);
        };
        let declared = crate::http1::declared_length(&parts.headers);
        if declared.is_some_and(|n| n > rule.max_body) {
            return Err(refuse(Rejection::PayloadTooLarge, "too_large"));
        }
        let limit = usize::try_from(rule.max_body).unwrap_or(usize::MAX);
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<LengthLimitError>() || error.is::<TooLarge>() => {
                return Err(refuse(Rejection::PayloadTooLarge, "too_large"));
            }
            Err(_) => return Err(Early::Unreadable),
        };
        let identifier = &config.policy.identifier;
        let key = record_key(
            identifier,
            identity,
            client_ip,
            parts,
            route,
            value.as_bytes(),
        );
        let fingerprint = fingerprint(parts, &bytes);
        let expires = now.saturating_add(rule.ttl);
        let claimed = self.store.claim(&key, &fingerprint, expires, now).resolve();
        match claimed.await {
            Ok(Claimed::Owned(token)) => {
                let claim = Pending::claimed(self.store.clone(), key, token, rule.max_body);
                Ok((RequestBody::whole(bytes), claim))
            }
            Ok(Claimed::Stored(record)) => {
                count("replayed");
                Err(Early::Replay(record))
            }
            Ok(Claimed::InFlight) => Err(refuse(Rejection::IdempotencyConflict, "conflict")),
            Ok(Claimed::Mismatch) => Err(refuse(Rejection::IdempotencyMismatch, "mismatch")),
            Err(error) => {
                // Like the limiter, a failing store lets the request through: logged (once a
                // second at most: it fails for every request while it is down), counted.
                static GATE: crate::telemetry::LogGate = crate::telemetry::LogGate::new();
                if let Some(suppressed) = GATE.admit(now) {
                    tracing::warn!(%error, suppressed, "idempotency store failed; forwarding without a record");
                }
                count("error");
                Ok((RequestBody::whole(bytes), Pending::none()))
            }
        }
    }
}

fn refuse(rejection: Rejection, outcome: &'static str) -> Early {
    count(outcome);
    Early::Refuse(rejection)
}

pub(crate) fn count(outcome: &'static str) {
    metrics::counter!(telemetry::IDEMPOTENCY, "outcome" => outcome).increment(1);
}

/// The record key: the caller's credential (the presented key, or the client IP for
/// callers identified by address) hashed with the route and the key header's value.
/// SHA-256, unkeyed, so every process and replica derives the same key for the same
/// request; no secret is needed because nothing here is a counter another caller could
/// collide with on purpose without knowing the credential.
pub fn record_key(
    identifier: &Identifier,
    identity: &Identity,
    client_ip: IpAddr,
    parts: &Parts,
    route: &str,
    value: &[u8],
) -> RecordKey {
    let mut hash = Sha256::new();
    hash.update(b"sluice idempotency v1\0");
    match (identity.kind, identifier.presented_key(parts)) {
        (Kind::Ip, _) => {
            hash.update(b"ip\0");
            match client_ip {
                IpAddr::V4(v4) => hash.update(v4.octets()),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => hash.update(v4.octets()),
                    None => hash.update(v6.octets()),
                },
            }
        }
        (kind, Some(key)) => {
            hash.update(if kind == Kind::Key { b"k\0" } else { b"u\0" });
            hash.update(key.as_bytes());
        }
        // A JWT caller: its verified subject's hash, the same in every replica that shares
        // the subject secret (as replicas sharing a Redis store do).
        (_, None) => {
            hash.update(b"s\0");
            hash.update(identity.subject.to_le_bytes());
        }
    }
    for part in [route.as_bytes(), value] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// What a retry must repeat: method, path and query, and body.
pub fn fingerprint(parts: &Parts, body: &[u8]) -> Fingerprint {
    let mut hash = Sha256::new();
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    for part in [parts.method.as_str().as_bytes(), target.as_bytes()] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.update(body);
    hash.finalize().into()
}

/// Statuses worth replaying: final answers. 1xx, 5xx, 408 and 429 say "try again", so the
/// key is released for the retry instead.
pub fn storable(status: StatusCode) -> bool {
    (200..500).contains(&status.as_u16())
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
}

/// The headers a record keeps: all but those about one response or one request.
/// Rate-limit headers and `X-Request-Id` are written fresh on a replay; `Date` is set by
/// the server when it sends it.
pub fn stored_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = headers.clone();
    for name in [
        header::DATE,
        header::RETRY_AFTER,
        response::X_RATELIMIT_LIMIT,
        response::X_RATELIMIT_REMAINING,
        response::X_RATELIMIT_RESET,
        response::RATELIMIT_POLICY,
        response::RATELIMIT,
        crate::proxy::X_REQUEST_ID,
    ] {
        kept.remove(name);
    }
    crate::upstream::remove_hop_by_hop(&mut kept);
    kept
}

#[cfg(test)]
mod tests;
