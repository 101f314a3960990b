//! GCRA (the generic cell rate algorithm), the token bucket in one number.
//!
//! The state is the theoretical arrival time (TAT): the instant at which the bucket
//! would be full again. A request of cost `n` moves it `n` emission intervals later and
//! is admitted if the result is at most `burst` intervals ahead of now. Pure: state in,
//! outcome and state out; the store decides where the number lives.
//!
//! Smoothing: a quota with a `delay` admits a request up to `delay` beyond the tolerance. Its
//! slot is reserved at admission (the TAT moves as for any request) and the outcome's
//! `retry_after` is how long the request must wait until it is due, so the requests let
//! through never run faster than burst plus rate, however many wait.

use super::clock::Nanos;
use super::{Outcome, Quota, Step};

/// Tries to take `cost` units at `now` from a bucket whose TAT is `tat` (0 = full).
pub fn acquire(tat: u64, now: Nanos, quota: &Quota, cost: u32) -> Step {
    let interval = quota.emission_interval();
    let tolerance = interval * u64::from(quota.burst());
    let start = tat.max(now);
    let new_tat = start + interval * u64::from(cost);
    let ahead = new_tat - now;
    if ahead > tolerance + quota.delay() {
        return Step {
            outcome: Outcome {
                allowed: false,
                limit: quota.burst(),
                remaining: remaining(tolerance, start - now, interval),
                reset: start,
                retry_after: ahead - tolerance - quota.delay(),
            },
            state: None,
            idle_at: start,
        };
    }
    Step {
        outcome: Outcome {
            allowed: true,
            limit: quota.burst(),
            remaining: remaining(tolerance, ahead, interval),
            reset: new_tat,
            retry_after: ahead.saturating_sub(tolerance),
        },
        state: Some(new_tat),
        idle_at: new_tat,
    }
}

/// What `acquire` would answer, without taking anything.
pub fn peek(tat: u64, now: Nanos, quota: &Quota, cost: u32) -> Outcome {
    let mut outcome = acquire(tat, now, quota, cost).outcome;
    if outcome.allowed {
        let start = tat.max(now);
        let tolerance = quota.emission_interval() * u64::from(quota.burst());
        outcome.remaining = remaining(tolerance, start - now, quota.emission_interval());
        outcome.reset = start;
    }
    outcome
}

/// Gives back `cost` units taken by an earlier `acquire` (another limit rejected the request).
pub fn refund(tat: u64, quota: &Quota, cost: u32) -> u64 {
    tat.saturating_sub(quota.emission_interval() * u64::from(cost))
}

