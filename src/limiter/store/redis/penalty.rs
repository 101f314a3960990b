//! The penalty box in Redis, shared by every replica (see docs/redis.md#the-penalty-box).
//!
//! Violations are counted in Redis (`{PREFIX}:penalty:SUBJECT`, an `INCR` that expires
//! `within` after the first), and a block is a member of the sorted set
//! `{PREFIX}:penalty:blocked` scored by the server time at which it ends. Asking whether a
//! caller is blocked, which every request does, costs no Redis call: each replica keeps a
//! local mirror of that set, refreshed every `REFRESH_EVERY` by one call, so a block started
//! anywhere reaches every replica within that interval. Only a rejection (already the slow,
//! rare path) calls Redis to count its violation. When Redis fails, violations are counted in
//! this replica's memory box instead (a metric and a log line say so).

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::Script;

use super::Shared;
use crate::limiter::clock::{Clock, Nanos};
use crate::limiter::penalty::{MemoryPenalties, Penalties, Penalty, Violation};
use crate::limiter::store::memory::KeyHasher;
use crate::limiter::store::StoreError;
use crate::telemetry;

/// How often each replica refreshes its mirror of the blocks in Redis.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

const MS: Nanos = 1_000_000;

type Mirror = HashMap<u64, Nanos, BuildHasherDefault<KeyHasher>>;

/// The penalty box in the Redis store.
pub struct RedisPenalties {
    shared: Arc<Shared>,
    inner: Arc<Inner>,
}

struct Inner {
    violation: Script,
    refresh: Script,
    /// `{prefix}:penalty:`, the start of every penalty key.
    key_prefix: String,
    blocked_key: String,
    /// Blocks as last read from Redis (plus those started here since): subject → end, on
    /// this replica's clock.
    mirror: ArcSwap<Mirror>,
    /// Where violations are counted while Redis fails.
    local: MemoryPenalties,
    max_entries: usize,
    /// Whether the last violation fell back to `local` (logs the fallback once per outage).
    degraded: AtomicBool,
}

impl RedisPenalties {
    /// A penalty box in `shared`'s Redis; spawns the mirror refresh (reading `clock`).
    pub(super) fn start(shared: Arc<Shared>, max_entries: usize, clock: Arc<dyn Clock>) -> Self {
        let key_prefix = format!("{}penalty:", shared.key_prefix);
        let inner = Arc::new(Inner {
            violation: Script::new(VIOLATION),
            refresh: Script::new(REFRESH),
            blocked_key: format!("{key_prefix}blocked"),
            key_prefix,
            mirror: ArcSwap::from_pointee(Mirror::default()),
            local: MemoryPenalties::new(max_entries),
            max_entries: max_entries.max(1),
            degraded: AtomicBool::new(false),
        });
        tokio::spawn(refresh(
            Arc::downgrade(&shared),
            Arc::downgrade(&inner),
            clock,
        ));
        Self { shared, inner }
    }
}

impl Penalties for RedisPenalties {
    fn blocked_until(&self, subject: u64, now: Nanos) -> Option<Nanos> {
        let mirror = self.inner.mirror.load();
        if let Some(&until) = mirror.get(&subject).filter(|&&until| until > now) {
            return Some(until);
        }
        self.inner.local.blocked_until(subject, now)
    }

    fn violation(&self, subject: u64, rule: &Penalty, now: Nanos) -> Violation {
        if self.shared.breaker.is_open() {
            let counted = self
                .inner
                .local(subject, rule, now, &"circuit breaker open");
            return Violation::Ready(counted);
        }
        let (shared, inner, rule) = (self.shared.clone(), self.inner.clone(), *rule);
        Violation::Pending(Box::pin(async move {
            let mut invocation = inner.violation.prepare_invoke();
            invocation
                .key(format!("{}{subject:016x}", inner.key_prefix))
                .key(inner.blocked_key.as_str())
                .arg(rule.violations.get())
                .arg(rule.within.div_ceil(MS).max(1))
                .arg(rule.block_for.div_ceil(MS).max(1))
                .arg(format!("{subject:016x}"));
            match shared.invoke::<Vec<i64>>(&invocation).await {
                Ok(reply) => {
                    inner.degraded.store(false, Ordering::Relaxed);
                    let left = reply.first().copied().unwrap_or(0);
                    if left <= 0 {
                        return None;
                    }
                    // Counted down from the request's own clock, as the memory box does.
                    let until = now.saturating_add(left.unsigned_abs().saturating_mul(MS));
                    inner.mirror.rcu(|mirror| {
                        let mut mirror = Mirror::clone(mirror);
                        mirror.insert(subject, until);
                        mirror
                    });
                    telemetry::penalty_started();
                    Some(until)
                }
                Err(error) => inner.local(subject, &rule, now, &error),
            }
        }))
    }

