//! Records held in this process: sharded maps under short locks, bounded by entries and
//! by bytes of stored responses, expired records swept.
//!
//! When a bound is reached, the oldest stored responses are evicted first (approximately:
//! per shard in commit order, shards visited in turn). A claim in flight is never evicted,
//! since forgetting it would let a duplicate through; when every entry is one, a new key
//! is answered as in flight (409) until one finishes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Answer, Claimed, Fingerprint, Record, RecordError, RecordKey, RecordStore};
use crate::limiter::clock::Nanos;

/// Shards: locks are per shard, so requests with different keys rarely wait for each other.
const SHARDS: usize = 16;

struct Entry {
    /// Proves ownership of the claim on commit and release.
    token: u64,
    fingerprint: Fingerprint,
    expires: Nanos,
    /// `None` while the first request is in flight.
    record: Option<Arc<Record>>,
    /// Bytes the record accounts for.
    size: u64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<RecordKey, Entry>,
    /// Stored records in commit order, oldest first; entries gone since are skipped.
    stored: VecDeque<(RecordKey, u64)>,
}

/// The in-process record store.
pub struct MemoryRecords {
    shards: Box<[Mutex<Shard>]>,
    max_entries: usize,
    max_bytes: u64,
    entries: AtomicUsize,
    bytes: AtomicU64,
    next_token: AtomicU64,
}

impl MemoryRecords {
    /// A store holding at most `max_entries` records and `max_bytes` of responses.
    pub fn new(max_entries: usize, max_bytes: u64) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_entries,
            max_bytes,
            entries: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            next_token: AtomicU64::new(1),
        }
    }

    fn index(key: &RecordKey) -> usize {
        usize::from(key[0]) % SHARDS
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave it inconsistent beyond one entry.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What a live entry says to a request with `fingerprint`; removes an expired one.
    fn lookup(
        &self,
        shard: &mut Shard,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        now: Nanos,
    ) -> Option<Claimed> {
        let entry = shard.map.get(key)?;
        if entry.expires <= now {
            let entry = shard.map.remove(key).expect("just found");
            self.forget(&entry);
            return None;
        }
        Some(if entry.fingerprint != *fingerprint {
            Claimed::Mismatch
        } else if let Some(record) = &entry.record {
            Claimed::Stored(record.clone())
        } else {
            Claimed::InFlight
        })
    }

    fn forget(&self, entry: &Entry) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(entry.size, Ordering::Relaxed);
    }

    /// Takes a slot under `max_entries`, evicting a stored record if need be.
    fn reserve_entry(&self, start: usize) -> bool {
        for _ in 0..4 {
            if self.entries.fetch_add(1, Ordering::Relaxed) < self.max_entries {
                return true;
            }
            self.entries.fetch_sub(1, Ordering::Relaxed);
            if !self.evict_oldest(start) {
                return false;
            }
        }
        false
    }

    /// Evicts the oldest stored record of the first shard (from `start`) that has one.
    /// Locks one shard at a time, so it never waits while holding another.
    fn evict_oldest(&self, start: usize) -> bool {
        for step in 0..SHARDS {
            let mut shard = self.lock((start + step) % SHARDS);
            while let Some((key, token)) = shard.stored.pop_front() {
                let live = shard
                    .map
                    .get(&key)
                    .is_some_and(|e| e.token == token && e.record.is_some());
                if live {
                    let entry = shard.map.remove(&key).expect("just found");
                    self.forget(&entry);
                    return true;
                }
            }
        }
        false
    }
}

impl RecordStore for MemoryRecords {
    fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        expires: Nanos,
        now: Nanos,
    ) -> Answer<Result<Claimed, RecordError>> {
        let index = Self::index(key);
        if let Some(found) = self.lookup(&mut self.lock(index), key, fingerprint, now) {
            return Answer::Ready(Ok(found));
        }
        // Made room without holding the shard: eviction may lock every shard.
        if !self.reserve_entry(index) {
            return Answer::Ready(Ok(Claimed::InFlight));
        }
        let mut shard = self.lock(index);
        if let Some(found) = self.lookup(&mut shard, key, fingerprint, now) {
            self.entries.fetch_sub(1, Ordering::Relaxed);
            return Answer::Ready(Ok(found));
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        shard.map.insert(
            *key,
            Entry {
                token,
                fingerprint: *fingerprint,
                expires,
                record: None,
                size: 0,
            },
        );
        Answer::Ready(Ok(Claimed::Owned(token)))
    }

    fn commit(
        &self,
        key: &RecordKey,
        token: u64,
        record: Record,
    ) -> Answer<Result<bool, RecordError>> {
        let index = Self::index(key);
        let size = record.size();
        let mut fits = size <= self.max_bytes;
        if fits {
            let total = self.bytes.fetch_add(size, Ordering::Relaxed) + size;
            let mut over = total > self.max_bytes;
            while over && self.evict_oldest(index) {
                over = self.bytes.load(Ordering::Relaxed) > self.max_bytes;
            }
            if over {
                self.bytes.fetch_sub(size, Ordering::Relaxed);
                fits = false;
            }
        }
        let mut shard = self.lock(index);
        let owned = shard
            .map
            .get(key)
            .is_some_and(|e| e.token == token && e.record.is_none());
        if !owned {
            // Expired and swept while in flight, or released: nothing to fill.
            if fits {
                self.bytes.fetch_sub(size, Ordering::Relaxed);
            }
            return Answer::Ready(Ok(false));
        }
        if !fits {
            let entry = shard.map.remove(key).expect("just found");
            self.forget(&entry);
            return Answer::Ready(Ok(false));
        }
        let entry = shard.map.get_mut(key).expect("just found");
        entry.record = Some(Arc::new(record));
        entry.size = size;
        shard.stored.push_back((*key, token));
        Answer::Ready(Ok(true))
    }

    fn release(&self, key: &RecordKey, token: u64) -> Answer<Result<(), RecordError>> {
        let mut shard = self.lock(Self::index(key));
        let owned = shard
            .map
            .get(key)
            .is_some_and(|e| e.token == token && e.record.is_none());
        if owned {
            let entry = shard.map.remove(key).expect("just found");
            self.forget(&entry);
        }
        Answer::Ready(Ok(()))
    }

    fn sweep(&self, now: Nanos) {
        for index in 0..SHARDS {
            let mut shard = self.lock(index);
            let shard = &mut *shard;
            shard.map.retain(|_, entry| {
                let live = entry.expires > now;
                if !live {
                    self.forget(entry);
                }
                live
            });
            let map = &shard.map;
            shard
                .stored
                .retain(|(key, token)| map.get(key).is_some_and(|e| e.token == *token));
        }
    }

    fn usage(&self) -> (usize, u64) {
        (
            self.entries.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests;
