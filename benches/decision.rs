//! One rate-limit decision on the memory store: the checks of a request's limits, decided
//! all at once; the whole policy step of a request (normalise, identify, match, decide);
//! and putting a path in canonical form.
//! Run: `cargo bench --bench decision`.
//!
//! Targets (issue 2): 3 limits on 1 key under 150 ns; with 1,000,000 tracked keys under
//! 400 ns. The measured numbers are in BENCHMARKS.md.

// The same allocator as the binary, so the table's memory behaves as in production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use http::request::Parts;
use sluice::config::{load_str, Config};
use sluice::identity::Identity;
use sluice::limiter::store::memory::MemoryStore;
use sluice::limiter::store::{Checking, Store};
use sluice::limiter::Decision;
use sluice::policy::{Limit, Policy};

/// A route limit, a second route limit and a plan-wide limit: three limits per request,
/// one per algorithm. Rates so high that every request is allowed (the allow path).
const POLICY: &str = r#"
upstream: { url: "demo:" }
unknown_key: { plan: pro, per: key }
keys: [{ key: bench-key, plan: pro }]
plans:
  pro: { limits: { all: { rate: 1000000000/s, algorithm: fixed_window } } }
routes:
  - name: send
    match: { method: POST, path: "/v1/messages/{id}" }
    limit:
      - { rate: 1000000000/s, algorithm: token_bucket }
      - { rate: 1000000/s, algorithm: sliding_window, name: send-second }
"#;

fn head(key: &str) -> Parts {
    let (parts, ()) = http::Request::post("/v1/messages/42")
        .header("host", "api.example.com")
        .header("x-api-key", key)
        .body(())
        .unwrap()
        .into_parts();
    parts
}

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The limiter's decision for a caller already identified on a matched route: the checks
/// of its three limits, decided all at once by the store. What `sluice_limiter_seconds`
/// measures on the request path.
fn decide(limits: &[Limit], identity: &Identity, store: &MemoryStore, now: u64) -> Decision {
    let checks = Policy::checks(limits, identity, CLIENT, 1);
    let Checking::Ready(Ok(outcomes)) = store.check(&checks, now) else {
        unreachable!("the memory store answers at once")
    };
    Decision::from_outcomes(outcomes, &checks)
}

/// The whole policy step of a request: identify the caller from the request head, match
/// the route, then decide.
fn request(config: &Config, store: &MemoryStore, parts: &Parts, now: u64) -> Decision {
    let policy = &config.policy;
    let route = policy.find(parts);
    let identity = policy.identifier.identify(parts, CLIENT, 0).unwrap();
    let limits = policy.limits(policy.profile(&identity), route).unwrap();
    decide(limits, &identity, store, now)
}

fn bench(c: &mut Criterion) {
    let config = load_str(POLICY, "bench.yaml", None).unwrap();
    let policy = &config.policy;
    let parts = head("bench-key");
    let identity = policy.identifier.identify(&parts, CLIENT, 0).unwrap();
    let limits = policy
        .limits(policy.profile(&identity), policy.find(&parts))
        .unwrap();
    assert_eq!(limits.len(), 3);
    // Every iteration is 10 µs later than the last: 100,000 requests/s, under every limit.
    let mut now = 1_700_000_000_000_000_000u64;

    let mut group = c.benchmark_group("decision");
    let store = MemoryStore::new(2_000_000);
    group.bench_function("3 limits, 1 key", |b| {
        b.iter(|| {
            now += 10_000;
            let decision = decide(limits, black_box(&identity), &store, now);
            assert!(decision.allowed);
            decision
        })
    });

    // A million callers already tracked (three counters each), then decisions for them in
    // a random order: the cost of a big, cache-cold table. The order is drawn up front and
    // the callers laid out in it, so reading the next caller is a sequential read (as a
    // request's own key is at hand) and the only cold memory is the store's.
    let mut next = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = move || {
        next ^= next << 13;
        next ^= next >> 7;
        next ^= next << 17;
        next
    };
    let mut order: Vec<usize> = (0..1_000_000).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (random() % (i as u64 + 1)) as usize);
    }
    let callers: Vec<Identity> = order
        .iter()
        .map(|i| {
            policy
                .identifier
                .identify(&head(&format!("caller-{i}")), CLIENT, 0)
                .unwrap()
        })
        .collect();
    let big = MemoryStore::new(4_000_000);
    for caller in &callers {
        now += 10;
        decide(limits, caller, &big, now);
    }
    assert_eq!(big.tracked_entries(), 3_000_000);
    let mut turn = callers.iter().cycle();
    group.bench_function("3 limits, 1,000,000 tracked keys", |b| {
        b.iter(|| {
            now += 10_000;
            decide(limits, turn.next().unwrap(), &big, now)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("request");
    let store = MemoryStore::new(2_000_000);
    group.bench_function("identify, match and decide, 1 key", |b| {
        b.iter(|| {
            now += 10_000;
            request(&config, &store, black_box(&parts), now)
        })
    });
    // The same with the target put in canonical form first, as the gateway does (it is
    // canonical already: nothing changes).
    let mut parts = parts;
    group.bench_function("normalise, identify, match and decide, 1 key", |b| {
        b.iter(|| {
            now += 10_000;
            config.target.apply(black_box(&mut parts)).unwrap();
            request(&config, &store, &parts, now)
        })
    });
    group.finish();

    // The canonical target alone: a path already canonical is checked in one pass and
    // borrowed; an alias is rewritten (one allocation).
    let mut group = c.benchmark_group("target");
    let target = &config.target;
    for (name, path) in [
        ("canonical path", "/v1/messages/42"),
        ("alias", "/v1//%6Dessages/./x/../42"),
    ] {
        group.bench_function(name, |b| b.iter(|| target.path(black_box(path)).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
