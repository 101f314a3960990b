//! The five reference policies (PRODUCT.md §1, the pages in shared/reference-policies/):
//! each `config/examples/` file is started as written — only its listen addresses and
//! upstream are pointed at loopback — and every promise of its page is asserted over HTTP.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use support::{Conn, Reply, Sluice};

/// Starts sluice on `config/examples/NAME` with a real upstream.
async fn example(name: &str) -> (Sluice, tempfile::TempDir) {
    let upstream = support::upstream().await;
    example_with(name, upstream, &[], &[]).await
}

/// Like [`example`], with more text replaced (`(from, to)`) and environment variables.
async fn example_with(
    name: &str,
    upstream: SocketAddr,
    replace: &[(&str, &str)],
    env: &[(&str, &str)],
) -> (Sluice, tempfile::TempDir) {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples");
    let text = std::fs::read_to_string(format!("{examples}/{name}")).unwrap();
    let text = text
        .replace("listen: 0.0.0.0:8080", "listen: 127.0.0.1:0")
        .replace("listen: 127.0.0.1:9090", "listen: 127.0.0.1:0")
        .replace("http://127.0.0.1:3000", &format!("http://{upstream}"));
    let text = replace
        .iter()
        .fold(text, |text, (from, to)| text.replace(from, to));
    let dir = support::dir();
    // Files the example refers to (keys, certificates) resolve against its own folder.
    for entry in std::fs::read_dir(examples).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (Sluice::start(&path, env), dir)
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// Fixed windows are aligned to the epoch: start a counting test early in a window, so a
/// boundary cannot fall in the middle of it.
async fn early_in_window(period_secs: u64) {
    let into = unix_now().as_secs_f64() % period_secs as f64;
    if into > period_secs as f64 - 8.0 {
        tokio::time::sleep(Duration::from_secs_f64(period_secs as f64 - into + 0.05)).await;
    }
}

/// Sends `count` requests and returns the replies.
async fn burst(
    conn: &mut Conn,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    count: usize,
) -> Vec<Reply> {
    let mut replies = Vec::with_capacity(count);
    for _ in 0..count {
        replies.push(conn.send(method, path, headers).await.unwrap());
    }
    replies
}

fn admitted(replies: &[Reply]) -> usize {
    replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count()
}

fn header_u64(reply: &Reply, name: &str) -> u64 {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("no {name} on {}", reply.status))
        .parse()
        .unwrap()
}

// --- A: messaging API ---------------------------------------------------------------

/// "per API key (header X-API-KEY), per endpoint": each endpoint's own count, per minute.
#[tokio::test]
async fn a_per_endpoint_limits_per_key() {
    let (sluice, _dir) = example("a-messaging.yaml").await;
    early_in_window(60).await;
    let mut conn = sluice.connect().await;
    for (method, path, limit) in [
        ("POST", "/messages", 120),
        ("POST", "/campaigns/batch", 10),
        ("POST", "/contacts/import", 5),
        ("GET", "/messages/123", 300),
    ] {
        let replies = burst(
            &mut conn,
            method,
            path,
            &[("X-API-KEY", "zk_a1")],
            limit + 3,
        )
        .await;
        assert_eq!(admitted(&replies), limit, "{method} {path}");
        assert!(replies[limit..]
            .iter()
            .all(|r| r.status == StatusCode::TOO_MANY_REQUESTS));
        // Remaining counts down from the limit, on every response.
        for (i, reply) in replies.iter().enumerate() {
            assert_eq!(header_u64(reply, "x-ratelimit-limit"), limit as u64);
            let remaining = (limit as u64).saturating_sub(i as u64 + 1);
            assert_eq!(header_u64(reply, "x-ratelimit-remaining"), remaining);
        }
    }
    // Another key has its own counters.
    let other = conn
        .send("POST", "/contacts/import", &[("X-API-KEY", "zk_a2")])
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::OK);
}

