//! Limits and decisions: `Quota`, `Algorithm`, one `Decision` for all limits of a request.
//!
//! Owns the arithmetic (in the pure `gcra` and `window` modules) and the all-or-nothing
//! rule: a request passes only if every limit allows it, and a rejected request takes
//! nothing from any of them. Where counters live is the `Store`'s business; which limits
//! apply is the policy's.

pub mod clock;
pub mod concurrency;
pub mod gcra;
pub mod penalty;
pub mod store;
pub mod window;

use std::fmt;

use smallvec::SmallVec;

use clock::Nanos;

/// How many limits one request usually meets without spilling to the heap.
pub const INLINE_LIMITS: usize = 4;

/// A validated rate: `limit` units per `period`, with a token bucket's `burst`.
///
/// Zero values cannot be represented, so the hot path never divides by zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    limit: u32,
    period: Nanos,
    burst: u32,
    emission_interval: Nanos,
    delay: Nanos,
}

impl Quota {
    /// `None` when a value is zero or the period is too short to space `limit` units.
    pub fn new(limit: u32, period: Nanos, burst: u32) -> Option<Self> {
        if limit == 0 || burst == 0 || period == 0 {
            return None;
        }
        // Rounded up: a bucket may run a hair slower than its rate, never faster.
        let emission_interval = period.div_ceil(u64::from(limit));
        Some(Self {
            limit,
            period,
            burst,
            emission_interval,
            delay: 0,
        })
    }

    /// The same quota letting a token-bucket request that does not fit wait up to `delay`
    /// for its slot instead of being rejected (smoothing, like nginx's burst queue).
    pub fn with_delay(mut self, delay: Nanos) -> Self {
        self.delay = delay;
        self
    }

    /// How long a token-bucket request may wait for its slot (0: never waits).
    pub fn delay(&self) -> Nanos {
        self.delay
    }

    /// Units per period.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The period in nanoseconds.
    pub fn period(&self) -> Nanos {
        self.period
    }

    /// Token bucket capacity (defaults to `limit`).
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Time between two units of a token bucket.
    pub fn emission_interval(&self) -> Nanos {
        self.emission_interval
    }
}

/// How a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Windows aligned to the unix epoch.
    FixedWindow,
    /// Weighted two-window counter; see `window` for the error bound.
    SlidingWindow,
    /// GCRA: sustained rate plus burst.
    TokenBucket,
    /// At most `limit` requests in flight. Held by `concurrency::InFlight` (and, with the
    /// Redis store, `store::redis::RedisSlots`), never by a counter store: `Policy::checks`
    /// leaves these limits out, and the counter functions below treat them as always
    /// allowing.
    Concurrency,
}

impl Algorithm {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::Concurrency => "concurrency",
        }
    }

    /// Takes `cost` units if they fit.
    pub fn acquire(self, state: u64, now: Nanos, quota: &Quota, cost: u32) -> Step {
        match self {
            Algorithm::FixedWindow => window::fixed::acquire(state, now, quota, cost),
            Algorithm::SlidingWindow => window::sliding::acquire(state, now, quota, cost),
            Algorithm::TokenBucket => gcra::acquire(state, now, quota, cost),
            Algorithm::Concurrency => Step {
                outcome: untracked(now, quota),
                state: None,
                idle_at: now,
            },
        }
    }

    /// Answers as `acquire` would, taking nothing.
    pub fn peek(self, state: u64, now: Nanos, quota: &Quota, cost: u32) -> Outcome {
        match self {
            Algorithm::FixedWindow => window::fixed::peek(state, now, quota, cost),
            Algorithm::SlidingWindow => window::sliding::peek(state, now, quota, cost),
            Algorithm::TokenBucket => gcra::peek(state, now, quota, cost),
            Algorithm::Concurrency => untracked(now, quota),
        }
    }

    /// Returns `cost` units taken by `acquire` when another limit rejected the request.
    pub fn refund(self, state: u64, now: Nanos, quota: &Quota, cost: u32) -> u64 {
        match self {
            Algorithm::FixedWindow => window::fixed::refund(state, now, quota, cost),
            Algorithm::SlidingWindow => window::sliding::refund(state, now, quota, cost),
            Algorithm::TokenBucket => gcra::refund(state, quota, cost),
            Algorithm::Concurrency => state,
        }
    }
}

