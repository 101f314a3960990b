//! One rate-limit decision, as the request path takes it: identify the caller from the
//! request head, match the route, build the checks, and let the memory store decide all
//! of them at once. Run: `cargo bench --bench decision`.
//!
//! Targets (issue 2): 3 limits on 1 key under 150 ns; with 1,000,000 tracked keys under
//! 400 ns. The measured numbers are in BENCHMARKS.md.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::request::Parts;
use sluice::config::{load_str, Config};
use sluice::limiter::store::memory::MemoryStore;
use sluice::limiter::store::{Checking, Store};
use sluice::limiter::Decision;
use sluice::policy::Policy;

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
      - { rate: 1000000000/min, algorithm: sliding_window, name: send-minute }
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

fn decide(config: &Config, store: &MemoryStore, parts: &Parts, now: u64) -> Decision {
    let policy = &config.policy;
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let route = policy.find(parts);
    let identity = policy.identifier.identify(parts, ip).unwrap();
    let profile = policy.profile(&identity);
    let limits = policy.limits(profile, route).unwrap();
    let checks = Policy::checks(limits, &identity, ip, policy.cost(route));
    let Checking::Ready(Ok(outcomes)) = store.check(&checks, now) else {
        unreachable!("the memory store answers at once")
    };
    Decision::from_outcomes(outcomes, &checks)
}

fn bench(c: &mut Criterion) {
    let config = load_str(POLICY, "bench.yaml", None).unwrap();
    let mut group = c.benchmark_group("decision");

    let store = MemoryStore::new(2_000_000);
    let parts = head("bench-key");
    let mut now = 1_700_000_000_000_000_000u64;
    group.bench_function("3 limits, 1 key", |b| {
        b.iter(|| {
            now += 1_000;
            let decision = decide(&config, &store, black_box(&parts), now);
            assert!(decision.allowed);
            decision
        })
    });

    // A million distinct callers already tracked (3 counters each would be 3M entries;
    // they are unknown keys counted per presented key under `pro`), then decisions that
    // land on random ones of them: the cost of a big, cache-cold table.
    let keys: Vec<Parts> = (0..1_000_000).map(|i| head(&format!("caller-{i}"))).collect();
    let big = MemoryStore::new(4_000_000);
    for parts in &keys {
        now += 10;
        decide(&config, &big, parts, now);
    }
    assert!(big.tracked_entries() >= 3_000_000);
    let mut next = 0x9E37_79B9_7F4A_7C15u64;
    group.bench_function("3 limits, 1,000,000 tracked keys", |b| {
        b.iter_batched(
            || {
                next ^= next << 13;
                next ^= next >> 7;
                next ^= next << 17;
                &keys[(next % keys.len() as u64) as usize]
            },
            |parts| {
                now += 1_000;
                decide(&config, &big, parts, now)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
