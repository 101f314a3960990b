//! The script against the memory store, on a real `redis-server` started per test.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::limiter::clock::{MILLISECOND, SECOND};
use crate::limiter::store::memory::MemoryStore;
use crate::limiter::CounterKey;

const T0: Nanos = 1_700_000_000 * SECOND + 123_456_789;

/// A `redis-server` on a free loopback port, killed on drop.
pub(crate) struct Server {
    child: Child,
    port: u16,
}

impl Server {
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { child, port };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not listen on port {port}");
    }

    pub(crate) fn settings(&self, on_error: OnError) -> RedisSettings {
        RedisSettings {
            url: format!("redis://127.0.0.1:{}", self.port),
            timeout: Duration::from_secs(2),
            on_error,
            prefix: "test".into(),
            sync_interval: None,
            cluster: false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn system_clock() -> Arc<dyn Clock> {
    Arc::new(crate::limiter::clock::SystemClock::new())
}

fn check(limit: u64, algorithm: Algorithm, quota: Quota, cost: u32, shadow: bool) -> Check {
    Check {
        key: CounterKey { limit, subject: 7 },
        algorithm,
        quota,
        cost,
        shadow,
    }
}

/// The limits the sequences draw from: every algorithm, awkward periods and intervals.
fn limits() -> Vec<Check> {
    let q = |limit, period, burst| Quota::new(limit, period, burst).unwrap();
    vec![
        check(1, Algorithm::FixedWindow, q(5, SECOND, 5), 1, false),
        check(
            2,
            Algorithm::SlidingWindow,
            q(10, 60 * SECOND, 10),
            1,
            false,
        ),
        check(
            3,
            Algorithm::SlidingWindow,
            q(7, 1_500 * MILLISECOND, 7),
            1,
            false,
        ),
        check(4, Algorithm::TokenBucket, q(10, SECOND, 3), 1, false),
        // 333_333_334 ns between tokens: not a whole microsecond.
        check(5, Algorithm::TokenBucket, q(3, SECOND, 3), 1, false),
        check(
            6,
            Algorithm::FixedWindow,
            q(4, 250 * MILLISECOND, 4),
            1,
            true,
        ),
        check(
            7,
            Algorithm::SlidingWindow,
            q(1_000_000, 86_400 * SECOND, 1_000_000),
            1,
            false,
        ),
    ]
}

async fn answer(store: &dyn Store, checks: &[Check], now: Nanos, peek: bool) -> Outcomes {
    let checking = if peek {
        store.peek(checks, now)
    } else {
        store.check(checks, now)
    };
    checking.resolve().await.expect("the store answers")
}

#[tokio::test]
async fn script_answers_exactly_as_the_memory_store() {
    let server = Server::start();
    let redis = RedisStore::start(&server.settings(OnError::Deny), 1000, system_clock())
        .unwrap()
        .on_caller_clock();
    let memory = MemoryStore::new(1000);
    let all = limits();
    let mut rng = StdRng::seed_from_u64(20240607);
    let mut now = T0;
    let (mut allowed, mut rejected) = (0, 0);
    // Redis expires a key by its own clock, PX milliseconds after it was written: the
    // caller's clock must not fall behind it, or a key could expire (on a loaded machine)
    // before the caller's time says its window ended.
    let mut real = std::time::Instant::now();
    for step in 0..3000 {
        // Mostly bursts within a window, sometimes long gaps, at nanosecond resolution.
        let stride = match rng.random_range(0..10) {
            0 => rng.random_range(0..3 * SECOND),
            1 => 0,
            _ => rng.random_range(0..60 * MILLISECOND),
        };
        let elapsed = u64::try_from(real.elapsed().as_nanos()).unwrap();
        real = std::time::Instant::now();
        now += stride.max(elapsed + 10 * MILLISECOND);
        let mut checks: Vec<Check> = all
            .iter()
            .filter(|_| rng.random_bool(0.4))
            .copied()
            .collect();
        let cost = if rng.random_bool(0.2) { 2 } else { 1 };
        for c in &mut checks {
            c.cost = cost;
        }
        let peek = rng.random_bool(0.1);
        // Compare the script itself, not the memory of exhausted callers.
        redis.shared.over.clear();
        let want = answer(&memory, &checks, now, peek).await;
        let got = answer(&redis, &checks, now, peek).await;
        assert_eq!(got, want, "step {step} at {now}: {checks:?}");
        let decision = crate::limiter::Decision::from_outcomes(want, &checks);
        if decision.allowed {
            allowed += 1;
        } else {
            rejected += 1;
        }
    }
    // The sequence exercised both sides of every limit.
    assert!(
        allowed > 500 && rejected > 500,
        "{allowed} allowed, {rejected} rejected"
    );
}

#[tokio::test]
async fn large_counts_and_long_periods_stay_exact() {
    // prev × elapsed passes 2^53 here: the script's split arithmetic must hold.
    let server = Server::start();
    let redis = RedisStore::start(&server.settings(OnError::Deny), 1000, system_clock())
        .unwrap()
        .on_caller_clock();
    let memory = MemoryStore::new(1000);
    let day = 86_400 * SECOND;
    let limit = (1 << 20) - 1;
    let mut rng = StdRng::seed_from_u64(7);
    for subject in 0..40u64 {
        let base = T0 - T0 % day + subject * 3 * day;
        let mut c = check(
            9,
            Algorithm::SlidingWindow,
            Quota::new(limit, day, limit).unwrap(),
            1,
            false,
        );
        c.key.subject = subject;
        // Fill most of one day, then probe the next one at random instants.
        c.cost = rng.random_range(limit / 2..limit);
        let fill = base + rng.random_range(0..day);
        assert_eq!(
            answer(&redis, &[c], fill, false).await,
            answer(&memory, &[c], fill, false).await
        );
        for _ in 0..20 {
            c.cost = rng.random_range(1..limit / 2);
            let now = base + day + rng.random_range(0..day);
            let peek = rng.random_bool(0.5);
            redis.shared.over.clear();
            let want = answer(&memory, &[c], now, peek).await;
            assert_eq!(
                answer(&redis, &[c], now, peek).await,
                want,
                "{c:?} at {now}"
            );
        }
    }
}

#[tokio::test]
async fn a_rejected_request_takes_nothing_and_keys_expire() {
    let server = Server::start();
    let redis = RedisStore::start(&server.settings(OnError::Deny), 1000, system_clock()).unwrap();
    let q = |n| Quota::new(n, 60 * SECOND, n).unwrap();
    let wide = check(1, Algorithm::FixedWindow, q(10), 1, false);
    let narrow = check(2, Algorithm::FixedWindow, q(1), 1, false);
    let both = [wide, narrow];
    let first = answer(&redis, &both, 0, false).await;
    assert!(first.iter().all(|o| o.allowed));
    assert_eq!(first[0].remaining, 9);
    let second = answer(&redis, &both, 0, false).await;
    assert!(second[0].allowed && !second[1].allowed);
    // The wide limit reports what it had: the rejected request took nothing.
    assert_eq!(second[0].remaining, 9);
    let alone = answer(&redis, &[wide], 0, false).await;
    assert_eq!(alone[0].remaining, 8);

    // Every key carries a time to live of at most its window.
    let client = Client::open(server.settings(OnError::Deny).url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{test}:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.len() >= 2, "{keys:?}");
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 60_000, "{key}: {ttl}");
    }
}

