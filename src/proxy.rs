//! The request path: identify → match → check → forward or reject.
//!
//! One `Gateway` is shared by every connection, whatever protocol brought the request
//! (sluice's own HTTP/1.1 server, hyper's HTTP/1.1 and HTTP/2). A request reads one snapshot
//! of the compiled config and the clock once, has its target put in canonical form
//! ([`crate::target`]), asks the policy which limits apply, asks the
//! limiter for one decision, and either forwards (adding the limit headers to the
//! upstream's response) or renders the configured reply. Nothing here knows how limits
//! count or where counters live.
//!
//! Every future on the way to the upstream is awaited pinned where it is built
//! (`pin!(f(..)).await`): awaited by value, a future is kept twice in its caller's state,
//! and the doubling compounds through each level (the request future was 36 KB, copied
//! whole at every move; pinned, 6 KB). Clippy's `large_futures` guards the size.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};

use crate::body::{Body, ClientBody, RequestBody};
use crate::config::Config;
use crate::idempotency::{memory::MemoryRecords, Early, Idempotency, Pending, RecordStore};
use crate::identity::{Identity, Unidentified};
use crate::limiter::clock::{Clock, Nanos};
use crate::limiter::concurrency::{Held, InFlight};
use crate::limiter::penalty::{MemoryPenalties, Penalties};
use crate::limiter::store::redis::RedisSlots;
use crate::limiter::store::Store;
use crate::limiter::{Decision, Outcome};
use crate::policy::{Limit, Policy};
use crate::response::{Context, LimitHeaders, Rejection};
use crate::telemetry::{self, Verdict};
use crate::upstream::{Forwarded, Upstream, UpstreamError};

mod enforce;
mod stamp;

use enforce::Enforced;
pub use stamp::{RequestId, RequestIds, Stamp, X_REQUEST_ID};

/// A response on its way out, with its rate-limit headers beside it (see [`Stamp`]).
type Answer = (Response<Body>, LimitHeaders);

/// One config generation with the upstream client built for it; swapped whole on reload.
pub struct Snapshot {
    /// The compiled config.
    pub config: Config,
    /// Its upstream client.
    pub upstream: Upstream,
    /// When it was loaded (unix nanoseconds; set by whoever swaps it in).
    pub loaded_at: Nanos,
}

impl Snapshot {
    /// Builds the upstream client for `config`.
    pub fn new(config: Config) -> Self {
        let upstream = Upstream::new(&config.upstream);
        Self {
            config,
            upstream,
            loaded_at: 0,
        }
    }
}

/// State shared by all connections.
pub struct Gateway {
    /// The current config; requests in flight keep the snapshot they started with.
    pub snapshot: ArcSwap<Snapshot>,
    /// Counter storage.
    pub store: Arc<dyn Store>,
    /// The only source of time.
    pub clock: Arc<dyn Clock>,
    /// The penalty box.
    pub penalties: Arc<dyn Penalties>,
    /// Concurrency slots held by this process's requests in flight.
    pub in_flight: InFlight,
    /// With the Redis store: the concurrency slots shared by every replica (`in_flight`
    /// then counts this replica's share, and holds the slots while Redis fails).
    pub shared_slots: Option<Arc<RedisSlots>>,
    /// Idempotency records of routes that take keys.
    pub idempotency: Idempotency,
    request_ids: RequestIds,
}

