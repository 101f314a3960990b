use crate::config::load_str;

/// The warnings `sluice check` prints for `yaml`, as `line:column: message`.
fn warnings(yaml: &str) -> Vec<String> {
    let config = load_str(yaml, "t.yaml", None).unwrap_or_else(|e| panic!("{e}"));
    config
        .warnings
        .iter()
        .map(|w| format!("{}:{}: {}", w.line.unwrap(), w.column.unwrap(), w.message))
        .collect()
}

#[test]
fn the_shipped_configs_have_no_warnings() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("config/sluice.yaml")];
    for dir in ["config/examples", "bench", "deploy/compose"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    let mut found = Vec::new();
    for path in files {
        match crate::config::load(&path) {
            Ok(config) => found.extend(config.warnings.iter().map(ToString::to_string)),
            // Some examples need an environment variable (a JWT secret); those compile in
            // their own tests.
            Err(e) => assert!(e.to_string().contains("environment variable"), "{e}"),
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn a_route_limit_a_lower_plan_wide_limit_always_beats_is_never_reached() {
    let yaml = r#"upstream: { url: "demo:" }
keys: [ { key: a, plan: pro }, { key: b, plan: gold } ]
plans:
  pro: { limits: { all: 100/min } }
  gold: { limits: { all: 100/min, read: 50/min } }
routes:
  - { name: send, match: { path: /send }, limit: 120/min }
  - { name: read, match: { path: /read }, limit: 300/min }
  - { name: fast, match: { path: /fast }, limit: 10/s }
"#;
    assert_eq!(
        warnings(yaml),
        [
            "7:50: routes[0].limit: limit \"send\" (120/min) is never reached under plan \"gold\" (all: 100/min), plan \"pro\" (all: 100/min): the plan-wide limit counts the same requests and runs out no later",
            "8:50: routes[1].limit: limit \"read\" (300/min) is never reached under plan \"pro\" (all: 100/min): the plan-wide limit counts the same requests and runs out no later",
        ]
    );
}

#[test]
fn only_limits_the_plan_wide_one_surely_outruns_are_reported() {
    // Each route limit here can reject a request the plan-wide limit lets through: a
    // smaller burst, another window, another algorithm, a wider scope, a shadow limit.
    let yaml = r#"upstream: { url: "demo:" }
keys: [ { key: a, plan: pro } ]
plans:
  pro: { limits: { all: { rate: 100/min, algorithm: token_bucket, burst: 50 } } }
routes:
  - { name: a, match: { path: /a }, limit: { rate: 200/min, algorithm: token_bucket, burst: 20 } }
  - { name: b, match: { path: /b }, limit: { rate: 1000/h, algorithm: token_bucket, burst: 100 } }
  - { name: c, match: { path: /c }, limit: 120/min }
  - { name: d, match: { path: /d }, limit: { rate: 200/min, algorithm: token_bucket, burst: 100, per: global } }
  - { name: e, match: { path: /e }, limit: { rate: 200/min, algorithm: token_bucket, burst: 100, shadow: true } }
  - { name: f, match: { path: /f }, limit: { rate: 200/min, algorithm: token_bucket, burst: 100 } }
"#;
    assert_eq!(
        warnings(yaml),
        ["11:44: routes[5].limit: limit \"f\" (200/min burst 100) is never reached under plan \"pro\" (all: 100/min burst 50): the plan-wide limit counts the same requests and runs out no later"]
    );
}

#[test]
fn callers_identified_by_address_count_per_key_as_per_ip() {
    let yaml = r#"upstream: { url: "demo:" }
identify: [ { ip: {} } ]
plans: { anonymous: { limits: { all: 10/min } } }
routes: [ { name: read, limit: { rate: 60/min, per: ip } } ]
"#;
    assert_eq!(
        warnings(yaml),
        ["4:32: routes[0].limit: limit \"read\" (60/min) is never reached under plan \"anonymous\" (all: 10/min): the plan-wide limit counts the same requests and runs out no later"]
    );
}

#[test]
fn a_plan_whose_callers_meet_no_limit_is_reported() {
    let yaml = r#"upstream: { url: "demo:" }
identify: [ { api_key: { header: X-API-Key } }, { ip: {} } ]
keys: [ { key: a, plan: internal } ]
plans:
  internal: {}
  closed: { access: deny }
  unused: { limits: { all: 10/min } }
routes: [ { name: health, match: { path: /healthz }, limit: none }, { name: open } ]
"#;
    assert_eq!(
        warnings(yaml),
        [
            "4:1: plans: plan \"anonymous\" (built in) has no limits at all: its callers are never limited; give it a plan-wide limit (`limits: { all: RATE }`) or `access: deny`",
            "5:3: plans.internal: plan \"internal\" has no limits at all: its callers are never limited; give it a plan-wide limit (`limits: { all: RATE }`) or `access: deny`",
        ]
    );
    // `default` has no callers here (every key names its plan), so it is not reported.
}

#[test]
fn a_route_an_earlier_route_covers_is_reported() {
    let yaml = r#"upstream: { url: "demo:" }
routes:
  - { name: api, match: { path: /v1/** }, limit: 10/s }
  - { name: send, match: { method: POST, path: /v1/messages }, limit: 1/s }
  - { name: host, match: { host: api.example.com, path: /v2/x }, limit: 1/s }
  - { name: any-host, match: { path: /v2/x }, limit: 1/s }
  - { name: hosted, match: { method: GET, host: "*.example.com", path: "/v2/{id}" }, limit: 1/s }
  - { name: got, match: { method: GET, host: api.example.com, path: /v2/x }, limit: 1/s }
"#;
    assert_eq!(
        warnings(yaml),
        [
            "4:26: routes[1].match: route \"send\" never matches: route \"api\" (routes[0]) comes first and matches every request it would",
            "8:25: routes[5].match: route \"got\" never matches: route \"host\" (routes[2]) comes first and matches every request it would",
        ]
    );
}
