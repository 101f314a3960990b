//! The memory store's table: each subject's counters in one cache line.
//!
//! With a million callers tracked, a decision's time is mostly the cold memory it touches,
//! and one random read of a table that size costs about 230 ns on our machines (a TLB miss
//! and a cache miss). A general-purpose hash table (hashbrown, under dashmap) reads its
//! control bytes and then its bucket: two cold regions per lookup. Here a bucket *is* a
//! 64-byte cache line — the subject, up to `SLOTS` counters and their idle time — found by
//! open addressing with linear probing on the subject hash itself, so a request's limits on
//! one caller cost one cold line.
//!
//! A subject with more than `SLOTS` limits continues in further buckets of the same shard
//! (its chain); each bucket's `idle_at` is at least that of the buckets after it in the
//! chain, so a sweep never drops a bucket while keeping a later one, and a lookup that
//! walks the chain never misses a counter that exists.
//!
//! The table is sharded by the subject's top bits; a shard is a `RwLock` over a vector of
//! buckets. Counting takes the read lock and updates the counter with atomics; creating a
//! counter, growing and sweeping take the write lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::limiter::clock::Nanos;
use crate::limiter::CounterKey;

/// Counters per bucket: what fits a cache line beside the subject and its idle time.
const SLOTS: usize = 3;
const SHARD_BITS: u32 = 6;
const MIN_BUCKETS: usize = 16;

/// One cache line: a subject (or a link of its chain) and up to `SLOTS` of its counters.
#[repr(C, align(64))]
#[derive(Default)]
struct Bucket {
    /// 0: empty.
    key: u64,
    /// From this instant on, forgetting this bucket (and the rest of its chain) loses nothing.
    idle_at: AtomicU64,
    /// The limit of each slot; 0: free (slots fill in order).
    limits: [u64; SLOTS],
    states: [AtomicU64; SLOTS],
}

impl Bucket {
    fn counters(&self) -> usize {
        self.limits.iter().filter(|&&l| l != 0).count()
    }

    fn moved(&mut self) -> Bucket {
        Bucket {
            key: self.key,
            idle_at: AtomicU64::new(*self.idle_at.get_mut()),
            limits: self.limits,
            states: std::array::from_fn(|i| AtomicU64::new(*self.states[i].get_mut())),
        }
    }
}

#[derive(Default)]
struct Shard {
    /// A power of two long; at most half full, so probes stay short and always end.
    buckets: Vec<Bucket>,
    occupied: usize,
}

/// Subject → counters.
pub struct Table {
    shards: Box<[RwLock<Shard>]>,
}

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}

impl Table {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            shards: (0..1 << SHARD_BITS)
                .map(|_| RwLock::new(Shard::default()))
                .collect(),
        }
    }

    /// Runs `f` on `key`'s counter, if it exists.
    pub fn with_counter<R>(&self, key: CounterKey, f: impl FnOnce(&Counter<'_>) -> R) -> Option<R> {
        self.reader(key.subject).counter(key).as_ref().map(f)
    }

    /// A read lock on the shard of `subject`, for several counters of one request. Drop it
    /// before any other call on the table: a second lock on one shard from one thread can
    /// wait forever behind a writer waiting for the first.
    pub fn reader(&self, subject: u64) -> Reader<'_> {
        Reader(self.read(subject))
    }

    /// Runs `f` on `key`'s counter, created (state 0) when it does not exist; also answers
    /// whether it was created.
    pub fn with_new_counter<R>(
        &self,
        key: CounterKey,
        f: impl FnOnce(&Counter<'_>) -> R,
    ) -> (R, bool) {
        let mut shard = self.write(key.subject);
        let (spot, created) = shard.find_or_insert(key);
        let shard = &*shard;
        let counter = Counter {
            state: shard.state(&spot),
            shard,
            spot,
        };
        (f(&counter), created)
    }

    /// Drops the buckets idle at `now`; answers how many counters went with them.
    pub fn sweep(&self, now: Nanos) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
                shard.sweep(now)
            })
            .sum()
    }

    fn shard_of(&self, subject: u64) -> &RwLock<Shard> {
        &self.shards[(subject >> (64 - SHARD_BITS)) as usize]
    }

    // Nothing panics while holding a shard lock; a poisoned one is used as it is.
    fn read(&self, subject: u64) -> RwLockReadGuard<'_, Shard> {
        self.shard_of(subject)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, subject: u64) -> RwLockWriteGuard<'_, Shard> {
        self.shard_of(subject)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A read lock on one shard (see `Table::reader`).
pub struct Reader<'a>(RwLockReadGuard<'a, Shard>);

impl Reader<'_> {
    /// `key`'s counter, for a subject of this shard, if it exists.
    pub fn counter(&self, key: CounterKey) -> Option<Counter<'_>> {
        let spot = self.0.find(key)?;
        Some(Counter {
            state: self.0.state(&spot),
            shard: &self.0,
            spot,
        })
    }
}