impl Gateway {
    /// A gateway serving `config` with `store` and `clock`.
    pub fn new(config: Config, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        let records =
            MemoryRecords::new(config.idempotency.max_entries, config.idempotency.max_bytes);
        let penalties = Arc::new(MemoryPenalties::new(config.store.max_entries));
        let mut snapshot = Snapshot::new(config);
        snapshot.loaded_at = clock.now();
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            store,
            clock,
            idempotency: Idempotency::new(Arc::new(records)),
            penalties,
            in_flight: InFlight::new(),
            shared_slots: None,
            request_ids: RequestIds::new(),
        }
    }

    /// The same gateway with another idempotency record store (the memory one is the
    /// default).
    pub fn with_records(mut self, records: Arc<dyn RecordStore>) -> Self {
        self.idempotency = Idempotency::new(records);
        self
    }

    /// The same gateway with another penalty box backend (the memory one is the default).
    pub fn with_penalties(mut self, penalties: Arc<dyn Penalties>) -> Self {
        self.penalties = penalties;
        self
    }

    /// The same gateway holding concurrency slots in Redis, shared by every replica (the
    /// default holds them in this process only).
    pub fn with_slots(mut self, slots: Arc<RedisSlots>) -> Self {
        self.shared_slots = Some(slots);
        self
    }

    /// Handles one request from `peer`, which came over TLS when `tls`. The response goes
    /// out with the stamp's headers added.
    pub async fn handle(
        &self,
        request: Request<ClientBody>,
        peer: SocketAddr,
        tls: bool,
    ) -> (Response<Body>, Stamp) {
        let snapshot = self.snapshot.load_full();
        let config = &snapshot.config;
        let policy = &config.policy;
        let now = self.clock.now();
        let (mut parts, body) = request.into_parts();
        let request_id = self.request_ids.of(&parts.headers);
        // Before anything reads the target: what is matched, counted and forwarded is its
        // one canonical spelling.
        if let Err(refused) = config.target.apply(&mut parts) {
            tracing::debug!(%refused, method = %parts.method, request_id = request_id.as_str(), "request target refused");
            let reply = Reply {
                config,
                route: None,
                plan: None,
                request_id,
                now,
                method: parts.method,
                uri: parts.uri,
            };
            let answer = reply.reject(refused.into(), None, &[]);
            return self.finish(answer, reply, Verdict::BadRequest, false);
        }
        crate::tunnel::Hold::attach(&mut parts);

        let client_ip = policy.identifier.client_ip(peer.ip(), &parts);
        let route = policy.find(&parts);
        let mut reply = Reply {
            config,
            route,
            plan: None,
            request_id,
            now,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
        };

        // A body announced larger than the route takes is refused before anything counts it;
        // one that grows past it unannounced is cut off on its way upstream.
        let max_body = route.and_then(|r| policy.routes[r].max_body);
        let announced_over =
            |max| crate::http1::declared_length(&parts.headers).is_some_and(|n| n > max);
        if max_body.is_some_and(announced_over) {
            return self.finish(
                reply.reject(Rejection::PayloadTooLarge, None, &[]),
                reply,
                Verdict::TooLarge,
                false,
            );
        }
        let body = RequestBody::new(body, max_body);

        let identity = match policy.identifier.identify(&parts, client_ip, now) {
            Ok(identity) => identity,
            Err(why) => {
                match why {
                    Unidentified::UnknownKey => {
                        tracing::debug!(key = %policy.identifier.presented_key(&parts).as_deref().map(crate::identity::redact).unwrap_or_default(), "unknown key rejected");
                    }
                    Unidentified::InvalidToken(error) => {
                        tracing::debug!(%error, request_id = reply.request_id(), "JWT rejected");
                    }
                    Unidentified::Ambiguous => {
                        tracing::debug!(request_id = reply.request_id(), "ambiguous key rejected");
                    }
                    Unidentified::NoKey => {}
                }
                return self.finish(
                    reply.reject(why.into(), None, &[]),
                    reply,
                    Verdict::Unauthorized,
                    false,
                );
            }
        };
        let profile = policy.profile(&identity);
        reply.plan = Some(profile.plan_index);
        if !profile.access {
            return self.finish(
                reply.reject(Rejection::Denied, None, &[]),
                reply,
                Verdict::Denied,
                false,
            );
        }

        // Before the limiter: a replay is not forwarded and takes no quota.
        let limits = policy.limits(profile, route);
        let (body, pending) = if !Idempotency::applies(config, route) {
            (body, Pending::none())
        } else {
            match pin!(self
                .idempotency
                .begin(config, route, &identity, client_ip, &parts, body, now))
            .await
            {
                Ok(forward) => forward,
                Err(early) => {
                    return pin!(self.answer(early, reply, limits, &identity, client_ip)).await
                }
            }
        };
        let (decision, limits, held, verdict, near_limit, started) = match limits {
            // Nothing is checked, so no limit is described: no rate-limit headers.
            None => (
                Some(Decision::allow_all()),
                &[][..],
                None,
                Verdict::Exempt,
                false,
                self.clock.now(),
            ),
            Some(limits) => {
                let enforced = pin!(self.enforce(
                    &reply,
                    profile,
                    &identity,
                    client_ip,
                    limits,
                    policy.cost(route),
                ))
                .await;
                let (decision, permit, verdict, decided_at) = match enforced {
                    Enforced::Reject(response, verdict) => {
                        return self.finish(response, reply, verdict, false);
                    }
                    Enforced::Forward {
                        decision,
                        permit,
                        verdict,
                        decided_at,
                    } => (decision, permit, verdict, decided_at),
                };
                let near_limit = decision
                    .headline()
                    .is_some_and(|o| u64::from(o.remaining) * 5 <= u64::from(o.limit));
                let held = permit.map(|permit| Held(Arc::new(permit)));
                (
                    Some(decision),
                    limits,
                    held,
                    verdict,
                    near_limit,
                    decided_at,
                )
            }
        };
        let (response, answered_at) = pin!(self.forward(
            &snapshot,
            parts,
            body,
            pending,
            (peer, tls),
            (decision.as_ref(), limits),
            held,
            (&reply, started),
        ))
        .await;
        self.finish_at(response, reply, verdict, near_limit, answered_at)
    }

    /// Answers a request refused before it could be read (a malformed head, or framing
    /// two readers could disagree on): 400 in the `bad_request` envelope, counted as
    /// `bad_request`, nothing else done. `${method}` and `${path}` are `GET` and `/`: the
    /// head is not trusted for either.
    pub fn bad_request(&self) -> (Response<Body>, Stamp) {
        let snapshot = self.snapshot.load();
        let reply = Reply {
            config: &snapshot.config,
            route: None,
            plan: None,
            request_id: self.request_ids.of(&http::HeaderMap::new()),
            now: self.clock.now(),
            method: http::Method::GET,
            uri: http::Uri::default(),
        };
        let answer = reply.reject(Rejection::BadRequest, None, &[]);
        self.finish(answer, reply, Verdict::BadRequest, false)
    }

    /// Answers a request the idempotency layer settled (a replay, or a 409/422/413) with
    /// the caller's current limits in the headers, peeked: nothing is counted.
    async fn answer(
        &self,
        early: Early,
        reply: Reply<'_>,
        limits: Option<&[Limit]>,
        identity: &Identity,
        client_ip: std::net::IpAddr,
    ) -> (Response<Body>, Stamp) {
        let limits = limits.unwrap_or(&[]);
        let mut decision = Decision::allow_all();
        if !limits.is_empty() {
            let cost = reply.config.policy.cost(reply.route);
            let checks = Policy::checks(limits, identity, client_ip, cost);
            if let Ok(outcomes) = self.store.peek(&checks, reply.now).resolve().await {
                decision = Decision::from_outcomes(outcomes, &checks);
                // Nothing was rejected by a limit: no Retry-After.
                decision.allowed = true;
            }
        }
        let (response, verdict) = match early {
            Early::Replay(record) => {
                let responses = &reply.config.responses;
                let headers = responses.limit_headers(Some(&decision), limits, reply.now);
                ((record.replay(), headers), Verdict::Replayed)
            }
            Early::Refuse(rejection) => (
                reply.reject(rejection, Some(&decision), limits),
                match rejection {
                    Rejection::PayloadTooLarge => Verdict::TooLarge,
                    _ => Verdict::Refused,
                },
            ),
            Early::Unreadable => (
                reply.reject(Rejection::BadRequest, Some(&decision), limits),
                Verdict::BadRequest,
            ),
        };
        self.finish(response, reply, verdict, false)
    }

    /// Forwards the request, sent at `started`, and returns the answer with when the
    /// upstream's head came back (or it failed). `held` (concurrency slots) stays taken
    /// until the response body ends, the client leaves, or the upstream fails.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        snapshot: &Snapshot,
        mut parts: http::request::Parts,
        body: RequestBody,
        pending: Pending,
        (peer, tls): (SocketAddr, bool),
        (decision, limits): (Option<&Decision>, &[Limit]),
        held: Option<Held>,
        (reply, started): (&Reply<'_>, Nanos),
    ) -> (Answer, Nanos) {
        if let (Some(held), Some(hold)) = (&held, parts.extensions.get::<crate::tunnel::Hold>()) {
            // An upgrade keeps its concurrency slots for the life of the tunnel, not the
            // (empty) body of the 101.
            hold.keep(held.0.clone());
        }
        let forwarded = Forwarded {
            peer: peer.ip(),
            peer_trusted: snapshot.config.policy.identifier.is_trusted(peer.ip()),
            proto: if tls { "https" } else { "http" },
            request_id: reply
                .request_id
                .generated()
                .then(|| reply.request_id.header_value()),
        };
        let tunnel = crate::tunnel::Tunnel::take(&mut parts);
        let result = pin!(pending.forward(&snapshot.upstream, parts, body, forwarded)).await;
        let answered_at = self.clock.now();
        reply
            .durations()
            .upstream
            .record(answered_at.saturating_sub(started));
        let answer = match result {
            Ok(mut response) => {
                if let Some(tunnel) = tunnel {
                    tunnel.open(&mut response);
                }
                if let Some(held) = held {
                    response.body_mut().hold(held);
                }
                let headers = snapshot
                    .config
                    .responses
                    .limit_headers(decision, limits, reply.now);
                (response, headers)
            }
            Err(UpstreamError::BodyTooLarge(error)) => {
                tracing::debug!(%error, request_id = reply.request_id(), "request body cut off");
                reply.reject(Rejection::PayloadTooLarge, decision, limits)
            }
            // The client's failure (it left, or broke its body's framing), never the
            // upstream's: counted as such, answered 400 in the envelope (when it is still
            // there to read it), and its connection closes.
            Err(UpstreamError::ClientBody(error)) => {
                crate::upstream::client_aborted(&error, reply.request_id());
                reply.reject(Rejection::BadRequest, decision, limits)
            }
            Err(error) => {
                if let Some(kind) = error.kind() {
                    crate::upstream::report(kind, &error, Some(reply.request_id()));
                }
                let rejection = match error {
                    UpstreamError::Timeout(_) | UpstreamError::ConnectTimeout(_) => {
                        Rejection::UpstreamTimeout
                    }
                    _ => Rejection::UpstreamUnavailable,
                };
                reply.reject(rejection, decision, limits)
            }
        };
        (answer, answered_at)
    }

    fn finish(
        &self,
        answer: Answer,
        reply: Reply<'_>,
        verdict: Verdict,
        near_limit: bool,
    ) -> (Response<Body>, Stamp) {
        let now = self.clock.now();
        self.finish_at(answer, reply, verdict, near_limit, now)
    }

    /// Counts the request and times it as answered at `answered_at`.
    fn finish_at(
        &self,
        (response, limits): Answer,
        reply: Reply<'_>,
        verdict: Verdict,
        near_limit: bool,
        answered_at: Nanos,
    ) -> (Response<Body>, Stamp) {
        let config = reply.config;
        config
            .metrics
            .record(reply.route, reply.plan, verdict, near_limit);
        reply
            .durations()
            .request
            .record(answered_at.saturating_sub(reply.now));
        let stamp = Stamp {
            request_id: reply.request_id,
            limits,
        };
        (response, stamp)
    }
}

