//! Concurrency slots shared by every replica through Redis (see
//! docs/redis.md#concurrency-slots).
//!
//! A slot is a lease: a member of the sorted set `{PREFIX}:slots:LIMIT:SUBJECT`, unique to
//! one request (`REPLICA:SEQUENCE`), scored by the server time at which it expires. One
//! script call takes a request's slots of every concurrency limit, all or nothing, after
//! dropping the expired leases; dropping the request's `Permit` spawns the call that removes
//! them. A background task renews this replica's leases every third of their time to live,
//! so a slot lasts as long as its request (a WebSocket tunnel can hold one for hours) while a
//! replica that dies gives its slots back when their leases expire. Renewal re-adds a lease
//! Redis lost (a restart), and retries the releases that failed.
//!
//! The slots are also taken in this replica's `InFlight` table, without a maximum: it counts
//! this replica's share for the gauge, and is where the slots are held, by `on_error`, while
//! Redis fails (the breaker's outage is logged once).

use std::fmt::{Display, Write as _};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use redis::Script;
use smallvec::SmallVec;

use super::Shared;
use crate::limiter::concurrency::{InFlight, Permit, Refused};
use crate::limiter::store::memory::KeyHasher;
use crate::limiter::store::{OnError, StoreError};
use crate::limiter::CounterKey;
use crate::telemetry;

/// How long a lease lasts without renewal: how long a dead replica's slots stay taken.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// Most leases renewed or released by one call.
const BATCH: usize = 64;

/// The slots of one request, by limit.
type Keys = SmallVec<[CounterKey; 2]>;

/// Concurrency slots in the store's Redis.
pub struct RedisSlots {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    acquire: Script,
    sync: Script,
    /// `{prefix}:slots:`, the start of every slot set.
    key_prefix: String,
    ttl: Duration,
    /// This replica's lease sequence.
    next: AtomicU64,
    /// Leases of requests in flight, renewed until their permit drops.
    held: DashMap<u64, Keys, BuildHasherDefault<KeyHasher>>,
    /// Leases to remove from Redis whose removal has not succeeded yet.
    releasing: DashMap<u64, Keys, BuildHasherDefault<KeyHasher>>,
    /// Whether the last acquire fell back to `on_error` (logs the outage once).
    degraded: AtomicBool,
}

