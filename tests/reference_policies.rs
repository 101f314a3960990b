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
    example_with(name, upstream, &[]).await
}

async fn example_with(
    name: &str,
    upstream: SocketAddr,
    env: &[(&str, &str)],
) -> (Sluice, tempfile::TempDir) {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples");
    let text = std::fs::read_to_string(format!("{examples}/{name}")).unwrap();
    let text = text
        .replace("listen: 0.0.0.0:8080", "listen: 127.0.0.1:0")
        .replace("listen: 127.0.0.1:9090", "listen: 127.0.0.1:0")
        .replace("http://127.0.0.1:3000", &format!("http://{upstream}"));
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
