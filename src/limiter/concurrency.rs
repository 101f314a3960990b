//! `concurrency` limits: at most N requests of one subject in flight at once.
//!
//! This table counts the slots held in this process: a map of one `AtomicU32` per (limit,
//! subject). A request holds a `Permit`; the response body keeps it until the body ends, the
//! client goes away or the upstream fails, and dropping it gives the slots back. Nothing here
//! can leak a slot that Rust's ownership does not also drop.
//!
//! With the Redis store the limit is enforced across replicas by
//! `store::redis::RedisSlots`, which takes its slots here too, without a maximum: this
//! table then counts the replica's own share of the slots (for the gauge, and as the
//! fallback while Redis fails), and the permit also holds the Redis lease.

use std::any::Any;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use metrics::Gauge;
use smallvec::SmallVec;

use super::store::memory::KeyHasher;
use super::CounterKey;
use crate::telemetry;

/// Something that keeps in-flight slots taken while it lives. The proxy puts one into the
/// upstream request's extensions (`Request::extensions().get::<Held>()`): code that outlives
/// the response body, such as an upgraded (WebSocket) tunnel, clones it and keeps the clone
/// until the tunnel closes, so the caller's slot stays taken for as long as the tunnel is open.
#[derive(Clone)]
pub struct Held(pub Arc<dyn Any + Send + Sync>);

/// In-flight counts per (limit, subject).
pub struct InFlight {
    slots: DashMap<CounterKey, Arc<AtomicU32>, BuildHasherDefault<KeyHasher>>,
    gauge: Gauge,
}

impl Default for InFlight {
    fn default() -> Self {
        Self::new()
    }
}

impl InFlight {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            slots: DashMap::with_hasher(BuildHasherDefault::default()),
            gauge: metrics::gauge!(telemetry::IN_FLIGHT),
        }
    }

    /// Takes one slot of each `(key, max, shadow)`, all or none; on failure returns the
    /// index of the first full one and takes nothing. A full shadow limit never fails: its
    /// slot is left alone and `Permit::shadow_full` reports it.
    pub fn acquire(
        &self,
        wanted: impl IntoIterator<Item = (CounterKey, u32, bool)>,
    ) -> Result<Permit, usize> {
        let mut permit = Permit {
            slots: SmallVec::new(),
            gauge: self.gauge.clone(),
            shadow_full: false,
            lease: None,
        };
        for (i, (key, max, shadow)) in wanted.into_iter().enumerate() {
            let slot = self.slot(key);
            let taken = slot
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok();
            if taken {
                self.gauge.increment(1.0);
                permit.slots.push(slot);
            } else if shadow {
                permit.shadow_full = true;
            } else {
                return Err(i); // `permit` drops here and gives back what it took.
            }
        }
        Ok(permit)
    }

    /// Requests in flight for `key` now.
    pub fn held(&self, key: CounterKey) -> u32 {
        self.slots
            .get(&key)
            .map_or(0, |slot| slot.load(Ordering::Acquire))
    }

    /// Drops the counts of subjects with nothing in flight.
    pub fn sweep(&self) {
        // An `Arc` held outside the map is a permit (or an acquirer) using the slot: keep it.
        self.slots
            .retain(|_, slot| Arc::strong_count(slot) > 1 || slot.load(Ordering::Acquire) > 0);
    }

    fn slot(&self, key: CounterKey) -> Arc<AtomicU32> {
        if let Some(slot) = self.slots.get(&key) {
            return slot.clone();
        }
        self.slots.entry(key).or_default().clone()
    }
}

/// Why a request got no concurrency slots.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The non-shadow limit at this index of those asked for is full.
    Full(usize),
    /// The shared slots are unreachable and `on_error: deny` refuses the request.
    Unavailable,
}

/// Slots taken by one request; dropping it gives them back.
pub struct Permit {
    slots: SmallVec<[Arc<AtomicU32>; 2]>,
    gauge: Gauge,
    /// A shadow concurrency limit was full: the request would have been rejected.
    pub shadow_full: bool,
    /// Slots held elsewhere (a Redis lease), given back when it drops with the permit.
    lease: Option<Box<dyn Any + Send + Sync>>,
}

impl Permit {
    /// The same permit also keeping `lease` (slots held outside this table) until it drops.
    pub fn with_lease(mut self, lease: Box<dyn Any + Send + Sync>) -> Self {
        self.lease = Some(lease);
        self
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        for slot in &self.slots {
            slot.fetch_sub(1, Ordering::AcqRel);
            self.gauge.decrement(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(subject: u64) -> CounterKey {
        CounterKey { limit: 1, subject }
    }

    #[test]
    fn at_most_max_at_once_and_dropping_gives_back() {
        let table = InFlight::new();
        let permits: Vec<Permit> = (0..5)
            .map(|_| table.acquire([(key(1), 5, false)]).unwrap())
            .collect();
        assert_eq!(table.held(key(1)), 5);
        assert_eq!(table.acquire([(key(1), 5, false)]).err(), Some(0));
        // Another subject has its own slots.
        let other = table.acquire([(key(2), 5, false)]).unwrap();
        drop(permits);
        assert_eq!(table.held(key(1)), 0);
        assert!(table.acquire([(key(1), 5, false)]).is_ok());
        drop(other);
        table.sweep();
        assert_eq!(table.slots.len(), 0);
    }

    #[test]
    fn all_or_none_across_limits() {
        let table = InFlight::new();
        let _full = table.acquire([(key(9), 1, false)]).unwrap();
        // The first slot is free, the second full: neither is kept.
        assert_eq!(
            table
                .acquire([(key(1), 5, false), (key(9), 1, false)])
                .err(),
            Some(1)
        );
        assert_eq!(table.held(key(1)), 0);
    }

    #[test]
    fn a_full_shadow_limit_never_fails() {
        let table = InFlight::new();
        let _full = table.acquire([(key(9), 1, true)]).unwrap();
        let permit = table.acquire([(key(9), 1, true)]).unwrap();
        assert!(permit.shadow_full);
        assert_eq!(table.held(key(9)), 1);
    }

    #[test]
    fn sweep_keeps_slots_in_use() {
        let table = InFlight::new();
        let permit = table.acquire([(key(1), 2, false)]).unwrap();
        table.sweep();
        assert_eq!(table.held(key(1)), 1);
        drop(permit);
        table.sweep();
        assert_eq!(table.slots.len(), 0);
    }
}
