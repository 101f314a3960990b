//! The shared store: every replica counts in one Redis, one script call per request.
//!
//! `check.lua` runs all limits of a request atomically (all or nothing) with the same
//! arithmetic as the memory store, on the Redis server's clock. Every call is bounded by
//! `timeout`; failures feed a circuit breaker that, once open, stops calling Redis on the
//! request path while a background task probes it (and, while Redis is healthy, keeps this
//! replica's heartbeat so `on_error: local` knows how many replicas share a limit). What a
//! request gets while Redis fails is `on_error`'s business: the proxy answers `allow` and
//! `deny`; `local` is answered here from a memory store holding this replica's share.
//! In `mode: sync` most requests are answered from leases instead (see `lease`).
//! The penalty box (`penalty`) and concurrency slots (`slots`) live in the same Redis.
//! See docs/redis.md.

mod lease;
mod penalty;
mod slots;

pub use penalty::RedisPenalties;
pub use slots::{RedisSlots, LEASE_TTL};

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use std::hash::BuildHasherDefault;

use dashmap::DashMap;
use redis::aio::ConnectionManager;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, FromRedisValue, Script, ScriptInvocation};
use smallvec::SmallVec;

use super::memory::{KeyHasher, MemoryStore};
use super::{Checking, OnError, Store, StoreError};
use crate::config::RedisSettings;
use crate::limiter::clock::{Clock, Nanos};
use crate::limiter::{Algorithm, Check, CounterKey, Outcome, Outcomes, Quota, INLINE_LIMITS};
use crate::telemetry;
use lease::Leases;

/// The largest value the script's double arithmetic holds exactly.
const EXACT: u64 = 1 << 53;

/// Consecutive failed calls after which the breaker opens.
const BREAKER_THRESHOLD: u32 = 3;
/// How often an open breaker probes Redis.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How often a healthy replica renews its heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A replica whose heartbeat is older than this no longer counts as live.
const HEARTBEAT_STALE_MS: u64 = 3_000;
/// Most counters renewed by one lease call (`mode: sync`).
const LEASE_BATCH: usize = 128;

/// Why a limit cannot be counted by the script, or `Ok`.
pub fn supports(quota: &Quota, cost: u32) -> Result<(), String> {
    if !quota.period().is_multiple_of(1_000) {
        return Err(
            "the redis store counts periods in whole microseconds; round the rate's period".into(),
        );
    }
    let tolerance = u128::from(quota.emission_interval()) * u128::from(quota.burst());
    let step = u128::from(quota.emission_interval()) * u128::from(cost);
    if quota.period() >= EXACT || tolerance + step >= u128::from(EXACT) {
        return Err(
            "the redis store counts periods and bursts of at most 104 days; use a shorter period"
                .into(),
        );
    }
    Ok(())
}

/// Counters in Redis, shared by every replica pointed at it.
pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    conn: Conn,
    script: Script,
    heartbeat: Script,
    /// `{prefix}:`: the braces make the prefix the Redis Cluster hash tag.
    key_prefix: String,
    replicas_key: String,
    replica_id: String,
    timeout: Duration,
    on_error: OnError,
    breaker: Breaker,
    /// Live replicas seen in the last heartbeat (at least 1).
    replicas: AtomicU32,
    /// This replica's share of every limit, for `on_error: local`.
    local: MemoryStore,
    /// Callers already over a limit, until they may fit again: answered without Redis.
    over: DashMap<CounterKey, Over, BuildHasherDefault<KeyHasher>>,
    over_cap: usize,
    /// Tests pin time to the caller's `now`; sluice always uses the server's clock.
    caller_clock: AtomicBool,
    /// `mode: sync`: this replica's leases and how often they are renewed.
    leases: Option<(Leases, Duration)>,
}

