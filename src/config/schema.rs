//! The JSON Schema of the config file, for editors (`sluice schema`).
//!
//! Generated from the serde types in `file` by schemars, so it cannot drift from what the
//! parser accepts. Types with a hand-written `Deserialize` (rates, durations, limits,
//! fallbacks) describe their accepted forms here by hand. The schema is a helper for
//! editors: it may accept a little more than `sluice check` (a rate of `0/min`), never less.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::file::{Fallback, FallbackPlan, File, LimitFile, LimitValue};
use super::units::{ByteSize, HumanDuration, Rate};

/// The schema of a config file as JSON (draft-07, which YAML language servers support best).
pub fn schema() -> serde_json::Value {
    let mut schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<File>();
    schema.insert("title".into(), "sluice configuration".into());
    let mut value = schema.to_value();
    // schemars lists no serde aliases; the one the parser accepts is added here.
    if let Some(styles) = value
        .pointer_mut("/definitions/HeaderStyle/oneOf")
        .and_then(|v| v.as_array_mut())
    {
        styles.push(serde_json::json!({ "const": "x_ratelimit", "type": "string" }));
    }
    value
}

/// `[sS][eE][cC]`: ECMA-262 patterns have no case-insensitive flag.
fn any_case(word: &str) -> String {
    word.chars()
        .map(|c| format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase()))
        .collect()
}

fn alternatives(words: &[&str]) -> String {
    let words: Vec<String> = words.iter().map(|w| any_case(w)).collect();
    format!("({})", words.join("|"))
}

/// Units after a number in a duration (`units::DURATION_UNITS`).
const DURATION_UNITS: &[&str] = &["us", "ms", "s", "m", "min", "h", "d"];
/// Words a rate may use as its whole period (`100/second`).
const RATE_UNITS: &[&str] = &[
    "us", "ms", "s", "sec", "second", "m", "min", "minute", "h", "hour", "d", "day",
];

impl JsonSchema for Rate {
    fn schema_name() -> Cow<'static, str> {
        "Rate".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let pattern = format!(
            r"^\s*[0-9]+\s*/\s*([0-9]+(\.[0-9]+)?\s*)?{}\s*$",
            alternatives(RATE_UNITS)
        );
        json_schema!({
            "description": "COUNT/UNIT with UNIT one of s, min, h, d (`100/min`, `10/s`), or COUNT/DURATION (`100/10s`).",
            "type": "string",
            "pattern": pattern,
            "examples": ["100/min", "10/s", "5000/h", "1000/d", "100/10s"]
        })
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let pattern = format!(
            r"^\s*[0-9]+(\.[0-9]+)?\s*{}?\s*$",
            alternatives(DURATION_UNITS)
        );
        json_schema!({
            "description": "A duration like `50ms`, `2s`, `1m`, `1.5h` or `1d`, or a whole number of seconds.",
            "anyOf": [
                { "type": "string", "pattern": pattern },
                { "type": "integer", "minimum": 0 }
            ],
            "examples": ["50ms", "2s", "1m", "1h"]
        })
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let units: Vec<&str> = BYTE_UNITS.to_vec();
        let pattern = format!(
            r"^\s*[0-9]+(\.[0-9]+)?\s*({}|[bB])?\s*$",
            alternatives(&units)
        );
        json_schema!({
            "description": "A byte size like `512KiB`, `1MiB` or `10MB` (KiB/MiB/GiB are 1024-based, KB/MB/GB 1000-based), or a whole number of bytes.",
            "anyOf": [
                { "type": "string", "pattern": pattern },
                { "type": "integer", "minimum": 0 }
            ],
            "examples": ["64KiB", "10MiB", "1GB"]
        })
    }
}

/// Units after a number in a byte size (`units::BYTE_UNITS`).
const BYTE_UNITS: &[&str] = &["KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"];

impl JsonSchema for LimitValue {
    fn schema_name() -> Cow<'static, str> {
        "LimitValue".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let rate = generator.subschema_for::<Rate>();
        let full = generator.subschema_for::<LimitFile>();
        json_schema!({
            "description": "`none` (exempt), a rate like `100/min`, a limit spelled out as `{ rate, algorithm, per, burst, shadow, name }`, or (on routes) a list of rates and limits.",
            "anyOf": [
                { "const": "none" },
                rate,
                full,
                { "type": "array", "items": { "anyOf": [rate, full] } }
            ]
        })
    }
}