/// What a counter answers for a limit it does not hold (a concurrency limit).
fn untracked(now: Nanos, quota: &Quota) -> Outcome {
    Outcome {
        allowed: true,
        limit: quota.limit(),
        remaining: quota.limit(),
        reset: now,
        retry_after: 0,
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One limit's answer at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the request fits this limit.
    pub allowed: bool,
    /// The limit as advertised in `X-RateLimit-Limit`.
    pub limit: u32,
    /// Units left after this request (or before it, when rejected).
    pub remaining: u32,
    /// When the quota is whole again (unix nanoseconds).
    pub reset: Nanos,
    /// Rejected: how long until the request would fit. Allowed: how long it must wait for
    /// its slot before it is forwarded (a token bucket with a `delay`), usually 0.
    pub retry_after: Nanos,
}

/// Result of one algorithm step: the outcome, the state to store, and when the stored
/// state becomes equivalent to no state at all (so the store may drop it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// What to answer.
    pub outcome: Outcome,
    /// The new state, `None` when nothing was taken.
    pub state: Option<u64>,
    /// From this instant on, forgetting the entry loses nothing.
    pub idle_at: Nanos,
}

/// Which counter: the limit's identity (never its value, so a reload that changes the
/// rate keeps the count) and the subject it counts (a key, an org, an IP, or everyone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CounterKey {
    /// Hash of the limit's name, scope and algorithm.
    pub limit: u64,
    /// Keyed hash of the subject.
    pub subject: u64,
}

impl std::hash::Hash for CounterKey {
    /// The subject is a keyed hash already, so it is the hash; the limit only picks one of
    /// eight neighbouring slots. The counters of one caller then sit side by side in a table,
    /// and a request's limits cost one cache-cold region instead of one each.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.subject ^ (self.limit & 0b111));
    }
}

/// One limit to check for a request.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    /// The counter.
    pub key: CounterKey,
    /// How it counts.
    pub algorithm: Algorithm,
    /// Its rate.
    pub quota: Quota,
    /// Units this request takes.
    pub cost: u32,
    /// Shadow limits are counted and reported but never reject.
    pub shadow: bool,
}

/// Per-limit outcomes of one request, in the order the checks were given.
pub type Outcomes = SmallVec<[Outcome; INLINE_LIMITS]>;

/// The verdict for a whole request.
#[derive(Clone, Debug, Default)]
pub struct Decision {
    /// One outcome per check, in order.
    pub outcomes: Outcomes,
    /// Whether the request passes (shadow rejections do not count).
    pub allowed: bool,
    /// Bit `i` set: check `i` rejected (shadow or not).
    pub violated: u64,
    /// Bit `i` set: check `i` is a shadow limit (counted and reported, never enforced).
    pub shadow: u64,
    /// The check the response headers describe: the enforced violated one with the longest
    /// wait, or else the enforced one closest to exhaustion. Shadow limits never show in
    /// headers: clients must not react to a limit that is not enforced yet.
    pub headline: Option<usize>,
    /// Set when the store failed and the decision is its `on_error` fallback.
    pub degraded: bool,
}

impl Decision {
    /// Builds the verdict from outcomes; `shadow[i]` marks checks that never reject.
    pub fn from_outcomes(outcomes: Outcomes, checks: &[Check]) -> Self {
        let mut violated = 0u64;
        let mut shadow = 0u64;
        let mut allowed = true;
        for (i, (outcome, check)) in outcomes.iter().zip(checks).enumerate() {
            if check.shadow {
                shadow |= 1 << i;
            }
            if !outcome.allowed {
                violated |= 1 << i;
                allowed &= check.shadow;
            }
        }
        let headline = headline(&outcomes, violated & !shadow, shadow);
        Self {
            outcomes,
            allowed,
            violated,
            shadow,
            headline,
            degraded: false,
        }
    }

    /// An allow that checked nothing (exempt route or fail-open).
    pub fn allow_all() -> Self {
        Self {
            allowed: true,
            ..Self::default()
        }
    }

