use super::explain::explain;
use super::usage::usage;
use super::*;
use crate::config::{load_str, Config};
use crate::limiter::clock::SECOND;
use crate::limiter::store::memory::MemoryStore;
use crate::limiter::store::Store;

const POLICY: &str = r#"
upstream: { url: "demo:" }
identify:
  - api_key: { header: X-API-Key }
  - ip: {}
keys:
  - { key: k-pro, plan: pro, org: acme }
  - { key: k-vip, plan: business, org: acme, limits: { send: { rate: 50/s, algorithm: token_bucket } } }
  - { key: k-free, plan: free }
plans:
  free: { access: deny }
  pro: { limits: { all: 100/min } }
  business: { limits: { all: 500/min, send: 300/min } }
  anonymous: { limits: { all: 10/min } }
routes:
  - { name: health, match: { path: /healthz }, limit: none }
  - { name: send, match: { method: POST, path: /v1/messages }, limit: 120/min }
  - { name: batch, match: { method: POST, path: /v1/campaigns/batch }, limit: { rate: 10/min, per: org, algorithm: fixed_window }, cost: 2 }
  - { name: read, match: { method: [GET, HEAD], path: /v1/** }, limit: [300/min, { name: upstream, rate: 1000/s, per: global, algorithm: token_bucket }] }
"#;

fn config() -> Config {
    load_str(POLICY, "t.yaml", None).unwrap_or_else(|e| panic!("{e}"))
}

fn key(k: &str) -> Caller {
    Caller {
        key: Some(k.into()),
        ..Caller::default()
    }
}

#[test]
fn explain_a_key_override_names_every_origin() {
    let text = explain(&config(), &key("k-vip"), "post", "/v1/messages").unwrap();
    assert_eq!(
        text,
        "\
request:  POST /v1/messages
target:   /v1/messages
client:   127.0.0.1 (default; set with --ip)
caller:   key sha256:ca99aac1 (registered)
plan:     business
org:      acme
route:    send (POST /v1/messages), cost 1
limits:   2, every one must allow the request:
  send: 50/s token_bucket per key (key override), cost 1
  all: 500/min sliding_window per key (plan-wide), cost 1
"
    );
    assert!(!text.contains("k-vip"), "the key is never printed");
}

#[test]
fn explain_route_plan_and_unmatched_requests() {
    let c = config();
    assert_eq!(
        explain(&c, &key("k-pro"), "POST", "/v1/campaigns/batch").unwrap(),
        "\
request:  POST /v1/campaigns/batch
target:   /v1/campaigns/batch
client:   127.0.0.1 (default; set with --ip)
caller:   key sha256:19b7d09a (registered)
plan:     pro
org:      acme
route:    batch (POST /v1/campaigns/batch), cost 2
limits:   2, every one must allow the request:
  batch: 10/min fixed_window per org (route), cost 2
  all: 100/min sliding_window per key (plan-wide), cost 2
"
    );
    assert_eq!(
        explain(&c, &key("k-pro"), "DELETE", "/other").unwrap(),
        "\
request:  DELETE /other
target:   /other
client:   127.0.0.1 (default; set with --ip)
caller:   key sha256:19b7d09a (registered)
plan:     pro
org:      acme
route:    none matched; only plan-wide limits apply
limits:   1, every one must allow the request:
  all: 100/min sliding_window per key (plan-wide), cost 1
"
    );
}

#[test]
fn explain_anonymous_denied_exempt_and_rejected_callers() {
    let c = config();
    let anonymous = Caller {
        ip: Some("203.0.113.9".parse().unwrap()),
        ..Caller::default()
    };
    assert_eq!(
        explain(&c, &anonymous, "GET", "/v1/things?page=2").unwrap(),
        "\
request:  GET /v1/things?page=2
target:   /v1/things?page=2
client:   203.0.113.9
caller:   client ip 203.0.113.9 (no key)
plan:     anonymous
route:    read (GET|HEAD /v1/**), cost 1
limits:   3, every one must allow the request:
  read: 300/min sliding_window per ip (route), cost 1
  upstream: 1000/s token_bucket global (route), cost 1
  all: 10/min sliding_window per ip (plan-wide), cost 1
"
    );
    assert_eq!(
        explain(&c, &key("k-free"), "GET", "/v1/things").unwrap(),
        "\
request:  GET /v1/things
target:   /v1/things
client:   127.0.0.1 (default; set with --ip)
caller:   key sha256:c4f70b11 (registered)
plan:     free
route:    read (GET|HEAD /v1/**), cost 1
result:   403 denied: plan free has no API access
"
    );
    assert_eq!(
        explain(&c, &key("k-pro"), "GET", "/healthz").unwrap(),
        "\
request:  GET /healthz
target:   /healthz
client:   127.0.0.1 (default; set with --ip)
caller:   key sha256:19b7d09a (registered)
plan:     pro
org:      acme
route:    health (* /healthz), cost 1
limits:   none: the route is exempt
"
    );
    assert_eq!(
        explain(&c, &key("nobody"), "GET", "/v1/x").unwrap(),
        "\
request:  GET /v1/x
target:   /v1/x
client:   127.0.0.1 (default; set with --ip)
caller:   none
result:   401 unauthorized: the key is not registered, and unknown keys are rejected
"
    );
}

#[test]
fn explain_names_bad_input() {
    let c = config();
    assert_eq!(
        explain(&c, &key("k"), "GE T", "/x")
            .unwrap_err()
            .to_string(),
        "\"GE T\" is not an HTTP method"
    );
    assert_eq!(
        explain(&c, &key("k"), "GET", "v1/x")
            .unwrap_err()
            .to_string(),
        "\"v1/x\" is not a request path (expected /PATH[?QUERY] or http://HOST/PATH)"
    );
    assert_eq!(
        explain(&c, &key("bad\nkey"), "GET", "/x")
            .unwrap_err()
            .to_string(),
        "the key contains characters no configured key source can carry"
    );
}

#[test]
fn keys_reach_query_and_bearer_sources() {
    let c = load_str(
        "upstream: { url: \"demo:\" }\nidentify: [ { api_key: { query: api_key } } ]\nkeys: [ { key: q1, plan: default } ]\n",
        "t.yaml",
        None,
    )
    .unwrap();
    let parts = head(&c.policy, &key("q1"), "GET", "/v1/x?a=1").unwrap();
    assert_eq!(parts.uri.to_string(), "/v1/x?a=1&api_key=q1");
    assert!(explain(&c, &key("q1"), "GET", "/v1/x")
        .unwrap()
        .contains("(registered)"));
    let c = load_str(
        "upstream: { url: \"demo:\" }\nidentify: [ { api_key: { bearer: true } } ]\n",
        "t.yaml",
        None,
    )
    .unwrap();
    let parts = head(&c.policy, &key("b1"), "GET", "/").unwrap();
    assert_eq!(parts.headers[http::header::AUTHORIZATION], "Bearer b1");
}

/// 2023-11-14T22:13:20Z plus 15 s: mid-minute, so window resets are easy to read.
const NOW: u64 = 1_700_000_000 * SECOND + 15 * SECOND;

#[tokio::test]
async fn usage_lists_each_counter_once_with_used_and_remaining() {
    let c = config();
    let store = MemoryStore::new(1000);
    // Three reads and one batch by k-pro; one batch by k-vip (same org: shares `batch`).
    let spend = |caller: &Caller, method: &str, path: &str| {
        let parts = head(&c.policy, caller, method, path).unwrap();
        let identity = c.policy.identifier.identify(&parts, DEFAULT_IP, 0).unwrap();
        let route = c.policy.find(&parts);
        let limits = c.policy.limits(c.policy.profile(&identity), route).unwrap();
        let checks =
            crate::policy::Policy::checks(limits, &identity, DEFAULT_IP, c.policy.cost(route));
        match store.check(&checks, NOW) {
            crate::limiter::store::Checking::Ready(Ok(outcomes)) => {
                assert!(outcomes.iter().all(|o| o.allowed))
            }
            _ => panic!("the memory store answers at once"),
        }
    };
    for _ in 0..3 {
        spend(&key("k-pro"), "GET", "/v1/things");
    }
    spend(&key("k-pro"), "POST", "/v1/campaigns/batch");
    spend(&key("k-vip"), "POST", "/v1/campaigns/batch");

    let report = usage(&c, &store, NOW, &key("k-pro")).await.unwrap();
    let json = serde_json::to_string_pretty(&report).unwrap();
    assert_eq!(
        json,
        r#"{
  "caller": {
    "kind": "key",
    "key": "sha256:19b7d09a",
    "ip": "127.0.0.1",
    "plan": "pro",
    "org": "acme",
    "access": true
  },
  "limits": [
    {
      "name": "send",
      "routes": [
        "send"
      ],
      "rate": "120/min",
      "algorithm": "sliding_window",
      "scope": "key",
      "origin": "route",
      "shadow": false,
      "limit": 120,
      "used": 0,
      "remaining": 120,
      "reset": 1700000015,
      "reset_in": 0
    },
    {
      "name": "all",
      "routes": [
        "send",
        "batch",
        "read",
        "unmatched"
      ],
      "rate": "100/min",
      "algorithm": "sliding_window",
      "scope": "key",
      "origin": "plan-wide",
      "shadow": false,
      "limit": 100,
      "used": 5,
      "remaining": 95,
      "reset": 1700000100,
      "reset_in": 85
    },
    {
      "name": "batch",
      "routes": [
        "batch"
      ],
      "rate": "10/min",
      "algorithm": "fixed_window",
      "scope": "org",
      "origin": "route",
      "shadow": false,
      "limit": 10,
      "used": 4,
      "remaining": 6,
      "reset": 1700000040,
      "reset_in": 25
    },
    {
      "name": "read",
      "routes": [
        "read"
      ],
      "rate": "300/min",
      "algorithm": "sliding_window",
      "scope": "key",
      "origin": "route",
      "shadow": false,
      "limit": 300,
      "used": 3,
      "remaining": 297,
      "reset": 1700000100,
      "reset_in": 85
    },
    {
      "name": "upstream",
      "routes": [
        "read"
      ],
      "rate": "1000/s",
      "algorithm": "token_bucket",
      "scope": "global",
      "origin": "route",
      "shadow": false,
      "limit": 1000,
      "used": 3,
      "remaining": 997,
      "reset": 1700000016,
      "reset_in": 1
    }
  ]
}"#
    );
}

#[tokio::test]
async fn usage_of_denied_and_unknown_callers() {
    let c = config();
    let store = MemoryStore::new(10);
    let denied = usage(&c, &store, NOW, &key("k-free")).await.unwrap();
    assert_eq!(
        serde_json::to_string(&denied).unwrap(),
        r#"{"caller":{"kind":"key","key":"sha256:c4f70b11","ip":"127.0.0.1","plan":"free","access":false},"limits":[]}"#
    );
    let unknown = usage(&c, &store, NOW, &key("nobody")).await.unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "this caller is rejected with 401: the key is not registered, and unknown keys are rejected"
    );
    let by_ip = Caller {
        ip: Some("198.51.100.7".parse().unwrap()),
        ..Caller::default()
    };
    let report = usage(&c, &store, NOW, &by_ip).await.unwrap();
    assert_eq!(report.caller.kind, "ip");
    assert_eq!(report.caller.plan, "anonymous");
    assert_eq!(report.caller.key, None);
    assert_eq!(report.limits.len(), 5);
    // Counted by address: `per: key` and `per: org` limits are per ip for this caller.
    let scopes: Vec<&str> = report.limits.iter().map(|l| l.scope).collect();
    assert_eq!(scopes, ["ip", "ip", "ip", "ip", "global"]);
}

#[test]
fn check_prints_the_policy_in_words() {
    use super::summary::Summary;
    let text = Summary::of(&config()).text();
    assert_eq!(
        text,
        "\
listen 0.0.0.0:8080  admin 127.0.0.1:9090  upstream demo:  store memory
identify: header x-api-key; 3 registered keys
  callers without a key: counted per ip under plan anonymous
  unknown keys: rejected (401)
plan anonymous (client ips)
  health           * /healthz                   exempt
  send             POST /v1/messages            send: 120/min sliding_window per ip (route)
                                                all: 10/min sliding_window per ip (plan-wide)
  batch            POST /v1/campaigns/batch     batch: 10/min fixed_window per ip (route)
                                                all: 10/min sliding_window per ip (plan-wide)
  read             GET|HEAD /v1/**              read: 300/min sliding_window per ip (route)
                                                upstream: 1000/s token_bucket global (route)
                                                all: 10/min sliding_window per ip (plan-wide)
  unmatched                                     all: 10/min sliding_window per ip (plan-wide)
plan business (keys)
  health           * /healthz                   exempt
  send             POST /v1/messages            send: 300/min sliding_window per key (plan override)
                                                all: 500/min sliding_window per key (plan-wide)
  batch            POST /v1/campaigns/batch     batch: 10/min fixed_window per org (route)
                                                all: 500/min sliding_window per key (plan-wide)
  read             GET|HEAD /v1/**              read: 300/min sliding_window per key (route)
                                                upstream: 1000/s token_bucket global (route)
                                                all: 500/min sliding_window per key (plan-wide)
  unmatched                                     all: 500/min sliding_window per key (plan-wide)
plan free (keys): access denied (403)
plan pro (keys)
  health           * /healthz                   exempt
  send             POST /v1/messages            send: 120/min sliding_window per key (route)
                                                all: 100/min sliding_window per key (plan-wide)
  batch            POST /v1/campaigns/batch     batch: 10/min fixed_window per org (route)
                                                all: 100/min sliding_window per key (plan-wide)
  read             GET|HEAD /v1/**              read: 300/min sliding_window per key (route)
                                                upstream: 1000/s token_bucket global (route)
                                                all: 100/min sliding_window per key (plan-wide)
  unmatched                                     all: 100/min sliding_window per key (plan-wide)
plan default (nobody lands in it)
  health           * /healthz                   exempt
  send             POST /v1/messages            send: 120/min sliding_window per key (route)
  batch            POST /v1/campaigns/batch     batch: 10/min fixed_window per org (route)
  read             GET|HEAD /v1/**              read: 300/min sliding_window per key (route)
                                                upstream: 1000/s token_bucket global (route)
  unmatched                                     no limits
"
    );
    for debug in ["PerIp", "Reject", "Some(", "Key", "Org"] {
        assert!(!text.contains(debug), "{debug} in {text}");
    }
}

#[test]
fn the_summary_shows_no_secret() {
    // Every secret a config can hold, each one a string that must never be shown (the
    // admin token, read from the environment, is tested end to end in tests/cli.rs).
    let secrets = [
        "clear-key-SECRET-1",
        "jwt-hmac-SECRET-2",
        "redis-password-SECRET-3",
        "upstream-password-SECRET-4",
    ];
    let hashed = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"hashed-key"));
    let dir = tempfile::tempdir().unwrap();
    let jwt_secret = dir.path().join("jwt.secret");
    std::fs::write(&jwt_secret, secrets[1]).unwrap();
    let yaml = format!(
        r#"
upstream: {{ url: "http://user:{upstream}@127.0.0.1:3000" }}
identify:
  - jwt: {{ algorithms: [HS256], secret_file: "{jwt}" }}
  - api_key: {{ header: X-API-Key }}
keys:
  - {{ key: {key}, plan: pro, limits: {{ all: 5/s }} }}
  - {{ sha256: {hashed}, plan: pro }}
plans: {{ pro: {{ limits: {{ all: 100/min }} }} }}
routes: [ {{ name: r, limit: 10/s }} ]
store: {{ backend: redis, url: "redis://:{redis}@127.0.0.1:6379/0" }}
"#,
        upstream = secrets[3],
        jwt = jwt_secret.display(),
        key = secrets[0],
        redis = secrets[2],
    );
    let config = load_str(&yaml, "t.yaml", None).unwrap_or_else(|e| panic!("{e}"));
    let json = serde_json::to_string(&super::summary::Document::of(&config)).unwrap();
    let text = super::summary::Summary::of(&config).text();
    for shown in [&json, &text] {
        for secret in secrets.iter().chain([&hashed.as_str()]) {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
    assert!(
        json.contains(r#""url":"redis://***@127.0.0.1:6379/0""#),
        "{json}"
    );
    assert!(
        json.contains(r#""upstream":"http://***@127.0.0.1:3000/""#),
        "{json}"
    );
    assert!(json.contains(r#""registered_keys":2"#), "{json}");
    assert!(
        text.contains("JWT (HS256) in Authorization: Bearer"),
        "{text}"
    );
}

#[test]
fn a_key_presented_in_the_query_is_encoded_as_a_form_would_send_it() {
    let c = load_str(
        "upstream: { url: \"demo:\" }
identify: [{ api_key: { query: api_key } }]
keys: [{ key: \"k &+%=?#\", plan: default }]
",
        "t.yaml",
        None,
    )
    .unwrap();
    let parts = head(&c.policy, &key("k &+%=?#"), "GET", "/v1/x?a=1").unwrap();
    assert_eq!(parts.uri, "/v1/x?a=1&api_key=k+%26%2B%25%3D%3F%23");
    let who = c.policy.identifier.identify(&parts, DEFAULT_IP, 0).unwrap();
    assert_eq!(who.kind, crate::identity::Kind::Key);
}