/// What a reply needs to know about its request.
struct Reply<'a> {
    config: &'a Config,
    route: Option<usize>,
    plan: Option<usize>,
    request_id: RequestId,
    now: Nanos,
    method: http::Method,
    uri: http::Uri,
}

impl Reply<'_> {
    fn request_id(&self) -> &str {
        self.request_id.as_str()
    }

    /// The duration histograms of this request's route and plan.
    fn durations(&self) -> &telemetry::durations::Set {
        self.config.metrics.durations(self.route, self.plan)
    }

    /// The penalty box's 429: `Retry-After` and the reset are the end of the block.
    fn penalised(&self, until: Nanos) -> Answer {
        let blocked = Outcome {
            allowed: false,
            limit: 0,
            remaining: 0,
            reset: until,
            retry_after: until.saturating_sub(self.now),
        };
        let decision = Decision {
            outcomes: std::iter::once(blocked).collect(),
            allowed: false,
            violated: 1,
            headline: Some(0),
            ..Decision::default()
        };
        self.reject(Rejection::Penalised, Some(&decision), &[])
    }

    fn reject(
        &self,
        rejection: Rejection,
        decision: Option<&Decision>,
        limits: &[Limit],
    ) -> Answer {
        let policy = &self.config.policy;
        let context = Context {
            decision,
            limits,
            route: self
                .route
                .map_or(telemetry::UNMATCHED, |r| &policy.routes[r].name),
            plan: self
                .plan
                .map_or(telemetry::NO_PLAN, |p| &policy.plan_names[p]),
            request_id: self.request_id(),
            now: self.now,
            method: &self.method,
            path: self.uri.path(),
        };
        self.config.responses.render(rejection, &context)
    }
}
