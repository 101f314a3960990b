use crate::config::file::Scope;
use crate::config::{load_str, Config};
use crate::limiter::Algorithm;
use crate::policy::{Limit, Origin};

fn compile(text: &str) -> Config {
    load_str(text, "t.yaml", None).unwrap_or_else(|e| panic!("{e}"))
}

const POLICY: &str = "
upstream: { url: \"demo:\" }
keys:
  - { key: k-pro, plan: pro }
  - { key: k-vip, plan: business, limits: { send: { rate: 50/s, algorithm: token_bucket } } }
plans:
  free: { access: deny }
  pro: { limits: { all: 100/min } }
  business: { limits: { all: 500/min, send: 300/min } }
routes:
  - { name: send, match: { method: POST, path: /v1/messages }, limit: 120/min }
  - { name: batch, match: { method: POST, path: /v1/batch }, limit: 10/min, cost: 1 }
  - { name: health, match: { path: /healthz }, limit: none }
  - { name: org, match: { path: /v1/org/** }, limit: [ { rate: 1000/h, per: org }, { rate: 5000/h, per: global, name: upstream } ] }
";

fn limits<'a>(config: &'a Config, plan: &str, route: &str) -> Option<&'a [Limit]> {
    let p = config
        .policy
        .plan_names
        .iter()
        .position(|n| &**n == plan)
        .unwrap();
    let r = config.policy.routes.iter().position(|x| &*x.name == route);
    config.policy.limits(&config.policy.profiles[p], r)
}

#[test]
fn plans_add_plan_wide_limits_and_override_route_limits() {
    let c = compile(POLICY);
    let pro = limits(&c, "pro", "send").unwrap();
    assert_eq!(pro.len(), 2);
    assert_eq!(
        (pro[0].quota.limit(), pro[0].origin.clone()),
        (120, Origin::Route)
    );
    assert_eq!(
        (&*pro[1].name, pro[1].quota.limit(), pro[1].origin.clone()),
        ("all", 100, Origin::PlanWide)
    );
    let business = limits(&c, "business", "send").unwrap();
    assert_eq!(
        (business[0].quota.limit(), business[0].origin.clone()),
        (300, Origin::Plan)
    );
    assert_eq!(business[1].quota.limit(), 500);
    // A plan override keeps the counter: identity excludes the rate.
    assert_eq!(pro[0].id, business[0].id);
    assert_eq!(pro[1].id, business[1].id);
    assert_ne!(pro[0].id, pro[1].id);
    assert!(limits(&c, "pro", "health").is_none(), "exempt");
    let unmatched = limits(&c, "pro", "nope").unwrap();
    assert_eq!(unmatched.len(), 1);
    assert_eq!(&*unmatched[0].name, "all");
}

#[test]
fn key_overrides_build_their_own_profile() {
    let c = compile(POLICY);
    assert_eq!(c.policy.profiles.len(), c.policy.plan_names.len() + 1);
    let vip = c.policy.profiles.last().unwrap();
    assert_eq!(&*vip.plan, "business");
    let send = vip.by_route[0].as_deref().unwrap();
    assert_eq!(
        (
            send[0].quota.limit(),
            send[0].algorithm,
            send[0].origin.clone()
        ),
        (50, Algorithm::TokenBucket, Origin::Key)
    );
    // A new algorithm is a new counter; the plan-wide one is shared with the plan.
    let business = limits(&c, "business", "send").unwrap();
    assert_ne!(send[0].id, business[0].id);
    assert_eq!(send[1].id, business[1].id);
}

#[test]
fn lists_of_limits_with_scopes_and_names() {
    let c = compile(POLICY);
    let org = limits(&c, "default", "org").unwrap();
    assert_eq!(org.len(), 2);
    assert_eq!((&*org[0].name, org[0].scope), ("org", Scope::Org));
    assert_eq!((&*org[1].name, org[1].scope), ("upstream", Scope::Global));
}

#[test]
fn denied_plans_and_default_algorithm() {
    let c = compile(POLICY);
    let free = c
        .policy
        .plan_names
        .iter()
        .position(|n| &**n == "free")
        .unwrap();
    assert!(!c.policy.profiles[free].access);
    assert_eq!(
        limits(&c, "pro", "send").unwrap()[0].algorithm,
        Algorithm::SlidingWindow
    );
}

#[test]
fn a_route_limit_problem_is_reported_once_whatever_the_number_of_plans() {
    let errors = load_str(
        "upstream: { url: \"demo:\" }
plans: { pro: {}, business: {} }
routes:
  - { name: r, limit: { rate: 2000000/min, algorithm: sliding_window } }
",
        "t.yaml",
        None,
    )
    .unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert!(errors.0[0].message.contains("at most 1048575"), "{errors}");
}