impl RedisStore {
    /// A store on `settings.url`. Connects lazily: a Redis that is down at start is
    /// treated like one that fails later (`on_error`), and reconnected to in the background.
    /// Spawns the heartbeat and probe task (and in `mode: sync` the lease renewal task,
    /// which reads `clock`, the requests' clock); call inside a tokio runtime.
    pub fn start(
        settings: &RedisSettings,
        max_entries: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let conn = Conn::open(settings).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let shared = Arc::new(Shared {
            conn,
            script: Script::new(include_str!("redis/check.lua")),
            heartbeat: Script::new(HEARTBEAT),
            key_prefix: format!("{{{}}}:", settings.prefix),
            replicas_key: format!("{{{}}}:replicas", settings.prefix),
            replica_id: format!("{:016x}", rand::random::<u64>()),
            timeout: settings.timeout,
            on_error: settings.on_error,
            breaker: Breaker::default(),
            replicas: AtomicU32::new(1),
            local: MemoryStore::new(max_entries),
            over: DashMap::with_hasher(BuildHasherDefault::default()),
            over_cap: max_entries,
            caller_clock: AtomicBool::new(false),
            leases: settings
                .sync_interval
                .map(|every| (Leases::new(max_entries), every)),
        });
        tokio::spawn(keep_alive(Arc::downgrade(&shared)));
        if let Some(every) = settings.sync_interval {
            tokio::spawn(renew_leases(Arc::downgrade(&shared), every, clock));
        }
        Ok(Self { shared })
    }

    /// Runs the script at the caller's `now` instead of the server's clock (for tests that
    /// compare with the memory store).
    #[cfg(test)]
    fn on_caller_clock(self) -> Self {
        self.shared.caller_clock.store(true, Ordering::Relaxed);
        self
    }

    /// The penalty box in this store's Redis, shared by every replica; its local mirror
    /// and fallback hold at most `max_entries` identities. Spawns the mirror refresh.
    pub fn penalties(&self, max_entries: usize, clock: Arc<dyn Clock>) -> RedisPenalties {
        RedisPenalties::start(self.shared.clone(), max_entries, clock)
    }

    /// Concurrency slots in this store's Redis, shared by every replica, each held as a
    /// lease of `LEASE_TTL`. Spawns the lease renewal.
    pub fn slots(&self) -> RedisSlots {
        RedisSlots::start(self.shared.clone(), LEASE_TTL)
    }

    /// Whether the breaker is open (Redis is not being called).
    pub fn breaker_open(&self) -> bool {
        self.shared.breaker.is_open()
    }

    /// `{prefix}:`, the start of every key this store writes (the idempotency records
    /// share it).
    pub fn key_prefix(&self) -> &str {
        &self.shared.key_prefix
    }

    /// Runs another module's script call on this store's connection, under the same
    /// timeout, circuit breaker and metrics as the limiter's own calls (the idempotency
    /// records use it).
    pub async fn run<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.shared.invoke(invocation).await
    }
}

impl Store for RedisStore {
    fn check(&self, checks: &[Check], now: Nanos) -> Checking {
        // A request whose only limits are concurrency limits has nothing to count here.
        if checks.is_empty() {
            return Checking::Ready(Ok(Outcomes::new()));
        }
        let leases = self.shared.leases.as_ref().map(|(leases, _)| leases);
        if let Some(outcomes) = leases.and_then(|leases| leases.take(checks, now)) {
            telemetry::store_leased_decision();
            return Checking::Ready(Ok(outcomes));
        }
        if let Some(outcomes) = self.shared.remembered(checks, now) {
            telemetry::store_cached_rejection();
            return Checking::Ready(Ok(outcomes));
        }
        if let Some(leases) = leases {
            leases.ask(checks);
        }
        let shared = self.shared.clone();
        let checks: SmallVec<[Check; INLINE_LIMITS]> = checks.iter().copied().collect();
        Checking::Pending(Box::pin(async move {
            match shared.call(&checks, now, Mode::Check).await {
                Ok(outcomes) => {
                    shared.remember(&checks, &outcomes, now);
                    Ok(outcomes)
                }
                Err(error) => shared.fallback(&checks, now, error).await,
            }
        }))
    }

    fn peek(&self, checks: &[Check], now: Nanos) -> Checking {
        if checks.is_empty() {
            return Checking::Ready(Ok(Outcomes::new()));
        }
        let shared = self.shared.clone();
        let checks: SmallVec<[Check; INLINE_LIMITS]> = checks.iter().copied().collect();
        Checking::Pending(Box::pin(async move {
            shared.call(&checks, now, Mode::Peek).await
        }))
    }

