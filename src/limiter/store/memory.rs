//! The embedded store: a sharded concurrent map of one `AtomicU64` per counter.
//!
//! The request path takes a shard read lock and updates the counter with a CAS loop; a new
//! counter takes the shard's write lock once. Memory is bounded by `max_entries`. Entries
//! whose state is as good as none (`idle_at` passed) are swept: dropping them loses
//! nothing. When the cap is reached and nothing can be dropped safely, new subjects share
//! one overflow counter per limit instead of getting fresh ones, so a flood of random
//! keys can neither exhaust memory nor evict an active abuser's count.

use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;

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

struct Entry {
    state: AtomicU64,
    idle_at: AtomicU64,
}

/// The embedded store.
pub struct MemoryStore {
    entries: DashMap<CounterKey, Entry, BuildHasherDefault<KeyHasher>>,
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

    fn acquire(&self, check: &Check, now: Nanos) -> Outcome {
        if let Some(entry) = self.entries.get(&check.key) {
            return update(&entry, check, now);
        }
        let fresh = check.algorithm.acquire(0, now, &check.quota, check.cost);
        if fresh.state.is_none() {
            // Nothing would be stored (the cost alone exceeds the limit).
            return fresh.outcome;
        }
        let key = self.admit(check.key, now);
        let entry = match self.entries.entry(key) {
            MapEntry::Occupied(occupied) => occupied.into_ref(),
            MapEntry::Vacant(vacant) => {
                self.len.fetch_add(1, Ordering::Relaxed);
                vacant.insert(Entry {
                    state: AtomicU64::new(0),
                    idle_at: AtomicU64::new(0),
                })
            }
        };
        update(&entry, check, now)
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
        let key = if self.entries.contains_key(&check.key) {
            check.key
        } else {
            CounterKey {
                limit: check.key.limit,
                subject: OVERFLOW_SUBJECT,
            }
        };
        if let Some(entry) = self.entries.get(&key) {
            let _ = entry
                .state
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                    Some(check.algorithm.refund(state, now, &check.quota, check.cost))
                });
        }
    }

    fn peek_one(&self, check: &Check, now: Nanos) -> Outcome {
        let state = self
            .entries
            .get(&check.key)
            .map(|e| e.state.load(Ordering::Acquire))
            .unwrap_or(0);
        check.algorithm.peek(state, now, &check.quota, check.cost)
    }
}

/// CAS loop on one counter; the caller holds the shard lock, so a sweep cannot drop the
/// entry between the state update and the `idle_at` update.
fn update(entry: &Entry, check: &Check, now: Nanos) -> Outcome {
    let mut state = entry.state.load(Ordering::Acquire);
    loop {
        let step = check
            .algorithm
            .acquire(state, now, &check.quota, check.cost);
        let Some(next) = step.state else {
            return step.outcome;
        };
        match entry
            .state
            .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                entry.idle_at.fetch_max(step.idle_at, Ordering::AcqRel);
                return step.outcome;
            }
            Err(actual) => state = actual,
        }
    }
}

impl Store for MemoryStore {
    fn check(&self, checks: &[Check], now: Nanos) -> Checking {
        let mut outcomes = Outcomes::new();
        let mut rejected = false;
        for (i, check) in checks.iter().enumerate() {
            if rejected {
                outcomes.push(self.peek_one(check, now));
                continue;
            }
            let outcome = self.acquire(check, now);
            outcomes.push(outcome);
            if !outcome.allowed && !check.shadow {
                rejected = true;
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
        self.entries.retain(|_, entry| {
            let keep = entry.idle_at.load(Ordering::Acquire) > now;
            removed += usize::from(!keep);
            keep
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
