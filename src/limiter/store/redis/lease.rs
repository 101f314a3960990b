//! `mode: sync`: requests spend units this replica leased from Redis ahead of time.
//!
//! Every unit a request spends here was first taken from the Redis counter by a lease
//! call (the script's `lease` mode, which takes units exactly as requests of that cost
//! would), so Redis never counts less than was admitted. Every `sync_interval` a task
//! renews each lease: it gives back the units held beyond the recent demand and asks for
//! up to four times that demand (at most a share of the limit). A request
//! that does not fit its leases is checked by Redis in strict mode. See docs/redis.md for
//! the over-admission bound.

use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::super::memory::KeyHasher;
use crate::limiter::clock::Nanos;
use crate::limiter::{Algorithm, Check, CounterKey, Outcome, Outcomes, Quota};

/// Leases by counter.
pub(super) struct Leases {
    map: DashMap<CounterKey, Arc<Lease>, BuildHasherDefault<KeyHasher>>,
    max_entries: usize,
}

/// Units of one counter this replica may admit without asking Redis.
pub(super) struct Lease {
    algorithm: Algorithm,
    quota: Quota,
    /// Units left to spend.
    left: AtomicU32,
    /// Units requests took or asked for since the last renewal.
    demand: AtomicU32,
    /// Recent demand: the last interval's, or half the previous figure if that is more,
    /// so bursty traffic (nothing in one interval, a burst in the next) keeps its lease.
    /// Only the renewal task touches it.
    recent: AtomicU32,
    /// Local time from which the units left may not be spent: a fixed window's reset as
    /// measured from before the lease call was sent (so never late); `u64::MAX` otherwise.
    deadline: AtomicU64,
    /// Redis's `remaining` after the last grant, for the headers.
    remaining: AtomicU32,
    /// Redis's `reset` at the last grant (server time, ns).
    reset: AtomicU64,
}

/// One counter's part of a lease call.
pub(super) struct Renewal {
    pub key: CounterKey,
    pub lease: Arc<Lease>,
    /// Unspent units given back (already removed from the lease).
    pub back: u32,
    /// Units asked for.
    pub want: u32,
}

impl Renewal {
    /// The counter as the script's argument list describes it: `cost` is the units asked.
    pub fn check(&self) -> Check {
        Check {
            key: self.key,
            algorithm: self.lease.algorithm,
            quota: self.lease.quota,
            cost: self.want,
            shadow: false,
        }
    }
}

/// Redis's answer for one counter of a lease call.
pub(super) struct Grant {
    pub granted: u32,
    pub remaining: u32,
    pub reset: Nanos,
}

impl Leases {
    pub fn new(max_entries: usize) -> Self {
        Self {
            map: DashMap::with_hasher(BuildHasherDefault::default()),
            max_entries,
        }
    }

    /// Whether no counter is leased.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Spends `cost` units of each check's lease, all or nothing; `None` (nothing spent)
    /// when a lease is missing, expired or short.
    pub fn take(&self, checks: &[Check], now: Nanos) -> Option<Outcomes> {
        if self.map.is_empty() {
            return None;
        }
        let mut outcomes = Outcomes::new();
        for (i, check) in checks.iter().enumerate() {
            let outcome = self
                .map
                .get(&check.key)
                .and_then(|lease| lease.take(check, now));
            match outcome {
                Some(outcome) => outcomes.push(outcome),
                None => {
                    for taken in &checks[..i] {
                        if let Some(lease) = self.map.get(&taken.key) {
                            lease.give_back(taken.cost);
                        }
                    }
                    return None;
                }
            }
        }
        Some(outcomes)
    }

    /// Notes that a request asked Redis for these counters, so the next renewal leases
    /// them.
    pub fn ask(&self, checks: &[Check]) {
        for check in checks {
            if let Some(lease) = self.map.get(&check.key) {
                if lease.fits(check) {
                    lease.demand.fetch_add(check.cost, Ordering::Relaxed);
                    continue;
                }
            }
            if self.map.len() < self.max_entries {
                // New, or its rate changed on reload (the old lease's units are dropped).
                self.map
                    .insert(check.key, Arc::new(Lease::new(check, check.cost)));
            }
        }
    }

