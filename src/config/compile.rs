//! File types → runtime types. Gathers every problem in one pass, each with the config
//! path of the value at fault (`routes[3].limit`), which `config` turns into
//! `file:line:column`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::ALLOW;
use http::{HeaderName, HeaderValue, StatusCode};
use ipnet::IpNet;
use sha2::Digest as _;

use super::file::{self, AlgorithmName, File, KeyEntry, LimitFile, LimitValue, Scope};
use super::units::{ByteSize, Rate};
use super::{
    Config, ConnectionLimits, LogSettings, RedisSettings, ReloadSettings, Source, StoreSettings,
    TlsSettings, UpstreamSettings, UpstreamTarget,
};
use crate::idempotency;
use crate::identity::{Fallback, Identifier, KeyInfo, KeySource, Registry};
use crate::limiter::penalty::Penalty;
use crate::limiter::window::SLIDING_MAX_LIMIT;
use crate::limiter::{Algorithm, Quota};
use crate::policy::matcher::{HostPattern, MethodSet, PathPattern};
use crate::policy::{Limit, LimitSet, Origin, Policy, Profile, Route};
use crate::response::{self, Reply, Responses};
use crate::target::{ConflictingHost, EncodedSlashes, Normaliser};
use crate::telemetry;

/// A problem at a config path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Which file.
    pub source: Source,
    /// Path of the offending value.
    pub path: String,
    /// Whether the mapping key (not its value) is at fault.
    pub at_key: bool,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Name of the plan-wide limit in plan and key `limits`.
pub const PLAN_WIDE: &str = "all";
/// A decision tracks violated limits in a 64-bit mask.
pub const MAX_LIMITS_PER_REQUEST: usize = 64;
/// Plan of registered keys that name none.
pub const DEFAULT_PLAN: &str = "default";
/// Plan of callers identified by IP.
pub const ANONYMOUS_PLAN: &str = "anonymous";
/// Largest `limits.max_connections` (far beyond any file-descriptor limit).
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// Default `upstream.max_idle_connections`.
pub const DEFAULT_MAX_IDLE: usize = 1024;
/// Smallest `limits.max_header_bytes`: hyper's minimum read buffer.
pub const MIN_HEADER_BYTES: usize = 8192;

struct Compiler {
    problems: Vec<Problem>,
    source: Source,
    defaults: (AlgorithmName, Scope),
    /// Directory relative file names (JWT keys) are resolved against.
    dir: Option<PathBuf>,
    /// Policy-wide shadow mode: every limit is a shadow limit.
    shadow_all: bool,
    /// Limits must fit the Redis script's arithmetic.
    redis: bool,
}

/// A route limit before overrides: everything but where it ends up.
#[derive(Clone, Debug)]
struct Spec {
    name: Arc<str>,
    rate: Rate,
    algorithm: AlgorithmName,
    scope: Scope,
    burst: Option<u32>,
    shadow: bool,
    /// Smoothing: how long a request may wait, and how many of one subject may.
    delay: Option<(Duration, Option<u32>)>,
}

/// The `Allow` of the 405 `CONNECT` gets: the standard methods but `CONNECT`.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

/// A route's limits while overrides are applied: `None` = exempt route, inner `None` = removed.
type RouteSlots = Option<Vec<Option<(Spec, Origin)>>>;

/// Compiles a parsed file (and its keys file) into the runtime config.
pub fn compile(file: File, keys_file: Vec<KeyEntry>) -> Result<Config, Vec<Problem>> {
    compile_in(file, keys_file, None)
}

/// A Redis URL without its host and port: what seeds the shared subject hashes. Replicas
/// reach one Redis (or one cluster, through any of its nodes) by different names; what they
/// share is the credentials, the database and the prefix.
fn without_host(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (credentials, address) = match rest.rsplit_once('@') {
        Some((credentials, address)) => (credentials, address),
        None => ("", rest),
    };
    let path = address.find(['/', '?']).map_or("", |at| &address[at..]);
    format!("{scheme}://{credentials}@{path}")
}

