//! The embedded store: a sharded concurrent map from a subject to its counters.
//!
//! One entry holds every counter of one subject (a key, an org, an IP, or everyone) side by
//! side, so a request's limits on one caller cost one lookup and one cache-cold region of
//! the table, not one per limit: with a million callers tracked, that cold memory is most
//! of a decision's time. The request path takes a shard read lock and updates each counter
//! with a CAS loop; a subject's first use of a limit takes the shard's write lock once.
//! Memory is bounded by `max_entries` counters. Counters whose state is as good as none
//! (`idle_at` passed) are swept: dropping them loses nothing. When the cap is reached and
//! nothing can be dropped safely, new counters go to one overflow counter per limit instead,
//! so a flood of random keys can neither exhaust memory nor evict an active abuser's count.

use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::mapref::one::Ref;
use dashmap::DashMap;
use smallvec::SmallVec;

use super::{Checking, Store};
use crate::limiter::clock::{Nanos, SECOND};
use crate::limiter::{Check, CounterKey, Outcome, Outcomes};
use crate::telemetry;

/// Subject of the shared counter that new subjects use once the map is full.
pub const OVERFLOW_SUBJECT: u64 = u64::MAX;

/// Default cap on tracked counters (about 100 MB at the worst).
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

/// Counter keys and subjects are already keyed hashes: they are used as they are, so the
/// neighbourhood [`CounterKey`]'s `Hash` builds survives. Byte strings are mixed.
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(29) ^ n;
    }
}

/// One counter of a subject.
struct Counter {
    /// `CounterKey::limit`.
    limit: u64,
    state: AtomicU64,
    idle_at: AtomicU64,
}

/// A subject's counters. Most subjects meet at most three limits (a route's, a plan's, an
/// org's), kept inline in the table's own slot.
type Counters = SmallVec<[Counter; 3]>;

type Table = DashMap<u64, Counters, BuildHasherDefault<KeyHasher>>;

/// A shard read lock on one subject's counters, kept while consecutive checks of a request
/// count the same subject. At most one is held at a time: two read locks on one shard from
/// one thread could deadlock behind a waiting writer.
type Held<'a> = Option<(u64, Ref<'a, u64, Counters>)>;

/// The embedded store.
pub struct MemoryStore {
    entries: Table,
    /// Counters tracked (not subjects): what `max_entries` bounds.
    len: AtomicUsize,
    max_entries: usize,
    last_full_sweep: AtomicU64,
}

