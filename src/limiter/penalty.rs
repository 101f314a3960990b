//! The penalty box: an identity rejected `violations` times within `within` is blocked for
//! `block_for`; every request during the block is answered 429 without touching a counter.
//!
//! `Penalties` is the storage trait (the memory backend is here; a shared backend can
//! implement it too); the proxy asks it before checking limits and tells it about every
//! real (non-shadow) rejection. Subjects are the identities' keyed hashes, as for counters.

use std::future::Future;
use std::hash::BuildHasherDefault;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use super::clock::Nanos;
use super::store::memory::KeyHasher;
use crate::telemetry;

/// A penalty rule: `violations` rejections within `within` block for `block_for`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Penalty {
    /// Rejections that earn a block.
    pub violations: NonZeroU32,
    /// The period they must fall in, counted from the first.
    pub within: Nanos,
    /// How long the block lasts.
    pub block_for: Nanos,
}

/// Where blocks and violation counts live.
pub trait Penalties: Send + Sync + 'static {
    /// When `subject`'s block ends, if it is blocked at `now`.
    fn blocked_until(&self, subject: u64, now: Nanos) -> Option<Nanos>;

    /// Counts one rejection of `subject` under `rule`; answers the end of the block it
    /// starts, if it starts one.
    fn violation(&self, subject: u64, rule: &Penalty, now: Nanos) -> Violation;

    /// Drops entries that are over (block ended, violation window passed) and refreshes the
    /// blocked-identities gauge. Called periodically.
    fn sweep(&self, now: Nanos);

    /// Identities blocked at `now`.
    fn blocked(&self, now: Nanos) -> usize;
}

/// A penalty box's answer to a violation: at once (memory) or later (a shared box).
pub enum Violation {
    /// Answered without waiting.
    Ready(Option<Nanos>),
    /// A remote box's answer in flight (only on a rejection, never on an allowed request).
    Pending(Pin<Box<dyn Future<Output = Option<Nanos>> + Send>>),
}

impl Violation {
    /// Waits for the answer: the end of the block the violation started, if any.
    pub async fn resolve(self) -> Option<Nanos> {
        match self {
            Violation::Ready(until) => until,
            Violation::Pending(future) => future.await,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// Start of the current violation window.
    since: Nanos,
    /// When the current window is over (`since + within`).
    window_end: Nanos,
    /// Violations in the current window.
    count: u32,
    /// End of the block; in the past when not blocked.
    blocked_until: Nanos,
}

/// The embedded penalty box: one small entry per identity that was rejected recently.
pub struct MemoryPenalties {
    entries: DashMap<u64, Entry, BuildHasherDefault<KeyHasher>>,
    max_entries: usize,
    len: AtomicUsize,
}

impl MemoryPenalties {
    /// A penalty box tracking at most `max_entries` identities; beyond that, new offenders
    /// go untracked until a sweep makes room (a flood of random keys cannot exhaust memory).
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: DashMap::with_hasher(BuildHasherDefault::default()),
            max_entries: max_entries.max(1),
            len: AtomicUsize::new(0),
        }
    }
}

impl Penalties for MemoryPenalties {
    fn blocked_until(&self, subject: u64, now: Nanos) -> Option<Nanos> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let until = self.entries.get(&subject)?.blocked_until;
        (until > now).then_some(until)
    }

    fn violation(&self, subject: u64, rule: &Penalty, now: Nanos) -> Violation {
        Violation::Ready(self.record(subject, rule, now))
    }

    fn sweep(&self, now: Nanos) {
        self.sweep_entries(now);
    }

    fn blocked(&self, now: Nanos) -> usize {
        self.entries
            .iter()
            .filter(|entry| entry.blocked_until > now)
            .count()
    }
}