/// As [`compile`], resolving relative file names (JWT keys) against `dir`.
pub fn compile_in(
    file: File,
    keys_file: Vec<KeyEntry>,
    dir: Option<&Path>,
) -> Result<Config, Vec<Problem>> {
    let mut c = Compiler {
        problems: Vec::new(),
        source: Source::Main,
        defaults: (file.defaults.algorithm, file.defaults.per),
        dir: dir.map(Path::to_path_buf),
        shadow_all: file.shadow.unwrap_or(false),
        redis: file.store.backend == file::Backend::Redis,
    };
    if let (true, Some(url)) = (c.redis, &file.store.url) {
        // Before any subject (an org below) is hashed: every replica pointed at this
        // Redis and prefix must count a caller under the same counter.
        let prefix = file.store.prefix.as_deref().unwrap_or("sluice");
        let seed = format!("{}\0{prefix}", without_host(url));
        crate::identity::share_subject_secret(seed.as_bytes());
    }

    let mut target = c.normaliser(&file.normalise);
    let routes_and_specs = c.routes(&file.routes, &target);
    target.allow_connect = routes_and_specs
        .iter()
        .any(|(route, _)| route.methods.lists(&http::Method::CONNECT));
    target.allow_asterisk = routes_and_specs
        .iter()
        .any(|(route, _)| route.path.is_asterisk());
    let route_limit_names: BTreeMap<Arc<str>, (usize, usize)> = routes_and_specs
        .iter()
        .enumerate()
        .flat_map(|(r, (_, specs))| {
            specs
                .iter()
                .flatten()
                .enumerate()
                .map(move |(i, s)| (s.name.clone(), (r, i)))
        })
        .collect();

    // Plans: the declared ones plus the built-in `default` and `anonymous`.
    let mut plan_names: Vec<Arc<str>> = file.plans.keys().map(|k| Arc::from(k.as_str())).collect();
    for builtin in [DEFAULT_PLAN, ANONYMOUS_PLAN] {
        if !file.plans.contains_key(builtin) {
            plan_names.push(builtin.into());
        }
    }
    let empty_plan = file::PlanFile::default();
    let global_penalty = file.penalty.as_ref().and_then(|p| c.penalty(p, "penalty"));
    let mut profiles = Vec::new();
    for (index, name) in plan_names.iter().enumerate() {
        let plan = file.plans.get(&**name).unwrap_or(&empty_plan);
        let path = format!("plans.{name}");
        let mut profile = c.profile(
            name,
            index,
            plan.access != Some(file::Access::Deny),
            &routes_and_specs,
            &route_limit_names,
            &[(&plan.limits, Origin::Plan, path.clone())],
        );
        profile.penalty = match &plan.penalty {
            Some(own) => c.penalty(own, &format!("{path}.penalty")),
            None => global_penalty,
        };
        profiles.push(profile);
    }

    let plan_index = |name: &str| plan_names.iter().position(|p| &**p == name);
    let mut registry = Registry::default();
    let all_keys = file
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| (Source::Main, format!("keys[{i}]"), k))
        .chain(
            keys_file
                .iter()
                .enumerate()
                .map(|(i, k)| (Source::Keys, format!("[{i}]"), k)),
        );
    for (source, path, entry) in all_keys {
        c.source = source;
        let plan_name = entry.plan.as_deref().unwrap_or(DEFAULT_PLAN);
        let Some(plan) = plan_index(plan_name) else {
            c.problem(
                format!("{path}.plan"),
                format!(
                    "unknown plan \"{plan_name}\"; plans are: {}",
                    list(plan_names.iter().map(|p| &**p))
                ),
            );
            continue;
        };
        let profile = if entry.limits.is_empty() {
            plan
        } else {
            let base = &file.plans.get(plan_name).unwrap_or(&empty_plan).limits;
            let plan_path = format!("plans.{plan_name}");
            let mut profile = c.profile(
                &plan_names[plan],
                plan,
                profiles[plan].access,
                &routes_and_specs,
                &route_limit_names,
                &[
                    (base, Origin::Plan, plan_path),
                    (&entry.limits, Origin::Key, path.clone()),
                ],
            );
            profile.penalty = profiles[plan].penalty;
            profiles.push(profile);
            profiles.len() - 1
        };
        let info = KeyInfo {
            profile: profile as u32,
            org: entry.org.as_deref().map(|o| registry.org(o)),
        };
        let inserted = match (&entry.key, &entry.sha256) {
            (Some(key), None) if !key.trim().is_empty() => registry.insert_clear(key.trim(), info),
            (None, Some(digest)) => match parse_digest(digest) {
                Some(digest) => registry.insert_hashed(digest, info),
                None => {
                    c.problem(
                        format!("{path}.sha256"),
                        "expected 64 hex digits (the SHA-256 of the key)".into(),
                    );
                    true
                }
            },
            _ => {
                c.problem(
                    path.clone(),
                    "a key entry needs exactly one of `key` or `sha256`".into(),
                );
                true
            }
        };
        if !inserted {
            c.problem(path, "this key is listed twice".into());
        }
    }
    c.source = Source::Main;

    let identifier = c.identifier(&file, registry, &plan_index, &plan_names);
    let responses = c.responses(&file.responses);
    let upstream = c.upstream(&file.upstream);
    let tls = file.tls.as_ref().and_then(|tls| c.tls(tls));
    let limits = c.limits(&file.limits);
    let store = c.store(&file.store);
    let idempotency = c.idempotency(&file);
    let log = LogSettings {
        json: file.log.format == Some(file::LogFormat::Json),
        level: file.log.level.clone().unwrap_or_else(|| "info".into()),
    };

    let admin_token = c.admin_token(&file.admin);
    let reload = c.reload(&file.reload);

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    let routes = routes_and_specs
        .into_iter()
        .map(|(route, _)| route)
        .collect();
    let policy = Policy {
        routes,
        profiles,
        plan_names,
        identifier,
    };
    let idempotent: Vec<bool> = idempotency.routes.iter().map(Option::is_some).collect();
    let labels = &file.metrics.histogram_labels;
    let series = telemetry::series::Settings {
        idempotent: &idempotent,
        fail_closed: store
            .redis
            .as_ref()
            .is_some_and(|redis| redis.on_error == crate::limiter::store::OnError::Deny),
        histogram_labels: telemetry::HistogramLabels {
            route: labels.contains(&file::HistogramLabel::Route),
            plan: labels.contains(&file::HistogramLabel::Plan),
        },
    };
    Ok(Config {
        listen: file.listen,
        tls,
        limits,
        admin_listen: file.admin.listen,
        upstream,
        target,
        responses,
        store,
        idempotency,
        log,
        shutdown_timeout: file
            .shutdown_timeout
            .map_or(Duration::from_secs(30), |d| d.0),
        metrics: telemetry::PolicyMetrics::new(&policy, series),
        policy,
        source: None,
        admin_token,
        reload,
        inputs: Vec::new(),
        sha256: [0; 32],
        warnings: Vec::new(),
    })
}

impl Compiler {
    fn problem(&mut self, path: String, message: String) {
        self.push(Problem {
            source: self.source,
            path,
            at_key: false,
            message,
        });
    }

    fn key_problem(&mut self, path: String, message: String) {
        self.push(Problem {
            source: self.source,
            path,
            at_key: true,
            message,
        });
    }

