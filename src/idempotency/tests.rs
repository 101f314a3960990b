use std::net::Ipv4Addr;

use http_body_util::BodyExt;

use super::memory::MemoryRecords;
use super::*;

const CONFIG: &str = r#"
upstream: { url: "demo:" }
identify: [ { api_key: { header: X-API-Key } }, { ip: {} } ]
unknown_key: { plan: default, per: key }
keys: [ { key: k1 }, { key: k2 } ]
routes:
  - { name: send, match: { method: POST, path: /v1/messages }, limit: 10/min, idempotency: {} }
  - { name: other, match: { path: /v1/other }, idempotency: { header: X-Once, ttl: 1h, max_body: 10 } }
  - { name: plain, match: { path: /** } }
"#;

fn config() -> Config {
    crate::config::load_str(CONFIG, "t.yaml", None).unwrap()
}

fn parts(method: &str, uri: &str, key: Option<&str>) -> Parts {
    let mut request = http::Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request.body(()).unwrap().into_parts().0
}

fn key_of(config: &Config, parts: &Parts, ip: [u8; 4], route: &str, value: &str) -> RecordKey {
    let ip = IpAddr::from(Ipv4Addr::from(ip));
    let identifier = &config.policy.identifier;
    let identity = identifier.identify(parts, ip, 0).unwrap();
    record_key(identifier, &identity, ip, parts, route, value.as_bytes())
}

#[test]
fn rules_compile_with_their_defaults_and_bounds() {
    let config = config();
    let settings = &config.idempotency;
    assert_eq!(settings.max_entries, DEFAULT_MAX_ENTRIES);
    assert_eq!(settings.max_bytes, DEFAULT_MAX_BYTES);
    assert_eq!(
        settings.routes,
        vec![
            Some(Rule {
                header: IDEMPOTENCY_KEY,
                ttl: 24 * 3600 * 1_000_000_000,
                max_body: 1 << 20,
            }),
            Some(Rule {
                header: HeaderName::from_static("x-once"),
                ttl: 3600 * 1_000_000_000,
                max_body: 10,
            }),
            None,
        ]
    );
}

#[test]
fn bad_rules_are_reported_at_their_place() {
    let text = r#"
upstream: { url: "demo:" }
idempotency: { max_entries: 0, max_bytes: 1KiB }
routes:
  - { name: a, idempotency: { header: "bad header", ttl: 0s, max_body: 2KiB } }
"#;
    let errors = crate::config::load_str(text, "t.yaml", None)
        .unwrap_err()
        .to_string();
    for expected in [
        "t.yaml:3:29: idempotency.max_entries: must be at least 1",
        "routes[0].idempotency.header: \"bad header\" is not a valid header name",
        "routes[0].idempotency.ttl: must be greater than zero",
        "routes[0].idempotency.max_body: 2KiB is more than idempotency.max_bytes (1KiB)",
    ] {
        assert!(errors.contains(expected), "{expected}\nnot in:\n{errors}");
    }
}

#[test]
fn record_keys_are_scoped_to_the_caller_route_and_key_and_are_stable() {
    let config = config();
    let k1 = parts("POST", "/v1/messages", Some("k1"));
    let base = key_of(&config, &k1, [1, 1, 1, 1], "send", "abc");
    // The same credential from another address, and a config compiled again (a reload,
    // another replica): the same record.
    assert_eq!(base, key_of(&config, &k1, [2, 2, 2, 2], "send", "abc"));
    assert_eq!(
        base,
        key_of(&super::tests::config(), &k1, [1, 1, 1, 1], "send", "abc")
    );
    let k2 = parts("POST", "/v1/messages", Some("k2"));
    let unknown = parts("POST", "/v1/messages", Some("zz"));
    let anonymous = parts("POST", "/v1/messages", None);
    for other in [
        key_of(&config, &k2, [1, 1, 1, 1], "send", "abc"),
        key_of(&config, &unknown, [1, 1, 1, 1], "send", "abc"),
        key_of(&config, &anonymous, [1, 1, 1, 1], "send", "abc"),
        key_of(&config, &k1, [1, 1, 1, 1], "other", "abc"),
        key_of(&config, &k1, [1, 1, 1, 1], "send", "abd"),
    ] {
        assert_ne!(base, other);
    }
    // Anonymous callers are told apart by address.
    assert_ne!(
        key_of(&config, &anonymous, [1, 1, 1, 1], "send", "abc"),
        key_of(&config, &anonymous, [1, 1, 1, 2], "send", "abc"),
    );
}

#[test]
fn fingerprints_cover_method_target_and_body() {
    let post = parts("POST", "/v1/messages?to=1", None);
    let base = fingerprint(&post, b"hello");
    assert_eq!(base, fingerprint(&post, b"hello"));
    assert_ne!(base, fingerprint(&post, b"hellp"));
    assert_ne!(
        base,
        fingerprint(&parts("PUT", "/v1/messages?to=1", None), b"hello")
    );
    assert_ne!(
        base,
        fingerprint(&parts("POST", "/v1/messages?to=2", None), b"hello")
    );
    assert_ne!(
        base,
        fingerprint(&parts("POST", "/v1/messages", None), b"hello")
    );
}

#[test]
fn only_final_answers_are_stored() {
    for (status, stored) in [
        (200, true),
        (201, true),
        (204, true),
        (302, true),
        (400, true),
        (404, true),
        (409, true),
        (101, false),
        (408, false),
        (429, false),
        (500, false),
        (502, false),
        (503, false),
    ] {
        assert_eq!(
            storable(StatusCode::from_u16(status).unwrap()),
            stored,
            "{status}"
        );
    }
}

#[test]
fn stored_headers_leave_out_what_belongs_to_one_response() {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/json"),
        ("location", "/v1/messages/7"),
        ("date", "Tue, 01 Jan 2030 00:00:00 GMT"),
        ("x-ratelimit-remaining", "3"),
        ("ratelimit", "\"send\";r=3;t=9"),
        ("x-request-id", "abc"),
        ("connection", "x-hop"),
        ("x-hop", "1"),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    let kept = stored_headers(&headers);
    let names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["content-type", "location"]);
}

fn pending(store: &Arc<MemoryRecords>, max_body: u64) -> Pending {
    let store: Arc<dyn RecordStore> = store.clone();
    let token = match store.claim(&[7; 32], &[1; 32], u64::MAX, 0) {
        Answer::Ready(Ok(Claimed::Owned(token))) => token,
        _ => panic!("a fresh store grants the claim"),
    };
    Pending::claimed(store, [7; 32], token, max_body)
}

fn stored(store: &MemoryRecords) -> Option<Arc<Record>> {
    match store.claim(&[7; 32], &[1; 32], u64::MAX, 0) {
        Answer::Ready(Ok(Claimed::Stored(record))) => Some(record),
        _ => None,
    }
}

fn response(status: u16, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert("x-upstream", HeaderValue::from_static("yes"));
    response
        .headers_mut()
        .insert("x-ratelimit-limit", HeaderValue::from_static("10"));
    response
}

#[tokio::test]
async fn a_response_is_recorded_as_it_streams_and_replays_identically() {
    let store = Arc::new(MemoryRecords::new(10, 1 << 20));
    let kept = pending(&store, 100).keep(response(201, "created"));
    assert!(
        stored(&store).is_none(),
        "stored only once the body has ended"
    );
    let (parts, body) = kept.into_parts();
    let sent = body.collect().await.unwrap().to_bytes();
    assert_eq!(sent, "created");
    let record = stored(&store).expect("stored at the end of the body");
    assert_eq!(record.status, StatusCode::CREATED);
    assert_eq!(record.body, sent);
    assert_eq!(record.headers.get("x-upstream").unwrap(), "yes");
    assert!(!record.headers.contains_key("x-ratelimit-limit"));
    assert_eq!(parts.headers.get("x-ratelimit-limit").unwrap(), "10");

    let replay = record.replay();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()[&IDEMPOTENT_REPLAYED], "true");
    let replayed = replay.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(replayed, sent);
}

#[tokio::test]
async fn an_empty_body_is_recorded_at_once() {
    let store = Arc::new(MemoryRecords::new(10, 1 << 20));
    let _response = pending(&store, 100).keep(response(204, ""));
    assert_eq!(stored(&store).unwrap().body, "");
}

#[tokio::test]
async fn errors_large_bodies_and_abandoned_bodies_release_the_key() {
    let claim_again = |store: &MemoryRecords| {
        matches!(
            store.claim(&[7; 32], &[1; 32], u64::MAX, 0),
            Answer::Ready(Ok(Claimed::Owned(_)))
        )
    };
    // A 503 is passed on untouched and not stored.
    let store = Arc::new(MemoryRecords::new(10, 1 << 20));
    let kept = pending(&store, 100).keep(response(503, "busy"));
    assert_eq!(kept.into_body().collect().await.unwrap().to_bytes(), "busy");
    assert!(claim_again(&store));

    // A body over max_body reaches the client whole but is not stored.
    let store = Arc::new(MemoryRecords::new(10, 1 << 20));
    let kept = pending(&store, 3).keep(response(200, "too long"));
    assert_eq!(
        kept.into_body().collect().await.unwrap().to_bytes(),
        "too long"
    );
    assert!(claim_again(&store));
    assert_eq!(store.usage().1, 0);

    // Limited or failed before any response: the claim is dropped unfilled.
    let store = Arc::new(MemoryRecords::new(10, 1 << 20));
    drop(pending(&store, 100));
    assert!(claim_again(&store));
}

#[tokio::test]
async fn a_body_the_client_stops_reading_is_finished_in_the_background() {
    let store = Arc::new(MemoryRecords::new(10, 1 << 20));
    drop(pending(&store, 100).keep(response(200, "never read")));
    for _ in 0..100 {
        if stored(&store).is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        stored(&store).expect("drained into the record").body,
        "never read"
    );
}