#[tokio::test]
async fn exhausted_callers_are_answered_without_redis_until_they_fit() {
    let server = Server::start();
    let redis = RedisStore::start(&server.settings(OnError::Deny), 1000, system_clock()).unwrap();
    let hourly = Quota::new(2, 3600 * SECOND, 2).unwrap();
    let limit = check(1, Algorithm::FixedWindow, hourly, 1, false);
    let other = check(
        2,
        Algorithm::TokenBucket,
        Quota::new(100, SECOND, 100).unwrap(),
        1,
        false,
    );
    let both = [other, limit];
    let now = 1_700_000_000 * SECOND;
    for _ in 0..2 {
        assert!(answer(&redis, &both, now, false).await[1].allowed);
    }
    let rejected = answer(&redis, &both, now, false).await;
    assert!(!rejected[1].allowed);
    let retry = rejected[1].retry_after;
    assert!(retry > 0);

    // Redis is gone; the exhausted caller is still answered, with its wait counted down.
    drop(server);
    let later = now + 10 * SECOND;
    let again = match redis.check(&both, later) {
        Checking::Ready(result) => result.unwrap(),
        Checking::Pending(_) => panic!("an exhausted caller must not cost a Redis call"),
    };
    assert!(!again[1].allowed && again[0].allowed);
    assert_eq!(again[1].retry_after, retry - 10 * SECOND);
    assert_eq!(again[1].reset, rejected[1].reset);
    // A caller of a different limit, or after the wait, goes to Redis (which fails here).
    assert!(redis.check(&[other], later).resolve().await.is_err());
    assert!(redis.check(&both, now + retry).resolve().await.is_err());
    // A reload that changes the rate forgets the remembered rejection.
    let raised = check(
        1,
        Algorithm::FixedWindow,
        Quota::new(5, 3600 * SECOND, 5).unwrap(),
        1,
        false,
    );
    assert!(redis.check(&[raised], later).resolve().await.is_err());
    redis.sweep(now + retry);
    assert_eq!(redis.shared.over.len(), 0);
}

