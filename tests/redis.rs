//! Several real sluice processes sharing one real `redis-server`: exact cluster-wide
//! limits, and the drills of Redis dying and coming back under each `on_error`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::StatusCode;
use support::{
    eventually, redis_config as config_with, start_replicas as start, Redis, RedisCluster, Sluice,
};

/// A config with a 50 ms store timeout. Tests that count exactly use `config_with` and a
/// generous timeout instead: on a loaded CI machine a call can take more than 50 ms, and
/// under `deny` that would be a 503, not a miscount.
fn config(upstream: SocketAddr, redis: &Redis, on_error: &str, routes: &str) -> String {
    config_with(
        upstream,
        redis,
        &format!("timeout: 50ms, on_error: {on_error}"),
        routes,
    )
}

/// `total` requests for `path` with `key`, over 64 connections spread across `replicas`;
/// the count of each status.
async fn storm(replicas: &[Sluice], path: &str, key: &str, total: usize) -> Vec<StatusCode> {
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let addr = replicas[i % replicas.len()].listen;
        let (sent, path, key) = (sent.clone(), path.to_string(), key.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = support::Conn::open(addr).await;
            let mut statuses = Vec::new();
            while sent.fetch_add(1, Ordering::Relaxed) < total {
                let reply = conn.get(&path, &key).await.expect("sluice answers");
                statuses.push(reply.status);
            }
            statuses
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// Requests one at a time to each replica in turn; the statuses.
async fn one_by_one(replicas: &[Sluice], path: &str, key: &str, n: usize) -> Vec<StatusCode> {
    let mut conns = Vec::new();
    for r in replicas {
        conns.push(r.connect().await);
    }
    let mut statuses = Vec::new();
    let replicas = conns.len();
    for i in 0..n {
        let reply = conns[i % replicas].get(path, key).await.unwrap();
        statuses.push(reply.status);
    }
    statuses
}

/// How often Redis ran `command`, from `INFO commandstats`.
fn redis_calls(redis: &Redis, command: &str) -> u64 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    conn.write_all(b"INFO commandstats\r\nQUIT\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_exactly_the_limit_for_every_algorithm() {
    let upstream = support::upstream().await;
    let redis = Redis::start();
    // Long periods: no window turns and no token refills while the test runs.
    let routes = "  - { name: fixed,   match: { path: /fixed },   limit: { rate: 50/d, algorithm: fixed_window } }
  - { name: sliding, match: { path: /sliding }, limit: { rate: 50/h, algorithm: sliding_window } }
  - { name: bucket,  match: { path: /bucket },  limit: { rate: 50/h, algorithm: token_bucket } }
";
    let store = "timeout: 2s, on_error: deny";
    let (_dir, replicas) = start(3, &config_with(upstream, &redis, store, routes));
    for path in ["/fixed", "/sliding", "/bucket"] {
        let statuses = storm(&replicas, path, "shared-key", 300).await;
        assert_eq!(statuses.len(), 300);
        assert_eq!(count(&statuses, StatusCode::OK), 50, "{path}");
        assert_eq!(
            count(&statuses, StatusCode::TOO_MANY_REQUESTS),
            250,
            "{path}"
        );
    }
    // Callers already over their limit were answered from memory, without Redis.
    let mut remembered = 0.0;
    for r in &replicas {
        remembered += r
            .metric("sluice_store_cached_rejections_total")
            .await
            .unwrap();
    }
    assert!(remembered > 0.0, "no rejection was answered from memory");
    // One script call per request at most: Redis counted no more EVALSHA calls than
    // requests (plus the replicas' heartbeats, one a second each).
    let evalsha = redis_calls(&redis, "evalsha");
    assert!(
        (150..=900 + 30).contains(&evalsha),
        "{evalsha} EVALSHA calls for 900 requests"
    );
    // Another caller has its own quota.
    let other = storm(&replicas, "/fixed", "other-key", 60).await;
    assert_eq!(count(&other, StatusCode::OK), 50);
    for r in &replicas {
        let (status, body) = r.admin("GET", "/readyz", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("store=redis (redis connected"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_fails_open_while_redis_is_down_and_enforces_again_after() {
    let upstream = support::upstream().await;
    let mut redis = Redis::start();
    let routes = "  - { name: api, match: { path: /api }, limit: 20/h }\n";
    let (_dir, replicas) = start(1, &config(upstream, &redis, "allow", routes));
    let sluice = &replicas[0];
    let before = one_by_one(&replicas, "/api", "k1", 25).await;
    assert_eq!(count(&before, StatusCode::OK), 20);

    redis.kill();
    let during = storm(&replicas, "/api", "k2", 200).await;
    assert_eq!(
        count(&during, StatusCode::OK),
        200,
        "fail open: every request passes"
    );
    eventually("the breaker to open", async || {
        sluice.metric("sluice_store_breaker_open").await == Some(1.0)
    })
    .await;
    assert!(sluice.metric("sluice_store_fail_open_total").await >= Some(200.0));
    assert!(
        sluice
            .metric("sluice_store_errors_total{kind=\"unavailable\"}")
            .await
            .unwrap_or(0.0)
            + sluice
                .metric("sluice_store_errors_total{kind=\"timeout\"}")
                .await
                .unwrap_or(0.0)
            >= 3.0
    );
    let (_, ready) = sluice.admin("GET", "/readyz", None).await;
    assert!(ready.contains("breaker open"), "{ready}");
    assert!(sluice.log_text().contains("circuit breaker open"));

    redis.restart();
    eventually("the breaker to close", async || {
        sluice.metric("sluice_store_breaker_open").await == Some(0.0)
    })
    .await;
    let after = one_by_one(&replicas, "/api", "k3", 25).await;
    assert_eq!(count(&after, StatusCode::OK), 20, "enforced again");
    assert!(sluice.log_text().contains("circuit breaker closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_answers_503_and_never_admits_beyond_the_limit() {
    let upstream = support::upstream().await;
    let mut redis = Redis::start();
    let routes = "  - { name: api, match: { path: /api }, limit: 5/h }\n";
    let (_dir, replicas) = start(1, &config(upstream, &redis, "deny", routes));
    let sluice = &replicas[0];
    assert_eq!(
        count(&one_by_one(&replicas, "/api", "k", 3).await, StatusCode::OK),
        3
    );

    redis.kill();
    let mut conn = sluice.connect().await;
    for _ in 0..20 {
        let reply = conn.get("/api", "k").await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            reply.body.contains("\"title\":\"Service Unavailable\""),
            "{}",
            reply.body
        );
        assert!(reply.header("x-request-id").is_some());
    }
    assert!(sluice.metric("sluice_store_fail_closed_total").await >= Some(20.0));
    assert!(
        sluice
            .metric(
                "sluice_requests_total{route=\"api\",plan=\"default\",decision=\"unavailable\"}"
            )
            .await
            >= Some(20.0)
    );

    redis.restart();
    eventually("the breaker to close", async || {
        sluice.metric("sluice_store_breaker_open").await == Some(0.0)
    })
    .await;
    // The restarted Redis is empty: the key gets a whole quota, and not one request more.
    let after = one_by_one(&replicas, "/api", "k", 10).await;
    assert_eq!(count(&after, StatusCode::OK), 5);
    assert_eq!(count(&after, StatusCode::TOO_MANY_REQUESTS), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_keeps_each_replica_to_its_share() {
    let upstream = support::upstream().await;
    let mut redis = Redis::start();
    let routes = "  - { name: api, match: { path: /api }, limit: 30/h }\n";
    // A generous timeout: a call that is merely slow on a loaded machine would be decided
    // locally and spend from that replica's share before Redis is gone.
    let store = "timeout: 2s, on_error: local";
    let (_dir, replicas) = start(3, &config_with(upstream, &redis, store, routes));
    for r in &replicas {
        eventually("every replica to see three", async || {
            r.metric("sluice_store_replicas").await == Some(3.0)
        })
        .await;
    }
    let before = storm(&replicas, "/api", "k", 15).await;
    assert_eq!(count(&before, StatusCode::OK), 15);
    let mut decided_locally = 0;
    for r in &replicas {
        decided_locally += r
            .metric("sluice_store_local_decisions_total")
            .await
            .unwrap_or(0.0) as usize;
    }

    redis.kill();
    let during = storm(&replicas, "/api", "k", 300).await;
    let admitted = count(&during, StatusCode::OK);
    // Each replica enforces 30 / 3 = 10 on its own: at most the limit plus one share each.
    // Whatever a replica had already decided locally came out of its share.
    assert_eq!(admitted + decided_locally, 30, "three local shares of 10");
    assert!(15 + admitted <= 30 + 3 * 10);
    for r in &replicas {
        assert!(r.metric("sluice_store_local_decisions_total").await >= Some(10.0));
    }
}

/// Two outages in one window: the local counts a replica kept while Redis was down are
/// still there in the next outage (docs/redis.md says why: a Redis that flaps must not
/// hand out a fresh share each time). With one replica the share is the whole limit: 10
/// admitted in the first outage, Redis counts again while it is back, none in the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_counts_carry_from_one_outage_into_the_next() {
    let upstream = support::upstream().await;
    let mut redis = Redis::start();
    let routes = "  - { name: api, match: { path: /api }, limit: 10/h }\n";
    // A generous timeout: no call may be decided locally merely for being slow.
    let store = "timeout: 2s, on_error: local";
    let (_dir, replicas) = start(1, &config_with(upstream, &redis, store, routes));
    let sluice = &replicas[0];
    let local = async || {
        sluice
            .metric("sluice_store_local_decisions_total")
            .await
            .unwrap_or(0.0)
    };
    assert_eq!(local().await, 0.0);

    redis.kill();
    let first = one_by_one(&replicas, "/api", "k", 15).await;
    assert_eq!(count(&first, StatusCode::OK), 10, "the share, in memory");
    assert_eq!(local().await, 15.0);

    redis.restart();
    eventually("the breaker to close", async || {
        sluice.metric("sluice_store_breaker_open").await == Some(0.0)
    })
    .await;
    // Redis rules again (restarted empty, it counts from zero), without local decisions.
    let between = one_by_one(&replicas, "/api", "k", 3).await;
    assert_eq!(count(&between, StatusCode::OK), 3);
    assert_eq!(local().await, 15.0);

    redis.kill();
    let second = one_by_one(&replicas, "/api", "k", 5).await;
    assert_eq!(
        count(&second, StatusCode::TOO_MANY_REQUESTS),
        5,
        "the share of this window was spent in the first outage"
    );
    assert_eq!(local().await, 20.0);
    // Another caller's share is whole.
    let other = one_by_one(&replicas, "/api", "other", 12).await;
    assert_eq!(count(&other, StatusCode::OK), 10);
}

/// Waits until every replica counts `n` live replicas (the lease cap depends on it).
async fn see_each_other(replicas: &[Sluice]) {
    let n = replicas.len() as f64;
    for r in replicas {
        eventually("every replica to see the others", async || {
            r.metric("sluice_store_replicas").await == Some(n)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_never_admits_more_than_redis_counted() {
    let upstream = support::upstream().await;
    let redis = Redis::start();
    // Long periods: nothing turns or refills while the test runs, so leases (every unit
    // taken from Redis before it is spent) may not admit one request beyond the limit.
    let routes = "  - { name: fixed,   match: { path: /fixed },   limit: { rate: 50/d, algorithm: fixed_window } }
  - { name: sliding, match: { path: /sliding }, limit: { rate: 50/h, algorithm: sliding_window } }
  - { name: bucket,  match: { path: /bucket },  limit: { rate: 50/h, algorithm: token_bucket } }
";
    let store = "timeout: 2s, on_error: deny, mode: sync, sync_interval: 5ms";
    let (_dir, replicas) = start(3, &config_with(upstream, &redis, store, routes));
    see_each_other(&replicas).await;
    for path in ["/fixed", "/sliding", "/bucket"] {
        let statuses = storm(&replicas, path, "shared-key", 300).await;
        let admitted = count(&statuses, StatusCode::OK);
        // Units still leased by one replica when another is refused are the only loss:
        // at most a lease cap (50 / 4 / 3 = 4) per replica.
        assert!((50 - 3 * 4..=50).contains(&admitted), "{path}: {admitted}");
        assert_eq!(
            count(&statuses, StatusCode::TOO_MANY_REQUESTS),
            300 - admitted,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_stays_within_its_bound_across_window_turns() {
    let upstream = support::upstream().await;
    let redis = Redis::start();
    let routes = "  - { name: fixed,  match: { path: /fixed },  limit: { rate: 20/s, algorithm: fixed_window } }
  - { name: bucket, match: { path: /bucket }, limit: { rate: 20/s, algorithm: token_bucket } }
";
    let store = "timeout: 2s, on_error: deny, mode: sync, sync_interval: 5ms";
    let (_dir, replicas) = start(3, &config_with(upstream, &redis, store, routes));
    see_each_other(&replicas).await;
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    for path in ["/fixed", "/bucket"] {
        let start = unix();
        let statuses = storm(&replicas, path, "k", 3000).await;
        let end = unix();
        let admitted = count(&statuses, StatusCode::OK) as f64;
        let bound = if path == "/fixed" {
            // Leases end at their window's reset: at most 20 in each window the run touched.
            20.0 * (end.floor() - start.floor() + 1.0)
        } else {
            // burst + rate × elapsed, plus the units leased ahead: one cap (20 / 4 / 3,
            // at least 1) per replica.
            20.0 + 20.0 * (end - start) + 3.0
        };
        assert!(
            admitted <= bound,
            "{path}: {admitted} admitted, bound {bound}"
        );
        assert!(admitted >= 20.0, "{path}: {admitted} admitted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_calls_redis_for_a_small_fraction_of_requests() {
    let upstream = support::upstream().await;
    let redis = Redis::start();
    let routes = "  - { name: api, match: { path: /api }, limit: 1000000/h }\n";
    let store = "timeout: 2s, on_error: deny, mode: sync, sync_interval: 100ms";
    let (_dir, replicas) = start(3, &config_with(upstream, &redis, store, routes));
    see_each_other(&replicas).await;
    // Warm up: each replica's first requests go to Redis until its first renewal.
    for r in &replicas {
        eventually("a lease", async || {
            storm(std::slice::from_ref(r), "/api", "k", 64).await;
            r.metric("sluice_store_leased_decisions_total").await > Some(0.0)
        })
        .await;
    }
    let leased_before = {
        let mut n = 0.0;
        for r in &replicas {
            n += r
                .metric("sluice_store_leased_decisions_total")
                .await
                .unwrap();
        }
        n
    };
    let before = redis_calls(&redis, "evalsha");
    let statuses = storm(&replicas, "/api", "k", 3000).await;
    assert_eq!(count(&statuses, StatusCode::OK), 3000);
    // Redis's own count: lease renewals (one call per replica every 100 ms at most, and
    // heartbeats), and requests that outgrew their lease; not one call per request as in
    // strict mode.
    let calls = redis_calls(&redis, "evalsha") - before;
    assert!(calls <= 3000 / 4, "{calls} EVALSHA calls for 3000 requests");
    let mut leased = -leased_before;
    for r in &replicas {
        leased += r
            .metric("sluice_store_leased_decisions_total")
            .await
            .unwrap();
        let (_, ready) = r.admin("GET", "/readyz", None).await;
        assert!(ready.contains("mode=sync"), "{ready}");
    }
    assert!(
        leased >= 3000.0 - calls as f64,
        "{leased} decided from leases"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_blocked_through_one_replica_is_blocked_on_every_replica() {
    let upstream = support::upstream().await;
    let mut redis = Redis::start();
    let routes =
        "  - { name: api, match: { path: /** }, limit: { rate: 1/min, algorithm: fixed_window } }
penalty: { violations: 3, within: 1m, block_for: 1h }
";
    let store = "timeout: 2s, on_error: local";
    let (_dir, replicas) = start(2, &config_with(upstream, &redis, store, routes));
    let (a, b) = (&replicas[0], &replicas[1]);
    let mut on_a = a.connect().await;
    assert_eq!(
        on_a.get("/x", "abuser").await.unwrap().status,
        StatusCode::OK
    );
    // Two rejections are only rejections; the third violation starts the block.
    for _ in 0..2 {
        let limited = on_a.get("/x", "abuser").await.unwrap();
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        let wait = limited
            .header("retry-after")
            .and_then(|s| s.parse::<u64>().ok());
        assert!(wait.is_some_and(|s| s <= 60), "{wait:?}");
    }
    let blocked = on_a.get("/x", "abuser").await.unwrap();
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(blocked.header("retry-after"), Some("3600"));

    // Replica B never saw a violation of its own yet answers with the block once its
    // mirror of the blocks in Redis has caught up.
    let mut on_b = b.connect().await;
    eventually("replica B enforces A's block", async || {
        let reply = on_b.get("/x", "abuser").await.unwrap();
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        reply
            .header("retry-after")
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s > 3500)
    })
    .await;
    assert_eq!(b.metric("sluice_penalties_total").await, Some(0.0));
    assert_eq!(
        b.metric(r#"sluice_requests_total{route="api",plan="default",decision="penalised"}"#)
            .await
            .map(|n| n >= 1.0),
        Some(true)
    );
    // Other callers are untouched on both replicas.
    assert_eq!(
        on_b.get("/x", "someone-else").await.unwrap().status,
        StatusCode::OK
    );

    // Redis gone: violations are counted in the replica's own memory box instead.
    redis.kill();
    let mut fresh = a.connect().await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let reply = fresh.get("/x", "second-abuser").await.unwrap();
        statuses.push((
            reply.status,
            reply.header("retry-after").map(str::to_string),
        ));
    }
    assert_eq!(statuses[0].0, StatusCode::OK, "{statuses:?}");
    assert!(
        statuses[4..]
            .iter()
            .all(|(s, after)| *s == StatusCode::TOO_MANY_REQUESTS
                && after.as_deref() == Some("3600")),
        "{statuses:?}"
    );
    assert!(a.metric("sluice_penalty_local_total").await.unwrap() >= 1.0);
    assert!(a
        .log_text()
        .contains("counting violations in this replica's memory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_counts_exactly_through_a_node_that_does_not_own_the_slot() {
    let upstream = support::upstream().await;
    let cluster = RedisCluster::start();
    // Seed sluice with a node that does not hold the prefix's slot: every script call has to
    // follow the cluster's slot map to another node.
    let seed = *cluster
        .ports
        .iter()
        .find(|&&port| {
            cluster
                .cli(port, &["get", "{sluice}:probe"])
                .contains("MOVED")
        })
        .expect("two of three primaries do not own the slot");
    let owner = cluster
        .ports
        .iter()
        .find(|&&port| {
            !cluster
                .cli(port, &["get", "{sluice}:probe"])
                .contains("MOVED")
        })
        .copied()
        .unwrap();
    let routes = "  - { name: fixed,   match: { path: /fixed },   limit: { rate: 20/d, algorithm: fixed_window } }
  - { name: bucket,  match: { path: /bucket },  limit: { rate: 20/h, algorithm: token_bucket } }
";
    let text = format!(
        "\
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {{ url: \"http://{upstream}\" }}
unknown_key: {{ plan: default }}
store: {{ backend: redis, cluster: true, url: \"redis://127.0.0.1:SEED\", timeout: 2s, on_error: deny }}
routes:
{routes}"
    );
    // Two replicas seeded with different nodes still count every caller under one key.
    let (_dir, mut replicas) = start(1, &text.replace("SEED", &seed.to_string()));
    let (_other_dir, other) = start(1, &text.replace("SEED", &owner.to_string()));
    replicas.extend(other);
    for path in ["/fixed", "/bucket"] {
        let statuses = one_by_one(&replicas, path, "cluster-key", 30).await;
        assert_eq!(count(&statuses, StatusCode::OK), 20, "{path}: {statuses:?}");
        assert_eq!(
            count(&statuses, StatusCode::TOO_MANY_REQUESTS),
            10,
            "{path}: {statuses:?}"
        );
    }
    // The counters live on the slot's owner, not on the seed.
    let keys = cluster.cli(owner, &["keys", "{sluice}:*"]);
    assert!(keys.lines().count() >= 2, "{keys}");
    assert_eq!(cluster.cli(seed, &["dbsize"]).trim(), "0");
    assert_eq!(
        replicas[0]
            .metric(r#"sluice_store_errors_total{kind="unavailable"}"#)
            .await,
        Some(0.0)
    );
}
