use super::*;

const MINIMAL: &str = "upstream: { url: \"demo:\" }\n";

fn errors(text: &str) -> Vec<String> {
    match load_str(text, "t.yaml", None) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_default_config_compiles() {
    load_str(EMBEDDED_DEFAULT, "sluice.yaml", None).unwrap();
    load_str(MINIMAL, "t.yaml", None).unwrap();
}

#[test]
fn unknown_field_names_line_and_column() {
    let e = errors("upstream: { url: \"demo:\" }\nroutes:\n  - { name: a, limt: 5/min }\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("t.yaml:3:16: routes[0]: unknown field `limt`, expected one of"),
        "{}",
        e[0]
    );
}

#[test]
fn malformed_rate_names_line_and_column() {
    let e = errors("upstream: { url: \"demo:\" }\nroutes:\n  - name: a\n    limit: 100/mni\n");
    assert_eq!(
        e,
        vec!["t.yaml:4:12: routes[0].limit: malformed rate \"100/mni\": expected COUNT/UNIT with UNIT one of s, min, h, d (or COUNT/DURATION like 100/10s)"]
    );
}

#[test]
fn every_malformed_rate_is_reported_with_its_line() {
    let e = errors(
        "\
upstream: { url: \"demo:\" }
routes:
  - { name: a, limit: 10/mni }
  - { name: b, limit: 20/min }
  - { name: c, limit: 5/hr }
plans:
  pro: { limits: { a: x/min } }
",
    );
    let expected =
        "expected COUNT/UNIT with UNIT one of s, min, h, d (or COUNT/DURATION like 100/10s)";
    assert_eq!(
        e,
        [
            format!("t.yaml:3:23: routes[0].limit: malformed rate \"10/mni\": {expected}"),
            format!("t.yaml:5:23: routes[2].limit: malformed rate \"5/hr\": {expected}"),
            format!("t.yaml:7:23: plans.pro.limits.a: malformed rate \"x/min\": {expected}"),
        ]
    );
}

#[test]
fn an_unknown_field_hides_no_later_one() {
    let e = errors(
        "\
upstream: { url: \"demo:\" }
identfy:
  - api_key: { header: X-API-Key }
routes:
  - { name: a, limt: 5/min }
",
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("t.yaml:2:1: unknown field `identfy`, expected one of `listen`,"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("t.yaml:5:16: routes[0]: unknown field `limt`, expected one of `name`,"),
        "{e:#?}"
    );
}

#[test]
fn a_duplicate_key_is_reported_at_its_own_line() {
    let e = errors(
        "\
upstream: { url: \"demo:\" }
routes:
  - name: a
    limit: 10/min
    limit: 5/min
plans:
  pro: {}
  pro: { access: deny }
routes: []
",
    );
    assert_eq!(
        e,
        [
            "t.yaml:5:5: routes[0].limit: duplicate key, first given at line 4; a mapping names each key once",
            "t.yaml:8:3: plans.pro: duplicate key, first given at line 7; a mapping names each key once",
            "t.yaml:9:1: routes: duplicate key, first given at line 2; a mapping names each key once",
        ]
    );
}

#[test]
fn every_wrong_type_is_reported_with_what_was_expected() {
    let e = errors(
        "\
upstream: { url: \"demo:\", http2: maybe }
limits: { max_connections: lots, backlog: -1 }
shadow: \"true\"
routes: { name: a }
defaults: { algorithm: leaky_bucket }
",
    );
    assert_eq!(
        e,
        [
            "t.yaml:1:34: upstream.http2: invalid type: string \"maybe\", expected a boolean",
            "t.yaml:2:28: limits.max_connections: invalid type: string \"lots\", expected usize",
            "t.yaml:2:43: limits.backlog: invalid value: integer `-1`, expected u32",
            "t.yaml:3:9: shadow: invalid type: string \"true\", expected a boolean",
            "t.yaml:4:9: routes: invalid type: map, expected a sequence",
            "t.yaml:5:24: defaults.algorithm: unknown variant `leaky_bucket`, expected one of `fixed_window`, `sliding_window`, `token_bucket`, `concurrency`",
        ]
    );
}

#[test]
fn a_missing_setting_is_reported_with_every_other_problem() {
    let e = errors("routes:\n  - { limit: 5/min }\n  - { name: b, cost: many }\n");
    assert_eq!(
        e,
        [
            "t.yaml:1:1: missing field `upstream`",
            "t.yaml:2:5: routes[0]: missing field `name`",
            "t.yaml:3:22: routes[1].cost: invalid type: string \"many\", expected u32",
        ]
    );
}

#[test]
fn checks_between_settings_wait_for_every_value_to_read() {
    // `keys[0].plan` names no plan, but the route limit that is left out for its own error
    // would otherwise make `plans.pro.limits.send` name no route limit: only what is wrong
    // for certain is reported.
    let e = errors(
        "\
upstream: { url: \"demo:\" }
keys: [ { key: k, plan: gold } ]
plans: { pro: { limits: { send: 5/min } } }
routes: [ { name: send, limit: 5/mni } ]
",
    );
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("t.yaml:4:32: routes[0].limit: malformed rate"),
        "{e:#?}"
    );
}

#[test]
fn semantic_problems_are_all_reported_with_places() {
    let text = "\
upstream: { url: \"demo:\" }
keys:
  - { key: k1, plan: gold }
plans:
  pro: { limits: { sned: 5/min } }
routes:
  - { name: send, match: { path: /v1/messages }, limit: 10/min }
  - { name: send, match: { path: /v1/**/x }, limit: 10/min }
";
    let e = errors(text);
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(e[0].starts_with("t.yaml:3:"), "sorted by place: {e:#?}");
    assert!(
        e.iter().any(|m| m.starts_with(
            "t.yaml:3:22: keys[0].plan: unknown plan \"gold\"; plans are: pro, default, anonymous"
        )),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|m| m
                .starts_with("t.yaml:5:20: plans.pro.limits.sned: \"sned\" names no route limit")),
        "{e:#?}"
    );
    assert!(
        e.iter().any(|m| m.starts_with(
            "t.yaml:8:13: routes[1].name: duplicate route name \"send\" (first used by routes[0])"
        )),
        "{e:#?}"
    );
    assert!(e.iter().any(|m| m.starts_with("t.yaml:8:34: routes[1].match.path: invalid path pattern \"/v1/**/x\": a wildcard must be the last segment")), "{e:#?}");
}

