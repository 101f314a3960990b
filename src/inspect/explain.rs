//! `sluice explain`: which identity, plan, route and limits a request would meet, and
//! where each limit's value came from. Plain text for people; never prints a key.

use std::fmt::Write as _;

use super::summary::LimitView;
use super::{head, unidentified, Caller, InspectError};
use crate::config::Config;
use crate::identity::{redact, Identity, Kind};

/// Explains `METHOD PATH` sent by `caller` under `config`.
pub fn explain(
    config: &Config,
    caller: &Caller,
    method: &str,
    path: &str,
) -> Result<String, InspectError> {
    let policy = &config.policy;
    let mut parts = head(policy, caller, method, path)?;
    let client_ip = caller.client_ip();
    let mut out = String::new();
    let _ = writeln!(out, "request:  {} {}", parts.method, parts.uri);
    if let Err(refused) = config.target.apply(&mut parts) {
        let status = status(config, refused.into());
        let _ = writeln!(out, "result:   {status}: {refused}");
        return Ok(out);
    }
    // The canonical target: what routes match and what the upstream receives.
    let _ = writeln!(out, "target:   {}", parts.uri);
    let default_ip = if caller.ip.is_none() {
        " (default; set with --ip)"
    } else {
        ""
    };
    let _ = writeln!(out, "client:   {client_ip}{default_ip}");

    let route = policy.find(&parts);
    let identity = match policy.identifier.identify(&parts, client_ip, {
        use crate::limiter::clock::Clock as _;
        crate::limiter::clock::SystemClock::new().now()
    }) {
        Ok(identity) => identity,
        Err(why) => {
            let _ = writeln!(out, "caller:   none");
            let status = status(config, why.into());
            let _ = writeln!(out, "result:   {status}: {}", unidentified(why));
            return Ok(out);
        }
    };
    let profile = policy.profile(&identity);
    let _ = writeln!(out, "caller:   {}", caller_line(&identity, caller));
    let _ = writeln!(out, "plan:     {}", profile.plan);
    if let Some(org) = identity.org {
        let name = policy
            .identifier
            .registry
            .org_name(org)
            .unwrap_or("(unnamed)");
        let _ = writeln!(out, "org:      {name}");
    }
    match route {
        Some(r) => {
            let route = &policy.routes[r];
            let _ = writeln!(
                out,
                "route:    {} ({} {}), cost {}",
                route.name,
                route.methods,
                route.path.as_str(),
                route.cost
            );
        }
        None => {
            let _ = writeln!(out, "route:    none matched; only plan-wide limits apply");
        }
    }
    if !profile.access {
        let _ = writeln!(
            out,
            "result:   403 denied: plan {} has no API access",
            profile.plan
        );
        return Ok(out);
    }
    let cost = policy.cost(route);
    match policy.limits(profile, route) {
        None => {
            let _ = writeln!(out, "limits:   none: the route is exempt");
        }
        Some([]) => {
            let _ = writeln!(out, "limits:   none configured");
        }
        Some(limits) => {
            let _ = writeln!(
                out,
                "limits:   {}, every one must allow the request:",
                limits.len()
            );
            // Callers identified by address count per ip, whatever the scope's name.
            let by_ip = identity.kind == Kind::Ip;
            for limit in limits {
                let _ = writeln!(out, "  {}, cost {cost}", LimitView::of(limit, by_ip).text());
            }
        }
    }
    Ok(out)
}

/// The status a rejection gets, as `401 unauthorized`.
fn status(config: &Config, rejection: crate::response::Rejection) -> String {
    let status = config.responses.reply(rejection).status;
    let reason = status.canonical_reason().unwrap_or("").to_ascii_lowercase();
    format!("{} {reason}", status.as_u16())
}

fn caller_line(identity: &Identity, caller: &Caller) -> String {
    let key = caller.key.as_deref().map(redact).unwrap_or_default();
    match identity.kind {
        Kind::Key => format!("key {key} (registered)"),
        Kind::UnknownKey => format!("key {key} (not registered; counted per presented key)"),
        Kind::Ip if caller.key.is_some() => format!(
            "client ip {} (key {key} not registered; counted by IP)",
            caller.client_ip()
        ),
        Kind::Ip => format!("client ip {} (no key)", caller.client_ip()),
        Kind::Jwt => "a verified JWT's subject".into(),
    }
}
