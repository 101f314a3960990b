use super::*;
use crate::limiter::clock::SECOND;
use proptest::prelude::*;

const MINUTE: Nanos = 60 * SECOND;
/// A window boundary: 2023-11-14T22:13:00Z is a whole minute.
const T0: Nanos = 1_699_999_980 * SECOND;

fn per_minute(n: u32) -> Quota {
    Quota::new(n, MINUTE, n).unwrap()
}

fn run_fixed(q: &Quota, state: &mut u64, now: Nanos) -> Outcome {
    let step = fixed::acquire(*state, now, q, 1);
    if let Some(s) = step.state {
        *state = s;
    }
    step.outcome
}

fn run_sliding(q: &Quota, state: &mut u64, now: Nanos, cost: u32) -> Outcome {
    let step = sliding::acquire(*state, now, q, cost);
    if let Some(s) = step.state {
        *state = s;
    }
    step.outcome
}

#[test]
fn t0_is_a_window_boundary() {
    assert_eq!(T0 % MINUTE, 0);
}

#[test]
fn fixed_window_counts_and_resets_at_the_edge() {
    let q = per_minute(3);
    let mut s = 0;
    let a = run_fixed(&q, &mut s, T0 + 10 * SECOND);
    assert_eq!(
        a,
        Outcome {
            allowed: true,
            limit: 3,
            remaining: 2,
            reset: T0 + MINUTE,
            retry_after: 0
        }
    );
    run_fixed(&q, &mut s, T0 + 20 * SECOND);
    let c = run_fixed(&q, &mut s, T0 + 30 * SECOND);
    assert_eq!(c.remaining, 0);
    let d = run_fixed(&q, &mut s, T0 + 59 * SECOND);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, SECOND);
    assert_eq!(d.reset, T0 + MINUTE);
    // 1ns before the edge: still the old window.
    let e = run_fixed(&q, &mut s, T0 + MINUTE - 1);
    assert!(!e.allowed);
    assert_eq!(e.retry_after, 1);
    // At the edge: a fresh window.
    let f = run_fixed(&q, &mut s, T0 + MINUTE);
    assert!(f.allowed);
    assert_eq!(f.remaining, 2);
    assert_eq!(f.reset, T0 + 2 * MINUTE);
}

#[test]
fn fixed_window_refund_and_peek() {
    let q = per_minute(2);
    let step = fixed::acquire(0, T0, &q, 2);
    let s = step.state.unwrap();
    assert_eq!(fixed::peek(s, T0, &q, 1).remaining, 0);
    assert!(!fixed::peek(s, T0, &q, 1).allowed);
    let s = fixed::refund(s, T0, &q, 1);
    let p = fixed::peek(s, T0, &q, 1);
    assert!(p.allowed);
    assert_eq!(p.remaining, 1);
}

#[test]
fn sliding_window_replenishes_gradually() {
    let q = per_minute(10);
    let mut s = 0;
    for _ in 0..10 {
        assert!(run_sliding(&q, &mut s, T0 + 30 * SECOND, 1).allowed);
    }
    let rejected = run_sliding(&q, &mut s, T0 + 30 * SECOND, 1);
    assert!(!rejected.allowed);
    assert_eq!(rejected.remaining, 0);
    // Next window: 10 in the previous one count fully at its start, then less and less.
    // At +6s into the next window the previous counts 10 × 54/60 = 9: one slot free.
    let early = T0 + MINUTE + 5 * SECOND;
    assert!(!run_sliding(&q, &mut s, early, 1).allowed);
    // The wait it reports lands exactly on that instant.
    assert_eq!(
        sliding::peek(s, early, &q, 1).retry_after,
        SECOND,
        "retry_after = the instant one slot is free"
    );
    let open = T0 + MINUTE + 6 * SECOND;
    let ok = run_sliding(&q, &mut s, open, 1);
    assert!(ok.allowed);
    assert_eq!(ok.remaining, 0);
    // Full restoration: the end of the window after the one with a count.
    assert_eq!(ok.reset, T0 + 3 * MINUTE);
}