impl RedisSlots {
    /// Slots in `shared`'s Redis whose leases last `ttl`; spawns the renewal task.
    pub(super) fn start(shared: Arc<Shared>, ttl: Duration) -> Self {
        let inner = Arc::new(Inner {
            key_prefix: format!("{}slots:", shared.key_prefix),
            shared,
            acquire: Script::new(ACQUIRE),
            sync: Script::new(SYNC),
            ttl,
            next: AtomicU64::new(0),
            held: DashMap::with_hasher(BuildHasherDefault::default()),
            releasing: DashMap::with_hasher(BuildHasherDefault::default()),
            degraded: AtomicBool::new(false),
        });
        tokio::spawn(renew(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Takes one slot of each `(key, max, shadow)` across every replica, all or none (as
    /// `InFlight::acquire` does in one process), and the same slots in `local`. While Redis
    /// fails, `on_error` decides: `deny` refuses, `allow` holds the slots in `local` with the
    /// whole `max`, `local` with `max` divided by the live replicas.
    pub async fn acquire(
        &self,
        local: &InFlight,
        wanted: &[(CounterKey, u32, bool)],
    ) -> Result<Permit, Refused> {
        let inner = &self.inner;
        if inner.shared.breaker.is_open() {
            return inner.fallback(local, wanted, &"circuit breaker open");
        }
        // Armed before the call: a call that fails or times out, or a request that goes away
        // while it runs, may have taken slots; dropping the lease gives them back.
        let mut lease = Lease {
            inner: inner.clone(),
            seq: inner.next.fetch_add(1, Ordering::Relaxed),
            keys: wanted.iter().map(|&(key, _, _)| key).collect(),
        };
        let mut invocation = inner.acquire.prepare_invoke();
        invocation.arg(inner.member(lease.seq)).arg(inner.ttl_ms());
        for &(key, max, shadow) in wanted {
            invocation
                .key(inner.key(key))
                .arg(max)
                .arg(u8::from(shadow));
        }
        let n = wanted.len();
        let reply = match inner.shared.invoke::<Vec<i64>>(&invocation).await {
            Ok(reply) => match (reply.first(), reply.len()) {
                (Some(0), len) if len == 1 + n => reply,
                (Some(&full), 1) if (1..=n as i64).contains(&full) => {
                    inner.recovered();
                    lease.keys.clear(); // Nothing was taken.
                    return Err(Refused::Full(full as usize - 1));
                }
                _ => {
                    let error = StoreError::Unavailable(format!(
                        "the slot script answered {reply:?} for {n} limits"
                    ));
                    drop(lease);
                    return inner.fallback(local, wanted, &error);
                }
            },
            Err(error) => {
                drop(lease);
                return inner.fallback(local, wanted, &error);
            }
        };
        inner.recovered();
        let taken = &reply[1..];
        let shadow_full = taken.iter().any(|&t| t != 1);
        lease.keys = (lease.keys.iter().zip(taken))
            .filter(|&(_, &t)| t == 1)
            .map(|(&key, _)| key)
            .collect();
        let mut permit = local
            .acquire(lease.keys.iter().map(|&key| (key, u32::MAX, false)))
            .map_err(Refused::Full)?;
        permit.shadow_full = shadow_full;
        if lease.keys.is_empty() {
            return Ok(permit);
        }
        inner.held.insert(lease.seq, lease.keys.clone());
        Ok(permit.with_lease(Box::new(lease)))
    }

    /// Leases this replica holds in Redis (requests in flight).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.inner.held.len()
    }

    /// Leases whose removal from Redis is still to be done.
    #[cfg(test)]
    fn releasing(&self) -> usize {
        self.inner.releasing.len()
    }

    /// One renewal round now (the background task runs one every third of the lease time).
    #[cfg(test)]
    async fn renew_now(&self) {
        self.inner.round().await;
    }

    /// At shutdown: gives back every lease this replica still holds or has to release,
    /// within one store timeout per batch (the rest expire with their lease time). Requests
    /// still running past the drain deadline are about to be cut off with the process.
    pub async fn release_all(&self) {
        let inner = &self.inner;
        for (seq, keys) in snapshot(&inner.held) {
            inner.held.remove(&seq);
            inner.releasing.insert(seq, keys);
        }
        // While the breaker is open this fails at once, and the leases expire instead.
        inner.release_pending().await;
    }
}

impl Inner {
    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn key(&self, key: CounterKey) -> String {
        let mut text = String::with_capacity(self.key_prefix.len() + 33);
        text.push_str(&self.key_prefix);
        let _ = write!(text, "{:016x}:{:016x}", key.limit, key.subject);
        text
    }

    fn member(&self, seq: u64) -> String {
        format!("{}:{seq:x}", self.shared.replica_id)
    }

    /// Holds the slots by `on_error` because Redis cannot.
    fn fallback(
        &self,
        local: &InFlight,
        wanted: &[(CounterKey, u32, bool)],
        why: &dyn Display,
    ) -> Result<Permit, Refused> {
        let on_error = self.shared.on_error;
        if !self.degraded.swap(true, Ordering::Relaxed) {
            if on_error == OnError::Deny {
                tracing::warn!(error = %why, "redis concurrency slots failing; requests with a concurrency limit get 503 (on_error: deny)");
            } else {
                tracing::warn!(error = %why, on_error = on_error.as_str(), "redis concurrency slots failing; holding slots in this replica's memory");
            }
        }
        let replicas = match on_error {
            OnError::Deny => return Err(Refused::Unavailable),
            OnError::Allow => 1,
            OnError::Local => self.shared.replicas.load(Ordering::Relaxed).max(1),
        };
        telemetry::store_local_slots();
        local
            .acquire(
                wanted
                    .iter()
                    .map(|&(key, max, shadow)| (key, (max / replicas).max(1), shadow)),
            )
            .map_err(Refused::Full)
    }

    /// Notes that Redis answered again.
    fn recovered(&self) {
        if self.degraded.load(Ordering::Relaxed) && self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("redis concurrency slots shared again");
        }
    }

    /// Removes a lease from Redis, now if the breaker lets it, else at a later round.
    fn release(self: &Arc<Self>, seq: u64, keys: Keys) {
        self.releasing.insert(seq, keys.clone());
        if self.shared.breaker.is_open() {
            return;
        }
        // A permit dropped outside the runtime (at shutdown) leaves it to the lease time.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.clone();
        runtime.spawn(async move {
            if inner.sync(&[], &[(seq, keys)]).await.is_ok() {
                inner.releasing.remove(&seq);
            }
        });
    }

    /// One call that renews the leases of `renew` and removes those of `release`.
    async fn sync(&self, renew: &[(u64, Keys)], release: &[(u64, Keys)]) -> Result<(), StoreError> {
        let renewed: usize = renew.iter().map(|(_, keys)| keys.len()).sum();
        let mut invocation = self.sync.prepare_invoke();
        invocation.arg(self.ttl_ms()).arg(renewed);
        for (seq, keys) in renew.iter().chain(release) {
            let member = self.member(*seq);
            for &key in keys {
                invocation.key(self.key(key)).arg(member.as_str());
            }
        }
        self.shared.invoke::<i64>(&invocation).await.map(drop)
    }

    /// Removes the leases waiting for release; false when a call failed.
    async fn release_pending(&self) -> bool {
        let releasing = snapshot(&self.releasing);
        for batch in releasing.chunks(BATCH) {
            if self.sync(&[], batch).await.is_err() {
                return false;
            }
            for (seq, _) in batch {
                self.releasing.remove(seq);
            }
        }
        true
    }

    /// Retries the releases that failed, then renews every lease held, while the breaker is
    /// closed.
    async fn round(&self) {
        // Fails at once while the breaker is open (`Shared::invoke`).
        if !self.release_pending().await {
            return;
        }
        let held = snapshot(&self.held);
        for batch in held.chunks(BATCH) {
            let renewed = self.sync(batch, &[]).await;
            // A lease released while its renewal was on the way may have been added back
            // by it (the renewal does not require the lease to exist, so that it restores
            // leases a restarted Redis lost): remove it again.
            let gone: Vec<(u64, Keys)> = batch
                .iter()
                .filter(|(seq, _)| !self.held.contains_key(seq))
                .cloned()
                .collect();
            for (seq, keys) in &gone {
                self.releasing.insert(*seq, keys.clone());
            }
            if renewed.is_err() {
                return;
            }
            if !gone.is_empty() && self.sync(&[], &gone).await.is_ok() {
                for (seq, _) in &gone {
                    self.releasing.remove(seq);
                }
            }
        }
    }
}

fn snapshot(map: &DashMap<u64, Keys, BuildHasherDefault<KeyHasher>>) -> Vec<(u64, Keys)> {
    map.iter()
        .map(|entry| (*entry.key(), entry.value().clone()))
        .collect()
}

/// One request's slots in Redis: renewed while it lives, removed when it drops.
struct Lease {
    inner: Arc<Inner>,
    seq: u64,
    /// The slot sets holding (or that may hold) this lease; empty when there is nothing to
    /// give back.
    keys: Keys,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        self.inner.held.remove(&self.seq);
        let keys = std::mem::take(&mut self.keys);
        self.inner.release(self.seq, keys);
    }
}

/// Runs a renewal round every third of the lease time.
async fn renew(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(inner) => inner.ttl / 3,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.round().await;
    }
}