impl MemoryStore {
    /// A store that tracks at most `max_entries` counters (plus one overflow counter per limit).
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: DashMap::with_hasher(BuildHasherDefault::default()),
            len: AtomicUsize::new(0),
            max_entries: max_entries.max(1),
            last_full_sweep: AtomicU64::new(0),
        }
    }

    fn acquire<'a>(&'a self, held: &mut Held<'a>, check: &Check, now: Nanos) -> Outcome {
        let subject = check.key.subject;
        if held.as_ref().is_none_or(|(s, _)| *s != subject) {
            *held = None;
            *held = self
                .entries
                .get(&subject)
                .map(|counters| (subject, counters));
        }
        if let Some((_, counters)) = held {
            if let Some(counter) = find(counters, check.key.limit) {
                return update(counter, check, now);
            }
        }
        *held = None;
        let fresh = check.algorithm.acquire(0, now, &check.quota, check.cost);
        if fresh.state.is_none() {
            // Nothing would be stored (the cost alone exceeds the limit).
            return fresh.outcome;
        }
        let key = self.admit(check.key, now);
        let mut counters = self.entries.entry(key.subject).or_default();
        let at = match counters.iter().position(|c| c.limit == key.limit) {
            Some(at) => at,
            None => {
                self.len.fetch_add(1, Ordering::Relaxed);
                counters.push(Counter {
                    limit: key.limit,
                    state: AtomicU64::new(0),
                    idle_at: AtomicU64::new(0),
                });
                counters.len() - 1
            }
        };
        update(&counters[at], check, now)
    }

    /// The key a new counter is stored under: its own, or the overflow counter when full.
    fn admit(&self, key: CounterKey, now: Nanos) -> CounterKey {
        if self.len.load(Ordering::Relaxed) < self.max_entries {
            return key;
        }
        // One sweep per second at most, by whichever request gets here first.
        let last = self.last_full_sweep.load(Ordering::Relaxed);
        if now >= last + SECOND
            && self
                .last_full_sweep
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep(now);
        }
        if self.len.load(Ordering::Relaxed) < self.max_entries {
            return key;
        }
        telemetry::store_overflow();
        CounterKey {
            limit: key.limit,
            subject: OVERFLOW_SUBJECT,
        }
    }

    fn refund(&self, check: &Check, now: Nanos) {
        let give_back = |counter: &Counter| {
            let _ = counter
                .state
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                    Some(check.algorithm.refund(state, now, &check.quota, check.cost))
                });
        };
        // Counted on the subject's own counter, or else on the overflow one.
        for subject in [check.key.subject, OVERFLOW_SUBJECT] {
            if let Some(counters) = self.entries.get(&subject) {
                if let Some(counter) = find(&counters, check.key.limit) {
                    return give_back(counter);
                }
            }
        }
    }

    fn peek_one(&self, check: &Check, now: Nanos) -> Outcome {
        let state = self
            .entries
            .get(&check.key.subject)
            .and_then(|counters| {
                find(&counters, check.key.limit).map(|c| c.state.load(Ordering::Acquire))
            })
            .unwrap_or(0);
        check.algorithm.peek(state, now, &check.quota, check.cost)
    }
}

fn find(counters: &Counters, limit: u64) -> Option<&Counter> {
    counters.iter().find(|c| c.limit == limit)
}

/// CAS loop on one counter; the caller holds the shard lock, so a sweep cannot drop the
/// counter between the state update and the `idle_at` update.
fn update(counter: &Counter, check: &Check, now: Nanos) -> Outcome {
    let mut state = counter.state.load(Ordering::Acquire);
    loop {
        let step = check
            .algorithm
            .acquire(state, now, &check.quota, check.cost);
        let Some(next) = step.state else {
            return step.outcome;
        };
        match counter
            .state
            .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                counter.idle_at.fetch_max(step.idle_at, Ordering::AcqRel);
                return step.outcome;
            }
            Err(actual) => state = actual,
        }
    }
}

impl Store for MemoryStore {
    fn check(&self, checks: &[Check], now: Nanos) -> Checking {
        let mut outcomes = Outcomes::new();
        let mut held: Held<'_> = None;
        let mut rejected = false;
        for (i, check) in checks.iter().enumerate() {
            if rejected {
                outcomes.push(self.peek_one(check, now));
                continue;
            }
            let outcome = self.acquire(&mut held, check, now);
            outcomes.push(outcome);
            if !outcome.allowed && !check.shadow {
                rejected = true;
                held = None;
                // Give back what the earlier limits took, and report them untouched.
                for (j, earlier) in checks[..i].iter().enumerate() {
                    if outcomes[j].allowed {
                        self.refund(earlier, now);
                        outcomes[j] = self.peek_one(earlier, now);
                    }
                }
            }
        }
        Checking::Ready(Ok(outcomes))
    }

    fn peek(&self, checks: &[Check], now: Nanos) -> Checking {
        Checking::Ready(Ok(checks
            .iter()
            .map(|check| self.peek_one(check, now))
            .collect()))
    }

    fn sweep(&self, now: Nanos) {
        let mut removed = 0;
        self.entries.retain(|_, counters| {
            let before = counters.len();
            counters.retain(|c| c.idle_at.load(Ordering::Acquire) > now);
            removed += before - counters.len();
            !counters.is_empty()
        });
        self.len.fetch_sub(removed, Ordering::Relaxed);
    }

    fn tracked_entries(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests;
