//! One request's limits, enforced: the penalty box, concurrency slots, the counters (with
//! the store-failure fallback), shadow rejections, and the verdict that follows.
//!
//! Everything here answers "forward or reject, and with what"; forwarding itself and the
//! reply rendering stay in `proxy`.

use std::net::IpAddr;

use smallvec::SmallVec;

use super::{Gateway, Reply};
use crate::identity::Identity;
use crate::limiter::clock::{Nanos, SECOND};
use crate::limiter::concurrency::{Permit, Refused};
use crate::limiter::store::{Checking, OnError};
use crate::limiter::{Decision, Outcome, INLINE_LIMITS};
use crate::policy::{Limit, Policy, Profile};
use crate::response::Rejection;
use crate::telemetry::{self, Verdict};

/// Decrements a gauge when dropped.
struct Decrement(metrics::Gauge);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// What the limits say.
pub(super) enum Enforced {
    /// Forward, with the decision for the headers and the slots to hold while the response
    /// streams. `verdict` is `Allowed` or `ShadowLimited`; `decided_at` is when the request
    /// was free to go (read once for the limiter's timer and the upstream's).
    Forward {
        decision: Decision,
        permit: Option<Permit>,
        verdict: Verdict,
        decided_at: Nanos,
    },
    /// Answer this instead.
    Reject(super::Answer, Verdict),
}

impl Gateway {
    /// Enforces `limits` for `identity` at the request's `now` (in `reply`).
    pub(super) async fn enforce(
        &self,
        reply: &Reply<'_>,
        profile: &Profile,
        identity: &Identity,
        client_ip: IpAddr,
        limits: &[Limit],
        cost: u32,
    ) -> Enforced {
        let now = reply.now;
        // A blocked identity is answered before any counter or slot is touched.
        if profile.penalty.is_some() {
            if let Some(until) = self.penalties.blocked_until(identity.subject, now) {
                return Enforced::Reject(reply.penalised(until), Verdict::Penalised);
            }
        }

        // Concurrency slots first: dropping the permit gives them back if a counter rejects
        // the request below.
        let mut concurrency = Policy::concurrency(limits).peekable();
        let permit = match concurrency.peek() {
            None => None,
            Some(&(first, _)) => {
                let wanted = concurrency.map(|(_, limit)| {
                    let key = Policy::counter(limit, identity, client_ip);
                    (key, limit.quota.limit(), limit.shadow)
                });
                let acquired = match &self.shared_slots {
                    None => self.in_flight.acquire(wanted).map_err(Refused::Full),
                    Some(slots) => {
                        let wanted: SmallVec<[_; INLINE_LIMITS]> = wanted.collect();
                        slots.acquire(&self.in_flight, &wanted).await
                    }
                };
                // Non-shadow entries only can fail; their index is relative to `first`.
                match acquired {
                    Ok(permit) => Some(permit),
                    Err(Refused::Full(i)) => {
                        let full = &limits[first + i..=first + i];
                        let decision = busy(full[0].quota.limit(), now);
                        return self.limited(reply, profile, identity, decision, full).await;
                    }
                    Err(Refused::Unavailable) => return fail_closed(reply),
                }
            }
        };

        let checks = Policy::checks(limits, identity, client_ip, cost);
        // Matched here rather than through `resolve`: the memory store's answer is ready,
        // and an async call would move it (144 bytes) in and out of another future.
        let checked = match self.store.check(&checks, now) {
            Checking::Ready(result) => result,
            Checking::Pending(pending) => pending.await,
        };
        let decision = match checked {
            Ok(outcomes) => Decision::from_outcomes(outcomes, &checks),
            Err(error) => {
                // The breaker logs the outage once; each request only counts.
                tracing::debug!(%error, "store failed");
                if self.store.on_error() == OnError::Deny {
                    return fail_closed(reply);
                }
                telemetry::store_fail_open();
                let mut decision = Decision::allow_all();
                decision.degraded = true;
                decision
            }
        };
        let mut decided_at = self.clock.now();
        reply
            .durations()
            .limiter
            .record(decided_at.saturating_sub(now));
        if !decision.allowed {
            return self
                .limited(reply, profile, identity, decision, limits)
                .await;
        }
        // Smoothing: a token bucket with a `delay` reserved this request a slot in the near
        // future; it waits for it here (its slot is taken, so a client that leaves loses it).
        let wait = decision
            .outcomes
            .iter()
            .filter(|o| o.allowed)
            .map(|o| o.retry_after)
            .max()
            .unwrap_or(0);
        if wait > 0 {
            let waiting = metrics::gauge!(telemetry::DELAYED);
            waiting.increment(1.0);
            // Decremented however the wait ends, the client leaving included.
            let _done = Decrement(waiting);
            tokio::time::sleep(std::time::Duration::from_nanos(wait)).await;
            decided_at = self.clock.now();
        }
        let shadow = decision.violated != 0 || permit.as_ref().is_some_and(|p| p.shadow_full);
        if shadow {
            shadow_log(reply, &decision, limits, now);
        }
        Enforced::Forward {
            decision,
            permit,
            decided_at,
            verdict: if shadow {
                Verdict::ShadowLimited
            } else {
                Verdict::Allowed
            },
        }
    }

    /// A real rejection: counts toward the penalty box, which may answer instead.
    async fn limited(
        &self,
        reply: &Reply<'_>,
        profile: &Profile,
        identity: &Identity,
        decision: Decision,
        limits: &[Limit],
    ) -> Enforced {
        if let Some(rule) = &profile.penalty {
            let violation = self.penalties.violation(identity.subject, rule, reply.now);
            if let Some(until) = violation.resolve().await {
                tracing::info!(
                    plan = %profile.plan,
                    request_id = reply.request_id(),
                    block_for_s = rule.block_for.div_ceil(SECOND),
                    "caller blocked by the penalty box"
                );
                return Enforced::Reject(reply.penalised(until), Verdict::Penalised);
            }
        }
        let response = reply.reject(Rejection::Limited, Some(&decision), limits);
        Enforced::Reject(response, Verdict::Limited)
    }
}

/// The store failed under `on_error: deny`: 503 in the `unavailable` envelope, counted.
fn fail_closed(reply: &Reply<'_>) -> Enforced {
    telemetry::store_fail_closed();
    let response = reply.reject(Rejection::Unavailable, None, &[]);
    Enforced::Reject(response, Verdict::Unavailable)
}

/// The decision for a full concurrency limit: nothing left, and no way to know when a slot
/// frees up, so `Retry-After: 1`.
fn busy(max: u32, now: Nanos) -> Decision {
    let outcome = Outcome {
        allowed: false,
        limit: max,
        remaining: 0,
        reset: now,
        retry_after: SECOND,
    };
    Decision {
        outcomes: std::iter::once(outcome).collect(),
        violated: 1,
        headline: Some(0),
        ..Decision::default()
    }
}

/// Logs a shadow rejection at `info`, at most once a second for the whole process, with the
/// number left unlogged since: a new limit rolled out in shadow mode must not flood the log.
fn shadow_log(reply: &Reply<'_>, decision: &Decision, limits: &[Limit], now: Nanos) {
    static GATE: telemetry::LogGate = telemetry::LogGate::new();
    let Some(suppressed) = GATE.admit(now) else {
        return;
    };
    let names: Vec<&str> = decision
        .violated()
        .filter_map(|i| limits.get(i).map(|l| &*l.name))
        .collect();
    tracing::info!(
        limits = ?names,
        request_id = reply.request_id(),
        suppressed,
        "shadow limit would have rejected this request"
    );
}