    /// The outcome the response headers describe.
    pub fn headline(&self) -> Option<&Outcome> {
        self.headline.map(|i| &self.outcomes[i])
    }

    /// Longest wait among violated enforced limits (among shadow ones when only those are).
    pub fn retry_after(&self) -> Nanos {
        let enforced = self.violated & !self.shadow;
        let mask = if enforced != 0 {
            enforced
        } else {
            self.violated
        };
        self.outcomes
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, o)| o.retry_after)
            .max()
            .unwrap_or(0)
    }

    /// Indexes of the checks that rejected.
    pub fn violated(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.outcomes.len()).filter(move |i| self.violated & (1 << i) != 0)
    }
}

fn headline(outcomes: &[Outcome], violated: u64, shadow: u64) -> Option<usize> {
    if violated != 0 {
        return (0..outcomes.len())
            .filter(|i| violated & (1 << i) != 0)
            .max_by_key(|&i| outcomes[i].retry_after);
    }
    // Closest to exhaustion: the smallest share left; ties go to the later reset.
    let enforced = (0..outcomes.len()).filter(|i| shadow & (1 << i) == 0);
    enforced.min_by(|&a, &b| {
        let (oa, ob) = (&outcomes[a], &outcomes[b]);
        let left_a = u64::from(oa.remaining) * u64::from(ob.limit.max(1));
        let left_b = u64::from(ob.remaining) * u64::from(oa.limit.max(1));
        left_a.cmp(&left_b).then(ob.reset.cmp(&oa.reset))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(allowed: bool, limit: u32, remaining: u32, retry: Nanos) -> Outcome {
        Outcome {
            allowed,
            limit,
            remaining,
            reset: 10,
            retry_after: retry,
        }
    }

    fn check(shadow: bool) -> Check {
        Check {
            key: CounterKey {
                limit: 1,
                subject: 1,
            },
            algorithm: Algorithm::FixedWindow,
            quota: Quota::new(1, 1, 1).unwrap(),
            cost: 1,
            shadow,
        }
    }

    #[test]
    fn quota_rejects_zero_values() {
        assert!(Quota::new(0, 1, 1).is_none());
        assert!(Quota::new(1, 0, 1).is_none());
        assert!(Quota::new(1, 1, 0).is_none());
        assert_eq!(Quota::new(3, 10, 3).unwrap().emission_interval(), 4);
    }

    #[test]
    fn headline_is_the_closest_to_exhaustion() {
        let outs: Outcomes = [outcome(true, 100, 50, 0), outcome(true, 10, 2, 0)]
            .into_iter()
            .collect();
        let d = Decision::from_outcomes(outs, &[check(false), check(false)]);
        assert!(d.allowed);
        assert_eq!(d.headline, Some(1));
    }

    #[test]
    fn headline_is_the_longest_violation_and_shadow_never_rejects() {
        let outs: Outcomes = [
            outcome(false, 100, 0, 5),
            outcome(true, 10, 2, 0),
            outcome(false, 10, 0, 9),
        ]
        .into_iter()
        .collect();
        let d = Decision::from_outcomes(outs.clone(), &[check(false), check(false), check(false)]);
        assert!(!d.allowed);
        assert_eq!(d.headline, Some(2));
        assert_eq!(d.retry_after(), 9);
        assert_eq!(d.violated().collect::<Vec<_>>(), vec![0, 2]);
        // The shadow violation never sets the headers nor the wait.
        let d = Decision::from_outcomes(outs.clone(), &[check(false), check(false), check(true)]);
        assert!(!d.allowed);
        assert_eq!(d.headline, Some(0));
        assert_eq!(d.retry_after(), 5);
        assert_eq!(d.violated().collect::<Vec<_>>(), vec![0, 2]);
        let shadow = Decision::from_outcomes(outs, &[check(true), check(false), check(true)]);
        assert!(shadow.allowed);
        assert_eq!(shadow.headline, Some(1));
        let all_shadow: Outcomes = [outcome(false, 10, 0, 9)].into_iter().collect();
        let d = Decision::from_outcomes(all_shadow, &[check(true)]);
        assert!(d.allowed);
        assert_eq!(d.headline, None);
    }
}