impl JsonSchema for Fallback {
    fn schema_name() -> Cow<'static, str> {
        "Fallback".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let plan = generator.subschema_for::<FallbackPlan>();
        json_schema!({
            "description": "`reject` (401), or `{ plan: NAME, per: key | ip }` to limit such callers under a plan.",
            "anyOf": [{ "const": "reject" }, plan]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> jsonschema::Validator {
        jsonschema::validator_for(&schema()).expect("the schema is valid JSON Schema")
    }

    fn yaml(text: &str) -> serde_json::Value {
        crate::config::yaml::de::from_str(text).unwrap()
    }

    #[test]
    fn the_embedded_default_validates() {
        let v = validator();
        let doc = yaml(super::super::EMBEDDED_DEFAULT);
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }

    #[test]
    fn rates_and_durations_match_what_the_parser_accepts() {
        let v = validator();
        let with = |route: &str| {
            yaml(&format!(
                "upstream: {{ url: \"demo:\", timeout: 2s }}\nroutes: [ {route} ]\n"
            ))
        };
        for good in [
            "{ name: a, limit: 100/min }",
            "{ name: a, limit: 10/S }",
            "{ name: a, limit: 100/10s }",
            "{ name: a, limit: 5/1.5h }",
            "{ name: a, limit: none }",
            "{ name: a, limit: [10/s, { rate: 100/min, per: org }] }",
            "{ name: a, limit: { rate: 2/s, algorithm: token_bucket, burst: 4 } }",
        ] {
            assert!(v.is_valid(&with(good)), "{good}");
            let text = format!("upstream: {{ url: \"demo:\" }}\nroutes: [ {good} ]\n");
            crate::config::load_str(&text, "t.yaml", None).unwrap();
        }
        for bad in [
            "{ name: a, limit: 100 }",
            "{ name: a, limit: 100/fortnight }",
            "{ name: a, limit: { rate: 1/s, algoritm: token_bucket } }",
            "{ name: a, limt: 1/s }",
            "{ name: a, limit: { rate: 1/s, per: planet } }",
        ] {
            assert!(!v.is_valid(&with(bad)), "{bad}");
            let text = format!("upstream: {{ url: \"demo:\" }}\nroutes: [ {bad} ]\n");
            assert!(
                crate::config::load_str(&text, "t.yaml", None).is_err(),
                "{bad}"
            );
        }
        let timeout = |t: &str| yaml(&format!("upstream: {{ url: \"demo:\", timeout: {t} }}\n"));
        assert!(v.is_valid(&timeout("30")));
        assert!(v.is_valid(&timeout("1.5s")));
        assert!(!v.is_valid(&timeout("soon")));
        let body = |b: &str| {
            format!("upstream: {{ url: \"demo:\" }}\nroutes: [ {{ name: a, max_body: {b} }} ]\n")
        };
        for good in ["10MiB", "1.5KB", "2048", "64kib"] {
            crate::config::load_str(&body(good), "t.yaml", None).unwrap();
            assert!(v.is_valid(&yaml(&body(good))), "{good}");
        }
        assert!(!v.is_valid(&yaml(&body("lots"))));
        assert!(crate::config::load_str(&body("lots"), "t.yaml", None).is_err());
    }

    #[test]
    fn idempotency_settings_and_sizes_match_what_the_parser_accepts() {
        let v = validator();
        for good in [
            "routes: [ { name: a, idempotency: {} } ]",
            "routes: [ { name: a, idempotency: { header: X-Once, ttl: 1h, max_body: 64KiB } } ]",
            "routes: [ { name: a, idempotency: { max_body: 1000 } } ]\nidempotency: { max_entries: 10, max_bytes: 1 MB }",
            "responses: { idempotency_conflict: { body: '{}' }, idempotency_mismatch: { status: 400 } }",
        ] {
            let text = format!("upstream: {{ url: \"demo:\" }}\n{good}\n");
            crate::config::load_str(&text, "t.yaml", None).unwrap();
            assert!(v.is_valid(&yaml(&text)), "{good}");
        }
        for bad in [
            "routes: [ { name: a, idempotency: { max_body: 1 MiBs } } ]",
            "routes: [ { name: a, idempotency: { ttl: soon } } ]",
            "routes: [ { name: a, idempotency: { key: X-Once } } ]",
            "idempotency: { max_bytes: -1 }",
        ] {
            let text = format!("upstream: {{ url: \"demo:\" }}\n{bad}\n");
            assert!(
                crate::config::load_str(&text, "t.yaml", None).is_err(),
                "{bad}"
            );
            assert!(!v.is_valid(&yaml(&text)), "{bad}");
        }
    }

    #[test]
    fn serde_aliases_and_fallbacks_are_accepted() {
        let v = validator();
        for text in [
            "upstream: { url: \"demo:\" }\nresponses: { headers: x_ratelimit }\n",
            "upstream: { url: \"demo:\" }\nresponses: { headers: x-ratelimit }\n",
            "upstream: { url: \"demo:\" }\nunknown_key: reject\n",
            "upstream: { url: \"demo:\" }\nunknown_key: { plan: default, per: ip }\n",
            "upstream: { url: \"demo:\" }\nidentify: [ { api_key: { query: k } }, { ip: {} } ]\n",
        ] {
            crate::config::load_str(text, "t.yaml", None).unwrap();
            assert!(v.is_valid(&yaml(text)), "{text}");
        }
        let bad = "upstream: { url: \"demo:\" }\nunknown_key: allow\n";
        assert!(crate::config::load_str(bad, "t.yaml", None).is_err());
        assert!(!v.is_valid(&yaml(bad)));
    }
}