#[test]
fn keys_file_problems_name_the_keys_file() {
    let dir = std::env::temp_dir().join(format!("sluice-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("keys.yaml"),
        "- { key: a, plan: pro }\n- { key: b, plan: nope }\n",
    )
    .unwrap();
    let text = "upstream: { url: \"demo:\" }\nkeys_file: keys.yaml\nplans: { pro: {} }\n";
    std::fs::write(dir.join("sluice.yaml"), text).unwrap();
    let e = load(&dir.join("sluice.yaml")).unwrap_err();
    assert_eq!(e.0.len(), 1);
    let shown = e.0[0].to_string();
    assert!(
        shown.contains("keys.yaml:2:19: [1].plan: unknown plan \"nope\""),
        "{shown}"
    );
    std::fs::write(dir.join("keys.yaml"), "- { key: a, plan: pro }\n").unwrap();
    let config = load(&dir.join("sluice.yaml")).unwrap();
    assert_eq!(config.policy.identifier.registry.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_keys_file_is_checked_whole_with_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.yaml"),
        "\
- { key: a, plan: pro, colour: red }
- { key: b, plan: pro, limits: { send: 5/mni } }
- { key: c, plan: pro }
- { key: c, plan: pro, plan: free }
",
    )
    .unwrap();
    let text = "upstream: { url: \"demo:\" }\nkeys_file: keys.yaml\nshadow: sometimes\n";
    std::fs::write(dir.path().join("sluice.yaml"), text).unwrap();
    let e: Vec<String> = load(&dir.path().join("sluice.yaml"))
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect();
    let main = dir.path().join("sluice.yaml").display().to_string();
    let keys = dir.path().join("keys.yaml").display().to_string();
    assert_eq!(e.len(), 4, "{e:#?}");
    assert_eq!(
        e[0],
        format!("{main}:3:9: shadow: invalid type: string \"sometimes\", expected a boolean")
    );
    assert!(
        e[1].starts_with(&format!(
            "{keys}:1:24: [0]: unknown field `colour`, expected one of"
        )),
        "{e:#?}"
    );
    assert!(
        e[2].starts_with(&format!(
            "{keys}:2:40: [1].limits.send: malformed rate \"5/mni\""
        )),
        "{e:#?}"
    );
    assert_eq!(
        e[3],
        format!("{keys}:4:24: [3].plan: duplicate key, first given at line 4; a mapping names each key once")
    );
}

#[test]
fn impossible_limits_are_rejected() {
    let e =
        errors("upstream: { url: \"demo:\" }\nroutes:\n  - { name: a, limit: 2/min, cost: 3 }\n");
    assert!(
        e[0].contains("limit \"a\" holds 2 units but one request costs 3"),
        "{e:?}"
    );
    let e = errors("upstream: { url: \"demo:\" }\nroutes:\n  - { name: a, limit: { rate: 2/min, burst: 5 } }\n");
    assert!(
        e[0].contains("`burst` applies to token_bucket only"),
        "{e:?}"
    );
    let e = errors("upstream: { url: \"ftp://x\" }\n");
    assert!(
        e[0].starts_with("t.yaml:1:18: upstream.url: \"ftp://x\" is not an upstream URL"),
        "{e:?}"
    );
}

#[test]
fn a_syntax_error_has_a_place() {
    let e = errors("upstream: { url: \"demo:\" \nroutes: [\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("t.yaml:"), "{}", e[0]);
    assert!(
        e[0].split(':').nth(1).unwrap().parse::<usize>().is_ok(),
        "{}",
        e[0]
    );
}

#[test]
fn redis_store_settings_compile_and_problems_name_their_place() {
    let ok = load_str(
        "upstream: { url: \"demo:\" }\nstore: { backend: redis, url: \"redis://:secret@127.0.0.1:6379/2\", timeout: 20ms, on_error: local, prefix: api }\n",
        "t.yaml",
        None,
    )
    .unwrap();
    let redis = ok.store.redis.unwrap();
    assert_eq!(redis.timeout, std::time::Duration::from_millis(20));
    assert_eq!(redis.on_error, crate::limiter::store::OnError::Local);
    assert_eq!(redis.redacted_url(), "redis://***@127.0.0.1:6379/2");
    let defaults = load_str(
        "upstream: { url: \"demo:\" }\nstore: { backend: redis, url: \"redis://127.0.0.1\" }\n",
        "t.yaml",
        None,
    )
    .unwrap()
    .store
    .redis
    .unwrap();
    assert_eq!(
        (
            defaults.timeout,
            defaults.on_error,
            defaults.prefix.as_str()
        ),
        (
            std::time::Duration::from_millis(50),
            crate::limiter::store::OnError::Allow,
            "sluice"
        )
    );
    assert_eq!(defaults.sync_interval, None, "strict by default");
    assert!(!defaults.cluster, "a single Redis by default");
    let sync = |store: &str| {
        load_str(
            &format!("upstream: {{ url: \"demo:\" }}\nstore: {{ backend: redis, url: \"redis://127.0.0.1\", {store} }}\n"),
            "t.yaml",
            None,
        )
        .map(|c| c.store.redis.unwrap().sync_interval)
    };
    assert_eq!(
        sync("mode: sync").unwrap(),
        Some(std::time::Duration::from_millis(5))
    );
    assert_eq!(
        sync("mode: sync, sync_interval: 20ms").unwrap(),
        Some(std::time::Duration::from_millis(20))
    );
    let e = errors("upstream: { url: \"demo:\" }\nstore: { backend: redis, url: \"redis://127.0.0.1\", sync_interval: 5ms }\n");
    assert_eq!(
        e,
        vec!["t.yaml:2:52: store.sync_interval: applies to `mode: sync` only"]
    );
    let e = errors("upstream: { url: \"demo:\" }\nstore: { backend: redis, url: \"redis://127.0.0.1\", mode: sync, sync_interval: 2s }\n");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains("store.sync_interval: must be between 1ms and 1s"),
        "{e:#?}"
    );
    let e = errors("upstream: { url: \"demo:\" }\nstore: { mode: sync }\n");
    assert_eq!(
        e,
        vec!["t.yaml:2:10: store.mode: applies to `backend: redis` only"]
    );

    let cluster = load_str(
        "upstream: { url: \"demo:\" }\nstore: { backend: redis, url: \"redis://127.0.0.1\", cluster: true }\n",
        "t.yaml",
        None,
    )
    .unwrap();
    assert!(cluster.store.redis.unwrap().cluster);
    let e = errors("upstream: { url: \"demo:\" }\nstore: { cluster: true }\n");
    assert_eq!(
        e,
        vec!["t.yaml:2:10: store.cluster: applies to `backend: redis` only"]
    );
    let e = errors("upstream: { url: \"demo:\" }\nstore: { url: \"redis://127.0.0.1\" }\n");
    assert_eq!(
        e,
        vec!["t.yaml:2:10: store.url: applies to `backend: redis` only"]
    );
    let e = errors("upstream: { url: \"demo:\" }\nstore: { backend: redis, url: \"http://x\", prefix: \"a{b}\" }\n");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e.iter()
            .any(|m| m.contains("store.url: not a usable Redis URL")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("store.prefix: must be non-empty")),
        "{e:#?}"
    );
    let e = errors("upstream: { url: \"demo:\" }\nstore: { backend: redis }\n");
    assert!(
        e[0].contains("store.url: `backend: redis` needs a `url`"),
        "{e:#?}"
    );
    let e = errors("upstream: { url: \"demo:\" }\nstore: { backend: redis, url: \"redis://h\" }\nroutes:\n  - { name: a, limit: 10/1.5us }\n");
    assert!(
        e[0].contains("limit \"a\": the redis store counts periods in whole microseconds"),
        "{e:#?}"
    );
}

