use super::*;
use crate::config::load_str;
use crate::limiter::{Check, CounterKey, Decision, Outcomes};

const T: Nanos = 1_752_490_800 * SECOND + 250 * MILLISECOND;

fn config(responses: &str) -> crate::config::Config {
    let text = format!(
        "upstream: {{ url: \"demo:\" }}\nroutes:\n  - {{ name: send, limit: 120/min }}\nresponses:\n{responses}"
    );
    load_str(&text, "t", None).unwrap_or_else(|e| panic!("{e}"))
}

fn decision(allowed: bool) -> Decision {
    let outcome = Outcome {
        allowed,
        limit: 120,
        remaining: if allowed { 87 } else { 0 },
        reset: T + 59 * SECOND + 750 * MILLISECOND,
        retry_after: if allowed { 0 } else { 37 * SECOND + 1 },
    };
    let check = Check {
        key: CounterKey {
            limit: 1,
            subject: 1,
        },
        algorithm: crate::limiter::Algorithm::FixedWindow,
        quota: crate::limiter::Quota::new(120, 60 * SECOND, 120).unwrap(),
        cost: 1,
        shadow: false,
    };
    Decision::from_outcomes(Outcomes::from_iter([outcome]), &[check])
}

fn render(c: &crate::config::Config, d: &Decision) -> Response<Body> {
    let limits = c.policy.limits(&c.policy.profiles[0], Some(0)).unwrap();
    let cx = Context {
        decision: Some(d),
        limits,
        route: "send",
        plan: "pro",
        request_id: "e901a2bc77f344358a9e7011c789d012",
        now: T,
        method: &Method::POST,
        path: "/messages",
    };
    let (mut response, headers) = c.responses.render(Rejection::Limited, &cx);
    headers.apply(response.headers_mut());
    response
}

async fn body_text(response: Response<Body>) -> String {
    use http_body_util::BodyExt;
    String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn default_limited_reply_is_problem_json_with_every_header() {
    let c = config("  headers: both\n");
    let r = render(&c, &decision(false));
    assert_eq!(r.status(), 429);
    let h = r.headers();
    assert_eq!(h["content-type"], "application/problem+json");
    assert_eq!(h["retry-after"], "38", "37.000000001 s rounds up");
    assert_eq!(h["x-ratelimit-limit"], "120");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(h["x-ratelimit-reset"], "1752490860");
    assert_eq!(h["ratelimit-policy"], "\"send\";q=120;w=60");
    assert_eq!(h["ratelimit"], "\"send\";r=0;t=60");
    let body: serde_json::Value = serde_json::from_str(&body_text(r).await).unwrap();
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["status"], 429);
    assert_eq!(body["violated-policies"], serde_json::json!(["send"]));
}

#[tokio::test]
async fn reference_body_a_byte_for_byte() {
    let c = config(concat!(
        "  limited:\n",
        "    body: '{\"code\":\"RATE_LIMIT_EXCEEDED\",\"message\":\"You have exceeded the request limit for this endpoint. Please slow down.\",\"status\":429,\"trace_id\":\"${request_id}\",\"timestamp\":\"${timestamp_micros}\",\"service\":\"core\"}'\n",
    ));
    let r = render(&c, &decision(false));
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(
        body_text(r).await,
        "{\"code\":\"RATE_LIMIT_EXCEEDED\",\"message\":\"You have exceeded the request limit for this endpoint. Please slow down.\",\"status\":429,\"trace_id\":\"e901a2bc77f344358a9e7011c789d012\",\"timestamp\":\"2025-07-14T11:00:00.250000+00:00\",\"service\":\"core\"}"
    );
}

