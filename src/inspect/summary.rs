//! The compiled config in the user's words: what `sluice check` prints, and as JSON what
//! `sluice check --json` and `/admin/config` return. Every plan, route and limit with where
//! its value came from; never a secret (keys, JWT secrets, passwords, the admin token).

mod document;
mod text;

use serde::Serialize;

use crate::config::file::Scope;
use crate::config::units::{HumanDuration, Rate};
use crate::config::{Config, UpstreamTarget};
use crate::identity::jwt::TokenLocation;
use crate::identity::{Fallback, KeySource};
use crate::limiter::Algorithm;
use crate::policy::{Callers, Limit, LimitSet, Policy};
use crate::telemetry::UNMATCHED;

pub use document::{problems, Document, File, Problem};

/// The compiled config, for people and programs.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Proxy listener.
    pub listen: String,
    /// Admin listener.
    pub admin: Admin,
    /// Where allowed traffic goes (credentials in the URL replaced by `***`).
    pub upstream: String,
    /// Counter storage.
    pub store: Store,
    /// How callers are identified.
    pub identify: Identify,
    /// Routes in match order.
    pub routes: Vec<RouteView>,
    /// Every plan with the limits each route has under it.
    pub plans: Vec<PlanView>,
}

/// The admin listener.
#[derive(Debug, Serialize)]
pub struct Admin {
    /// Its address.
    pub listen: String,
    /// Whether `/admin/*` asks for a bearer token (the token itself is never shown).
    pub token: bool,
}

/// Counter storage.
#[derive(Debug, Serialize)]
pub struct Store {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// The Redis URL, its password replaced by `***`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// What requests get while Redis fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_error: Option<&'static str>,
    /// Cap on tracked counters.
    pub max_entries: usize,
}

/// How callers are identified.
#[derive(Debug, Serialize)]
pub struct Identify {
    /// Where keys and tokens are read from, in the order tried.
    pub sources: Vec<String>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// Number of registered keys (the keys themselves are never shown).
    pub registered_keys: usize,
    /// Callers that present no key.
    pub anonymous: FallbackView,
    /// Callers whose key is not registered.
    pub unknown_key: FallbackView,
}

/// `reject`, or the plan such callers are counted under, as the config file says it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum FallbackView {
    /// 401.
    Reject(&'static str),
    /// Counted under `plan`, per key or per ip.
    Plan {
        /// The plan.
        plan: String,
        /// `key` or `ip`.
        per: &'static str,
    },
}

/// A route.
#[derive(Debug, Serialize)]
pub struct RouteView {
    /// Its name.
    pub name: String,
    /// `GET|HEAD`, or `*` for any.
    pub methods: String,
    /// Path pattern.
    pub path: String,
    /// Host pattern, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Units one request takes.
    pub cost: u32,
    /// Largest request body in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
    /// Whether it takes idempotency keys.
    pub idempotency: bool,
}

/// A plan.
#[derive(Debug, Serialize)]
pub struct PlanView {
    /// Its name.
    pub name: String,
    /// Who lands in it: `keys`, `client ips`, `jwt plan claims`; none for nobody.
    pub callers: Vec<&'static str>,
    /// `false`: every request is answered 403.
    pub access: bool,
    /// The penalty box rule, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub penalty: Option<String>,
    /// Per route, then for requests matching none (empty when access is denied).
    pub routes: Vec<PlanRoute>,
}

/// The limits one route has under one plan.
#[derive(Debug, Serialize)]
pub struct PlanRoute {
    /// The route's name, or `unmatched`.
    pub route: String,
    /// Exempt from every limit.
    pub exempt: bool,
    /// Every limit a request meets, in check order.
    pub limits: Vec<LimitView>,
}

/// One limit.
#[derive(Debug, Serialize)]
pub struct LimitView {
    /// Its name (headers, bodies, overrides).
    pub name: String,
    /// `100/min`; none for a concurrency limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Requests in flight at once, for a concurrency limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Counting algorithm.
    pub algorithm: &'static str,
    /// What it counts: `key`, `org`, `ip` or `global` (`ip` for callers identified by
    /// address, whatever the config says).
    pub per: &'static str,
    /// A token bucket's burst, where it differs from the rate's count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// How long a request may wait for its slot (smoothing), in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Counted and reported, never enforced.
    pub shadow: bool,
    /// `route`, `plan-wide`, `plan override` or `key override`.
    pub origin: &'static str,
}

impl Summary {
    /// The summary of `config`.
    pub fn of(config: &Config) -> Self {
        let policy = &config.policy;
        let callers = policy.plan_callers();
        let store = &config.store;
        Summary {
            listen: config.listen.to_string(),
            admin: Admin {
                listen: config.admin_listen.to_string(),
                token: config.admin_token.is_some(),
            },
            upstream: match &config.upstream.target {
                UpstreamTarget::Demo => "demo:".into(),
                UpstreamTarget::Http(uri) => without_credentials(&uri.to_string()),
            },
            store: Store {
                backend: if store.redis.is_some() {
                    "redis"
                } else {
                    "memory"
                },
                url: store.redis.as_ref().map(|r| r.redacted_url()),
                on_error: store.redis.as_ref().map(|r| r.on_error.as_str()),
                max_entries: store.max_entries,
            },
            identify: identify(policy),
            routes: policy
                .routes
                .iter()
                .enumerate()
                .map(|(r, route)| RouteView {
                    name: route.name.to_string(),
                    methods: route.methods.to_string(),
                    path: route.path.to_string(),
                    host: route.host.as_ref().map(ToString::to_string),
                    cost: route.cost,
                    max_body: route.max_body,
                    idempotency: config
                        .idempotency
                        .routes
                        .get(r)
                        .is_some_and(Option::is_some),
                })
                .collect(),
            plans: policy
                .plan_names
                .iter()
                .enumerate()
                .map(|(p, name)| plan(policy, p, name, callers[p]))
                .collect(),
        }
    }
}