    fn sweep(&self, now: Nanos) {
        self.inner.local.sweep(now);
        telemetry::penalty_blocked(self.blocked(now));
    }

    fn blocked(&self, now: Nanos) -> usize {
        let mirror = self.inner.mirror.load();
        mirror.values().filter(|&&until| until > now).count() + self.inner.local.blocked(now)
    }
}

impl Inner {
    /// Counts a violation in this replica's memory because Redis cannot.
    fn local(&self, subject: u64, rule: &Penalty, now: Nanos, why: &dyn Display) -> Option<Nanos> {
        telemetry::penalty_local();
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %why, "redis penalty box failing; counting violations in this replica's memory");
        }
        self.local.record(subject, rule, now)
    }

    /// Replaces the mirror with Redis's blocks, read at `sent` (keeping the blocks started
    /// here that the read may have missed: a block only ever ends by time).
    fn replace(&self, reply: &[String], sent: Nanos, now: Nanos) {
        let old = self.mirror.load();
        let mut mirror = Mirror::default();
        for pair in reply.chunks_exact(2) {
            let (Ok(subject), Ok(left)) =
                (u64::from_str_radix(&pair[0], 16), pair[1].parse::<u64>())
            else {
                continue;
            };
            mirror.insert(subject, sent.saturating_add(left.saturating_mul(MS)));
        }
        for (&subject, &until) in old.iter() {
            if until > now && mirror.len() < self.max_entries {
                mirror.entry(subject).or_insert(until);
            }
        }
        self.mirror.store(Arc::new(mirror));
    }
}

/// Refreshes the mirror every `REFRESH_EVERY` while the breaker is closed.
async fn refresh(shared: Weak<Shared>, inner: Weak<Inner>, clock: Arc<dyn Clock>) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let (Some(s), Some(inner)) = (shared.upgrade(), inner.upgrade()) else {
            return;
        };
        if s.breaker.is_open() {
            continue;
        }
        let mut invocation = inner.refresh.prepare_invoke();
        invocation
            .key(inner.blocked_key.as_str())
            .arg(inner.max_entries);
        let sent = clock.now();
        let mut conn = s.conn.clone();
        let reply =
            tokio::time::timeout(s.timeout, invocation.invoke_async::<Vec<String>>(&mut conn))
                .await;
        match reply {
            Ok(Ok(reply)) => inner.replace(&reply, sent, clock.now()),
            // The heartbeat watches Redis's health; a missed refresh keeps the old mirror.
            Ok(Err(error)) => tracing::debug!(%error, "penalty mirror refresh failed"),
            Err(_) => tracing::debug!(
                error = %StoreError::Timeout(s.timeout),
                "penalty mirror refresh failed"
            ),
        }
    }
}

/// KEYS: the subject's violation counter, the blocked set. ARGV: violations, within (ms),
/// block_for (ms), subject. Answers `{ms the block lasts}` if this violation starts one,
/// else `{0}`; a subject already blocked counts nothing (as in the memory box).
const VIOLATION: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = redis.call('ZSCORE', KEYS[2], ARGV[4])
if blocked and tonumber(blocked) > now then return {0} end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n < tonumber(ARGV[1]) then return {0} end
redis.call('DEL', KEYS[1])
local block_for = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + block_for, ARGV[4])
if redis.call('PTTL', KEYS[2]) < block_for then redis.call('PEXPIRE', KEYS[2], block_for) end
return {block_for}
";

/// KEYS: the blocked set. ARGV: most entries. Answers subject, ms left, subject, ms left…
/// for every block still running on the server's clock.
const REFRESH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now), '+inf',
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
for i = 2, #r, 2 do r[i] = string.format('%d', tonumber(r[i]) - now) end
return r
";
