//! Warnings: a config that compiles but surely does not do what its author meant. Each is
//! a [`Problem`] at the config path at fault, placed at `file:line:column` like an error;
//! `sluice check` prints them and still exits 0, a start or reload logs them.
//!
//! Three are looked for: a route an earlier route shadows, a plan whose callers meet no
//! limit at all, and a route limit a plan-wide limit always runs out before (or with).

use std::collections::BTreeMap;

use super::compile::Problem;
use super::file::Scope;
use super::units::Rate;
use super::{Config, Source};
use crate::limiter::Algorithm;
use crate::policy::{Limit, Origin, Profile, Route};

/// Every warning about `config`; `declared` names the plans its file declares (the built-in
/// `default` and `anonymous` are looked at only when some caller lands in them).
pub fn warnings(config: &Config, declared: &[String]) -> Vec<Problem> {
    let policy = &config.policy;
    let shadowed = shadowed_routes(&policy.routes);
    let mut out: Vec<Problem> = shadowed
        .iter()
        .map(|&(route, by)| {
            let routes = &policy.routes;
            warning(
                format!("routes[{route}].match"),
                false,
                format!(
                    "route \"{}\" never matches: route \"{}\" (routes[{by}]) comes first and \
                     matches every request it would",
                    routes[route].name, routes[by].name
                ),
            )
        })
        .collect();
    let callers = policy.plan_callers();
    // Route limit path → the limit, and each plan under which it is never reached with
    // that plan's plan-wide limit.
    let mut unreached: BTreeMap<String, (&Limit, Vec<String>)> = BTreeMap::new();
    for (p, name) in policy.plan_names.iter().enumerate() {
        let profile = &policy.profiles[p];
        let declared = declared.iter().any(|d| **d == **name);
        // A built-in plan only a JWT's plan claim could name is not one anybody lands in.
        let reached = callers[p].by_key || callers[p].by_ip;
        if !profile.access || !(declared || reached) {
            continue;
        }
        let at = if declared {
            format!("plans.{name}")
        } else {
            "plans".into()
        };
        if !has_limits(profile) {
            let built_in = if declared { "" } else { " (built in)" };
            out.push(warning(
                at,
                true,
                format!(
                    "plan \"{name}\"{built_in} has no limits at all: its callers are never \
                     limited; give it a plan-wide limit (`limits: {{ all: RATE }}`) or \
                     `access: deny`"
                ),
            ));
            continue;
        }
        let ip_only = callers[p].ip_only();
        for (r, set) in profile
            .by_route
            .iter()
            .enumerate()
            .take(policy.routes.len())
        {
            // A route that never matches has its own warning.
            let Some(limits) = set.as_ref().filter(|_| !shadowed.iter().any(|s| s.0 == r)) else {
                continue;
            };
            let Some(wide) = limits.iter().find(|l| l.origin == Origin::PlanWide) else {
                continue;
            };
            for limit in limits.iter().filter(|l| exhausted_first(wide, l, ip_only)) {
                let path = match limit.origin {
                    Origin::Route => format!("routes[{r}].limit"),
                    Origin::Plan => format!("plans.{name}.limits.{}", limit.name),
                    Origin::PlanWide | Origin::Key => continue,
                };
                unreached
                    .entry(path)
                    .or_insert_with(|| (limit, Vec::new()))
                    .1
                    .push(format!("plan \"{name}\" ({}: {})", wide.name, rate(wide)));
            }
        }
    }
    for (path, (limit, plans)) in unreached {
        out.push(warning(
            path,
            false,
            format!(
                "limit \"{}\" ({}) is never reached under {}: the plan-wide limit counts the \
                 same requests and runs out no later",
                limit.name,
                rate(limit),
                plans.join(", ")
            ),
        ));
    }
    out
}

/// Routes that never match, each with the first earlier route that matches everything
/// they match.
fn shadowed_routes(routes: &[Route]) -> Vec<(usize, usize)> {
    routes
        .iter()
        .enumerate()
        .filter_map(|(j, route)| {
            let i = routes[..j]
                .iter()
                .position(|earlier| covers(earlier, route))?;
            Some((j, i))
        })
        .collect()
}

/// Whether `earlier` matches every request `later` matches.
fn covers(earlier: &Route, later: &Route) -> bool {
    earlier.methods.covers(&later.methods)
        && earlier.path.covers(&later.path)
        && match (&earlier.host, &later.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(e), Some(l)) => e.covers(l),
        }
}

/// Whether any request under `profile` meets a limit.
fn has_limits(profile: &Profile) -> bool {
    profile
        .by_route
        .iter()
        .flatten()
        .any(|limits| !limits.is_empty())
}

/// Whether the plan-wide limit `wide` always runs out no later than `limit`, so that
/// `limit` never rejects a request.
///
/// Said only where it holds exactly: `wide` counts every request `limit` counts (and maybe
/// more), both reject (no shadow, no delay), and with the same algorithm it admits no more
/// than `limit` over any stretch of time: the same fixed or sliding window with a count no
/// higher, or a token bucket with no higher rate and burst.
fn exhausted_first(wide: &Limit, limit: &Limit, ip_only: bool) -> bool {
    if std::ptr::eq(wide, limit)
        || wide.shadow
        || limit.shadow
        || wide.quota.delay() > 0
        || limit.quota.delay() > 0
        || !counts_every_request_of(wide.scope, limit.scope, ip_only)
    {
        return false;
    }
    let (w, l) = (&wide.quota, &limit.quota);
    match (wide.algorithm, limit.algorithm) {
        (Algorithm::FixedWindow, Algorithm::FixedWindow)
        | (Algorithm::SlidingWindow, Algorithm::SlidingWindow) => {
            w.period() == l.period() && w.limit() <= l.limit()
        }
        (Algorithm::TokenBucket, Algorithm::TokenBucket) => {
            w.burst() <= l.burst()
                && u128::from(w.limit()) * u128::from(l.period())
                    <= u128::from(l.limit()) * u128::from(w.period())
        }
        _ => false,
    }
}

/// Whether a counter of scope `wide` sees every request a counter of scope `narrow` sees.
/// Callers identified by address count per key and per org as per ip.
fn counts_every_request_of(wide: Scope, narrow: Scope, ip_only: bool) -> bool {
    let as_ip = |scope| match scope {
        Scope::Key | Scope::Org if ip_only => Scope::Ip,
        other => other,
    };
    let (wide, narrow) = (as_ip(wide), as_ip(narrow));
    wide == narrow || wide == Scope::Global || (wide == Scope::Org && narrow == Scope::Key)
}

/// `120/min`, `10/s burst 20`.
fn rate(limit: &Limit) -> String {
    let quota = &limit.quota;
    let rate = Rate {
        count: quota.limit(),
        period: std::time::Duration::from_nanos(quota.period()),
    };
    if limit.algorithm == Algorithm::TokenBucket && quota.burst() != quota.limit() {
        format!("{rate} burst {}", quota.burst())
    } else {
        rate.to_string()
    }
}

fn warning(path: String, at_key: bool, message: String) -> Problem {
    Problem {
        source: Source::Main,
        path,
        at_key,
        message,
    }
}

#[cfg(test)]
mod tests;