/// One counter, its shard locked.
pub struct Counter<'a> {
    /// Its state.
    pub state: &'a AtomicU64,
    shard: &'a Shard,
    spot: Spot,
}

impl Counter<'_> {
    /// Records that the state just stored is as good as none from `idle_at` on.
    pub fn keep_until(&self, idle_at: Nanos) {
        self.shard.keep_until(&self.spot, idle_at);
    }
}

/// Where a counter is: link `link` of `subject`'s chain, at `bucket`, in `slot`.
struct Spot {
    subject: u64,
    link: u64,
    bucket: usize,
    slot: usize,
}

/// The key of link `k` of `subject`'s chain: the subject itself, then derived keys in the
/// same shard (same top bits). Never 0, the empty marker.
fn chain_key(subject: u64, k: u64) -> u64 {
    let key = if k == 0 {
        subject
    } else {
        let mixed = (subject ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left(23);
        let shard_bits = !(u64::MAX >> SHARD_BITS);
        (subject & shard_bits) | (mixed & !shard_bits)
    };
    key.max(1)
}

/// 0 marks a free slot; a limit whose hash is 0 is counted as limit 1.
fn slot_limit(limit: u64) -> u64 {
    limit.max(1)
}

impl Shard {
    fn position(&self, key: u64) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let mut i = key as usize & mask;
        loop {
            match self.buckets[i].key {
                k if k == key => return Some(i),
                0 => return None,
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn state(&self, spot: &Spot) -> &AtomicU64 {
        &self.buckets[spot.bucket].states[spot.slot]
    }

    fn find(&self, key: CounterKey) -> Option<Spot> {
        let limit = slot_limit(key.limit);
        for link in 0.. {
            let bucket = self.position(chain_key(key.subject, link))?;
            let limits = &self.buckets[bucket].limits;
            if let Some(slot) = limits.iter().position(|&l| l == limit) {
                let subject = key.subject;
                return Some(Spot {
                    subject,
                    link,
                    bucket,
                    slot,
                });
            }
            if limits[SLOTS - 1] == 0 {
                return None; // The chain ends with free slots: the counter is not there.
            }
        }
        unreachable!("a chain ends")
    }

    fn find_or_insert(&mut self, key: CounterKey) -> (Spot, bool) {
        // Room first: growing moves buckets, so positions are taken after it.
        if (self.occupied + 1) * 2 > self.buckets.len() {
            self.rebuild((self.buckets.len() * 2).max(MIN_BUCKETS));
        }
        let (subject, limit) = (key.subject, slot_limit(key.limit));
        let spot = |link, bucket, slot| Spot {
            subject,
            link,
            bucket,
            slot,
        };
        for link in 0.. {
            let chain_key = chain_key(subject, link);
            let Some(bucket) = self.position(chain_key) else {
                let bucket = self.insert(chain_key);
                self.buckets[bucket].limits[0] = limit;
                return (spot(link, bucket, 0), true);
            };
            let limits = &mut self.buckets[bucket].limits;
            if let Some(slot) = limits.iter().position(|&l| l == limit) {
                return (spot(link, bucket, slot), false);
            }
            if let Some(slot) = limits.iter().position(|&l| l == 0) {
                limits[slot] = limit;
                return (spot(link, bucket, slot), true);
            }
        }
        unreachable!("a chain ends")
    }

    /// Puts an empty bucket for `key` (not present) and answers its position.
    fn insert(&mut self, key: u64) -> usize {
        let mask = self.buckets.len() - 1;
        let mut i = key as usize & mask;
        while self.buckets[i].key != 0 {
            i = (i + 1) & mask;
        }
        self.buckets[i].key = key;
        self.occupied += 1;
        i
    }

    /// Marks the counter's bucket, and the links of its chain before it, busy until `idle_at`.
    fn keep_until(&self, spot: &Spot, idle_at: Nanos) {
        let keep = |bucket: usize| {
            let bucket = &self.buckets[bucket].idle_at;
            // Within a window the instant does not move: no write then.
            if bucket.load(Ordering::Acquire) < idle_at {
                bucket.fetch_max(idle_at, Ordering::AcqRel);
            }
        };
        keep(spot.bucket);
        for link in 0..spot.link {
            if let Some(bucket) = self.position(chain_key(spot.subject, link)) {
                keep(bucket);
            }
        }
    }

    fn sweep(&mut self, now: Nanos) -> usize {
        let idle = |b: &Bucket| b.key != 0 && b.idle_at.load(Ordering::Acquire) <= now;
        let dropped: usize = self
            .buckets
            .iter()
            .filter(|b| idle(b))
            .map(Bucket::counters)
            .sum();
        if self.buckets.iter().any(idle) {
            for bucket in &mut self.buckets {
                if idle(bucket) {
                    *bucket = Bucket::default();
                    self.occupied -= 1;
                }
            }
            // Re-placed rather than shifted: probes must not cross the holes left behind,
            // and a table that emptied shrinks back.
            let fits = (self.occupied * 2).next_power_of_two().max(MIN_BUCKETS);
            self.rebuild(fits.min(self.buckets.len()));
        }
        dropped
    }

    /// Re-places every bucket into a table of `size` buckets.
    fn rebuild(&mut self, size: usize) {
        let old = std::mem::take(&mut self.buckets);
        self.buckets = std::iter::repeat_with(Bucket::default).take(size).collect();
        self.occupied = 0;
        for mut bucket in old {
            if bucket.key != 0 {
                let i = self.insert(bucket.key);
                self.buckets[i] = bucket.moved();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(limit: u64, subject: u64) -> CounterKey {
        CounterKey { limit, subject }
    }

    fn add(table: &Table, key: CounterKey, n: u64, idle_at: Nanos) -> bool {
        let ((), created) = table.with_new_counter(key, |counter| {
            counter.state.fetch_add(n, Ordering::Relaxed);
            counter.keep_until(idle_at);
        });
        created
    }

    fn get(table: &Table, key: CounterKey) -> Option<u64> {
        table.with_counter(key, |counter| counter.state.load(Ordering::Relaxed))
    }

    #[test]
    fn a_bucket_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
        assert_eq!(std::mem::align_of::<Bucket>(), 64);
    }

    #[test]
    fn counters_of_many_subjects_and_limits_stay_apart_through_growth() {
        let table = Table::new();
        // Subjects spread over every shard, some with long chains (7 limits: 3 buckets).
        let subjects: Vec<u64> = (1..=3000u64)
            .map(|i| i.wrapping_mul(0xD6E8_FEB8_6659_FD93))
            .collect();
        for (i, &subject) in subjects.iter().enumerate() {
            for limit in 1..=(1 + i as u64 % 7) {
                assert!(add(&table, key(limit, subject), limit * 10, 100));
                assert!(!add(&table, key(limit, subject), 1, 100));
            }
        }
        for (i, &subject) in subjects.iter().enumerate() {
            for limit in 1..=7 {
                let expected = (limit <= 1 + i as u64 % 7).then_some(limit * 10 + 1);
                assert_eq!(get(&table, key(limit, subject)), expected);
            }
        }
    }

    #[test]
    fn sweep_drops_idle_buckets_keeps_chains_whole_and_shrinks() {
        let table = Table::new();
        // A busy subject with a chain of 3 buckets: only its first limit is recent.
        for limit in 1..=7 {
            add(&table, key(limit, 42), 1, 10);
        }
        add(&table, key(1, 42), 1, 50);
        // Many idle subjects.
        for subject in 1000..2000 {
            add(&table, key(1, subject), 1, 10);
        }
        let removed = table.sweep(20);
        // The busy chain's head holds 3 counters and stays; the rest of its chain and the
        // idle subjects go.
        assert_eq!(removed, 4 + 1000);
        assert_eq!(get(&table, key(1, 42)), Some(2));
        assert_eq!(get(&table, key(2, 42)), Some(1));
        assert_eq!(get(&table, key(7, 42)), None);
        assert_eq!(get(&table, key(1, 1500)), None);
        // A limit of the dropped part of the chain starts again, in the chain it ended.
        assert!(add(&table, key(7, 42), 5, 50));
        assert_eq!(get(&table, key(7, 42)), Some(5));
        let buckets: usize = table
            .shards
            .iter()
            .map(|s| s.read().unwrap().buckets.len())
            .sum();
        assert!(buckets <= 64 * MIN_BUCKETS, "{buckets}");
        assert_eq!(table.sweep(60), 4);
    }

    #[test]
    fn counting_is_exact_while_other_threads_grow_and_sweep_the_table() {
        let table = Table::new();
        let subject = |t: u64, i: u64| (t << 32 | i).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let table = &table;
                scope.spawn(move || {
                    for round in 0..3 {
                        for i in 0..2000 {
                            add(table, key(1 + i % 5, subject(t, i)), 1, 1000);
                            // Idle at once: the sweeper keeps rebuilding shards under us.
                            add(table, key(9, subject(t + 100, i + round * 2000)), 1, 1);
                        }
                    }
                });
            }
            let table = &table;
            scope.spawn(move || {
                for _ in 0..200 {
                    table.sweep(5);
                }
            });
        });
        for t in 0..4 {
            for i in 0..2000 {
                assert_eq!(get(&table, key(1 + i % 5, subject(t, i))), Some(3));
            }
        }
    }

    #[test]
    fn zero_hashes_are_still_counters() {
        let table = Table::new();
        assert!(add(&table, key(0, 0), 3, 10));
        assert!(add(&table, key(0, 1 << 40), 4, 10));
        assert_eq!(get(&table, key(0, 0)), Some(3));
        assert_eq!(get(&table, key(0, 1 << 40)), Some(4));
    }
}