#[tokio::test]
async fn failures_open_the_breaker_and_local_mode_enforces_a_share() {
    let server = Server::start();
    let mut settings = server.settings(OnError::Local);
    settings.timeout = Duration::from_millis(200);
    let redis = RedisStore::start(&settings, 1000, system_clock()).unwrap();
    let limit = check(
        1,
        Algorithm::FixedWindow,
        Quota::new(10, 3600 * SECOND, 10).unwrap(),
        1,
        false,
    );
    assert!(answer(&redis, &[limit], 0, false).await[0].allowed);
    // Two more replicas beat in the same Redis.
    let others: Vec<RedisStore> = (0..2)
        .map(|_| RedisStore::start(&settings, 1000, system_clock()).unwrap())
        .collect();
    eventually(|| redis.shared.replicas.load(Ordering::Relaxed) == 3).await;
    drop(server);
    // Redis is gone: each replica enforces a third of the limit, locally.
    let now = 1_700_000_000 * SECOND;
    let mut admitted = 0;
    for _ in 0..10 {
        let outcomes = redis.check(&[limit], now).resolve().await.unwrap();
        admitted += u32::from(outcomes[0].allowed);
    }
    assert_eq!(admitted, 3);
    assert!(redis.breaker_open());
    drop(others);
}

async fn eventually(mut condition: impl FnMut() -> bool) {
    for _ in 0..100 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 5 s");
}

#[test]
fn limits_outside_the_scripts_arithmetic_are_refused() {
    let q = |limit, period, burst| Quota::new(limit, period, burst).unwrap();
    assert!(supports(&q(10, SECOND, 10), 1).is_ok());
    assert!(supports(&q(10, 1_500, 10), 1).is_err());
    assert!(supports(&q(10, 200 * 86_400 * SECOND, 10), 1).is_err());
    assert!(supports(&q(1, 86_400 * SECOND, 2_000), 1).is_err());
}

/// Two replicas in `mode: sync` on the caller's clock, renewing their leases by hand.
fn sync_replicas(server: &Server) -> [RedisStore; 2] {
    let mut settings = server.settings(OnError::Deny);
    settings.sync_interval = Some(Duration::from_millis(5));
    [0, 1].map(|_| {
        RedisStore::start(&settings, 1000, system_clock())
            .unwrap()
            .on_caller_clock()
    })
}

async fn renew(store: &RedisStore, now: Nanos) {
    let (leases, _) = store.shared.leases.as_ref().unwrap();
    let renewals = leases.plan(now, 2);
    if !renewals.is_empty() {
        store.shared.renew(&renewals, now).await.unwrap();
    }
}

/// Renews until the recent demand has decayed and every unit is given back.
async fn drain(store: &RedisStore, now: Nanos) {
    for _ in 0..40 {
        renew(store, now).await;
    }
    assert!(store.shared.leases.as_ref().unwrap().0.is_empty());
}