    /// What to give back and ask for, counter by counter, with `replicas` live replicas;
    /// forgets counters whose recent demand fell to nothing.
    pub fn plan(&self, now: Nanos, replicas: u32) -> Vec<Renewal> {
        let leases: Vec<(CounterKey, Arc<Lease>)> = self
            .map
            .iter()
            .map(|entry| (*entry.key(), entry.value().clone()))
            .collect();
        let mut renewals = Vec::with_capacity(leases.len());
        for (key, lease) in leases {
            let demand = lease.demand.swap(0, Ordering::Relaxed);
            let recent = demand.max(lease.recent.load(Ordering::Relaxed) / 2);
            lease.recent.store(recent, Ordering::Relaxed);
            let want = recent.saturating_mul(4).min(lease.cap(replicas));
            let keep = if now >= lease.deadline.load(Ordering::Relaxed) {
                0
            } else {
                want
            };
            let left = lease
                .left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                    (left > keep).then_some(keep)
                })
                .unwrap_or_else(|left| left);
            let back = left.saturating_sub(keep);
            let want = want.saturating_sub(left.min(keep));
            if recent == 0 {
                self.map.remove_if(&key, |_, l| {
                    Arc::ptr_eq(l, &lease)
                        && l.demand.load(Ordering::Relaxed) == 0
                        && l.left.load(Ordering::Relaxed) == 0
                });
            }
            if back > 0 || want > 0 {
                renewals.push(Renewal {
                    key,
                    lease,
                    back,
                    want,
                });
            }
        }
        renewals
    }
}

impl Lease {
    fn new(check: &Check, demand: u32) -> Self {
        Self {
            algorithm: check.algorithm,
            quota: check.quota,
            left: AtomicU32::new(0),
            demand: AtomicU32::new(demand),
            recent: AtomicU32::new(0),
            deadline: AtomicU64::new(0),
            remaining: AtomicU32::new(0),
            reset: AtomicU64::new(0),
        }
    }

    /// Whether this lease counts `check`'s limit at its current rate.
    fn fits(&self, check: &Check) -> bool {
        self.quota == check.quota && self.algorithm == check.algorithm
    }

    /// The most units one replica holds: a quarter of the limit's capacity shared by the
    /// live replicas, at least 1. This bounds what leases can do to accuracy.
    pub fn cap(&self, replicas: u32) -> u32 {
        cap(self.algorithm, &self.quota, replicas)
    }

    fn take(&self, check: &Check, now: Nanos) -> Option<Outcome> {
        if !self.fits(check) || now >= self.deadline.load(Ordering::Acquire) {
            return None;
        }
        let before = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(check.cost)
            })
            .ok()?;
        self.demand.fetch_add(check.cost, Ordering::Relaxed);
        let limit = match self.algorithm {
            Algorithm::TokenBucket => self.quota.burst(),
            _ => self.quota.limit(),
        };
        let left = before - check.cost;
        Some(Outcome {
            allowed: true,
            limit,
            remaining: self
                .remaining
                .load(Ordering::Relaxed)
                .saturating_add(left)
                .min(limit),
            reset: self.reset.load(Ordering::Relaxed),
            retry_after: 0,
        })
    }

    fn give_back(&self, cost: u32) {
        self.left.fetch_add(cost, Ordering::AcqRel);
        self.demand.fetch_sub(cost, Ordering::Relaxed);
    }

    /// Adds Redis's grant. `sent` is the local time before the call was sent, `ran` the
    /// server time the script ran at: a fixed window's units expire `reset - ran` after
    /// `sent`, which is no later than the real reset.
    pub fn grant(&self, grant: &Grant, sent: Nanos, ran: Nanos) {
        if self.algorithm == Algorithm::FixedWindow {
            if self.reset.load(Ordering::Relaxed) != grant.reset {
                // A new window: what is left belongs to the old one.
                self.left.store(0, Ordering::Release);
            }
            self.deadline.store(
                sent.saturating_add(grant.reset.saturating_sub(ran)),
                Ordering::Release,
            );
        } else {
            self.deadline.store(u64::MAX, Ordering::Release);
        }
        self.remaining.store(grant.remaining, Ordering::Relaxed);
        self.reset.store(grant.reset, Ordering::Relaxed);
        self.left.fetch_add(grant.granted, Ordering::AcqRel);
    }
}

/// The most units of a limit one of `replicas` replicas holds in a lease.
pub fn cap(algorithm: Algorithm, quota: &Quota, replicas: u32) -> u32 {
    let capacity = match algorithm {
        Algorithm::TokenBucket => quota.burst(),
        _ => quota.limit(),
    };
    (capacity / 4 / replicas.max(1)).max(1)
}