    fn sweep(&self, now: Nanos) {
        self.shared.local.sweep(now);
        self.shared.over.retain(|_, over| over.until > now);
    }

    fn tracked_entries(&self) -> usize {
        self.shared.local.tracked_entries() + self.shared.over.len()
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn on_error(&self) -> OnError {
        self.shared.on_error
    }

    fn status(&self) -> String {
        let state = if self.shared.breaker.is_open() {
            "unreachable (breaker open)"
        } else {
            "connected"
        };
        format!(
            "redis {state}, {} live replicas, on_error={}, mode={}",
            self.shared.replicas.load(Ordering::Relaxed),
            self.shared.on_error.as_str(),
            if self.shared.leases.is_some() {
                "sync"
            } else {
                "strict"
            }
        )
    }
}

/// A connection to a single Redis (or a primary behind a failover proxy) or to a Redis
/// Cluster; both multiplexed, connected lazily and reconnected in the background.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    fn open(settings: &RedisSettings) -> redis::RedisResult<Self> {
        let connect_within = settings.timeout.max(Duration::from_secs(1));
        if settings.cluster {
            // The seed node's URL; the client discovers the other nodes and the slot map,
            // and follows MOVED/ASK redirections. Every key of a request shares the
            // prefix's hash tag, so a script call goes to one node.
            let client = ClusterClient::builder([settings.url.as_str()])
                .retries(2)
                .build()?;
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(connect_within)
                .set_response_timeout(connect_within);
            return Ok(Conn::Cluster(
                client.get_pending_async_connection_with_config(config),
            ));
        }
        let client = Client::open(settings.url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_within))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
            client, config,
        )?))
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Check,
    Peek,
}

impl Shared {
    async fn call(&self, checks: &[Check], now: Nanos, mode: Mode) -> Result<Outcomes, StoreError> {
        let mut invocation = self.limiter_call(
            now,
            match mode {
                Mode::Check => "check",
                Mode::Peek => "peek",
            },
        );
        let mut key = String::with_capacity(self.key_prefix.len() + 33);
        for check in checks {
            self.add_counter(&mut invocation, &mut key, check);
        }
        let reply: Vec<i64> = self.invoke(&invocation).await?;
        parse(&reply, checks.len())
    }