#[tokio::test]
async fn leases_admit_no_more_than_redis_counted_and_give_back_the_rest() {
    let server = Server::start();
    let replicas = sync_replicas(&server);
    let hourly = Quota::new(100, 3600 * SECOND, 100).unwrap();
    let mut rng = StdRng::seed_from_u64(99);
    for (i, algorithm) in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
    ]
    .into_iter()
    .enumerate()
    {
        let limit = check(10 + i as u64, algorithm, hourly, 1, false);
        let mut now = T0;
        let (mut admitted, mut leased) = (0, 0);
        for _ in 0..600 {
            now += rng.random_range(0..1000);
            let replica = &replicas[rng.random_range(0..2)];
            if rng.random_bool(0.1) {
                renew(replica, now).await;
                continue;
            }
            replica.shared.over.clear();
            let checking = replica.check(&[limit], now);
            leased += u32::from(matches!(checking, Checking::Ready(_)));
            let outcome = checking.resolve().await.unwrap()[0];
            admitted += u32::from(outcome.allowed);
            assert!(admitted <= 100, "{algorithm}: {admitted} admitted");
            if outcome.allowed {
                assert!(outcome.remaining < 100 && outcome.limit == 100);
            }
        }
        assert_eq!(admitted, 100, "{algorithm}: the whole limit is reachable");
        assert!(leased > 30, "{algorithm}: {leased} decided from leases");
        // With no demand left, renewals give every unit back: Redis's count is exactly what
        // was admitted.
        for replica in &replicas {
            drain(replica, now).await;
        }
        let peek = answer(&replicas[0], &[limit], now, true).await[0];
        assert_eq!(peek.remaining, 0, "{algorithm}");
    }
}

#[tokio::test]
async fn unspent_units_go_back_to_redis_and_fixed_window_leases_end_at_the_reset() {
    let server = Server::start();
    let [a, b] = sync_replicas(&server);
    let minute = Quota::new(40, 60 * SECOND, 40).unwrap();
    let limit = check(20, Algorithm::FixedWindow, minute, 1, false);
    let now = T0 - T0 % (60 * SECOND) + SECOND;
    // A asks once, then leases 4 units (four times its demand; the cap is 40 / 4 / 2 = 5).
    assert!(answer(&a, &[limit], now, false).await[0].allowed);
    renew(&a, now).await;
    let (leases, _) = a.shared.leases.as_ref().unwrap();
    for _ in 0..4 {
        assert!(matches!(a.check(&[limit], now), Checking::Ready(Ok(o)) if o[0].allowed));
    }
    assert!(matches!(a.check(&[limit], now), Checking::Pending(_)));
    // Demand of 5 since the last renewal (4 spent, 1 asked): the lease grows to the cap.
    renew(&a, now).await;
    for _ in 0..5 {
        assert!(matches!(a.check(&[limit], now), Checking::Ready(Ok(_))));
    }
    // B sees what A took: 1 + 4 + 5 = 10 of 40.
    let seen = answer(&b, &[limit], now, true).await[0];
    assert_eq!(seen.remaining, 30);
    // Five more leased, not spent; with no demand the lease shrinks as the recent demand
    // halves (5, 2, 1, 0: keeps 5, then 4, then nothing).
    renew(&a, now).await;
    assert_eq!(answer(&b, &[limit], now, true).await[0].remaining, 25);
    renew(&a, now).await;
    assert_eq!(answer(&b, &[limit], now, true).await[0].remaining, 25);
    renew(&a, now).await;
    assert_eq!(answer(&b, &[limit], now, true).await[0].remaining, 26);
    drain(&a, now).await;
    assert_eq!(answer(&b, &[limit], now, true).await[0].remaining, 30);
    assert!(leases.is_empty());
    // A lease taken in this window is not spent in the next one.
    a.check(&[limit], now).resolve().await.unwrap();
    renew(&a, now).await;
    let reset = now - SECOND + 60 * SECOND;
    assert!(matches!(a.check(&[limit], reset - 1), Checking::Ready(_)));
    assert!(matches!(a.check(&[limit], reset), Checking::Pending(_)));
}