#[test]
fn sliding_window_retry_after_in_the_next_window() {
    let q = per_minute(4);
    let mut s = 0;
    for _ in 0..4 {
        assert!(run_sliding(&q, &mut s, T0 + 45 * SECOND, 1).allowed);
    }
    let r = run_sliding(&q, &mut s, T0 + 45 * SECOND, 1);
    // Next window starts in 15s; the 4 carried over weigh 4 × (60 - e)/60 and one unit
    // fits when that is ≤ 3: e ≥ 15s.
    assert_eq!(r.retry_after, 30 * SECOND);
    assert!(!run_sliding(&q, &mut s, T0 + 75 * SECOND - 1, 1).allowed);
    assert!(run_sliding(&q, &mut s, T0 + 75 * SECOND, 1).allowed);
}

#[test]
fn sliding_window_forgets_after_two_windows() {
    let q = per_minute(2);
    let mut s = 0;
    run_sliding(&q, &mut s, T0, 2);
    let later = run_sliding(&q, &mut s, T0 + 2 * MINUTE, 1);
    assert!(later.allowed);
    assert_eq!(later.remaining, 1);
}

#[test]
fn sliding_refund_restores_the_count() {
    let q = per_minute(2);
    let s = sliding::acquire(0, T0, &q, 2).state.unwrap();
    assert!(!sliding::peek(s, T0, &q, 1).allowed);
    let s = sliding::refund(s, T0, &q, 2);
    assert_eq!(sliding::peek(s, T0, &q, 1).remaining, 2);
}

proptest! {
    /// The documented bound: each aligned window admits at most `limit`; any interval of
    /// one period admits fewer than `2 × limit`.
    #[test]
    fn sliding_window_error_bound(
        limit in 1u32..50,
        gaps in proptest::collection::vec(0u64..(4 * SECOND), 1..400),
    ) {
        let period = 10 * SECOND;
        let q = Quota::new(limit, period, limit).unwrap();
        let mut s = 0;
        let mut now = T0;
        let mut admitted = Vec::new();
        for gap in gaps {
            now += gap;
            if run_sliding(&q, &mut s, now, 1).allowed {
                admitted.push(now);
            }
        }
        for (i, &start) in admitted.iter().enumerate() {
            let in_period = admitted[i..].iter().take_while(|&&t| t < start + period).count();
            prop_assert!(in_period < 2 * limit as usize);
            let aligned = admitted.iter().filter(|&&t| t / period == start / period).count();
            prop_assert!(aligned <= limit as usize);
        }
    }

    /// Fixed window: never more than `limit` per aligned window, and a request is
    /// rejected only when the window is full.
    #[test]
    fn fixed_window_exact(limit in 1u32..50, gaps in proptest::collection::vec(0u64..SECOND, 1..300)) {
        let period = 5 * SECOND;
        let q = Quota::new(limit, period, limit).unwrap();
        let mut s = 0;
        let mut now = T0;
        let mut counts = std::collections::HashMap::new();
        for gap in gaps {
            now += gap;
            let out = run_fixed(&q, &mut s, now);
            let c = counts.entry(now / period).or_insert(0u32);
            prop_assert_eq!(out.allowed, *c < limit);
            if out.allowed { *c += 1; }
            prop_assert_eq!(out.remaining, limit - *c);
        }
    }

    /// GCRA: admitted requests never exceed burst + rate × elapsed.
    #[test]
    fn token_bucket_bound(rate in 1u32..100, burst in 1u32..100, gaps in proptest::collection::vec(0u64..(SECOND / 5), 1..400)) {
        let q = Quota::new(rate, SECOND, burst).unwrap();
        let mut tat = 0;
        let mut now = T0;
        let mut admitted = 0u64;
        for gap in gaps {
            now += gap;
            let step = crate::limiter::gcra::acquire(tat, now, &q, 1);
            if let Some(t) = step.state { tat = t; admitted += 1; }
            let elapsed = now - T0;
            let bound = u64::from(burst) + u64::from(rate) * elapsed / SECOND;
            prop_assert!(admitted <= bound, "{admitted} > {bound}");
        }
    }
}