/// Reset is the unix second the window ends; the 429 carries the page's body byte for byte,
/// with the request id as `trace_id`, and `Retry-After` up to the reset.
#[tokio::test]
async fn a_headers_and_exact_429_body() {
    let (sluice, _dir) = example("a-messaging.yaml").await;
    early_in_window(60).await;
    let mut conn = sluice.connect().await;
    let key = [("X-API-KEY", "zk_body")];
    let replies = burst(&mut conn, "POST", "/contacts/import", &key, 6).await;
    let reset = header_u64(&replies[0], "x-ratelimit-reset");
    let now = unix_now().as_secs();
    assert_eq!(reset % 60, 0, "windows are aligned to the minute");
    assert!(reset > now && reset <= now + 60, "{reset} vs {now}");

    let limited = &replies[5];
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("content-type"), Some("application/json"));
    let retry_after = header_u64(limited, "retry-after");
    assert!((1..=60).contains(&retry_after));
    assert!(reset.abs_diff(now + retry_after) <= 1);
    let trace_id = limited.header("x-request-id").unwrap();
    let body: serde_json::Value = serde_json::from_str(&limited.body).unwrap();
    let timestamp = body["timestamp"].as_str().unwrap();
    // "2025-07-14T11:00:00.000000+00:00"
    assert_eq!(timestamp.len(), 32, "{timestamp}");
    assert!(timestamp.ends_with("+00:00") && timestamp.as_bytes()[19] == b'.');
    assert_eq!(
        limited.body,
        format!(
            "{{\"code\":\"RATE_LIMIT_EXCEEDED\",\"message\":\"You have exceeded the request limit for this endpoint. Please slow down.\",\"status\":429,\"trace_id\":\"{trace_id}\",\"timestamp\":\"{timestamp}\",\"service\":\"core\"}}"
        )
    );
}

// --- B: SMS API -------------------------------------------------------------------------

/// Most requests a token bucket of `burst` refilling at `per_sec` can admit in `elapsed`.
fn bucket_bound(burst: usize, per_sec: f64, elapsed: Duration) -> usize {
    burst + (elapsed.as_secs_f64() * per_sec).ceil() as usize
}

/// "OTP API Key 10 TPS, Notifications API Key 25 TPS"; the 429 body and `Retry-After: 1`.
#[tokio::test]
async fn b_throughput_per_key_and_exact_429() {
    let (sluice, _dir) = example("b-sms.yaml").await;
    let mut conn = sluice.connect().await;
    for (key, tps) in [("zk_otp_example", 10), ("zk_notifications_example", 25)] {
        let started = std::time::Instant::now();
        let replies = burst(&mut conn, "POST", "/v1/sms", &[("X-API-Key", key)], tps + 5).await;
        let bound = bucket_bound(tps, tps as f64, started.elapsed());
        let ok = admitted(&replies);
        assert!(
            ok >= tps && ok <= bound,
            "{key}: {ok} admitted, at most {bound}"
        );
        assert_eq!(header_u64(&replies[0], "x-ratelimit-limit"), tps as u64);
        let limited = replies
            .iter()
            .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
            .expect("a 429 beyond the TPS");
        assert_eq!(limited.header("retry-after"), Some("1"));
        assert_eq!(
            limited.body,
            r#"{"success":false,"message":"Rate limit exceeded. Try again in 1 second."}"#
        );
        assert!(header_u64(limited, "x-ratelimit-reset") >= unix_now().as_secs());
    }
}

/// "Repeated rate limit violations may trigger temporary protection measures ... 429 Too Many
/// Requests with a longer retry period. Example: Retry-After: 3600"
#[tokio::test]
async fn b_repeated_violations_earn_an_hour_block() {
    let (sluice, _dir) = example("b-sms.yaml").await;
    let mut conn = sluice.connect().await;
    let key = [("X-API-Key", "zk_otp_example")];
    let mut violations = 0;
    let blocked = loop {
        let reply = conn.send("POST", "/v1/sms", &key).await.unwrap();
        match reply.header("retry-after") {
            Some("1") => violations += 1,
            Some(_) => break reply,
            None => assert_eq!(reply.status, StatusCode::OK),
        }
        assert!(violations < 50, "no block after 50 violations");
    };
    // The 50th rejection starts the block and is already answered with it.
    assert_eq!(
        violations + 1,
        50,
        "the block starts with the 50th violation"
    );
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(blocked.header("retry-after"), Some("3600"));
    assert_eq!(
        blocked.body,
        r#"{"success":false,"message":"Rate limit exceeded. Try again in 3600 seconds."}"#
    );
    // The block holds even once the bucket has refilled, and counts down.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let still = conn.send("POST", "/v1/sms", &key).await.unwrap();
    assert_eq!(still.status, StatusCode::TOO_MANY_REQUESTS);
    let left = header_u64(&still, "retry-after");
    assert!((3598..=3599).contains(&left), "{left}");
    // Another key is not affected.
    let other = conn
        .send(
            "POST",
            "/v1/sms",
            &[("X-API-Key", "zk_notifications_example")],
        )
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::OK);
}