    /// Records a problem once: a route limit is compiled for every plan, and its problem
    /// should not be reported once per plan.
    fn push(&mut self, problem: Problem) {
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    /// The normalisation steps; which target forms routes allow is added from the routes.
    fn normaliser(&mut self, file: &file::NormaliseFile) -> Normaliser {
        let defaults = Normaliser::default();
        Normaliser {
            percent_encoding: file.percent_encoding.unwrap_or(defaults.percent_encoding),
            dot_segments: file.dot_segments.unwrap_or(defaults.dot_segments),
            merge_slashes: file.merge_slashes.unwrap_or(defaults.merge_slashes),
            encoded_slashes: match file.encoded_slashes {
                None => defaults.encoded_slashes,
                Some(file::EncodedSlashes::Reject) => EncodedSlashes::Reject,
                Some(file::EncodedSlashes::Decode) => EncodedSlashes::Decode,
                Some(file::EncodedSlashes::Keep) => EncodedSlashes::Keep,
            },
            conflicting_host: match file.conflicting_host {
                None => defaults.conflicting_host,
                Some(file::ConflictingHost::Replace) => ConflictingHost::Replace,
                Some(file::ConflictingHost::Reject) => ConflictingHost::Reject,
            },
            ..defaults
        }
    }

    /// A problem with a path pattern that can never match a normalised request path.
    fn uncanonical_pattern(&mut self, path: &str, pattern: &PathPattern, target: &Normaliser) {
        for literal in pattern.literals() {
            let segment = format!("/{literal}");
            let becomes = match target.path(&segment) {
                Ok(canonical) if canonical == segment => continue,
                Ok(canonical) if canonical == "/" => "is removed".to_string(),
                Ok(canonical) => format!("becomes \"{}\"", &canonical[1..]),
                Err(why) => format!("is refused ({why})"),
            };
            self.problem(
                path.into(),
                format!(
                    "path pattern \"{pattern}\" can never match: request paths are normalised \
                     before matching, and its segment \"{literal}\" {becomes} (see `normalise`)"
                ),
            );
            return;
        }
    }

    /// Routes with their limit specs (`None` = exempt).
    fn routes(
        &mut self,
        routes: &[file::RouteFile],
        target: &Normaliser,
    ) -> Vec<(Route, Option<Vec<Spec>>)> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut limit_names: HashMap<Arc<str>, String> = HashMap::new();
        let mut out = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if route.name.trim().is_empty() {
                self.problem(
                    format!("{path}.name"),
                    "a route needs a non-empty name".into(),
                );
            }
            let duplicate = seen.insert(&route.name, i);
            if let Some(first) = duplicate {
                self.problem(
                    format!("{path}.name"),
                    format!(
                        "duplicate route name \"{}\" (first used by routes[{first}])",
                        route.name
                    ),
                );
            }
            let methods = match &route.matcher.method {
                None => MethodSet::any(),
                Some(m) => MethodSet::parse(m.iter()).unwrap_or_else(|e| {
                    self.problem(format!("{path}.match.method"), e);
                    MethodSet::any()
                }),
            };
            let pattern = route.matcher.path.as_deref().unwrap_or("/**");
            let path_pattern = match PathPattern::parse(pattern) {
                Ok(parsed) => {
                    self.uncanonical_pattern(&format!("{path}.match.path"), &parsed, target);
                    parsed
                }
                Err(e) => {
                    self.problem(format!("{path}.match.path"), e);
                    PathPattern::parse("/**").expect("valid")
                }
            };
            let host = route.matcher.host.as_deref().and_then(|h| {
                HostPattern::parse(h)
                    .map_err(|e| self.problem(format!("{path}.match.host"), e))
                    .ok()
            });
            let max_body = route.max_body.map(|size| size.0);
            let cost = route.cost.unwrap_or(1);
            if cost == 0 {
                self.problem(format!("{path}.cost"), "cost must be at least 1".into());
            }
            let specs =
                self.route_specs(&route.name, route.limit.as_ref(), &format!("{path}.limit"));
            for spec in specs.iter().flatten() {
                // A duplicate route already has its error; its default limit name follows it.
                let clash = limit_names.insert(spec.name.clone(), path.clone());
                if let (Some(first), None) = (clash, duplicate) {
                    self.problem(
                        format!("{path}.limit"),
                        format!("duplicate limit name \"{}\" (also in {first})", spec.name),
                    );
                }
                let quota_path = format!("{path}.limit");
                self.quota(spec, cost, &quota_path);
            }
            out.push((
                Route {
                    name: route.name.as_str().into(),
                    methods,
                    path: path_pattern,
                    host,
                    cost: cost.max(1),
                    max_body,
                },
                specs,
            ));
        }
        out
    }

    fn route_specs(
        &mut self,
        route: &str,
        value: Option<&LimitValue>,
        path: &str,
    ) -> Option<Vec<Spec>> {
        let values: Vec<(&LimitValue, String)> = match value {
            None => return Some(Vec::new()),
            Some(LimitValue::None) => return None,
            Some(LimitValue::Many(all)) => all
                .iter()
                .enumerate()
                .map(|(i, v)| (v, format!("{path}[{i}]")))
                .collect(),
            Some(one) => vec![(one, path.to_string())],
        };
        let mut specs = Vec::new();
        for (i, (value, path)) in values.into_iter().enumerate() {
            let default_name = if i == 0 {
                route.to_string()
            } else {
                format!("{route}#{}", i + 1)
            };
            match value {
                LimitValue::Rate(rate) => {
                    specs.push(self.spec_from_rate(default_name.into(), *rate))
                }
                LimitValue::Full(full) => {
                    if let Some(spec) = self.spec_from_file(full, default_name.into(), None, &path)
                    {
                        specs.push(spec);
                    }
                }
                LimitValue::None | LimitValue::Many(_) => self.problem(
                    path,
                    "expected a rate or `{ rate: ... }` inside a list of limits".into(),
                ),
            }
        }
        Some(specs)
    }

    fn spec_from_rate(&self, name: Arc<str>, rate: Rate) -> Spec {
        Spec {
            name,
            rate,
            algorithm: self.defaults.0,
            scope: self.defaults.1,
            burst: None,
            shadow: false,
            delay: None,
        }
    }

    /// A full limit; `base` supplies what it leaves out (for overrides).
    fn spec_from_file(
        &mut self,
        full: &LimitFile,
        name: Arc<str>,
        base: Option<&Spec>,
        path: &str,
    ) -> Option<Spec> {
        let concurrency = full.concurrency.map(|n| Rate {
            count: n,
            period: Duration::from_secs(1),
        });
        if concurrency.is_some() && full.rate.is_some() {
            self.problem(
                path.into(),
                "a limit has either a `rate` or a `concurrency`, not both".into(),
            );
        }
        if full.algorithm == Some(AlgorithmName::Concurrency) && full.concurrency.is_none() {
            self.problem(
                path.into(),
                "a concurrency limit needs `concurrency: N` (requests in flight at once)".into(),
            );
            return None;
        }
        let Some(rate) = concurrency.or(full.rate).or(base.map(|b| b.rate)) else {
            self.problem(
                path.into(),
                "a limit needs a `rate`, e.g. `rate: 100/min`, or a `concurrency: N`".into(),
            );
            return None;
        };
        let algorithm = match (concurrency, full.algorithm) {
            (Some(_), Some(other)) if other != AlgorithmName::Concurrency => {
                self.problem(
                    path.into(),
                    format!(
                        "`concurrency` counts requests in flight; it cannot be {}",
                        algorithm(other)
                    ),
                );
                other
            }
            (Some(_), _) => AlgorithmName::Concurrency,
            (None, given) => given
                .or(base.map(|b| b.algorithm))
                .unwrap_or(self.defaults.0),
        };
        Some(Spec {
            name: full.name.as_deref().map(Arc::from).unwrap_or(name),
            rate,
            algorithm,
            scope: full
                .per
                .or(base.map(|b| b.scope))
                .unwrap_or(self.defaults.1),
            burst: full.burst.or(base.and_then(|b| b.burst)),
            shadow: full.shadow.or(base.map(|b| b.shadow)).unwrap_or(false),
            delay: match (full.delay, full.max_delayed) {
                (Some(delay), max) => Some((delay.0, max)),
                (None, Some(_)) => {
                    self.problem(
                        path.into(),
                        "`max_delayed` bounds the requests waiting under a `delay`; set `delay` too".into(),
                    );
                    None
                }
                (None, None) => base.and_then(|b| b.delay),
            },
        })
    }

    /// Validates a spec into a quota; reports values no request could ever satisfy.
    fn quota(&mut self, spec: &Spec, cost: u32, path: &str) -> Option<Quota> {
        let period = u64::try_from(spec.rate.period.as_nanos()).unwrap_or(u64::MAX);
        let burst = spec.burst.unwrap_or(spec.rate.count);
        let Some(quota) = Quota::new(spec.rate.count, period, burst) else {
            self.problem(
                path.into(),
                format!(
                    "limit \"{}\": rate and burst must be greater than zero",
                    spec.name
                ),
            );
            return None;
        };
        let algorithm = algorithm(spec.algorithm);
        if algorithm == Algorithm::SlidingWindow && spec.rate.count > SLIDING_MAX_LIMIT {
            self.problem(
                path.into(),
                format!("limit \"{}\": a sliding window counts at most {SLIDING_MAX_LIMIT} per period; use token_bucket for higher rates", spec.name),
            );
        }
        if spec.delay.is_some() && algorithm != Algorithm::TokenBucket {
            self.problem(
                path.into(),
                format!(
                    "limit \"{}\": `delay` applies to token_bucket only",
                    spec.name
                ),
            );
        }
        if spec.burst.is_some() && algorithm != Algorithm::TokenBucket {
            self.problem(
                path.into(),
                format!(
                    "limit \"{}\": `burst` applies to token_bucket only",
                    spec.name
                ),
            );
        }
        if self.redis {
            if let Err(why) = crate::limiter::store::redis::supports(&quota, cost) {
                self.problem(path.into(), format!("limit \"{}\": {why}", spec.name));
            }
        }
        let capacity = if algorithm == Algorithm::TokenBucket {
            burst
        } else {
            spec.rate.count
        };
        // A concurrency limit counts requests, whatever their cost.
        if cost > capacity && algorithm != Algorithm::Concurrency {
            self.problem(
                path.into(),
                format!("limit \"{}\" holds {capacity} units but one request costs {cost}: no request could ever pass", spec.name),
            );
        }
        // The wait is bounded by `delay` and by `max_delayed` requests of one subject: with
        // slots reserved at admission, N waiting requests span N emission intervals.
        let delay = spec.delay.map_or(0, |(delay, max)| {
            let delay = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
            let by_count = max.map_or(u64::MAX, |n| {
                u64::from(n).saturating_mul(quota.emission_interval())
            });
            delay.min(by_count)
        });
        if delay > 0 && self.redis {
            // The Redis script's GCRA has no delay tolerance: say so rather than reject silently.
            self.problem(
                path.into(),
                format!("limit \"{}\": `delay` works with the memory store only, not with `backend: redis` yet", spec.name),
            );
        }
        Some(quota.with_delay(delay))
    }

    fn limit(
        &mut self,
        spec: &Spec,
        origin: Origin,
        plan_wide: bool,
        cost: u32,
        path: &str,
    ) -> Option<Limit> {
        let shadow = spec.shadow || self.shadow_all;
        let quota = self.quota(spec, cost, path)?;
        // A shadow limit never rejects, so it never makes a request wait either.
        let quota = if shadow { quota.with_delay(0) } else { quota };
        let algorithm = algorithm(spec.algorithm);
        let group = if plan_wide { "plan" } else { "route" };
        let id = stable_hash(&format!(
            "{group}\0{}\0{:?}\0{}",
            spec.name,
            spec.scope,
            algorithm.as_str()
        ));
        Some(Limit {
            name: spec.name.clone(),
            id,
            algorithm,
            quota,
            scope: spec.scope,
            shadow,
            origin,
        })
    }

    /// Builds a profile: route limits with `layers` of overrides applied in order.
    fn profile(
        &mut self,
        plan: &Arc<str>,
        plan_index: usize,
        access: bool,
        routes: &[(Route, Option<Vec<Spec>>)],
        names: &BTreeMap<Arc<str>, (usize, usize)>,
        layers: &[(&BTreeMap<String, LimitValue>, Origin, String)],
    ) -> Profile {
        // Per route: each limit's current spec and origin, or removed (None).
        let mut table: Vec<RouteSlots> = routes
            .iter()
            .map(|(_, specs)| {
                specs.as_ref().map(|s| {
                    s.iter()
                        .map(|spec| Some((spec.clone(), Origin::Route)))
                        .collect()
                })
            })
            .collect();
        let mut plan_wide: Option<(Spec, Origin, String)> = None;
        for (overrides, origin, base_path) in layers {
            for (name, value) in overrides.iter() {
                let path = format!("{base_path}.limits.{name}");
                if name == PLAN_WIDE {
                    let base = plan_wide.as_ref().map(|(s, _, _)| s.clone());
                    let spec = match value {
                        LimitValue::None => None,
                        LimitValue::Rate(rate) => Some(match base {
                            Some(b) => Spec { rate: *rate, ..b },
                            None => self.spec_from_rate(PLAN_WIDE.into(), *rate),
                        }),
                        LimitValue::Full(full) => {
                            self.spec_from_file(full, PLAN_WIDE.into(), base.as_ref(), &path)
                        }
                        LimitValue::Many(_) => {
                            self.problem(path.clone(), "expected one limit, not a list".into());
                            None
                        }
                    };
                    plan_wide = spec.map(|s| (s, origin.clone(), path));
                    continue;
                }
                let Some(&(r, i)) = names.get(name.as_str()) else {
                    self.key_problem(
                        path,
                        format!(
                            "\"{name}\" names no route limit; expected `all` or one of: {}",
                            list(names.keys().map(|k| &**k))
                        ),
                    );
                    continue;
                };
                let Some(slot) = table[r].as_mut().map(|limits| &mut limits[i]) else {
                    continue;
                };
                let route_spec = routes[r]
                    .1
                    .as_ref()
                    .expect("named limits belong to limited routes")[i]
                    .clone();
                let base = slot.as_ref().map(|(s, _)| s.clone()).unwrap_or(route_spec);
                *slot = match value {
                    LimitValue::None => None,
                    LimitValue::Rate(rate) => Some((
                        Spec {
                            rate: *rate,
                            ..base
                        },
                        origin.clone(),
                    )),
                    LimitValue::Full(full) => self
                        .spec_from_file(full, base.name.clone(), Some(&base), &path)
                        .map(|mut s| {
                            // The name is the counter's identity; an override keeps it.
                            s.name = base.name.clone();
                            (s, origin.clone())
                        }),
                    LimitValue::Many(_) => {
                        self.problem(path, "expected one limit, not a list".into());
                        None
                    }
                };
            }
        }
        let plan_wide_limit = |c: &mut Self, cost: u32| {
            plan_wide.as_ref().and_then(|(spec, origin, path)| {
                let origin = if *origin == Origin::Key {
                    Origin::Key
                } else {
                    Origin::PlanWide
                };
                c.limit(spec, origin, true, cost, path)
            })
        };
        let mut by_route: Vec<LimitSet> = Vec::with_capacity(routes.len() + 1);
        for (r, limits) in table.into_iter().enumerate() {
            let cost = routes[r].0.cost;
            let set = limits.map(|limits| {
                let mut out: Vec<Limit> = limits
                    .into_iter()
                    .flatten()
                    .filter_map(|(spec, origin)| {
                        let path = format!("routes[{r}].limit");
                        self.limit(&spec, origin, false, cost, &path)
                    })
                    .collect();
                out.extend(plan_wide_limit(self, cost));
                // Concurrency limits go last: `Policy::checks` covers exactly the counted prefix.
                out.sort_by_key(|l| l.algorithm == Algorithm::Concurrency);
                if out.len() > MAX_LIMITS_PER_REQUEST {
                    self.problem(
                        format!("routes[{r}].limit"),
                        format!(
                            "{} limits apply to one request; at most {MAX_LIMITS_PER_REQUEST} can",
                            out.len()
                        ),
                    );
                }
                Arc::from(out)
            });
            by_route.push(set);
        }
        by_route.push(Some(Arc::from(
            plan_wide_limit(self, 1).into_iter().collect::<Vec<_>>(),
        )));
        Profile {
            plan: plan.clone(),
            plan_index,
            access,
            by_route,
            penalty: None,
        }
    }

    fn identifier(
        &mut self,
        file: &File,
        registry: Registry,
        plan_index: &dyn Fn(&str) -> Option<usize>,
        plan_names: &[Arc<str>],
    ) -> Identifier {
        let mut sources = Vec::new();
        let mut trusted_proxies = Vec::new();
        let mut ip_fallback = false;
        for (i, source) in file.identify.iter().enumerate() {
            let path = format!("identify[{i}]");
            match source {
                file::IdentifySource::ApiKey(key) => {
                    let given = [key.header.is_some(), key.bearer, key.query.is_some()];
                    if given.iter().filter(|&&g| g).count() != 1 {
                        self.problem(
                            format!("{path}.api_key"),
                            "an api_key source needs exactly one of `header: NAME`, `bearer: true` or `query: NAME`".into(),
                        );
                    } else if let Some(header) = &key.header {
                        match HeaderName::try_from(header.as_str()) {
                            Ok(name) => sources.push(KeySource::Header(name)),
                            Err(_) => self.problem(
                                format!("{path}.api_key.header"),
                                format!("\"{header}\" is not a valid header name"),
                            ),
                        }
                    } else if let Some(query) = &key.query {
                        sources.push(KeySource::Query(query.clone()));
                    } else {
                        sources.push(KeySource::Bearer);
                    }
                }
                file::IdentifySource::Jwt(source) => {
                    if let Some(jwt) =
                        self.jwt(source, &format!("{path}.jwt"), plan_index, plan_names)
                    {
                        sources.push(KeySource::Jwt(Arc::new(jwt)));
                    }
                }
                file::IdentifySource::Ip(ip) => {
                    ip_fallback = true;
                    for (j, cidr) in ip.trusted_proxies.iter().enumerate() {
                        match parse_cidr(cidr) {
                            Some(net) => trusted_proxies.push(net),
                            None => self.problem(
                                format!("{path}.ip.trusted_proxies[{j}]"),
                                format!("\"{cidr}\" is not an IP address or CIDR like 10.0.0.0/8"),
                            ),
                        }
                    }
                }
            }
        }
        if file.identify.is_empty() {
            sources.push(KeySource::Header(HeaderName::from_static("x-api-key")));
        }
        let default_anonymous = if ip_fallback {
            Fallback::PerIp(plan_index(ANONYMOUS_PLAN).unwrap_or(0) as u32)
        } else {
            Fallback::Reject
        };
        let anonymous = self.fallback(
            file.anonymous.as_ref(),
            "anonymous",
            file::FallbackPer::Ip,
            plan_index,
            default_anonymous,
        );
        let unknown_key = self.fallback(
            file.unknown_key.as_ref(),
            "unknown_key",
            file::FallbackPer::Key,
            plan_index,
            Fallback::Reject,
        );
        Identifier {
            sources,
            trusted_proxies,
            registry,
            anonymous,
            unknown_key,
        }
    }

    fn fallback(
        &mut self,
        value: Option<&file::Fallback>,
        path: &str,
        default_per: file::FallbackPer,
        plan_index: &dyn Fn(&str) -> Option<usize>,
        default: Fallback,
    ) -> Fallback {
        match value {
            None => default,
            Some(file::Fallback::Reject) => Fallback::Reject,
            Some(file::Fallback::Plan(plan)) => {
                let Some(index) = plan_index(&plan.plan) else {
                    self.problem(
                        format!("{path}.plan"),
                        format!("unknown plan \"{}\"", plan.plan),
                    );
                    return Fallback::Reject;
                };
                match plan.per.unwrap_or(default_per) {
                    file::FallbackPer::Key => Fallback::PerKey(index as u32),
                    file::FallbackPer::Ip => Fallback::PerIp(index as u32),
                }
            }
        }
    }

    fn responses(&mut self, file: &file::Responses) -> Responses {
        // The unauthorized envelope, with its own status (400 unless set) and any field
        // `ambiguous_key` sets itself.
        let unauthorized = file.unauthorized.as_ref();
        let ambiguous = file.ambiguous_key.as_ref();
        let ambiguous_key = file::ResponseFile {
            status: ambiguous.and_then(|a| a.status),
            body: ambiguous
                .and_then(|a| a.body.clone())
                .or_else(|| unauthorized.and_then(|u| u.body.clone())),
            content_type: ambiguous
                .and_then(|a| a.content_type.clone())
                .or_else(|| unauthorized.and_then(|u| u.content_type.clone())),
            headers: ambiguous
                .filter(|a| !a.headers.is_empty())
                .or(unauthorized)
                .map(|r| r.headers.clone())
                .unwrap_or_default(),
        };
        let reply =
            |c: &mut Self, name: &str, given: Option<&file::ResponseFile>, default: (u16, &str)| {
                let path = format!("responses.{name}");
                let given_default = file::ResponseFile::default();
                let given = given.unwrap_or(&given_default);
                let status = given.status.unwrap_or(default.0);
                let status = StatusCode::from_u16(status)
                    .ok()
                    .filter(|s| s.as_u16() >= 200)
                    .unwrap_or_else(|| {
                        c.problem(
                            format!("{path}.status"),
                            format!("{status} is not a valid response status"),
                        );
                        StatusCode::from_u16(default.0).expect("valid default")
                    });
                let body_source = given.body.as_deref().unwrap_or(default.1);
                let body = response::template::Template::compile(body_source).unwrap_or_else(|e| {
                    c.problem(format!("{path}.body"), e);
                    response::template::Template::compile("").expect("empty template")
                });
                let content_type =
                    given
                        .content_type
                        .as_deref()
                        .unwrap_or(if given.body.is_some() {
                            "application/json"
                        } else {
                            "application/problem+json"
                        });
                let content_type = HeaderValue::try_from(content_type).unwrap_or_else(|_| {
                    c.problem(
                        format!("{path}.content_type"),
                        "not a valid header value".into(),
                    );
                    HeaderValue::from_static("application/json")
                });
                let mut headers = Vec::new();
                for (name, value) in &given.headers {
                    match (
                        HeaderName::try_from(name.as_str()),
                        HeaderValue::try_from(value.as_str()),
                    ) {
                        (Ok(n), Ok(v)) => headers.push((n, v)),
                        _ => c.key_problem(
                            format!("{path}.headers.{name}"),
                            "not a valid header name and value".into(),
                        ),
                    }
                }
                Reply {
                    status,
                    content_type,
                    headers,
                    body,
                }
            };
        let limited = reply(
            self,
            "limited",
            file.limited.as_ref(),
            (429, response::DEFAULT_LIMITED),
        );
        Responses {
            style: file.headers.unwrap_or(file::HeaderStyle::XRatelimit),
            reset: file.reset.unwrap_or(file::ResetStyle::UnixSeconds),
            penalised: match &file.penalised {
                Some(given) => reply(
                    self,
                    "penalised",
                    Some(given),
                    (429, response::DEFAULT_LIMITED),
                ),
                None => limited.clone(),
            },
            limited,
            unauthorized: reply(
                self,
                "unauthorized",
                file.unauthorized.as_ref(),
                (401, response::DEFAULT_UNAUTHORIZED),
            ),
            ambiguous_key: reply(
                self,
                "ambiguous_key",
                Some(&ambiguous_key),
                (400, response::DEFAULT_UNAUTHORIZED),
            ),
            bad_request: reply(
                self,
                "bad_request",
                file.bad_request.as_ref(),
                (400, response::DEFAULT_BAD_REQUEST),
            ),
            method_not_allowed: {
                let mut reply = reply(
                    self,
                    "method_not_allowed",
                    file.method_not_allowed.as_ref(),
                    (405, response::DEFAULT_METHOD_NOT_ALLOWED),
                );
                // Every other method is forwarded, matched by a route or not.
                if !reply.headers.iter().any(|(name, _)| name == ALLOW) {
                    reply
                        .headers
                        .push((ALLOW, HeaderValue::from_static(ALLOWED_METHODS)));
                }
                reply
            },
            denied: reply(
                self,
                "denied",
                file.denied.as_ref(),
                (403, response::DEFAULT_DENIED),
            ),
            upstream_unavailable: reply(
                self,
                "upstream_unavailable",
                file.upstream_unavailable.as_ref(),
                (502, response::DEFAULT_UPSTREAM_UNAVAILABLE),
            ),
            upstream_timeout: reply(
                self,
                "upstream_timeout",
                file.upstream_timeout.as_ref(),
                (504, response::DEFAULT_UPSTREAM_TIMEOUT),
            ),
            payload_too_large: reply(
                self,
                "payload_too_large",
                file.payload_too_large.as_ref(),
                (413, response::DEFAULT_PAYLOAD_TOO_LARGE),
            ),
            unavailable: reply(
                self,
                "unavailable",
                file.unavailable.as_ref(),
                (503, response::DEFAULT_UNAVAILABLE),
            ),
            idempotency_conflict: reply(
                self,
                "idempotency_conflict",
                file.idempotency_conflict.as_ref(),
                (409, response::DEFAULT_IDEMPOTENCY_CONFLICT),
            ),
            idempotency_mismatch: reply(
                self,
                "idempotency_mismatch",
                file.idempotency_mismatch.as_ref(),
                (422, response::DEFAULT_IDEMPOTENCY_MISMATCH),
            ),
        }
    }

    fn penalty(&mut self, file: &file::PenaltyFile, path: &str) -> Option<Penalty> {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let violations = NonZeroU32::new(file.violations);
        if violations.is_none() {
            self.problem(format!("{path}.violations"), "must be at least 1".into());
        }
        for (field, value) in [("within", file.within.0), ("block_for", file.block_for.0)] {
            if value.is_zero() {
                self.problem(
                    format!("{path}.{field}"),
                    "must be greater than zero".into(),
                );
            }
        }
        Some(Penalty {
            violations: violations?,
            within: nanos(file.within.0).max(1),
            block_for: nanos(file.block_for.0).max(1),
        })
    }

    fn upstream(&mut self, file: &file::Upstream) -> UpstreamSettings {
        let target = if file.url == "demo:" || file.url == "demo" {
            UpstreamTarget::Demo
        } else {
            match file.url.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.authority().is_some() =>
                {
                    UpstreamTarget::Http(uri)
                }
                _ => {
                    self.problem(
                        "upstream.url".into(),
                        format!("\"{}\" is not an upstream URL; expected http(s)://HOST[:PORT][/BASE] or `demo:`", file.url),
                    );
                    UpstreamTarget::Demo
                }
            }
        };
        let host = match file.host.as_deref() {
            None | Some("preserve") => super::HostHeader::Preserve,
            Some("upstream") => super::HostHeader::Upstream,
            Some(literal) => match HeaderValue::try_from(literal) {
                Ok(v) => super::HostHeader::Literal(v),
                Err(_) => {
                    self.problem(
                        "upstream.host".into(),
                        "expected `preserve`, `upstream` or a host name".into(),
                    );
                    super::HostHeader::Preserve
                }
            },
        };
        let https =
            matches!(&target, UpstreamTarget::Http(uri) if uri.scheme_str() == Some("https"));
        let given = file.tls.as_ref();
        if given.is_some() && !https {
            self.problem(
                "upstream.tls".into(),
                "TLS settings need an https:// upstream url".into(),
            );
        }
        let (tls, server_name) = if https {
            self.upstream_tls(given.unwrap_or(&file::UpstreamTlsFile::default()))
        } else {
            (None, None)
        };
        UpstreamSettings {
            target,
            connect_timeout: file.connect_timeout.map_or(Duration::from_secs(2), |d| d.0),
            timeout: file.timeout.map_or(Duration::from_secs(30), |d| d.0),
            idle_timeout: file.idle_timeout.map_or(Duration::from_secs(90), |d| d.0),
            host,
            http2: file.http2.unwrap_or(false),
            max_idle: if file.keepalive.unwrap_or(true) {
                file.max_idle_connections.unwrap_or(DEFAULT_MAX_IDLE)
            } else {
                0
            },
            tls,
            server_name,
        }
    }

    /// The rustls client config of an https upstream, reading its CA and client files.
    fn upstream_tls(
        &mut self,
        file: &file::UpstreamTlsFile,
    ) -> (
        Option<Arc<rustls::ClientConfig>>,
        Option<rustls::pki_types::ServerName<'static>>,
    ) {
        let server_name = file.server_name.as_deref().and_then(|name| {
            crate::tls::server_name(name)
                .map_err(|e| self.problem("upstream.tls.server_name".into(), e))
                .ok()
        });
        let ca_only = file.ca_only.unwrap_or(false);
        if ca_only && file.ca_file.is_none() {
            self.problem(
                "upstream.tls.ca_only".into(),
                "`ca_only: true` needs a `ca_file` to trust".into(),
            );
            return (None, server_name);
        }
        let identity = match (&file.cert, &file.key) {
            (Some(cert), Some(key)) => Some((Path::new(cert.as_str()), Path::new(key.as_str()))),
            (None, None) => None,
            _ => {
                self.problem(
                    "upstream.tls".into(),
                    "a client certificate needs both `cert` and `key`".into(),
                );
                return (None, server_name);
            }
        };
        let files = crate::tls::ClientFiles {
            ca_file: file.ca_file.as_deref().map(Path::new),
            ca_only,
            identity,
        };
        match crate::tls::client_config(&files) {
            Ok(config) => (Some(Arc::new(config)), server_name),
            Err(e) => {
                self.problem("upstream.tls".into(), e);
                (None, server_name)
            }
        }
    }

    /// Loads the inbound certificate now, so `sluice check` reports a bad one.
    fn tls(&mut self, file: &file::TlsFile) -> Option<TlsSettings> {
        let (cert, key) = (PathBuf::from(&file.cert), PathBuf::from(&file.key));
        match crate::tls::load(&cert, &key) {
            Ok(loaded) => Some(TlsSettings {
                cert,
                key,
                loaded: loaded.key,
                digest: loaded.digest,
            }),
            Err(e) => {
                self.problem("tls".into(), e);
                None
            }
        }
    }

    fn limits(&mut self, file: &file::LimitsFile) -> ConnectionLimits {
        let limits = ConnectionLimits {
            max_connections: file.max_connections.unwrap_or(10_000),
            header_read_timeout: file
                .header_read_timeout
                .map_or(Duration::from_secs(30), |d| d.0),
            idle_timeout: file.idle_timeout.map_or(Duration::from_secs(60), |d| d.0),
            max_header_bytes: file
                .max_header_bytes
                .map_or(64 * 1024, |b| usize::try_from(b.0).unwrap_or(usize::MAX)),
            max_headers: file.max_headers.unwrap_or(100),
            backlog: file.backlog.unwrap_or_else(crate::server::system_backlog),
        };
        let positive = [
            ("max_connections", limits.max_connections == 0),
            ("header_read_timeout", limits.header_read_timeout.is_zero()),
            ("idle_timeout", limits.idle_timeout.is_zero()),
            ("max_headers", limits.max_headers == 0),
            ("backlog", limits.backlog == 0),
        ];
        for (name, zero) in positive {
            if zero {
                self.problem(format!("limits.{name}"), "must be greater than zero".into());
            }
        }
        if limits.max_connections > MAX_CONNECTIONS {
            self.problem(
                "limits.max_connections".into(),
                format!("must be at most {MAX_CONNECTIONS}"),
            );
        }
        // Below this no request line with a few headers fits, and hyper's read buffer
        // cannot be smaller.
        if limits.max_header_bytes < MIN_HEADER_BYTES {
            self.problem(
                "limits.max_header_bytes".into(),
                format!("must be at least {MIN_HEADER_BYTES} bytes (8KiB)"),
            );
        }
        limits
    }

    /// Reads the admin token from its environment variable (the file names the variable,
    /// so the config itself holds no secret). Keeps only its digest.
    fn admin_token(&mut self, admin: &file::Admin) -> Option<[u8; 32]> {
        let name = admin.token_env.as_deref()?;
        match std::env::var(name) {
            Ok(token) if !token.trim().is_empty() => {
                Some(sha2::Sha256::digest(token.trim().as_bytes()).into())
            }
            _ => {
                self.problem(
                    "admin.token_env".into(),
                    format!("environment variable {name} is not set or empty; it must hold the admin bearer token"),
                );
                None
            }
        }
    }

    fn reload(&mut self, file: &file::Reload) -> ReloadSettings {
        let interval = file.interval.map_or(Duration::from_secs(1), |d| d.0);
        if interval < Duration::from_millis(10) {
            self.problem("reload.interval".into(), "must be at least 10ms".into());
        }
        ReloadSettings {
            watch: file.watch.unwrap_or(true),
            interval,
        }
    }

    fn store(&mut self, file: &file::StoreFile) -> StoreSettings {
        let max_entries = file
            .max_entries
            .unwrap_or(crate::limiter::store::memory::DEFAULT_MAX_ENTRIES);
        if max_entries == 0 {
            self.problem("store.max_entries".into(), "must be at least 1".into());
        }
        let sweep_interval = file.sweep_interval.map_or(Duration::from_secs(10), |d| d.0);
        if sweep_interval.is_zero() {
            self.problem(
                "store.sweep_interval".into(),
                "must be greater than zero".into(),
            );
        }
        let redis = self.redis_store(file);
        StoreSettings {
            max_entries,
            sweep_interval,
            redis,
        }
    }

    fn redis_store(&mut self, file: &file::StoreFile) -> Option<RedisSettings> {
        use crate::limiter::store::OnError;
        if file.backend != file::Backend::Redis {
            for (name, set) in [
                ("url", file.url.is_some()),
                ("timeout", file.timeout.is_some()),
                ("on_error", file.on_error.is_some()),
                ("prefix", file.prefix.is_some()),
                ("mode", file.mode.is_some()),
                ("sync_interval", file.sync_interval.is_some()),
                ("cluster", file.cluster.is_some()),
            ] {
                if set {
                    self.key_problem(
                        format!("store.{name}"),
                        "applies to `backend: redis` only".into(),
                    );
                }
            }
            return None;
        }
        let url = match &file.url {
            None => {
                self.problem(
                    "store.url".into(),
                    "`backend: redis` needs a `url`, e.g. redis://127.0.0.1:6379".into(),
                );
                String::new()
            }
            Some(url) => {
                if let Err(error) = redis::Client::open(url.as_str()) {
                    self.problem(
                        "store.url".into(),
                        format!("not a usable Redis URL ({error}); expected redis://[:PASSWORD@]HOST[:PORT][/DB]"),
                    );
                }
                url.clone()
            }
        };
        let timeout = file.timeout.map_or(Duration::from_millis(50), |d| d.0);
        if timeout.is_zero() {
            self.problem("store.timeout".into(), "must be greater than zero".into());
        }
        let prefix = file.prefix.clone().unwrap_or_else(|| "sluice".into());
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            self.problem(
                "store.prefix".into(),
                "must be non-empty and hold no `{` or `}` (sluice wraps it in braces as the Redis Cluster hash tag)".into(),
            );
        }
        let on_error = match file.on_error.unwrap_or(file::OnError::Allow) {
            file::OnError::Allow => OnError::Allow,
            file::OnError::Deny => OnError::Deny,
            file::OnError::Local => OnError::Local,
        };
        let sync_interval = match file.mode.unwrap_or(file::StoreMode::Strict) {
            file::StoreMode::Strict => {
                if file.sync_interval.is_some() {
                    self.key_problem(
                        "store.sync_interval".into(),
                        "applies to `mode: sync` only".into(),
                    );
                }
                None
            }
            file::StoreMode::Sync => {
                let interval = file.sync_interval.map_or(Duration::from_millis(5), |d| d.0);
                if interval < Duration::from_millis(1) || interval > Duration::from_secs(1) {
                    self.problem(
                        "store.sync_interval".into(),
                        format!("must be between 1ms and 1s, not {interval:?}"),
                    );
                }
                Some(interval)
            }
        };
        Some(RedisSettings {
            url,
            timeout,
            on_error,
            prefix,
            sync_interval,
            cluster: file.cluster.unwrap_or(false),
        })
    }
}

