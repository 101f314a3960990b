//! Abuse protection end to end: the penalty box, concurrency limits, shadow limits and
//! smoothing (delay), each over real HTTP between a real client and a real upstream.

mod support;

use std::path::PathBuf;

use http::StatusCode;
use support::Sluice;

/// Starts sluice on `body` (everything after `upstream`), in a fresh directory.
async fn start(upstream: std::net::SocketAddr, body: &str) -> (Sluice, tempfile::TempDir) {
    let dir = support::dir();
    let config: PathBuf = dir.path().join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nupstream: {{ url: \"http://{upstream}\" }}\n{body}"
        ),
    )
    .unwrap();
    (Sluice::start(&config, &[]), dir)
}

fn retry_after(reply: &support::Reply) -> u64 {
    reply.header("retry-after").unwrap().parse().unwrap()
}

const PENALTY: &str = r#"
unknown_key: { plan: default, per: key }
plans:
  quick: { penalty: { violations: 2, within: 1m, block_for: 1s } }
keys: [ { key: quick-key, plan: quick } ]
routes:
  - name: api
    match: { path: /** }
    limit: [ { rate: 1/min, algorithm: fixed_window }, { name: total, rate: 1000/min, per: global } ]
penalty: { violations: 3, within: 1m, block_for: 1h }
responses:
  limited: { status: 429, body: '{"success":false,"message":"Rate limit exceeded. Try again in ${retry_after} second."}' }
  penalised: { status: 429, body: '{"success":false,"message":"Blocked for ${retry_after} seconds."}' }
"#;

#[tokio::test]
async fn repeated_violations_block_with_a_long_retry_after_and_consume_nothing() {
    let upstream = support::upstream().await;
    let (sluice, _dir) = start(upstream, PENALTY).await;
    let mut conn = sluice.connect().await;
    assert_eq!(
        conn.get("/v1/x", "abuser").await.unwrap().status,
        StatusCode::OK
    );
    // Two ordinary rejections...
    for _ in 0..2 {
        let reply = conn.get("/v1/x", "abuser").await.unwrap();
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(reply.body.contains("Try again in"), "{}", reply.body);
        assert!(retry_after(&reply) <= 60);
    }
    // ...the third earns the block: Retry-After is the whole block.
    let blocked = conn.get("/v1/x", "abuser").await.unwrap();
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&blocked), 3600);
    assert_eq!(
        blocked.body,
        r#"{"success":false,"message":"Blocked for 3600 seconds."}"#
    );
    // Every request during the block gets the remaining block time.
    for _ in 0..20 {
        let reply = conn.get("/v1/x", "abuser").await.unwrap();
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        let left = retry_after(&reply);
        assert!((3598..=3600).contains(&left), "{left}");
        assert!(reply
            .body
            .starts_with(r#"{"success":false,"message":"Blocked for "#));
    }
    // Other callers are untouched, and the blocked requests took nothing from the global limit:
    // only the two allowed requests were counted.
    assert_eq!(
        conn.get("/v1/x", "bystander").await.unwrap().status,
        StatusCode::OK
    );
    let usage = sluice.admin_json("/admin/usage?key=bystander").await;
    let total = usage["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "total")
        .unwrap()
        .clone();
    assert_eq!(total["used"], 2, "{usage}");

    assert_eq!(sluice.metric("sluice_penalties_total").await, Some(1.0));
    assert_eq!(
        sluice.metric("sluice_penalty_blocked_identities").await,
        Some(1.0)
    );
    assert_eq!(
        sluice
            .metric(r#"sluice_requests_total{route="api",plan="default",decision="penalised"}"#)
            .await,
        Some(21.0)
    );
}

#[tokio::test]
async fn a_plan_penalty_replaces_the_global_one_and_the_block_lifts() {
    let upstream = support::upstream().await;
    let (sluice, _dir) = start(upstream, PENALTY).await;
    let mut conn = sluice.connect().await;
    assert_eq!(
        conn.get("/v1/x", "quick-key").await.unwrap().status,
        StatusCode::OK
    );
    // The plan's rule: the second rejection blocks, for one second.
    let limited = conn.get("/v1/x", "quick-key").await.unwrap();
    assert!(limited.body.contains("Try again in"), "{}", limited.body);
    let blocked = conn.get("/v1/x", "quick-key").await.unwrap();
    assert_eq!(retry_after(&blocked), 1);
    assert!(
        blocked.body.contains("Blocked for 1 seconds"),
        "{}",
        blocked.body
    );
    // Once the second has passed the caller is back to its ordinary limit.
    support::eventually("the block to lift", async || {
        let reply = conn.get("/v1/x", "quick-key").await.unwrap();
        reply.body.contains("Try again in")
    })
    .await;
}