// --- C: passes API ----------------------------------------------------------------------

const PASSES_SECRET: &str = "passes-test-secret";

fn passes_token(sub: &str) -> String {
    let claims = serde_json::json!({ "sub": sub, "exp": unix_now().as_secs() + 600 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(PASSES_SECRET.as_bytes()),
    )
    .unwrap()
}

async fn passes() -> (Sluice, tempfile::TempDir) {
    let upstream = support::upstream().await;
    example_with(
        "c-passes.yaml",
        upstream,
        &[],
        &[("PASSES_JWT_SECRET", PASSES_SECRET)],
    )
    .await
}

const THROTTLED: &str = r#"{"statusCode":429,"message":"ThrottlerException: Too Many Requests","error":"Too Many Requests"}"#;

/// "100 requests per minute per API key", "resets every 60 seconds", the 429 body, and
/// `Retry-After` "only present on 429 responses"; a batch call counts as one request.
#[tokio::test]
async fn c_hundred_per_minute_and_batches_count_once() {
    let (sluice, _dir) = passes().await;
    early_in_window(60).await;
    let mut conn = sluice.connect().await;
    let key = [("X-API-Key", "pk_live_1")];
    let first = conn.send("POST", "/passes/batch", &key).await.unwrap();
    assert_eq!(header_u64(&first, "x-ratelimit-remaining"), 99);
    let second = conn
        .send("POST", "/passes/notify/batch", &key)
        .await
        .unwrap();
    assert_eq!(header_u64(&second, "x-ratelimit-remaining"), 98);
    let replies = burst(&mut conn, "GET", "/passes/42", &key, 100).await;
    assert_eq!(admitted(&replies), 98);
    for reply in &replies[..98] {
        assert_eq!(header_u64(reply, "x-ratelimit-limit"), 100);
        assert!(reply.header("retry-after").is_none());
    }
    let limited = &replies[98];
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.body, THROTTLED);
    let reset = header_u64(limited, "x-ratelimit-reset");
    assert_eq!(reset % 60, 0, "the window resets on the minute");
    let retry_after = header_u64(limited, "retry-after");
    assert!(reset.abs_diff(unix_now().as_secs() + retry_after) <= 1);
}

