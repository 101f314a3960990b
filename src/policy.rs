//! Which limits apply: routes, plans and per-key profiles, compiled once at load.
//!
//! A `Profile` is a plan with a key's overrides folded in; for every route it holds the
//! final list of limits, so the request path does one route scan and one table lookup.
//! Owns matching and limit resolution; does not count (the limiter does) or identify.

mod callers;
pub mod matcher;

use std::net::IpAddr;
use std::sync::Arc;

use http::request::Parts;

use crate::config::file::Scope;
use crate::identity::{ip_hash, Identifier, Identity};
use crate::limiter::{Algorithm, Check, CounterKey, Quota, INLINE_LIMITS};
pub use callers::Callers;
use matcher::{HostPattern, MethodSet, PathPattern};

/// Index of a profile in `Policy::profiles`.
pub type ProfileId = u32;

/// Where a limit's value came from, for `check` and `explain` output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The route's own limit.
    Route,
    /// The plan's plan-wide `all` limit.
    PlanWide,
    /// The plan overrides the route's limit.
    Plan,
    /// The key overrides it.
    Key,
}

impl Origin {
    /// Short label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Origin::Route => "route",
            Origin::PlanWide => "plan-wide",
            Origin::Plan => "plan override",
            Origin::Key => "key override",
        }
    }
}

/// One compiled limit.
#[derive(Clone, Debug)]
pub struct Limit {
    /// Name in headers, bodies and overrides.
    pub name: Arc<str>,
    /// Counter identity: hash of name, scope and algorithm, never the rate.
    pub id: u64,
    /// How it counts.
    pub algorithm: Algorithm,
    /// Its rate.
    pub quota: Quota,
    /// What it counts.
    pub scope: Scope,
    /// Count and report, never reject.
    pub shadow: bool,
    /// Where the value came from.
    pub origin: Origin,
}

/// A compiled route.
#[derive(Clone, Debug)]
pub struct Route {
    /// Unique name; metric label.
    pub name: Arc<str>,
    /// Methods it takes.
    pub methods: MethodSet,
    /// Path pattern.
    pub path: PathPattern,
    /// Optional host pattern.
    pub host: Option<HostPattern>,
    /// Units one request takes.
    pub cost: u32,
    /// Largest request body in bytes; a larger one gets 413.
    pub max_body: Option<u64>,
}

impl Route {
    /// Whether the route takes a request whose target is canonical ([`crate::target`]).
    /// A `CONNECT` has no path, only its authority: a route listing it matches by host.
    fn matches(&self, parts: &Parts) -> bool {
        self.methods.matches(&parts.method)
            && (self.path.matches(parts.uri.path()) || parts.method == http::Method::CONNECT)
            && self.host.as_ref().is_none_or(|host| {
                parts
                    .uri
                    .host()
                    .or_else(|| {
                        crate::headers::get(&parts.headers, &http::header::HOST)?
                            .to_str()
                            .ok()
                    })
                    .is_some_and(|h| host.matches(h))
            })
    }
}

/// The limits a route has under one profile; `None` = exempt.
pub type LimitSet = Option<Arc<[Limit]>>;

/// A plan, possibly with one key's overrides.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Plan name (a metric label; key profiles keep their plan's name).
    pub plan: Arc<str>,
    /// Index of the plan's name in `Policy::plan_names`.
    pub plan_index: usize,
    /// `false`: every request is answered 403.
    pub access: bool,
    /// One entry per route, then one for requests that match no route.
    pub by_route: Vec<LimitSet>,
    /// The penalty box rule, if the plan has one.
    pub penalty: Option<crate::limiter::penalty::Penalty>,
}

/// The compiled policy: everything a request needs to know which limits apply.
#[derive(Debug)]
pub struct Policy {
    /// Routes in match order.
    pub routes: Vec<Route>,
    /// Plans first (in `plan_names` order), then key profiles.
    pub profiles: Vec<Profile>,
    /// Plan names, for metric labels.
    pub plan_names: Vec<Arc<str>>,
    /// Caller identification.
    pub identifier: Identifier,
}

/// The limits of one request, ready for the limiter.
pub type Checks = smallvec::SmallVec<[Check; INLINE_LIMITS]>;

impl Policy {
    /// Index of the first route matching the request, or `None`. The request's target must
    /// be canonical ([`crate::target::Normaliser::apply`]).
    pub fn find(&self, parts: &Parts) -> Option<usize> {
        self.routes.iter().position(|route| route.matches(parts))
    }

    /// The profile of an identity.
    pub fn profile(&self, identity: &Identity) -> &Profile {
        &self.profiles[identity.profile as usize]
    }

    /// The limits for `route` (or unmatched) under `profile`; `None` = exempt.
    pub fn limits<'a>(&self, profile: &'a Profile, route: Option<usize>) -> Option<&'a [Limit]> {
        profile.by_route[route.unwrap_or(self.routes.len())].as_deref()
    }

    /// Units a request on `route` takes.
    pub fn cost(&self, route: Option<usize>) -> u32 {
        route.map_or(1, |r| self.routes[r].cost)
    }

    /// Turns limits into counter checks for one caller. Concurrency limits (last in every
    /// limit set) are not counters and are left out, so check `i` is limit `i`.
    pub fn checks(limits: &[Limit], identity: &Identity, client_ip: IpAddr, cost: u32) -> Checks {
        limits
            .iter()
            .take_while(|limit| limit.algorithm != Algorithm::Concurrency)
            .map(|limit| Check {
                key: Self::counter(limit, identity, client_ip),
                algorithm: limit.algorithm,
                quota: limit.quota,
                cost,
                shadow: limit.shadow,
            })
            .collect()
    }

    /// The concurrency limits of a limit set (its tail), with their index in it.
    pub fn concurrency(limits: &[Limit]) -> impl Iterator<Item = (usize, &Limit)> {
        limits
            .iter()
            .enumerate()
            .skip_while(|(_, limit)| limit.algorithm != Algorithm::Concurrency)
    }

    /// The counter `limit` uses for this caller.
    pub fn counter(limit: &Limit, identity: &Identity, client_ip: IpAddr) -> CounterKey {
        CounterKey {
            limit: limit.id,
            subject: match limit.scope {
                Scope::Key => identity.subject,
                Scope::Org => identity.org.unwrap_or(identity.subject),
                Scope::Ip => ip_hash(client_ip),
                Scope::Global => 0,
            },
        }
    }
}

#[cfg(test)]
mod tests;
