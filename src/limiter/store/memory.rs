//! The embedded store: each subject's counters side by side in a sharded table (`table`).
//!
//! A request's limits on one caller cost one lookup and one cache line of the table, not one
//! per limit: with a million callers tracked, that cold memory is most of a decision's time.
//! Counting takes a shard read lock and updates each counter with a CAS loop; a subject's
//! first use of a limit takes the shard's write lock once. Memory is bounded by
//! `max_entries` counters. Counters whose state is as good as none (`idle_at` passed) are
//! swept, a cache line at a time: dropping them loses nothing. When the cap is reached and
//! nothing can be dropped safely, new counters go to one overflow counter per limit instead,
//! so a flood of random keys can neither exhaust memory nor evict an active abuser's count.

mod table;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{Checking, Store};
use crate::limiter::clock::{Nanos, SECOND};
use crate::limiter::{Check, CounterKey, Outcome, Outcomes};
use crate::telemetry;
use table::{Counter, Table};

/// Subject of the shared counter that new subjects use once the map is full.
pub const OVERFLOW_SUBJECT: u64 = u64::MAX;

/// Default cap on tracked counters (128 MB of table at the worst: one counter per subject,
/// one 64-byte line each, the table at most half full).
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

/// The read lock of the subject last counted (see `table::Table::reader`).
type Held<'a> = Option<(u64, table::Reader<'a>)>;

/// The embedded store.
pub struct MemoryStore {
    table: Table,
    /// Counters tracked: what `max_entries` bounds.
    len: AtomicUsize,
    max_entries: usize,
    last_full_sweep: AtomicU64,
}

impl MemoryStore {
    /// A store that tracks at most `max_entries` counters (plus one overflow counter per limit).
    pub fn new(max_entries: usize) -> Self {
        Self {
            table: Table::new(),
            len: AtomicUsize::new(0),
            max_entries: max_entries.max(1),
            last_full_sweep: AtomicU64::new(0),
        }
    }

    /// Counts `check`; `held` keeps the shard read lock of the last subject counted, so a
    /// request's limits on one caller take it once.
    fn acquire<'a>(&'a self, held: &mut Held<'a>, check: &Check, now: Nanos) -> Outcome {
        let subject = check.key.subject;
        if held.as_ref().is_none_or(|(s, _)| *s != subject) {
            *held = None;
            *held = Some((subject, self.table.reader(subject)));
        }
        if let Some(counter) = held.as_ref().and_then(|(_, r)| r.counter(check.key)) {
            return update(&counter, check, now);
        }
        *held = None;
        let fresh = check.algorithm.acquire(0, now, &check.quota, check.cost);
        if fresh.state.is_none() {
            // Nothing would be stored (the cost alone exceeds the limit).
            return fresh.outcome;
        }
        let key = self.admit(check.key, now);
        let (outcome, created) = self
            .table
            .with_new_counter(key, |counter| update(counter, check, now));
        if created {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        outcome
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
        let give_back = |counter: &Counter<'_>| {
            let _ = counter
                .state
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                    Some(check.algorithm.refund(state, now, &check.quota, check.cost))
                });
        };
        // Counted on the subject's own counter, or else on the overflow one.
        if self.table.with_counter(check.key, give_back).is_none() {
            let overflow = CounterKey {
                limit: check.key.limit,
                subject: OVERFLOW_SUBJECT,
            };
            self.table.with_counter(overflow, give_back);
        }
    }

    fn peek_one(&self, check: &Check, now: Nanos) -> Outcome {
        let state = self
            .table
            .with_counter(check.key, |counter| counter.state.load(Ordering::Acquire))
            .unwrap_or(0);
        check.algorithm.peek(state, now, &check.quota, check.cost)
    }
}

/// CAS loop on one counter. Its shard is locked, so a sweep cannot drop it between storing
/// a state and recording when that state becomes as good as none.
fn update(counter: &Counter<'_>, check: &Check, now: Nanos) -> Outcome {
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
                counter.keep_until(step.idle_at);
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
        let removed = self.table.sweep(now);
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
