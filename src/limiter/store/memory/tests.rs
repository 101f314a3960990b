use super::*;
use crate::limiter::clock::SECOND;
use crate::limiter::{Algorithm, Quota};

const T0: Nanos = 1_699_999_980 * SECOND;
const MINUTE: Nanos = 60 * SECOND;

fn check(limit_id: u64, subject: u64, limit: u32, algorithm: Algorithm) -> Check {
    Check {
        key: CounterKey {
            limit: limit_id,
            subject,
        },
        algorithm,
        quota: Quota::new(limit, MINUTE, limit).unwrap(),
        cost: 1,
        shadow: false,
    }
}

fn run(store: &MemoryStore, checks: &[Check], now: Nanos) -> Outcomes {
    match store.check(checks, now) {
        Checking::Ready(Ok(outcomes)) => outcomes,
        _ => panic!("memory store answers at once"),
    }
}

#[test]
fn a_rejected_request_takes_nothing_from_any_limit() {
    let store = MemoryStore::new(100);
    let plan = check(1, 7, 10, Algorithm::FixedWindow);
    let route = check(2, 7, 2, Algorithm::SlidingWindow);
    for _ in 0..2 {
        let out = run(&store, &[plan, route], T0);
        assert!(out.iter().all(|o| o.allowed));
    }
    let out = run(&store, &[plan, route], T0);
    assert!(!out[1].allowed);
    // The plan-wide limit reports 8 left: the rejected request gave its unit back.
    assert_eq!(out[0].remaining, 8);
    assert_eq!(run(&store, &[plan], T0)[0].remaining, 7);
}

#[test]
fn every_algorithm_counts_through_the_store() {
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
    ] {
        let store = MemoryStore::new(100);
        let c = check(1, 1, 3, algorithm);
        let admitted = (0..10).filter(|_| run(&store, &[c], T0)[0].allowed).count();
        assert_eq!(admitted, 3, "{algorithm}");
    }
}

#[test]
fn sweep_drops_only_idle_entries() {
    let store = MemoryStore::new(100);
    run(&store, &[check(1, 1, 5, Algorithm::FixedWindow)], T0);
    run(
        &store,
        &[check(1, 2, 5, Algorithm::FixedWindow)],
        T0 + MINUTE,
    );
    assert_eq!(store.tracked_entries(), 2);
    store.sweep(T0 + MINUTE + 1);
    assert_eq!(store.tracked_entries(), 1);
    store.sweep(T0 + 2 * MINUTE);
    assert_eq!(store.tracked_entries(), 0);
}

#[test]
fn a_full_store_puts_new_subjects_on_the_overflow_counter() {
    let store = MemoryStore::new(2);
    let abuser = check(1, 1, 3, Algorithm::FixedWindow);
    for _ in 0..3 {
        assert!(run(&store, &[abuser], T0)[0].allowed);
    }
    run(&store, &[check(1, 2, 3, Algorithm::FixedWindow)], T0);
    // Full, and nothing is idle: the abuser keeps its exhausted counter...
    assert!(!run(&store, &[abuser], T0)[0].allowed);
    // ...and newcomers share one overflow counter of the same quota.
    let admitted = (3..20)
        .filter(|&s| run(&store, &[check(1, s, 3, Algorithm::FixedWindow)], T0)[0].allowed)
        .count();
    assert_eq!(admitted, 3);
    assert_eq!(store.tracked_entries(), 3);
    // Once the window has passed, the sweep frees room for real counters again.
    let later = T0 + MINUTE + 2 * SECOND;
    assert!(run(&store, &[check(1, 99, 3, Algorithm::FixedWindow)], later)[0].allowed);
    assert_eq!(store.tracked_entries(), 1);
}

#[test]
fn concurrent_requests_admit_exactly_the_limit() {
    let store = std::sync::Arc::new(MemoryStore::new(100));
    let c = check(1, 1, 1000, Algorithm::SlidingWindow);
    let admitted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let store = &store;
                s.spawn(move || (0..500).filter(|_| run(store, &[c], T0)[0].allowed).count())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(admitted, 1000);
}

#[test]
fn peek_counts_nothing() {
    let store = MemoryStore::new(10);
    let c = check(1, 1, 2, Algorithm::TokenBucket);
    run(&store, &[c], T0);
    let Checking::Ready(Ok(peeked)) = store.peek(&[c], T0) else {
        panic!()
    };
    assert_eq!(peeked[0].remaining, 1);
    assert_eq!(run(&store, &[c], T0)[0].remaining, 0);
}

#[test]
fn one_subject_keeps_any_number_of_limits_apart() {
    let store = MemoryStore::new(100);
    // More limits than a subject's entry holds inline, each with its own count.
    let checks: Vec<Check> = (1..=6)
        .map(|limit| check(limit, 7, limit as u32, Algorithm::FixedWindow))
        .collect();
    for (i, c) in checks.iter().enumerate() {
        let admitted = (0..10)
            .filter(|_| run(&store, &[*c], T0)[0].allowed)
            .count();
        assert_eq!(admitted, i + 1);
    }
    assert_eq!(store.tracked_entries(), 6);
    // Counters are swept a cache line (three of a subject's counters) at a time: the line
    // holding a busy counter stays whole, the idle one goes.
    run(&store, &[checks[0]], T0 + MINUTE);
    store.sweep(T0 + MINUTE + 1);
    assert_eq!(store.tracked_entries(), 3);
    assert_eq!(run(&store, &[checks[5]], T0 + MINUTE)[0].remaining, 5);
    assert_eq!(run(&store, &[checks[0]], T0 + MINUTE)[0].remaining, 0);
}