    /// A call of the limiter script in `mode` (`check`, `peek` or `lease`), its clock
    /// argument set: the server's, or `now` for tests on the caller's clock.
    fn limiter_call(&self, now: Nanos, mode: &str) -> ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(if self.caller_clock.load(Ordering::Relaxed) {
            now.to_string()
        } else {
            String::new()
        });
        invocation.arg(mode);
        invocation
    }

    /// Adds one counter's key and its 7 arguments to a script call.
    fn add_counter(&self, invocation: &mut ScriptInvocation<'_>, key: &mut String, check: &Check) {
        key.clear();
        key.push_str(&self.key_prefix);
        let _ = write!(key, "{:016x}:{:016x}", check.key.limit, check.key.subject);
        invocation.key(key.as_str());
        let quota = &check.quota;
        invocation
            .arg(match check.algorithm {
                Algorithm::FixedWindow => "f",
                Algorithm::SlidingWindow => "s",
                Algorithm::TokenBucket => "t",
                Algorithm::Concurrency => {
                    unreachable!("Policy::checks leaves concurrency limits out of the store")
                }
            })
            .arg(quota.limit())
            .arg(quota.period() / 1_000)
            .arg(quota.burst())
            .arg(quota.emission_interval())
            .arg(check.cost)
            .arg(u8::from(check.shadow));
    }

    /// Runs a prepared script call within `timeout`, feeding the breaker; while the breaker
    /// is open, fails at once without calling Redis.
    async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        if self.breaker.is_open() {
            return Err(StoreError::Unavailable("circuit breaker open".into()));
        }
        let started = Instant::now();
        let mut conn = self.conn.clone();
        let result =
            tokio::time::timeout(self.timeout, invocation.invoke_async::<T>(&mut conn)).await;
        telemetry::store_duration(started.elapsed());
        let error = match result {
            Ok(Ok(reply)) => {
                self.breaker.success();
                return Ok(reply);
            }
            Ok(Err(error)) => StoreError::Unavailable(error.to_string()),
            Err(_) => StoreError::Timeout(self.timeout),
        };
        telemetry::store_error(error.kind());
        if self.breaker.failure() {
            tracing::warn!(%error, "redis store failing; circuit breaker open, probing in the background");
        }
        Err(error)
    }

    /// One lease call for `renewals` (`mode: sync`): gives back and takes units, counter
    /// by counter. `sent` is the local time before the call.
    async fn renew(&self, renewals: &[lease::Renewal], sent: Nanos) -> Result<(), StoreError> {
        let mut invocation = self.limiter_call(sent, "lease");
        let mut key = String::with_capacity(self.key_prefix.len() + 33);
        for renewal in renewals {
            self.add_counter(&mut invocation, &mut key, &renewal.check());
            invocation.arg(renewal.back);
        }
        let reply: Vec<i64> = self.invoke(&invocation).await?;
        let n = renewals.len();
        if reply.len() != n * 6 + 2 {
            return Err(StoreError::Unavailable(format!(
                "the limiter script answered {} values for {n} leases",
                reply.len()
            )));
        }
        let nat = |v: i64| u64::try_from(v).unwrap_or(0);
        let ran = nat(reply[n * 6]) * 1_000 + nat(reply[n * 6 + 1]);
        for (renewal, r) in renewals.iter().zip(reply.chunks_exact(6)) {
            let grant = lease::Grant {
                granted: u32::try_from(r[0]).unwrap_or(0),
                remaining: u32::try_from(r[2]).unwrap_or(0),
                reset: nat(r[3]) * 1_000 + nat(r[4]),
            };
            renewal.lease.grant(&grant, sent, ran);
        }
        Ok(())
    }

    /// The answer for a request one of whose limits is remembered as exhausted: that
    /// limit's rejection (its wait counted down), and the other limits as if untouched,
    /// since they were not read. `None` when Redis must be asked.
    fn remembered(&self, checks: &[Check], now: Nanos) -> Option<Outcomes> {
        if self.over.is_empty() {
            return None;
        }
        let mut hit = false;
        let outcomes = checks
            .iter()
            .map(|check| {
                let over = (!check.shadow)
                    .then(|| self.over.get(&check.key))
                    .flatten()
                    .filter(|o| o.until > now && o.quota == check.quota && check.cost >= o.cost);
                match over {
                    Some(over) => {
                        hit = true;
                        Outcome {
                            retry_after: over.retry_at.saturating_sub(now),
                            ..over.outcome
                        }
                    }
                    None => check.algorithm.peek(0, now, &check.quota, check.cost),
                }
            })
            .collect();
        hit.then_some(outcomes)
    }

    /// Remembers the limits that rejected a request until the wait they announced (in
    /// `mode: sync` one `sync_interval` at most: units other replicas hold in leases may
    /// come back sooner).
    fn remember(&self, checks: &[Check], outcomes: &Outcomes, now: Nanos) {
        let most = self
            .leases
            .as_ref()
            .map_or(Nanos::MAX, |(_, every)| every.as_nanos() as Nanos);
        for (check, outcome) in checks.iter().zip(outcomes) {
            if outcome.allowed || check.shadow || self.over.len() >= self.over_cap {
                continue;
            }
            self.over.insert(
                check.key,
                Over {
                    until: now + outcome.retry_after.min(most),
                    retry_at: now + outcome.retry_after,
                    quota: check.quota,
                    cost: check.cost,
                    outcome: *outcome,
                },
            );
        }
    }

    /// What a request gets when Redis failed: `local` is answered here, the rest by the proxy.
    async fn fallback(
        &self,
        checks: &[Check],
        now: Nanos,
        error: StoreError,
    ) -> Result<Outcomes, StoreError> {
        if self.on_error != OnError::Local {
            return Err(error);
        }
        let replicas = self.replicas.load(Ordering::Relaxed).max(1);
        let shares: SmallVec<[Check; INLINE_LIMITS]> =
            checks.iter().map(|c| share(c, replicas)).collect();
        telemetry::store_local_decision();
        self.local.check(&shares, now).resolve().await
    }

    async fn beat(&self) -> Result<u32, StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.heartbeat.prepare_invoke();
        invocation
            .key(self.replicas_key.as_str())
            .arg(self.replica_id.as_str())
            .arg(HEARTBEAT_STALE_MS);
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<u32>(&mut conn)).await {
            Ok(Ok(live)) => Ok(live),
            Ok(Err(error)) => Err(StoreError::Unavailable(error.to_string())),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

/// A limit a caller exhausted: no request of at least `cost` fits before `retry_at`
/// (other traffic can only push that later); remembered until `until`.
struct Over {
    until: Nanos,
    retry_at: Nanos,
    quota: Quota,
    cost: u32,
    outcome: Outcome,
}

/// This replica's share of a limit: the limit divided by the live replicas, at least 1.
fn share(check: &Check, replicas: u32) -> Check {
    let quota = &check.quota;
    let limit = (quota.limit() / replicas).max(1);
    let burst = (quota.burst() / replicas).max(1);
    Check {
        quota: Quota::new(limit, quota.period(), burst).unwrap_or(*quota),
        ..*check
    }
}

fn parse(reply: &[i64], n: usize) -> Result<Outcomes, StoreError> {
    if reply.len() != n * 6 {
        return Err(StoreError::Unavailable(format!(
            "the limiter script answered {} values for {n} limits",
            reply.len()
        )));
    }
    let nat = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(reply
        .chunks_exact(6)
        .map(|o| Outcome {
            allowed: o[0] == 1,
            limit: u32::try_from(o[1]).unwrap_or(u32::MAX),
            remaining: u32::try_from(o[2]).unwrap_or(0),
            reset: nat(o[3]) * 1_000 + nat(o[4]),
            retry_after: nat(o[5]),
        })
        .collect())
}

/// `mode: sync`: renews every lease each `every` while the breaker is closed.
async fn renew_leases(shared: Weak<Shared>, every: Duration, clock: Arc<dyn Clock>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        let Some((leases, _)) = &s.leases else { return };
        // Tests on their own clock renew by hand.
        if s.breaker.is_open() || s.caller_clock.load(Ordering::Relaxed) {
            continue;
        }
        let now = clock.now();
        let renewals = leases.plan(now, s.replicas.load(Ordering::Relaxed));
        for batch in renewals.chunks(LEASE_BATCH) {
            // A failed call grants nothing; what it gave back may be lost (under-admission).
            if s.renew(batch, now).await.is_err() {
                break;
            }
        }
    }
}

