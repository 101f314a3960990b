//! `/admin/usage`: every limit one caller has, on every route, with how much is used and
//! left right now — the "view your limits" page. Reads counters with `Store::peek`, so
//! looking never counts.

use serde::Serialize;

use super::{head, unidentified, Caller, InspectError};
use crate::config::units::Rate;
use crate::config::Config;
use crate::identity::{redact, Kind};
use crate::limiter::clock::{Nanos, SECOND};
use crate::limiter::store::{Store, StoreError};
use crate::limiter::{Check, CounterKey};
use crate::policy::{Limit, Policy};
use crate::telemetry::UNMATCHED;

/// Why no usage could be reported.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The caller could not be expressed as a request.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// The gateway would answer this caller 401.
    #[error("this caller is rejected with 401: {0}")]
    Unidentified(&'static str),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One caller's usage.
#[derive(Debug, Serialize)]
pub struct Usage {
    /// Who it is.
    pub caller: CallerView,
    /// Every distinct counter the caller meets, in route order.
    pub limits: Vec<LimitUsage>,
}

/// The caller as identified, with the key redacted.
#[derive(Debug, Serialize)]
pub struct CallerView {
    /// `key`, `unknown_key` or `ip`.
    pub kind: &'static str,
    /// `sha256:` and the first 8 hex digits of the key's digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The client address used for `per: ip` limits.
    pub ip: String,
    /// Plan name.
    pub plan: String,
    /// Organisation name, for registered keys that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// `false`: the plan is denied (403) and has no limits.
    pub access: bool,
}

/// One counter.
#[derive(Debug, Serialize)]
pub struct LimitUsage {
    /// Limit name.
    pub name: String,
    /// Routes that count on it (`unmatched` = requests matching no route).
    pub routes: Vec<String>,
    /// Configured rate.
    pub rate: String,
    /// Counting algorithm.
    pub algorithm: &'static str,
    /// What it counts: `key`, `org`, `ip` or `global`.
    pub scope: &'static str,
    /// Where the value came from.
    pub origin: &'static str,
    /// Counted but never enforced.
    pub shadow: bool,
    /// Capacity (a token bucket's burst).
    pub limit: u32,
    /// Units used.
    pub used: u32,
    /// Units left.
    pub remaining: u32,
    /// When the quota is whole again, unix seconds (rounded up).
    pub reset: u64,
    /// Seconds until then (rounded up).
    pub reset_in: u64,
}

/// Reports `caller`'s usage of every limit it has under `config`, read from `store` at `now`.
pub async fn usage(
    config: &Config,
    store: &dyn Store,
    now: Nanos,
    caller: &Caller,
) -> Result<Usage, UsageError> {
    let policy = &config.policy;
    let parts = head(policy, caller, "GET", "/")?;
    let client_ip = caller.client_ip();
    let identity = policy
        .identifier
        .identify(&parts, client_ip, now)
        .map_err(|why| UsageError::Unidentified(unidentified(why)))?;
    let profile = policy.profile(&identity);
    let view = CallerView {
        kind: match identity.kind {
            Kind::Key => "key",
            Kind::UnknownKey => "unknown_key",
            Kind::Ip => "ip",
            Kind::Jwt => "jwt",
        },
        key: match identity.kind {
            Kind::Ip | Kind::Jwt => None,
            Kind::Key | Kind::UnknownKey => caller.key.as_deref().map(redact),
        },
        ip: client_ip.to_string(),
        plan: profile.plan.to_string(),
        org: identity
            .org
            .and_then(|org| policy.identifier.registry.org_name(org))
            .map(str::to_string),
        access: profile.access,
    };
    if !profile.access {
        return Ok(Usage {
            caller: view,
            limits: Vec::new(),
        });
    }

    // Distinct counters in route order, with every route that shares each.
    let mut counters: Vec<(CounterKey, Check, &Limit, Vec<String>)> = Vec::new();
    for (r, set) in profile.by_route.iter().enumerate() {
        let Some(limits) = set else { continue };
        let route = policy.routes.get(r).map_or(UNMATCHED, |route| &route.name);
        let checks = Policy::checks(limits, &identity, client_ip, 1);
        for (limit, check) in limits.iter().zip(checks) {
            match counters.iter_mut().find(|(key, ..)| *key == check.key) {
                Some((.., routes)) => routes.push(route.to_string()),
                None => counters.push((check.key, check, limit, vec![route.to_string()])),
            }
        }
    }
    let checks: Vec<Check> = counters.iter().map(|(_, check, ..)| *check).collect();
    let outcomes = store.peek(&checks, now).resolve().await?;
    let limits = counters
        .into_iter()
        .zip(outcomes)
        .map(|((_, _, limit, routes), outcome)| {
            let quota = &limit.quota;
            LimitUsage {
                name: limit.name.to_string(),
                routes,
                rate: Rate {
                    count: quota.limit(),
                    period: std::time::Duration::from_nanos(quota.period()),
                }
                .to_string(),
                algorithm: limit.algorithm.as_str(),
                scope: super::summary::per(limit.scope, identity.kind == Kind::Ip),
                origin: limit.origin.as_str(),
                shadow: limit.shadow,
                limit: outcome.limit,
                used: outcome.limit.saturating_sub(outcome.remaining),
                remaining: outcome.remaining,
                reset: outcome.reset.div_ceil(SECOND),
                reset_in: outcome.reset.saturating_sub(now).div_ceil(SECOND),
            }
        })
        .collect();
    Ok(Usage {
        caller: view,
        limits,
    })
}