impl MemoryPenalties {
    /// Counts one rejection (see `Penalties::violation`).
    pub fn record(&self, subject: u64, rule: &Penalty, now: Nanos) -> Option<Nanos> {
        if !self.entries.contains_key(&subject)
            && self.len.load(Ordering::Relaxed) >= self.max_entries
        {
            return None;
        }
        let mut entry = self.entries.entry(subject).or_insert_with(|| {
            self.len.fetch_add(1, Ordering::Relaxed);
            Entry::default()
        });
        if entry.blocked_until > now {
            return None;
        }
        if entry.count == 0 || now >= entry.window_end {
            entry.since = now;
            entry.window_end = now.saturating_add(rule.within);
            entry.count = 0;
        }
        entry.count += 1;
        if entry.count < rule.violations.get() {
            return None;
        }
        entry.count = 0;
        entry.blocked_until = now.saturating_add(rule.block_for);
        telemetry::penalty_started();
        Some(entry.blocked_until)
    }

    /// Drops what is over; sets the gauge to the identities blocked here.
    fn sweep_entries(&self, now: Nanos) {
        let mut blocked = 0;
        self.entries.retain(|_, entry| {
            let keep = entry.blocked_until > now || (entry.count > 0 && now < entry.window_end);
            if !keep {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
            blocked += usize::from(entry.blocked_until > now);
            keep
        });
        telemetry::penalty_blocked(blocked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::clock::{Clock, ManualClock, SECOND};

    const T0: Nanos = 1_700_000_000 * SECOND;

    fn rule(violations: u32, within: u64, block_for: u64) -> Penalty {
        Penalty {
            violations: NonZeroU32::new(violations).unwrap(),
            within: within * SECOND,
            block_for: block_for * SECOND,
        }
    }

    #[test]
    fn the_nth_violation_within_the_period_blocks_and_the_block_counts_down_then_lifts() {
        let clock = ManualClock::at(T0);
        let box_ = MemoryPenalties::new(100);
        let rule = rule(3, 60, 3600);
        assert_eq!(box_.record(7, &rule, clock.now()), None);
        clock.advance(10 * SECOND);
        assert_eq!(box_.record(7, &rule, clock.now()), None);
        assert_eq!(box_.blocked_until(7, clock.now()), None);
        clock.advance(10 * SECOND);
        let until = box_
            .record(7, &rule, clock.now())
            .expect("third violation blocks");
        assert_eq!(until, T0 + 20 * SECOND + 3600 * SECOND);
        assert_eq!(box_.blocked(clock.now()), 1);
        // The remaining block shrinks as time passes...
        for elapsed in [0, 1, 1800, 3599] {
            let now = T0 + 20 * SECOND + elapsed * SECOND;
            assert_eq!(box_.blocked_until(7, now), Some(until));
            assert_eq!((until - now) / SECOND, 3600 - elapsed);
        }
        // ...and is over exactly at its end.
        assert_eq!(box_.blocked_until(7, until - 1), Some(until));
        assert_eq!(box_.blocked_until(7, until), None);
        // Other identities were never touched.
        assert_eq!(box_.blocked_until(8, clock.now()), None);
        // After the block the count starts afresh.
        assert_eq!(box_.record(7, &rule, until), None);
    }

    #[test]
    fn violations_spread_wider_than_the_period_never_block() {
        let box_ = MemoryPenalties::new(100);
        let rule = rule(2, 60, 3600);
        for minute in 0..10 {
            assert_eq!(box_.record(1, &rule, T0 + minute * 60 * SECOND), None);
        }
    }

    #[test]
    fn sweep_forgets_what_is_over_and_the_cap_bounds_memory() {
        let box_ = MemoryPenalties::new(2);
        let rule = rule(1, 60, 10);
        assert!(box_.record(1, &rule, T0).is_some());
        assert!(box_.record(2, &rule, T0).is_some());
        // Full: a third offender goes untracked rather than growing the map.
        assert_eq!(box_.record(3, &rule, T0), None);
        box_.sweep(T0 + 5 * SECOND);
        assert_eq!(box_.entries.len(), 2);
        box_.sweep(T0 + 10 * SECOND);
        assert_eq!(box_.entries.len(), 0);
        assert!(box_.record(3, &rule, T0 + 10 * SECOND).is_some());
    }
}