/// Renews this replica's heartbeat while Redis is healthy, and probes it while the
/// breaker is open; closes the breaker on the first answer.
async fn keep_alive(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let open = s.breaker.is_open();
        match s.beat().await {
            Ok(live) => {
                s.replicas.store(live.max(1), Ordering::Relaxed);
                telemetry::store_replicas(live.max(1));
                if s.breaker.close() {
                    tracing::info!("redis store reachable again; circuit breaker closed");
                }
            }
            Err(error) => {
                if !open {
                    telemetry::store_error(error.kind());
                    if s.breaker.failure() {
                        tracing::warn!(%error, "redis store failing; circuit breaker open, probing in the background");
                    }
                }
            }
        }
        let pause = if s.breaker.is_open() {
            PROBE_EVERY
        } else {
            HEARTBEAT_EVERY
        };
        drop(s);
        tokio::time::sleep(pause).await;
    }
}

/// Counts consecutive failures; open means Redis is not called on the request path.
#[derive(Default)]
struct Breaker {
    failures: AtomicU32,
    open: AtomicBool,
}

impl Breaker {
    fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; true when this one opened the breaker.
    fn failure(&self) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= BREAKER_THRESHOLD && !self.open.swap(true, Ordering::AcqRel) {
            telemetry::store_breaker(true);
            return true;
        }
        false
    }

    /// Closes the breaker; true when it was open.
    fn close(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        if self.open.swap(false, Ordering::AcqRel) {
            telemetry::store_breaker(false);
            return true;
        }
        false
    }
}

/// Heartbeat: this replica's id scored by the server's time in ms; stale ids dropped;
/// answers how many replicas are live.
const HEARTBEAT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
";

#[cfg(test)]
pub(crate) mod tests;