/// "JWT-authenticated requests have separate rate limiting": a token whose subject is the
/// same text as an exhausted API key still has its own 100.
#[tokio::test]
async fn c_jwt_callers_are_limited_separately() {
    let (sluice, _dir) = passes().await;
    early_in_window(60).await;
    let mut conn = sluice.connect().await;
    let replies = burst(
        &mut conn,
        "GET",
        "/passes",
        &[("X-API-Key", "pk_live_2")],
        101,
    )
    .await;
    assert_eq!(admitted(&replies), 100);
    let bearer = format!("Bearer {}", passes_token("pk_live_2"));
    let jwt = [("authorization", bearer.as_str())];
    let replies = burst(&mut conn, "GET", "/passes", &jwt, 101).await;
    assert_eq!(admitted(&replies), 100);
    assert_eq!(header_u64(&replies[0], "x-ratelimit-remaining"), 99);
    assert_eq!(replies[100].body, THROTTLED);
    // A token that fails verification is refused, not counted as anyone.
    let forged = format!("Bearer {}x", passes_token("pk_live_3"));
    let reply = conn
        .send("GET", "/passes", &[("authorization", forged.as_str())])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

// --- D: intake-bot API ------------------------------------------------------------------

async fn intake(redis: &support::Redis) -> (Sluice, tempfile::TempDir) {
    let upstream = support::upstream().await;
    let url = redis.url();
    example_with(
        "d-intake.yaml",
        upstream,
        &[("redis://127.0.0.1:6379", url.as_str())],
        &[],
    )
    .await
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Free has no API access, Pro 100/min, Business 500/min; reset in unix milliseconds; the
/// headers on every response, errors included; the 429 body with `details.retry_after`.
#[tokio::test]
async fn d_plans_headers_and_body() {
    let redis = support::Redis::start();
    let (sluice, _dir) = intake(&redis).await;
    let mut conn = sluice.connect().await;
    let now_ms = unix_now().as_millis() as u64;

    let free = bearer("iz_free_example");
    let denied = conn
        .send("GET", "/submissions", &[("authorization", &free)])
        .await
        .unwrap();
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let nobody = conn
        .send("GET", "/submissions", &[("authorization", "Bearer nope")])
        .await
        .unwrap();
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED);
    for reply in [&denied, &nobody] {
        reply.assert_limit_headers();
    }

    for (key, limit) in [("iz_pro_example", 100), ("iz_business_example", 500)] {
        let auth = bearer(key);
        let replies = burst(
            &mut conn,
            "GET",
            "/submissions",
            &[("authorization", &auth)],
            limit + 2,
        )
        .await;
        assert_eq!(admitted(&replies), limit, "{key}");
        let reset_ms = header_u64(&replies[0], "x-ratelimit-reset");
        assert!(
            reset_ms > now_ms && reset_ms < now_ms + 120_000,
            "{reset_ms} is milliseconds"
        );
        let limited = &replies[limit];
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        let retry_after = header_u64(limited, "retry-after");
        assert!(retry_after >= 1);
        assert_eq!(
            limited.body,
            format!(
                r#"{{"success":false,"error":{{"code":"rate_limit_exceeded","message":"Rate limit exceeded","details":{{"retry_after":{retry_after}}}}}}}"#
            )
        );
    }
}

/// "there's no fixed reset point, and your available quota replenishes gradually": a key
/// that used its 100 in one minute has about a tenth back six seconds into the next, where
/// a fixed window would hand back all 100 at once.
#[tokio::test]
async fn d_quota_replenishes_gradually() {
    let redis = support::Redis::start();
    let (sluice, _dir) = intake(&redis).await;
    early_in_window(60).await;
    let mut conn = sluice.connect().await;
    let auth = bearer("iz_pro_example");
    let key = [("authorization", auth.as_str())];
    assert_eq!(
        admitted(&burst(&mut conn, "GET", "/bots", &key, 101).await),
        100
    );
    let into = unix_now().as_secs_f64() % 60.0;
    tokio::time::sleep(Duration::from_secs_f64(60.0 - into + 6.0)).await;
    // A new connection: the idle one may have been closed while waiting.
    let mut conn = sluice.connect().await;
    let back = admitted(&burst(&mut conn, "GET", "/bots", &key, 100).await);
    // 100 × (1 − 6/60) of the last minute still weighs; a little more if the test was slow.
    assert!(
        (10..=20).contains(&back),
        "{back} back six seconds into the minute"
    );
}

/// "If the rate limit check itself takes longer than 3 seconds (e.g., due to Redis latency),
/// the API allows the request through rather than blocking it."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_fails_open_when_the_check_is_slow() {
    let redis = support::Redis::start();
    let (sluice, _dir) = intake(&redis).await;
    let mut conn = sluice.connect().await;
    let auth = bearer("iz_pro_example");
    let key = [("authorization", auth.as_str())];
    assert_eq!(
        conn.send("GET", "/bots", &key).await.unwrap().status,
        StatusCode::OK
    );
    redis.pause();
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let listen = sluice.listen;
        let auth = auth.clone();
        waiting.push(tokio::spawn(async move {
            let mut conn = Conn::open(listen).await;
            conn.send("GET", "/bots", &[("authorization", &auth)])
                .await
                .unwrap()
                .status
        }));
    }
    for task in waiting {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    redis.resume();
    assert!(sluice.metric("sluice_store_fail_open_total").await >= Some(3.0));
}

// --- E: agents API ----------------------------------------------------------------------

fn agents_auth() -> String {
    bearer("ag_live_example")
}

/// "message send endpoints have tighter limits than read or list endpoints. Agent management
/// and billing queries each have their own bands": each band counts on its own.
#[tokio::test]
async fn e_endpoint_bands() {
    let (sluice, _dir) = example("e-agents.yaml").await;
    early_in_window(60).await;
    let mut conn = sluice.connect().await;
    let auth = agents_auth();
    let key = [("authorization", auth.as_str())];
    let sends = burst(&mut conn, "POST", "/v1/messages", &key, 31).await;
    assert_eq!(admitted(&sends), 30);
    for (method, path, limit) in [
        ("GET", "/v1/agents/7", 120),
        ("GET", "/v1/billing/invoices", 60),
        ("POST", "/v1/billing/top-ups", 20),
        ("GET", "/v1/webhooks", 300),
    ] {
        let reply = conn.send(method, path, &key).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{method} {path}");
        assert_eq!(
            header_u64(&reply, "x-ratelimit-limit"),
            limit,
            "{method} {path}"
        );
        assert_eq!(header_u64(&reply, "x-ratelimit-remaining"), limit - 1);
    }
}