/// KEYS: one slot set per concurrency limit. ARGV: lease id, time to live (ms), then per
/// key its maximum and whether it is a shadow limit (1/0). Drops expired leases, then takes
/// one slot of every limit or none: answers `{i}` (1-based) for the first full non-shadow
/// limit, else `{0, taken…}` with 1 for each slot taken and 0 for a full shadow limit.
const ACQUIRE: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local taken = {0}
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[1 + 2 * i]) then
    taken[i + 1] = 1
  elseif ARGV[2 + 2 * i] == '1' then
    taken[i + 1] = 0
  else
    return {i}
  end
end
for i = 1, #KEYS do
  if taken[i + 1] == 1 then
    redis.call('ZADD', KEYS[i], now + ttl, ARGV[1])
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return taken
";

/// KEYS: slot sets. ARGV: time to live (ms), the number `r` of renewals, then one lease id
/// per key. The first `r` keys get their lease (re-)added with a fresh expiry (restoring a
/// lease Redis lost); the others have theirs removed.
const SYNC: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local r = tonumber(ARGV[2])
for i = 1, #KEYS do
  if i <= r then
    redis.call('ZADD', KEYS[i], now + ttl, ARGV[2 + i])
    redis.call('PEXPIRE', KEYS[i], ttl)
  else
    redis.call('ZREM', KEYS[i], ARGV[2 + i])
  end