impl Compiler {
    /// Per-route idempotency rules and the record store's bounds.
    fn idempotency(&mut self, file: &File) -> idempotency::Settings {
        let bounds = &file.idempotency;
        let max_entries = bounds
            .max_entries
            .unwrap_or(idempotency::DEFAULT_MAX_ENTRIES);
        if max_entries == 0 {
            self.problem(
                "idempotency.max_entries".into(),
                "must be at least 1".into(),
            );
        }
        let max_bytes = bounds
            .max_bytes
            .map_or(idempotency::DEFAULT_MAX_BYTES, |b| b.0);
        if max_bytes == 0 {
            self.problem("idempotency.max_bytes".into(), "must be at least 1B".into());
        }
        let mut routes = Vec::with_capacity(file.routes.len());
        for (i, route) in file.routes.iter().enumerate() {
            let Some(given) = &route.idempotency else {
                routes.push(None);
                continue;
            };
            let path = format!("routes[{i}].idempotency");
            let header = match given.header.as_deref() {
                None => idempotency::IDEMPOTENCY_KEY,
                Some(name) => HeaderName::try_from(name).unwrap_or_else(|_| {
                    self.problem(
                        format!("{path}.header"),
                        format!("\"{name}\" is not a valid header name"),
                    );
                    idempotency::IDEMPOTENCY_KEY
                }),
            };
            let ttl = given.ttl.map_or(idempotency::DEFAULT_TTL, |d| d.0);
            if ttl.is_zero() {
                self.problem(format!("{path}.ttl"), "must be greater than zero".into());
            }
            let max_body = given
                .max_body
                .map_or(idempotency::DEFAULT_MAX_BODY, |b| b.0);
            if max_body > max_bytes {
                self.problem(
                    format!("{path}.max_body"),
                    format!(
                        "{} is more than idempotency.max_bytes ({}): such a response could never be stored",
                        ByteSize(max_body),
                        ByteSize(max_bytes)
                    ),
                );
            }
            routes.push(Some(idempotency::Rule {
                header,
                ttl: u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX),
                max_body,
            }));
        }
        idempotency::Settings {
            routes,
            max_entries,
            max_bytes,
        }
    }
}

fn algorithm(name: AlgorithmName) -> Algorithm {
    match name {
        AlgorithmName::FixedWindow => Algorithm::FixedWindow,
        AlgorithmName::SlidingWindow => Algorithm::SlidingWindow,
        AlgorithmName::TokenBucket => Algorithm::TokenBucket,
        AlgorithmName::Concurrency => Algorithm::Concurrency,
    }
}

/// A hash that every process and replica computes alike (counter identities).
pub fn stable_hash(text: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x736c_7569_6365, 0x6c69_6d69_7473);
    h.write(text.as_bytes());
    h.finish()
}

fn parse_digest(hex_digest: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_digest.trim()).ok()?;
    bytes.try_into().ok()
}

fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

mod jwt;

#[cfg(test)]
mod tests;
