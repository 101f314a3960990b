use std::collections::BTreeSet;

use super::*;
use crate::config::{load_str, EMBEDDED_DEFAULT};

/// `route plan decision` of every series `yaml`'s policy registers up front.
fn series(yaml: &str) -> BTreeSet<String> {
    let config = load_str(yaml, "t.yaml", None).unwrap_or_else(|e| panic!("{e}"));
    let idempotent: Vec<bool> = config
        .idempotency
        .routes
        .iter()
        .map(Option::is_some)
        .collect();
    let settings = Settings {
        idempotent: &idempotent,
        fail_closed: config
            .store
            .redis
            .as_ref()
            .is_some_and(|r| r.on_error == crate::limiter::store::OnError::Deny),
        histogram_labels: HistogramLabels::default(),
    };
    let policy = &config.policy;
    let plans = policy.plan_names.len() + 1;
    let (verdicts, _) = possible(policy, &settings);
    let mut out = BTreeSet::new();
    for (slot, verdicts) in verdicts.into_iter().enumerate() {
        let route = policy
            .routes
            .get(slot / plans)
            .map_or(UNMATCHED, |r| &r.name);
        let plan = policy
            .plan_names
            .get(slot % plans)
            .map_or(NO_PLAN, |p| &**p);
        for verdict in Verdict::ALL {
            if verdicts & bit(verdict) != 0 {
                out.insert(format!("{route} {plan} {}", verdict.as_str()));
            }
        }
    }
    out
}

fn of(route_plan: &str, series: &BTreeSet<String>) -> Vec<String> {
    series
        .iter()
        .filter_map(|s| s.strip_prefix(route_plan)?.strip_prefix(' '))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_default_config_registers_only_what_it_can_produce() {
    let all = series(EMBEDDED_DEFAULT);
    assert_eq!(of("health pro", &all), ["exempt"]);
    assert_eq!(of("hello free", &all), ["denied"]);
    assert_eq!(of("hello pro", &all), ["allowed", "limited"]);
    assert_eq!(of("unmatched anonymous", &all), ["allowed", "limited"]);
    assert_eq!(of("send none", &all), ["unauthorized"]);
    // No key names the built-in `default` plan and unknown keys are rejected: nobody is
    // ever counted under it.
    assert!(all.iter().all(|s| !s.contains(" default ")), "{all:?}");
    // 5 routes (4 and unmatched) × (anonymous and pro: 2 each; free: 1; none: 1), less the
    // exempt route's single series under the two plans with access; and `bad_request`
    // (unmatched, no plan).
    assert_eq!(of("unmatched none", &all), ["bad_request", "unauthorized"]);
    assert_eq!(all.len(), 5 * 6 - 2 + 1, "{all:?}");
}

#[test]
fn shadow_penalty_idempotency_body_limits_and_failing_closed_add_their_decisions() {
    let all = series(
        r#"
upstream: { url: "demo:" }
keys: [ { key: k, plan: pro } ]
plans: { pro: { limits: { all: { rate: 100/min, shadow: true } }, penalty: { violations: 3, within: 1m, block_for: 1h } } }
routes:
  - { name: send, match: { path: /send }, limit: 10/min, idempotency: {}, max_body: 1KiB }
  - { name: open, match: { path: /open } }
store: { backend: redis, url: "redis://127.0.0.1:1", on_error: deny }
"#,
    );
    assert_eq!(
        of("send pro", &all),
        [
            "allowed",
            "bad_request",
            "limited",
            "penalised",
            "refused",
            "replayed",
            "shadow_limited",
            "too_large",
            "unavailable"
        ]
    );
    assert_eq!(of("send none", &all), ["too_large", "unauthorized"]);
    assert_eq!(of("unmatched none", &all), ["bad_request", "unauthorized"]);
    // Only the shadow plan-wide limit here: never limited, but blocked once blocked elsewhere.
    assert_eq!(
        of("open pro", &all),
        ["allowed", "penalised", "shadow_limited", "unavailable"]
    );
}

#[test]
fn callers_that_cannot_fail_identification_have_no_unauthorized_series() {
    let all = series(
        r#"
upstream: { url: "demo:" }
identify: [ { api_key: { header: X-API-Key } }, { ip: {} } ]
unknown_key: { plan: guest, per: key }
plans: { guest: { limits: { all: 10/min } } }
routes: [ { name: r, limit: 5/min } ]
"#,
    );
    assert!(of("r none", &all).is_empty(), "{all:?}");
    assert_eq!(of("r guest", &all), ["allowed", "limited"]);
    assert_eq!(of("r anonymous", &all), ["allowed", "limited"]);
}

#[test]
fn a_plan_claim_can_reach_every_plan() {
    let all = series(
        r#"
upstream: { url: "demo:" }
identify: [ { jwt: { algorithms: [HS256], secret_env: PATH, plan_claim: tier } } ]
plans: { gold: { limits: { all: 10/min } }, silver: { access: deny } }
routes: [ { name: r, limit: 5/min } ]
"#,
    );
    assert_eq!(of("r gold", &all), ["allowed", "limited"]);
    assert_eq!(of("r silver", &all), ["denied"]);
    assert_eq!(of("r none", &all), ["unauthorized"]);
}
