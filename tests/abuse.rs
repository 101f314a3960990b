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

/// Sends `n` requests for `key` on one connection and returns how many got each status.
async fn statuses(sluice: &Sluice, key: &str, n: usize) -> (usize, usize) {
    let mut conn = sluice.connect().await;
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        let reply = conn.get("/v1/x", key).await.unwrap();
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn a_shadow_limit_rejects_nothing_and_counts_exactly_the_would_be_rejections() {
    let upstream = support::upstream().await;
    let (sluice, _dir) = start(
        upstream,
        r#"
unknown_key: { plan: default, per: key }
routes:
  - { name: api, match: { path: /** }, limit: [ { rate: 3/d, algorithm: fixed_window, shadow: true }, { name: real, rate: 100/d } ] }
"#,
    )
    .await;
    assert_eq!(statuses(&sluice, "k", 10).await, (10, 0));
    let count = |decision: &'static str| {
        let sluice = &sluice;
        async move {
            sluice
                .metric(&format!(
                    r#"sluice_requests_total{{route="api",plan="default",decision="{decision}"}}"#
                ))
                .await
        }
    };
    assert_eq!(count("shadow_limited").await, Some(7.0));
    assert_eq!(count("allowed").await, Some(3.0));
    assert_eq!(count("limited").await, Some(0.0));
    assert!(sluice
        .log_text()
        .contains("shadow limit would have rejected this request"));
    // The headers describe the enforced limit only.
    let reply = sluice.connect().await.get("/v1/x", "k").await.unwrap();
    assert_eq!(reply.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("89"));
}

#[tokio::test]
async fn policy_wide_shadow_mode_forwards_everything() {
    let upstream = support::upstream().await;
    let (sluice, _dir) = start(
        upstream,
        r#"
shadow: true
unknown_key: { plan: default, per: key }
penalty: { violations: 1, within: 1m, block_for: 1h }
routes:
  - { name: api, match: { path: /** }, limit: [ { rate: 2/d, algorithm: fixed_window }, { concurrency: 1 } ] }
"#,
    )
    .await;
    assert_eq!(statuses(&sluice, "k", 6).await, (6, 0));
    assert_eq!(
        sluice
            .metric(
                r#"sluice_requests_total{route="api",plan="default",decision="shadow_limited"}"#
            )
            .await,
        Some(4.0)
    );
    // Shadow rejections never feed the penalty box.
    assert_eq!(sluice.metric("sluice_penalties_total").await, Some(0.0));
}

const SMOOTHING: &str = r#"
unknown_key: { plan: default, per: key }
routes:
  - { name: smooth, match: { path: /smooth }, limit: { rate: 20/s, algorithm: token_bucket, burst: 10, delay: 2s } }
  - { name: queue, match: { path: /queue }, limit: { rate: 1/min, algorithm: token_bucket, burst: 1, delay: 1h, max_delayed: 5 } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delay_spreads_a_double_burst_instead_of_rejecting_it() {
    let upstream = support::upstream().await;
    let (sluice, _dir) = start(upstream, SMOOTHING).await;
    // Twice the bucket at once: the second half waits for its slots, none is rejected.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let listen = sluice.listen;
            tokio::spawn(async move {
                let mut conn = support::Conn::open(listen).await;
                conn.get("/smooth", "burster").await.unwrap().status
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        sluice
            .metric(r#"sluice_requests_total{route="smooth",plan="default",decision="allowed"}"#)
            .await,
        Some(20.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_most_max_delayed_requests_wait_and_the_next_is_rejected() {
    let upstream = support::upstream().await;
    let (sluice, _dir) = start(upstream, SMOOTHING).await;
    let mut conn = sluice.connect().await;
    assert_eq!(
        conn.get("/queue", "q").await.unwrap().status,
        StatusCode::OK
    );
    // One a minute: the next five wait (1 to 5 minutes), holding their slots.
    let waiting: Vec<_> = (0..5)
        .map(|_| {
            let listen = sluice.listen;
            tokio::spawn(async move {
                let mut conn = support::Conn::open(listen).await;
                conn.get("/queue", "q").await.map(|r| r.status)
            })
        })
        .collect();
    support::eventually("five requests to wait", async || {
        sluice.metric("sluice_delayed_requests").await == Some(5.0)
    })
    .await;
    // The queue is full: the next is rejected at once, told when a place frees up.
    let rejected = conn.get("/queue", "q").await.unwrap();
    assert_eq!(rejected.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&rejected), 60);
    // Clients that give up leave the queue.
    for task in waiting {
        task.abort();
    }
    support::eventually("the queue to empty", async || {
        sluice.metric("sluice_delayed_requests").await == Some(0.0)
    })
    .await;
}