end
return #KEYS
";

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use redis::AsyncCommands;

    use super::super::tests::{system_clock, Server};
    use super::*;
    use crate::limiter::store::redis::RedisStore;

    fn key(subject: u64) -> CounterKey {
        CounterKey { limit: 3, subject }
    }

    struct Fixture {
        _server: Server,
        slots: RedisSlots,
        local: InFlight,
        conn: redis::aio::MultiplexedConnection,
    }

    async fn fixture(on_error: OnError, ttl: Duration) -> Fixture {
        let server = Server::start();
        let settings = server.settings(on_error);
        let store = RedisStore::start(&settings, 1000, system_clock()).unwrap();
        let slots = RedisSlots::start(store.shared.clone(), ttl);
        let conn = redis::Client::open(settings.url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        Fixture {
            _server: server,
            slots,
            local: InFlight::new(),
            conn,
        }
    }

    impl Fixture {
        fn set(&self, subject: u64) -> String {
            self.slots.inner.key(key(subject))
        }

        async fn zcard(&mut self, subject: u64) -> u64 {
            let set = self.set(subject);
            self.conn.zcard(set).await.unwrap()
        }

        async fn acquire(&self, wanted: &[(CounterKey, u32, bool)]) -> Result<Permit, Refused> {
            self.slots.acquire(&self.local, wanted).await
        }

        /// Waits until no release is on its way.
        async fn settle(&self) {
            for _ in 0..100 {
                if self.slots.releasing() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("releases never finished");
        }
    }

    #[tokio::test]
    async fn at_most_max_all_or_none_and_dropping_gives_back() {
        let mut f = fixture(OnError::Deny, LEASE_TTL).await;
        let mut permits = Vec::new();
        for _ in 0..2 {
            permits.push(f.acquire(&[(key(1), 2, false)]).await.ok().unwrap());
        }
        assert!(matches!(
            f.acquire(&[(key(1), 2, false)]).await,
            Err(Refused::Full(0))
        ));
        assert_eq!(f.zcard(1).await, 2);
        assert_eq!(f.local.held(key(1)), 2);
        assert_eq!(f.slots.held(), 2);
        // The first limit has room, the second is full: neither is taken.
        assert!(matches!(
            f.acquire(&[(key(2), 5, false), (key(1), 2, false)]).await,
            Err(Refused::Full(1))
        ));
        assert_eq!(f.zcard(2).await, 0);
        assert_eq!(f.local.held(key(2)), 0);
        // A full shadow limit takes nothing for itself and fails nothing.
        let shadowed = f
            .acquire(&[(key(2), 5, false), (key(1), 2, true)])
            .await
            .ok()
            .unwrap();
        assert!(shadowed.shadow_full);
        assert_eq!((f.zcard(1).await, f.zcard(2).await), (2, 1));
        drop(shadowed);
        drop(permits);
        f.settle().await;
        assert_eq!((f.zcard(1).await, f.zcard(2).await), (0, 0));
        assert_eq!(f.local.held(key(1)), 0);
        assert_eq!(f.slots.held(), 0);
        let exists: bool = f.conn.exists(f.set(1)).await.unwrap();
        assert!(!exists, "an empty slot set is deleted");
    }

    #[tokio::test]
    async fn expired_leases_of_a_dead_replica_free_their_slots() {
        let mut f = fixture(OnError::Deny, LEASE_TTL).await;
        let set = f.set(1);
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut f.conn).await.unwrap();
        let now_ms = secs * 1000 + micros / 1000;
        // Another replica's two leases: one expired a second ago, one running.
        let _: () = f.conn.zadd(&set, "dead:1", now_ms - 1000).await.unwrap();
        let _: () = f.conn.zadd(&set, "live:1", now_ms + 60_000).await.unwrap();
        let permit = f.acquire(&[(key(1), 2, false)]).await.ok().unwrap();
        assert!(matches!(
            f.acquire(&[(key(1), 2, false)]).await,
            Err(Refused::Full(0))
        ));
        let members: Vec<String> = f.conn.zrange(&set, 0, -1).await.unwrap();
        assert_eq!(members.len(), 2);
        assert!(members.contains(&"live:1".to_string()), "{members:?}");
        assert!(!members.contains(&"dead:1".to_string()), "{members:?}");
        let ttl: i64 = f.conn.pttl(&set).await.unwrap();
        assert!(ttl > 0 && ttl <= 10_000, "{ttl}");
        drop(permit);
    }

    #[tokio::test]
    async fn renewal_keeps_a_lease_past_its_time_and_restores_one_redis_lost() {
        let ttl = Duration::from_millis(600);
        let mut f = fixture(OnError::Deny, ttl).await;
        let permit = f.acquire(&[(key(1), 1, false)]).await.ok().unwrap();
        // Held three lease times: the background renewal keeps it.
        tokio::time::sleep(ttl * 3).await;
        assert_eq!(f.zcard(1).await, 1);
        assert!(matches!(
            f.acquire(&[(key(1), 1, false)]).await,
            Err(Refused::Full(0))
        ));
        // Redis restarted empty: the next renewal puts the lease back.
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut f.conn)
            .await
            .unwrap();
        assert_eq!(f.zcard(1).await, 0);
        f.slots.renew_now().await;
        assert_eq!(f.zcard(1).await, 1);
        drop(permit);
        f.settle().await;
        assert_eq!(f.zcard(1).await, 0);
        // A lease nobody renews (its replica died) expires by itself.
        let set = f.set(2);
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut f.conn).await.unwrap();
        let _: () = f
            .conn
            .zadd(&set, "dead:1", secs * 1000 + micros / 1000 + 200)
            .await
            .unwrap();
        assert!(f.acquire(&[(key(2), 1, false)]).await.is_err());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(f.acquire(&[(key(2), 1, false)]).await.is_ok());
    }

    #[tokio::test]
    async fn a_failing_redis_falls_back_by_on_error_and_releases_later() {
        let mut server_slots = fixture(OnError::Local, LEASE_TTL).await;
        // A lease taken while Redis is healthy is remembered for release.
        let held = server_slots
            .acquire(&[(key(1), 4, false)])
            .await
            .ok()
            .unwrap();
        assert_eq!(server_slots.zcard(1).await, 1);
        let Fixture {
            _server: server,
            slots,
            local,
            ..
        } = server_slots;
        drop(server);
        // Redis is gone: `local` holds a share of the limit in this replica's memory
        // (one replica: the whole limit, less the slot already held here).
        let mut admitted = Vec::new();
        for _ in 0..6 {
            if let Ok(permit) = slots.acquire(&local, &[(key(1), 4, false)]).await {
                admitted.push(permit);
            }
        }
        assert_eq!(admitted.len(), 3);
        assert_eq!(local.held(key(1)), 4);
        // Its release cannot reach Redis: it waits for a later round (with the leases of
        // the calls that failed, which may have run).
        let before = slots.releasing();
        drop(held);
        assert_eq!((slots.releasing(), slots.held()), (before + 1, 0));
        assert_eq!(local.held(key(1)), 3);
        assert!(slots.inner.shared.breaker.is_open());
    }
}