#[test]
fn edge_settings_are_checked_with_places() {
    let e = errors(
        "\
upstream: { url: \"http://127.0.0.1:1\", tls: { ca_only: true } }
limits: { max_connections: 0, max_header_bytes: 1KiB, idle_timeout: 0s }
",
    );
    let joined = e.join("\n");
    assert!(
        joined.contains("t.yaml:1:45: upstream.tls: TLS settings need an https:// upstream url"),
        "{joined}"
    );
    assert!(
        joined.contains("t.yaml:2:28: limits.max_connections: must be greater than zero"),
        "{joined}"
    );
    assert!(
        joined.contains("limits.max_header_bytes: must be at least 8192 bytes"),
        "{joined}"
    );
    assert!(
        joined.contains("limits.idle_timeout: must be greater than zero"),
        "{joined}"
    );

    let e =
        errors("upstream: { url: \"https://127.0.0.1:1\", tls: { ca_only: true, cert: c.pem } }\n");
    assert!(
        e.iter()
            .any(|e| e.contains("upstream.tls.ca_only: `ca_only: true` needs a `ca_file`")),
        "{e:?}"
    );

    let config = load_str(
        "upstream: { url: \"demo:\" }\nroutes: [ { name: up, max_body: 10MiB } ]\n",
        "t.yaml",
        None,
    )
    .unwrap();
    assert_eq!(config.policy.routes[0].max_body, Some(10 << 20));
    assert_eq!(config.limits.max_connections, 10_000);
    assert!(config.tls.is_none());
}