fn remaining(tolerance: u64, ahead: u64, interval: u64) -> u32 {
    (tolerance.saturating_sub(ahead) / interval) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::clock::SECOND;

    const T0: Nanos = 1_700_000_000 * SECOND;

    fn tps(n: u32) -> Quota {
        Quota::new(n, SECOND, n).unwrap()
    }

    #[test]
    fn full_bucket_admits_burst_then_one_per_interval() {
        let q = tps(10);
        let mut tat = 0;
        for i in 0..10 {
            let step = acquire(tat, T0, &q, 1);
            assert!(step.outcome.allowed, "request {i}");
            assert_eq!(step.outcome.remaining, 9 - i);
            assert_eq!(step.outcome.limit, 10);
            tat = step.state.unwrap();
        }
        assert_eq!(tat, T0 + SECOND);
        let step = acquire(tat, T0, &q, 1);
        assert!(!step.outcome.allowed);
        assert_eq!(step.outcome.remaining, 0);
        assert_eq!(step.outcome.retry_after, SECOND / 10);
        assert_eq!(step.outcome.reset, T0 + SECOND);
        // One interval later exactly one more fits.
        let step = acquire(tat, T0 + SECOND / 10, &q, 1);
        assert!(step.outcome.allowed);
        assert_eq!(step.outcome.remaining, 0);
        let step2 = acquire(step.state.unwrap(), T0 + SECOND / 10, &q, 1);
        assert!(!step2.outcome.allowed);
        // Just before the interval: still rejected, by 1ns.
        let step = acquire(tat, T0 + SECOND / 10 - 1, &q, 1);
        assert!(!step.outcome.allowed);
        assert_eq!(step.outcome.retry_after, 1);
    }

    #[test]
    fn cost_takes_several_units_and_refund_returns_them() {
        let q = tps(10);
        let step = acquire(0, T0, &q, 4);
        assert!(step.outcome.allowed);
        assert_eq!(step.outcome.remaining, 6);
        let tat = step.state.unwrap();
        assert_eq!(refund(tat, &q, 4), T0);
        let big = acquire(tat, T0, &q, 7);
        assert!(!big.outcome.allowed);
        assert_eq!(big.outcome.remaining, 6);
        assert_eq!(big.outcome.retry_after, SECOND / 10);
    }

    #[test]
    fn peek_takes_nothing() {
        let q = tps(5);
        let out = peek(0, T0, &q, 1);
        assert!(out.allowed);
        assert_eq!(out.remaining, 5);
        assert_eq!(out.reset, T0);
    }

    #[test]
    fn a_delay_spreads_a_double_burst_and_rejects_beyond_it() {
        // 10/s, burst 10, waiting up to one second: 20 at once all pass, the last ten each
        // one interval later than the one before; the 21st would wait too long.
        let q = tps(10).with_delay(SECOND);
        let mut tat = 0;
        let mut due = Vec::new();
        for i in 0..20 {
            let step = acquire(tat, T0, &q, 1);
            assert!(step.outcome.allowed, "request {i}");
            due.push(T0 + step.outcome.retry_after);
            tat = step.state.unwrap();
        }
        assert_eq!(&due[..10], &[T0; 10]);
        for (k, at) in due[10..].iter().enumerate() {
            assert_eq!(*at, T0 + (k as u64 + 1) * SECOND / 10);
        }
        let step = acquire(tat, T0, &q, 1);
        assert!(!step.outcome.allowed);
        assert_eq!(step.outcome.retry_after, SECOND / 10);
        // A while later the queue has drained by as much as time passed.
        let later = acquire(tat, T0 + SECOND / 2, &q, 1);
        assert!(later.outcome.allowed);
        assert_eq!(later.outcome.retry_after, SECOND / 2 + SECOND / 10);
    }

    proptest::proptest! {
        /// However requests arrive, the instants they are let through never exceed
        /// burst + rate × elapsed, with or without a delay.
        #[test]
        fn admitted_never_exceed_burst_plus_rate(
            gaps in proptest::collection::vec(0u64..200_000_000, 1..200),
            delay_ms in 0u64..2000,
        ) {
            let q = Quota::new(10, SECOND, 5).unwrap().with_delay(delay_ms * 1_000_000);
            let mut tat = 0;
            let mut now = T0;
            let mut due = Vec::new();
            for gap in gaps {
                now += gap;
                let step = acquire(tat, now, &q, 1);
                if let Some(next) = step.state {
                    tat = next;
                    due.push(now + step.outcome.retry_after);
                }
            }
            due.sort_unstable();
            for (i, &a) in due.iter().enumerate() {
                for &b in &due[i..] {
                    let elapsed = b - a;
                    let admitted = due.iter().filter(|&&d| d >= a && d <= b).count() as u64;
                    proptest::prop_assert!(admitted <= 5 + elapsed / q.emission_interval());
                }
            }
        }
    }

    #[test]
    fn burst_larger_than_rate() {
        let q = Quota::new(10, SECOND, 30).unwrap();
        let mut tat = 0;
        for _ in 0..30 {
            let step = acquire(tat, T0, &q, 1);
            assert!(step.outcome.allowed);
            tat = step.state.unwrap();
        }
        assert!(!acquire(tat, T0, &q, 1).outcome.allowed);
        assert_eq!(acquire(tat, T0, &q, 1).outcome.limit, 30);
    }
}