/// "as your channel tier increases, rate limits on that channel's send endpoint increase
/// automatically. No new API key is required": the key moves to a higher tier in the live
/// config and the same key, with the sends it already made, gets the higher limit.
#[tokio::test]
async fn e_a_tier_upgrade_raises_the_send_limit_for_the_same_key() {
    let (sluice, dir) = example("e-agents.yaml").await;
    early_in_window(60).await;
    let mut conn = sluice.connect().await;
    let auth = agents_auth();
    let key = [("authorization", auth.as_str())];
    assert_eq!(
        admitted(&burst(&mut conn, "POST", "/v1/messages", &key, 31).await),
        30
    );

    let path = dir.path().join("e-agents.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    support::replace(&path, &text.replace("plan: starter", "plan: growth"));
    support::eventually("the upgrade to take effect", async || {
        sluice
            .metric("sluice_config_reloads_total{result=\"ok\"}")
            .await
            >= Some(1.0)
    })
    .await;
    let replies = burst(&mut conn, "POST", "/v1/messages", &key, 91).await;
    assert_eq!(admitted(&replies), 90, "120 in the window, 30 already used");
    assert_eq!(header_u64(&replies[0], "x-ratelimit-limit"), 120);
}

/// "send an idempotency key so retries after timeouts do not create duplicate sends".
#[tokio::test]
async fn e_a_retried_send_is_sent_once() {
    let (upstream, seen) = support::counting_upstream().await;
    let (sluice, _dir) = example_with("e-agents.yaml", upstream, &[], &[]).await;
    let mut conn = sluice.connect().await;
    let auth = agents_auth();
    let idem = "550e8400-e29b-41d4-a716-446655440000";
    let headers = [("authorization", auth.as_str()), ("idempotency-key", idem)];
    let first = conn.send("POST", "/v1/messages", &headers).await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    for _ in 0..9 {
        let retry = conn.send("POST", "/v1/messages", &headers).await.unwrap();
        assert_eq!(retry.status, StatusCode::OK);
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        assert_eq!(retry.body, first.body);
    }
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Replays took no quota: the next new send still sees 29 left.
    let next = conn
        .send("POST", "/v1/messages", &[("authorization", auth.as_str())])
        .await
        .unwrap();
    assert_eq!(header_u64(&next, "x-ratelimit-remaining"), 28);
}

/// "Responses include an X-Request-Id header", and "All errors share a consistent shape":
/// every error sluice answers is the same envelope, carrying the response's request id.
#[tokio::test]
async fn e_one_envelope_and_a_request_id_on_every_response() {
    let (sluice, _dir) = example("e-agents.yaml").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (broken, _dir2) = example_with("e-agents.yaml", dead, &[], &[]).await;
    early_in_window(60).await;
    let auth = agents_auth();
    let key = ("authorization", auth.as_str());
    let mut conn = sluice.connect().await;

    let ok = conn.send("GET", "/v1/agents", &[key]).await.unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.header("x-request-id").is_some());
    let kept = conn
        .send("GET", "/v1/agents", &[key, ("x-request-id", "support-123")])
        .await
        .unwrap();
    assert_eq!(kept.header("x-request-id"), Some("support-123"));

    let mut errors = Vec::new();
    errors.push(
        conn.send("GET", "/v1/agents", &[("authorization", "Bearer nope")])
            .await
            .unwrap(),
    );
    let idem = [key, ("idempotency-key", "k-1")];
    conn.send("POST", "/v1/messages", &idem).await.unwrap();
    errors.push(
        conn.send("POST", "/v1/messages?channel=2", &idem)
            .await
            .unwrap(),
    );
    let sends = burst(&mut conn, "POST", "/v1/messages", &[key], 30).await;
    errors.push(sends.into_iter().last().unwrap());
    errors.push(
        broken
            .connect()
            .await
            .send("GET", "/v1/agents", &[key])
            .await
            .unwrap(),
    );

    let mut types = Vec::new();
    for reply in &errors {
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        let error = &body["error"];
        assert_eq!(
            error["request_id"].as_str(),
            reply.header("x-request-id"),
            "{}",
            reply.body
        );
        assert!(error["message"].is_string());
        types.push((
            reply.status.as_u16(),
            error["type"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(
        types,
        [
            (401, "unauthorized".to_string()),
            (422, "idempotency_mismatch".to_string()),
            (429, "rate_limit_exceeded".to_string()),
            (502, "upstream_unavailable".to_string()),
        ]
    );
}
