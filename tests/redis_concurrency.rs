//! `concurrency` limits shared through a real `redis-server` by several real sluice
//! processes: N in flight across all replicas, slots given back when requests end and when
//! a replica dies (after the lease time), leases restored after Redis restarts, and each
//! `on_error` while Redis is down.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use support::{eventually, redis_config as config, start_replicas as start, Redis, Sluice};
use tokio::sync::{mpsc, watch};

/// An upstream that holds every `/hold` request until the gate opens, and answers anything
/// else at once.
struct Gate {
    open: watch::Sender<bool>,
    active: AtomicUsize,
    peak: AtomicUsize,
}

impl Gate {
    fn set(&self, open: bool) {
        self.open.send_replace(open);
    }

    fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

/// Counts a held request as active until it ends, however it ends.
struct Active(Arc<Gate>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn gated_upstream() -> (SocketAddr, Arc<Gate>) {
    let gate = Arc::new(Gate {
        open: watch::channel(false).0,
        active: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    });
    let shared = gate.clone();
    let addr = support::serve(move |req: http::Request<hyper::body::Incoming>| {
        let gate = shared.clone();
        async move {
            if req.uri().path() == "/hold" {
                let now = gate.active.fetch_add(1, Ordering::SeqCst) + 1;
                gate.peak.fetch_max(now, Ordering::SeqCst);
                let _active = Active(gate.clone());
                let mut open = gate.open.subscribe();
                let _ = open.wait_for(|open| *open).await;
            }
            hyper::Response::new(Full::new(Bytes::from_static(b"done")))
        }
    })
    .await;
    (addr, gate)
}

/// What a request got: status, `Retry-After`, `X-RateLimit-Limit`.
type Answer = (StatusCode, Option<String>, Option<String>);

/// Sends `GET path` with `key` to `addr` on its own connection, in the background; the
/// answer arrives on `tx` when the response is over.
fn send(addr: SocketAddr, path: &str, key: &str, tx: &mpsc::UnboundedSender<Answer>) {
    let (path, key, tx) = (path.to_string(), key.to_string(), tx.clone());
    tokio::spawn(async move {
        let mut conn = support::Conn::open(addr).await;
        if let Ok(reply) = conn.get(&path, &key).await {
            let header = |name| reply.header(name).map(str::to_string);
            let _ = tx.send((
                reply.status,
                header("retry-after"),
                header("x-ratelimit-limit"),
            ));
        }
    });
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Answer>, what: &str) -> Answer {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no answer while waiting for {what}"))
        .expect("a sender is alive")
}

/// Leases held in Redis over every slot set.
fn slots_in_redis(redis: &Redis) -> u64 {
    redis
        .cli(&["keys", "{sluice}:slots:*"])
        .lines()
        .filter(|key| !key.is_empty())
        .map(|key| redis.cli(&["zcard", key]).trim().parse::<u64>().unwrap())
        .sum()
}

/// How often Redis ran `command` (from `INFO commandstats`; commands run by scripts count).
fn redis_calls(redis: &Redis, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    redis
        .cli(&["info", "commandstats"])
        .lines()
        .find_map(|line| line.trim().strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn in_flight(replicas: &[Sluice]) -> f64 {
    let mut total = 0.0;
    for r in replicas {
        total += r.metric("sluice_concurrency_in_flight").await.unwrap();
    }
    total
}

const HOLD_FOUR: &str = "  - { name: hold, match: { path: /** }, limit: { concurrency: 4 } }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_let_exactly_n_requests_in_flight_between_them() {
    let (upstream, gate) = gated_upstream().await;
    let redis = Redis::start();
    let store = "timeout: 2s, on_error: deny";
    let (_dir, replicas) = start(3, &config(upstream, &redis, store, HOLD_FOUR));
    for round in 0..2 {
        gate.set(false);
        gate.peak.store(0, Ordering::SeqCst);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..24 {
            send(replicas[i % 3].listen, "/hold", "k", &tx);
        }
        // The admitted requests wait at the upstream; every other one is answered at once.
        for _ in 0..20 {
            let (status, retry_after, limit) = next(&mut rx, "20 rejections").await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "round {round}");
            assert_eq!(retry_after.as_deref(), Some("1"));
            assert_eq!(limit.as_deref(), Some("4"));
        }
        eventually("four requests at the upstream", async || gate.active() == 4).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err(),
            "a fifth request was answered while four were held"
        );
        assert_eq!(gate.peak.load(Ordering::SeqCst), 4, "round {round}");
        assert_eq!(slots_in_redis(&redis), 4);
        assert_eq!(in_flight(&replicas).await, 4.0);
        // Another caller has slots of its own.
        send(replicas[1].listen, "/hold", "other", &tx);
        eventually("the other caller at the upstream", async || {
            gate.active() == 5
        })
        .await;
        assert_eq!(slots_in_redis(&redis), 5);

        gate.set(true);
        for _ in 0..5 {
            assert_eq!(next(&mut rx, "the held requests").await.0, StatusCode::OK);
        }
        // The slots are given back in Redis, and in each replica's table.
        eventually("the slots to leave Redis", async || {
            slots_in_redis(&redis) == 0
        })
        .await;
        eventually("the gauges to fall", async || {
            in_flight(&replicas).await == 0.0
        })
        .await;
    }
}

/// Two replicas sharing one Redis (`extra` lines first in their config) under a concurrency
/// limit of 2, with two requests of key `k` held through the first.
async fn two_slots_held_through_the_first(
    extra: &str,
) -> (Arc<Gate>, Redis, tempfile::TempDir, Vec<Sluice>) {
    let (upstream, gate) = gated_upstream().await;
    let redis = Redis::start();
    let routes = "  - { name: hold, match: { path: /** }, limit: { concurrency: 2 } }\n";
    let store = "timeout: 2s, on_error: deny";
    let text = format!("{extra}{}", config(upstream, &redis, store, routes));
    let (dir, replicas) = start(2, &text);
    let (tx, _rx) = mpsc::unbounded_channel();
    for _ in 0..2 {
        send(replicas[0].listen, "/hold", "k", &tx);
    }
    eventually("two requests held through A", async || gate.active() == 2).await;
    (gate, redis, dir, replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_holding_slots_gives_them_back_after_the_lease_time() {
    let (gate, redis, _dir, mut replicas) = two_slots_held_through_the_first("").await;
    let mut on_b = replicas[1].connect().await;
    assert_eq!(
        on_b.get("/quick", "k").await.unwrap().status,
        StatusCode::TOO_MANY_REQUESTS
    );

    // SIGKILL: A gives nothing back; its leases stop being renewed.
    let a = replicas.remove(0);
    drop(a);
    let killed = Instant::now();
    gate.set(true);
    assert_eq!(slots_in_redis(&redis), 2);
    let freed = loop {
        let status = on_b.get("/quick", "k").await.unwrap().status;
        if status == StatusCode::OK {
            break killed.elapsed();
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(killed.elapsed() < Duration::from_secs(20), "never freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A lease lasts 10 s from its last renewal (every 10/3 s): between 6.7 and 10 s.
    assert!(
        (Duration::from_secs(5)..Duration::from_secs(13)).contains(&freed),
        "freed after {freed:?}"
    );
    eventually("the dead leases to leave Redis", async || {
        slots_in_redis(&redis) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_shut_down_gives_its_slots_back_before_it_exits() {
    let (_gate, redis, _dir, mut replicas) =
        two_slots_held_through_the_first("shutdown_timeout: 1s\n").await;
    assert_eq!(slots_in_redis(&redis), 2);

    // SIGTERM: A drains for 1 s, then cuts the two requests off and releases their slots
    // on its way out instead of leaving them to the lease time.
    replicas[0].terminate();
    assert!(replicas[0].wait().success());
    assert_eq!(slots_in_redis(&redis), 0);
    let mut on_b = replicas[1].connect().await;
    assert_eq!(
        on_b.get("/quick", "k").await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_answers_503_while_redis_is_down_and_held_leases_come_back_after() {
    let (upstream, gate) = gated_upstream().await;
    let mut redis = Redis::start();
    let routes = "  - { name: hold, match: { path: /** }, limit: { concurrency: 2 } }\n";
    let store = "timeout: 50ms, on_error: deny";
    let (_dir, replicas) = start(2, &config(upstream, &redis, store, routes));
    let (a, b) = (&replicas[0], &replicas[1]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    send(a.listen, "/hold", "k", &tx);
    eventually("one request held", async || gate.active() == 1).await;
    assert_eq!(slots_in_redis(&redis), 1);

    redis.kill();
    let mut conn = b.connect().await;
    for _ in 0..20 {
        let reply = conn.get("/quick", "k").await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            reply.body.contains("\"title\":\"Service Unavailable\""),
            "{}",
            reply.body
        );
    }
    assert!(b.metric("sluice_store_fail_closed_total").await >= Some(20.0));
    assert_eq!(b.metric("sluice_store_local_slots_total").await, Some(0.0));
    assert!(b
        .log_text()
        .contains("redis concurrency slots failing; requests with a concurrency limit get 503"));

    // Redis is back, empty: A's renewal puts its held lease back, so B counts it.
    redis.restart();
    for r in &replicas {
        eventually("the breaker to close", async || {
            r.metric("sluice_store_breaker_open").await == Some(0.0)
        })
        .await;
    }
    eventually("the held lease restored", async || {
        slots_in_redis(&redis) == 1
    })
    .await;
    send(b.listen, "/hold", "k", &tx);
    eventually("a second request held", async || gate.active() == 2).await;
    let full = conn.get("/quick", "k").await.unwrap();
    assert_eq!(full.status, StatusCode::TOO_MANY_REQUESTS);
    gate.set(true);
    for _ in 0..2 {
        assert_eq!(next(&mut rx, "the held requests").await.0, StatusCode::OK);
    }
    eventually("the slots to leave Redis", async || {
        slots_in_redis(&redis) == 0
    })
    .await;
    assert!(b
        .log_text()
        .contains("redis concurrency slots shared again"));
}

/// Two replicas with `concurrency: limit`; Redis dies; each replica admits `per_replica`
/// requests in flight on its own.
async fn redis_down_holds_slots_per_replica(on_error: &str, limit: u32, per_replica: usize) {
    let (upstream, gate) = gated_upstream().await;
    let mut redis = Redis::start();
    let routes = format!(
        "  - {{ name: hold, match: {{ path: /** }}, limit: {{ concurrency: {limit} }} }}\n"
    );
    let store = format!("timeout: 50ms, on_error: {on_error}");
    let (_dir, replicas) = start(2, &config(upstream, &redis, &store, &routes));
    for r in &replicas {
        eventually("every replica to see two", async || {
            r.metric("sluice_store_replicas").await == Some(2.0)
        })
        .await;
    }
    redis.kill();
    let (tx, mut rx) = mpsc::unbounded_channel();
    for r in &replicas {
        for _ in 0..per_replica {
            send(r.listen, "/hold", "k", &tx);
        }
    }
    let total = 2 * per_replica;
    eventually("every replica's share held", async || {
        gate.active() == total
    })
    .await;
    for r in &replicas {
        let reply = r.connect().await.get("/quick", "k").await.unwrap();
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{on_error}");
        let fallbacks = r.metric("sluice_store_local_slots_total").await.unwrap();
        assert!(fallbacks >= per_replica as f64 + 1.0, "{fallbacks}");
        assert!(r
            .log_text()
            .contains("redis concurrency slots failing; holding slots in this replica's memory"));
    }
    assert_eq!(gate.peak.load(Ordering::SeqCst), total);
    gate.set(true);
    for _ in 0..total {
        assert_eq!(next(&mut rx, "the held requests").await.0, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_holds_the_whole_limit_on_each_replica_while_redis_is_down() {
    redis_down_holds_slots_per_replica("allow", 2, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_holds_a_share_of_the_limit_on_each_replica_while_redis_is_down() {
    redis_down_holds_slots_per_replica("local", 4, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_costs_one_acquire_and_one_release_and_others_nothing() {
    let (upstream, _gate) = gated_upstream().await;
    let redis = Redis::start();
    let routes = "  - { name: plain, match: { path: /plain }, limit: 1000/h }
  - { name: slot,  match: { path: /slot },  limit: [ 1000/h, { concurrency: 5 } ] }
  - { name: only,  match: { path: /only },  limit: { concurrency: 5 } }
";
    let store = "timeout: 2s, on_error: deny";
    let (_dir, replicas) = start(1, &config(upstream, &redis, store, routes));
    let mut conn = replicas[0].connect().await;
    // Heartbeats and the penalty mirror's refresh call Redis in the background too: a
    // handful of calls a second.
    let background = |took: Duration| 6 * (took.as_secs() + 1);
    for (path, per_request) in [("/plain", 1), ("/slot", 3), ("/only", 2)] {
        let (evalsha, zrem) = (redis_calls(&redis, "evalsha"), redis_calls(&redis, "zrem"));
        let started = Instant::now();
        for _ in 0..100 {
            assert_eq!(conn.get(path, "k").await.unwrap().status, StatusCode::OK);
        }
        let took = started.elapsed();
        let releases = if path == "/plain" { 0 } else { 100 };
        eventually("the releases", async || {
            redis_calls(&redis, "zrem") - zrem >= releases
        })
        .await;
        let calls = redis_calls(&redis, "evalsha") - evalsha;
        let want = 100 * per_request;
        assert!(
            (want..=want + background(took)).contains(&calls),
            "{path}: {calls} calls for 100 requests"
        );
        // One release per request; a renewal racing a release may add one more.
        let released = redis_calls(&redis, "zrem") - zrem;
        assert!(
            (releases..=releases + 2).contains(&released),
            "{path}: {released}"
        );
    }
}