#[tokio::test]
async fn reset_units_and_template_numbers() {
    let c = config("  reset: unix_millis\n  limited: { body: '${retry_after}|${retry_after_ms}|${limit}|${remaining}|${reset}|${route}|${plan}|${timestamp}|${unix_time}', headers: { x-extra: yes } }\n");
    let r = render(&c, &decision(false));
    assert_eq!(r.headers()["x-ratelimit-reset"], "1752490860000");
    assert_eq!(r.headers()["x-extra"], "yes");
    assert_eq!(
        body_text(r).await,
        "38|37001|120|0|1752490860000|send|pro|2025-07-14T11:00:00Z|1752490800"
    );
    let delta = config("  reset: delta_seconds\n");
    let mut h = HeaderMap::new();
    let limits = delta
        .policy
        .limits(&delta.policy.profiles[0], Some(0))
        .unwrap();
    delta
        .responses
        .limit_headers(Some(&decision(true)), limits, T)
        .apply(&mut h);
    assert_eq!(h["x-ratelimit-reset"], "60");
    assert_eq!(h["x-ratelimit-remaining"], "87");
    assert!(!h.contains_key("ratelimit"), "x-ratelimit only by default");
}

#[test]
fn unchecked_responses_carry_zero_quota_and_no_ietf_policy() {
    let c = config("  headers: both\n");
    let mut h = HeaderMap::new();
    c.responses.limit_headers(None, &[], T).apply(&mut h);
    assert_eq!(h["x-ratelimit-limit"], "0");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert!(!h.contains_key("ratelimit-policy"));
    let none = config("  headers: none\n");
    let mut h = HeaderMap::new();
    none.responses.limit_headers(None, &[], T).apply(&mut h);
    assert!(h.is_empty());
}

#[test]
fn retry_after_is_whole_seconds_rounded_up_never_zero() {
    assert_eq!(retry_after_seconds(0), 1);
    assert_eq!(retry_after_seconds(1), 1);
    assert_eq!(retry_after_seconds(SECOND), 1);
    assert_eq!(retry_after_seconds(SECOND + 1), 2);
}

fn context<'a>(d: &'a Decision, limits: &'a [Limit]) -> Context<'a> {
    Context {
        decision: Some(d),
        limits,
        route: "send",
        plan: "pro",
        request_id: "r",
        now: T,
        method: &Method::GET,
        path: "/",
    }
}

#[test]
fn encoded_lines_say_what_the_applied_headers_say() {
    let c = config("  headers: both\n");
    let limits = c.policy.limits(&c.policy.profiles[0], Some(0)).unwrap();
    let d = decision(false);
    let (_, headers) = c.responses.render(Rejection::Limited, &context(&d, limits));
    let mut out = Vec::new();
    headers.encode(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        concat!(
            "retry-after: 38\r\n",
            "x-ratelimit-limit: 120\r\n",
            "x-ratelimit-remaining: 0\r\n",
            "x-ratelimit-reset: 1752490860\r\n",
            "ratelimit-policy: \"send\";q=120;w=60\r\n",
            "ratelimit: \"send\";r=0;t=60\r\n",
        )
    );
    for name in [
        "retry-after",
        "x-ratelimit-reset",
        "ratelimit",
        "ratelimit-policy",
    ] {
        assert!(headers.owns(name.as_bytes()), "{name}");
    }
    assert!(!headers.owns(b"content-type"));
    let mut map = HeaderMap::new();
    headers.apply(&mut map);
    let applied: String = map
        .iter()
        .map(|(n, v)| format!("{n}: {}\r\n", v.to_str().unwrap()))
        .collect();
    assert_eq!(applied, text);
}

#[test]
fn configured_headers_win_over_the_rate_limit_ones() {
    let c = config("  limited: { headers: { x-ratelimit-limit: custom } }\n");
    let limits = c.policy.limits(&c.policy.profiles[0], Some(0)).unwrap();
    let d = decision(false);
    let (response, headers) = c.responses.render(Rejection::Limited, &context(&d, limits));
    assert!(!headers.owns(b"x-ratelimit-limit"), "left in the map");
    let h = response.headers();
    assert_eq!(h["x-ratelimit-limit"], "custom");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(h["retry-after"], "38");
}