#[test]
fn normalisation_settings_compile_and_patterns_must_be_canonical() {
    use crate::target::{ConflictingHost, EncodedSlashes, Normaliser};
    let c = load_str(MINIMAL, "t.yaml", None).unwrap();
    assert_eq!(c.target, Normaliser::default());
    let c = load_str(
        "upstream: { url: \"demo:\" }
normalise: { percent_encoding: false, dot_segments: false, merge_slashes: false, encoded_slashes: keep, conflicting_host: reject }
routes:
  - { name: tunnel, match: { method: CONNECT } }
  - { name: ping, match: { method: OPTIONS, path: \"*\" } }
  - { name: raw, match: { path: \"/a/./%7e\" } }
",
        "t.yaml",
        None,
    )
    .unwrap();
    assert_eq!(
        c.target,
        Normaliser {
            percent_encoding: false,
            dot_segments: false,
            merge_slashes: false,
            encoded_slashes: EncodedSlashes::Keep,
            conflicting_host: ConflictingHost::Reject,
            allow_connect: true,
            allow_asterisk: true,
        }
    );
    // `*` (any method) does not open CONNECT.
    let c = load_str(
        "upstream: { url: \"demo:\" }\nroutes: [{ name: all, match: { method: \"*\" } }]\n",
        "t.yaml",
        None,
    )
    .unwrap();
    assert!(!c.target.allow_connect);

    let e = errors(
        "upstream: { url: \"demo:\" }
routes:
  - { name: a, match: { path: \"/v1/%7euser\" } }
  - { name: b, match: { path: \"/v1/./x\" } }
  - { name: c, match: { path: \"/v1/a%2Fb\" } }
  - { name: d, match: { path: \"/v1/{id}/caf\u{e9}\" } }
",
    );
    assert_eq!(
        e,
        [
            "t.yaml:3:31: routes[0].match.path: path pattern \"/v1/%7euser\" can never match: request paths are normalised before matching, and its segment \"%7euser\" becomes \"~user\" (see `normalise`)",
            "t.yaml:4:31: routes[1].match.path: path pattern \"/v1/./x\" can never match: request paths are normalised before matching, and its segment \".\" is removed (see `normalise`)",
            "t.yaml:5:31: routes[2].match.path: path pattern \"/v1/a%2Fb\" can never match: request paths are normalised before matching, and its segment \"a%2Fb\" is refused (the path holds an encoded slash (%2F, %5C or \\)) (see `normalise`)",
            "t.yaml:6:31: routes[3].match.path: path pattern \"/v1/{id}/caf\u{e9}\" can never match: request paths are normalised before matching, and its segment \"caf\u{e9}\" becomes \"caf%C3%A9\" (see `normalise`)",
        ]
    );
}

#[test]
fn ambiguous_keys_get_the_unauthorized_envelope_with_400() {
    let c = load_str(
        "upstream: { url: \"demo:\" }
responses:
  unauthorized: { status: 401, body: '{\"error\":\"unauthorized\"}', headers: { X-Why: auth } }
",
        "t.yaml",
        None,
    )
    .unwrap();
    let (unauthorized, ambiguous) = (&c.responses.unauthorized, &c.responses.ambiguous_key);
    assert_eq!(ambiguous.status, 400);
    assert_eq!(ambiguous.body, unauthorized.body);
    assert_eq!(ambiguous.headers, unauthorized.headers);
    assert_eq!(ambiguous.content_type, unauthorized.content_type);
    let c = load_str(
        "upstream: { url: \"demo:\" }\nresponses: { ambiguous_key: { status: 401 } }\n",
        "t.yaml",
        None,
    )
    .unwrap();
    assert_eq!(c.responses.ambiguous_key.status, 401);
    assert_eq!(c.responses.method_not_allowed.status, 405);
    assert_eq!(c.responses.bad_request.status, 400);
}
