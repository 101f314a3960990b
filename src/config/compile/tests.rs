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
fn penalties_come_from_the_plan_or_the_top_level_and_keys_inherit_them() {
    use crate::limiter::clock::SECOND;
    let c = compile(
        "upstream: { url: \"demo:\" }\n\
         penalty: { violations: 10, within: 1m, block_for: 1h }\n\
         plans: { strict: { penalty: { violations: 2, within: 10s, block_for: 5m } } }\n\
         keys: [ { key: k, plan: strict, limits: { all: 5/s } } ]\n",
    );
    let of = |plan: &str| {
        let p = c
            .policy
            .plan_names
            .iter()
            .position(|n| &**n == plan)
            .unwrap();
        c.policy.profiles[p].penalty.unwrap()
    };
    assert_eq!(
        (
            of("default").violations.get(),
            of("default").within,
            of("default").block_for
        ),
        (10, 60 * SECOND, 3600 * SECOND)
    );
    assert_eq!(of("strict").block_for, 300 * SECOND);
    let key_profile = c.policy.profiles.last().unwrap();
    assert_eq!(key_profile.penalty, Some(of("strict")));

    let errors = load_str(
        "upstream: { url: \"demo:\" }\npenalty: { violations: 0, within: 0s, block_for: 1h }\n",
        "t.yaml",
        None,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        errors,
        "t.yaml:2:24: penalty.violations: must be at least 1\nt.yaml:2:35: penalty.within: must be greater than zero"
    );
}

#[test]
fn concurrency_limits_compile_last_and_stay_out_of_the_counter_checks() {
    let c = compile(
        "upstream: { url: \"demo:\" }\n\
         plans: { pro: { limits: { all: 100/min } } }\n\
         routes:\n  - { name: up, limit: [ { concurrency: 3, name: uploads }, 10/s ] }\n",
    );
    let set = limits(&c, "pro", "up").unwrap();
    let names: Vec<&str> = set.iter().map(|l| &*l.name).collect();
    assert_eq!(names, ["up#2", "all", "uploads"]);
    assert_eq!(set[2].algorithm, Algorithm::Concurrency);
    assert_eq!(set[2].quota.limit(), 3);
    assert_eq!(
        crate::inspect::summary::LimitView::of(&set[2], false).text(),
        "uploads: 3 in flight per key (route)"
    );
    let identity = crate::identity::Identity {
        kind: crate::identity::Kind::Key,
        subject: 1,
        org: None,
        profile: 0,
    };
    let checks = crate::policy::Policy::checks(set, &identity, "127.0.0.1".parse().unwrap(), 1);
    assert_eq!(checks.len(), 2);

    let errors = load_str(
        "upstream: { url: \"demo:\" }\nroutes:\n  - { name: a, limit: { rate: 1/s, concurrency: 2 } }\n  - { name: b, limit: { algorithm: concurrency } }\n  - { name: c, limit: { concurrency: 2, algorithm: token_bucket } }\n",
        "t.yaml",
        None,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        errors,
        "t.yaml:3:23: routes[0].limit: a limit has either a `rate` or a `concurrency`, not both\n\
         t.yaml:4:23: routes[1].limit: a concurrency limit needs `concurrency: N` (requests in flight at once)\n\
         t.yaml:5:23: routes[2].limit: `concurrency` counts requests in flight; it cannot be token_bucket"
    );
}

#[test]
fn a_delay_is_bounded_by_max_delayed_and_only_for_token_buckets() {
    use crate::limiter::clock::{MILLISECOND, SECOND};
    let c = compile(
        "upstream: { url: \"demo:\" }\n\
         routes:\n  - { name: a, limit: { rate: 10/s, algorithm: token_bucket, delay: 2s, max_delayed: 5 } }\n  \
         - { name: b, limit: { rate: 10/s, algorithm: token_bucket, delay: 300ms } }\n  \
         - { name: c, limit: { rate: 10/s, algorithm: token_bucket, delay: 1s, shadow: true } }\n",
    );
    let delay = |route| limits(&c, "default", route).unwrap()[0].quota.delay();
    assert_eq!(delay("a"), 5 * SECOND / 10, "five intervals, less than 2s");
    assert_eq!(delay("b"), 300 * MILLISECOND);
    assert_eq!(delay("c"), 0, "a shadow limit never makes a request wait");
    assert_eq!(
        crate::inspect::summary::LimitView::of(&limits(&c, "default", "b").unwrap()[0], false)
            .text(),
        "b: 10/s token_bucket delay 300ms per key (route)"
    );
    let errors = load_str(
        "upstream: { url: \"demo:\" }\nroutes:\n  - { name: a, limit: { rate: 1/s, delay: 1s } }\n  - { name: b, limit: { rate: 1/s, algorithm: token_bucket, max_delayed: 3 } }\n",
        "t.yaml",
        None,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        errors,
        "t.yaml:3:23: routes[0].limit: limit \"a\": `delay` applies to token_bucket only\n\
         t.yaml:4:23: routes[1].limit: `max_delayed` bounds the requests waiting under a `delay`; set `delay` too"
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

#[test]
fn replicas_naming_redis_by_different_hosts_share_subject_hashes() {
    use super::without_host;
    // Two nodes of one cluster, or one Redis by name and by address: one seed.
    assert_eq!(
        without_host("redis://:s3cret@redis-0.redis:6379/0"),
        without_host("redis://:s3cret@10.0.0.7:7001/0")
    );
    assert_eq!(without_host("redis://127.0.0.1:6379"), "redis://@");
    assert_eq!(
        without_host("rediss://user:pw@h:1?protocol=resp3"),
        "rediss://user:pw@?protocol=resp3"
    );
    // What the replicas must share still tells deployments apart.
    assert_ne!(
        without_host("redis://:a@h/0"),
        without_host("redis://:b@h/0")
    );
    assert_ne!(without_host("redis://h/0"), without_host("redis://h/1"));
    assert_eq!(
        without_host("unix:///run/redis.sock"),
        "unix://@/run/redis.sock"
    );
}