impl FallbackView {
    fn of(fallback: Fallback, policy: &Policy) -> Self {
        let plan = |profile: u32| policy.profiles[profile as usize].plan.to_string();
        match fallback {
            Fallback::Reject => FallbackView::Reject("reject"),
            Fallback::PerKey(profile) => FallbackView::Plan {
                plan: plan(profile),
                per: "key",
            },
            Fallback::PerIp(profile) => FallbackView::Plan {
                plan: plan(profile),
                per: "ip",
            },
        }
    }
}

fn identify(policy: &Policy) -> Identify {
    let identifier = &policy.identifier;
    let sources = identifier
        .sources
        .iter()
        .map(|source| match source {
            KeySource::Header(name) => format!("header {name}"),
            KeySource::Bearer => "Authorization: Bearer".into(),
            KeySource::Query(name) => format!("query parameter {name}"),
            KeySource::Jwt(jwt) => {
                let algorithms: Vec<String> = jwt
                    .validation
                    .algorithms
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect();
                let location = match &jwt.location {
                    TokenLocation::Bearer => "Authorization: Bearer".to_string(),
                    TokenLocation::Header(name) => format!("header {name}"),
                };
                format!("JWT ({}) in {location}", algorithms.join(", "))
            }
        })
        .collect();
    // With no key, both fallbacks count the client address.
    let anonymous = match identifier.anonymous {
        Fallback::PerKey(profile) => Fallback::PerIp(profile),
        other => other,
    };
    Identify {
        sources,
        trusted_proxies: identifier
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect(),
        registered_keys: identifier.registry.len(),
        anonymous: FallbackView::of(anonymous, policy),
        unknown_key: FallbackView::of(identifier.unknown_key, policy),
    }
}

fn plan(policy: &Policy, p: usize, name: &str, callers: Callers) -> PlanView {
    let profile = &policy.profiles[p];
    let mut who = Vec::new();
    if callers.by_key {
        who.push("keys");
    }
    if callers.by_ip {
        who.push("client ips");
    }
    if callers.by_claim && !callers.by_key {
        who.push("jwt plan claims");
    }
    let routes = if !profile.access {
        Vec::new()
    } else {
        profile
            .by_route
            .iter()
            .enumerate()
            .map(|(r, set)| plan_route(policy, r, set, callers.ip_only()))
            .collect()
    };
    PlanView {
        name: name.to_string(),
        callers: who,
        access: profile.access,
        penalty: profile.penalty.map(|rule| {
            let duration = |nanos| HumanDuration(std::time::Duration::from_nanos(nanos));
            format!(
                "{} rejections within {} block for {}",
                rule.violations,
                duration(rule.within),
                duration(rule.block_for)
            )
        }),
        routes,
    }
}

fn plan_route(policy: &Policy, r: usize, set: &LimitSet, by_ip: bool) -> PlanRoute {
    PlanRoute {
        route: policy
            .routes
            .get(r)
            .map_or(UNMATCHED.to_string(), |route| route.name.to_string()),
        exempt: set.is_none(),
        limits: set
            .iter()
            .flat_map(|limits| limits.iter())
            .map(|limit| LimitView::of(limit, by_ip))
            .collect(),
    }
}

impl LimitView {
    /// `limit` as counted for callers identified by address when `by_ip`.
    pub fn of(limit: &Limit, by_ip: bool) -> Self {
        let quota = &limit.quota;
        let concurrency = limit.algorithm == Algorithm::Concurrency;
        LimitView {
            name: limit.name.to_string(),
            rate: (!concurrency).then(|| {
                Rate {
                    count: quota.limit(),
                    period: std::time::Duration::from_nanos(quota.period()),
                }
                .to_string()
            }),
            concurrency: concurrency.then(|| quota.limit()),
            algorithm: limit.algorithm.as_str(),
            per: per(limit.scope, by_ip),
            burst: (limit.algorithm == Algorithm::TokenBucket && quota.burst() != quota.limit())
                .then(|| quota.burst()),
            delay_ms: (quota.delay() > 0)
                .then(|| quota.delay().div_ceil(crate::limiter::clock::MILLISECOND)),
            shadow: limit.shadow,
            origin: limit.origin.as_str(),
        }
    }
}

/// A scope in words: callers identified by address have no key and no organisation, so
/// their `per: key` and `per: org` counters are per ip.
pub fn per(scope: Scope, by_ip: bool) -> &'static str {
    match scope {
        Scope::Key | Scope::Org if by_ip => "ip",
        Scope::Key => "key",
        Scope::Org => "org",
        Scope::Ip => "ip",
        Scope::Global => "global",
    }
}

/// `scheme://***@host/…` for a URL with credentials; others unchanged.
fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme && !url[scheme + 3..at].contains('/') => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
