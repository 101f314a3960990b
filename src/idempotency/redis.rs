//! Records in the shared Redis store, so a retry that lands on another replica is replayed.
//!
//! One Redis string per record, `{prefix}:idem1:<record key in hex>`, living for the rule's
//! `ttl` from the first request (`PX`; a commit keeps it with `KEEPTTL`). Its value is a
//! claim while the first request is in flight (`C`, fingerprint, the claim's random token)
//! and the response once stored (`R`, fingerprint, status, headers, body). Three small
//! scripts keep each step atomic: claim (`SET NX PX`, or read what is there), commit and
//! release (only while the claim is still this token's). Calls share the limiter store's
//! connection, timeout and circuit breaker. Expiry is Redis's; nothing is swept here.
//! Does not bound Redis's memory: the records' `ttl` and the server's `maxmemory` do.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use redis::Script;

use super::{Answer, Claimed, Fingerprint, Record, RecordError, RecordKey, RecordStore};
use crate::limiter::clock::{Nanos, MILLISECOND};
use crate::limiter::store::redis::RedisStore;

/// Claims `KEYS[1]` with `ARGV[1]` for `ARGV[2]` ms, or answers what it holds.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
";

/// Replaces the claim whose token is `ARGV[1]` by the record `ARGV[2]`, keeping its TTL.
const COMMIT: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 1) == 'C' and string.sub(v, 34) == ARGV[1] then
  redis.call('SET', KEYS[1], 'R' .. string.sub(v, 2, 33) .. ARGV[2], 'KEEPTTL')
  return 1
end
return 0
";

/// Deletes the claim whose token is `ARGV[1]`; anything else is left alone.
const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 1) == 'C' and string.sub(v, 34) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The record store in Redis.
pub struct RedisRecords {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<RedisStore>,
    claim: Script,
    commit: Script,
    release: Script,
    /// Largest record stored (`idempotency.max_bytes`).
    max_bytes: u64,
    /// Claims this replica holds in flight, for the entries gauge.
    in_flight: AtomicUsize,
}

impl RedisRecords {
    /// Records in `store`'s Redis, none larger than `max_bytes`.
    pub fn new(store: Arc<RedisStore>, max_bytes: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                claim: Script::new(CLAIM),
                commit: Script::new(COMMIT),
                release: Script::new(RELEASE),
                max_bytes,
                in_flight: AtomicUsize::new(0),
            }),
        }
    }
}

impl Inner {
    fn key(&self, key: &RecordKey) -> String {
        let mut name = String::with_capacity(self.store.key_prefix().len() + 70);
        name.push_str(self.store.key_prefix());
        name.push_str("idem1:");
        name.push_str(&hex(key));
        name
    }

    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        token: u64,
        ttl_ms: u64,
    ) -> Result<Claimed, RecordError> {
        let mut value = Vec::with_capacity(41);
        value.push(b'C');
        value.extend_from_slice(fingerprint);
        value.extend_from_slice(&token.to_be_bytes());
        let mut invocation = self.claim.prepare_invoke();
        invocation.key(self.key(key)).arg(value).arg(ttl_ms);
        let held: Option<Vec<u8>> = self.store.run(&invocation).await.map_err(unavailable)?;
        let Some(held) = held else {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            return Ok(Claimed::Owned(token));
        };
        let corrupt = || RecordError::Unavailable("unreadable idempotency record".into());
        if held.len() < 33 {
            return Err(corrupt());
        }
        if held[1..33] != fingerprint[..] {
            return Ok(Claimed::Mismatch);
        }
        match held[0] {
            b'C' => Ok(Claimed::InFlight),
            b'R' => decode(&held[33..])
                .map(|record| Claimed::Stored(Arc::new(record)))
                .ok_or_else(corrupt),
            _ => Err(corrupt()),
        }
    }

    async fn commit(
        &self,
        key: &RecordKey,
        token: u64,
        record: Record,
    ) -> Result<bool, RecordError> {
        if record.size() > self.max_bytes {
            self.release(key, token).await?;
            return Ok(false);
        }
        let mut invocation = self.commit.prepare_invoke();
        invocation
            .key(self.key(key))
            .arg(&token.to_be_bytes()[..])
            .arg(encode(&record));
        let stored: i64 = self.store.run(&invocation).await.map_err(unavailable)?;
        Ok(stored == 1)
    }

    async fn release(&self, key: &RecordKey, token: u64) -> Result<(), RecordError> {
        let mut invocation = self.release.prepare_invoke();
        invocation.key(self.key(key)).arg(&token.to_be_bytes()[..]);
        let _: i64 = self.store.run(&invocation).await.map_err(unavailable)?;
        Ok(())
    }

    /// A claim or a commit is over (whatever Redis answered): one fewer in flight here.
    fn settled(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

fn unavailable(error: crate::limiter::store::StoreError) -> RecordError {
    RecordError::Unavailable(error.to_string())
}

/// Logs and counts a commit or release that Redis did not take: the claim then expires
/// with its `ttl` (duplicates get 409 until then, never a second send).
fn report_failure(what: &str, error: &RecordError) {
    tracing::warn!(%error, "idempotency {what} failed; the claim expires with its ttl");
    super::count("error");
}

impl RecordStore for RedisRecords {
    fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        expires: Nanos,
        now: Nanos,
    ) -> Answer<Result<Claimed, RecordError>> {
        let ttl_ms = (expires.saturating_sub(now) / MILLISECOND).max(1);
        let token = rand::random::<u64>();
        let (inner, key, fingerprint) = (self.inner.clone(), *key, *fingerprint);
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Runs on its own: a request dropped while Redis answers must not leave its claim
        // behind (it would answer 409 for the whole ttl), so the task releases it.
        tokio::spawn(async move {
            let claimed = inner.claim(&key, &fingerprint, token, ttl_ms).await;
            let owned = matches!(claimed, Ok(Claimed::Owned(_)));
            if tx.send(claimed).is_err() && owned {
                inner.settled();
                if let Err(error) = inner.release(&key, token).await {
                    report_failure("release", &error);
                }
            }
        });
        Answer::Later(Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(RecordError::Unavailable("claim task ended".into())))
        }))
    }

    fn commit(
        &self,
        key: &RecordKey,
        token: u64,
        record: Record,
    ) -> Answer<Result<bool, RecordError>> {
        let (inner, key) = (self.inner.clone(), *key);
        Answer::Later(Box::pin(async move {
            let stored = inner.commit(&key, token, record).await;
            inner.settled();
            if let Err(error) = &stored {
                report_failure("commit", error);
            }
            stored
        }))
    }

    fn release(&self, key: &RecordKey, token: u64) -> Answer<Result<(), RecordError>> {
        let (inner, key) = (self.inner.clone(), *key);
        Answer::Later(Box::pin(async move {
            let released = inner.release(&key, token).await;
            inner.settled();
            if let Err(error) = &released {
                report_failure("release", error);
            }
            released
        }))
    }

    /// Redis expires records itself.
    fn sweep(&self, _now: Nanos) {}

    /// Claims this replica holds in flight; stored responses live in Redis, so no bytes.
    fn usage(&self) -> (usize, u64) {
        (self.inner.in_flight.load(Ordering::Relaxed), 0)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Status (2 bytes), header count (4), each header as name length (2), name, value
/// length (4), value; then the body.
fn encode(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.size() as usize + 4 + 6 * record.headers.len());
    out.extend_from_slice(&record.status.as_u16().to_be_bytes());
    out.extend_from_slice(&(record.headers.len() as u32).to_be_bytes());
    for (name, value) in &record.headers {
        out.extend_from_slice(&(name.as_str().len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(&record.body);
    out
}

/// The record `encode` wrote, or `None` for anything else.
fn decode(mut bytes: &[u8]) -> Option<Record> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = rest;
        Some(head)
    }
    let u16_at = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let status = StatusCode::from_u16(u16_at(take(&mut bytes, 2)?)).ok()?;
    let u32_at = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = u32_at(take(&mut bytes, 4)?);
    let mut headers = HeaderMap::new();
    for _ in 0..count {
        let len = usize::from(u16_at(take(&mut bytes, 2)?));
        let name = HeaderName::from_bytes(take(&mut bytes, len)?).ok()?;
        let len = u32_at(take(&mut bytes, 4)?);
        let value = HeaderValue::from_bytes(take(&mut bytes, len)?).ok()?;
        headers.append(name, value);
    }
    Some(Record {
        status,
        headers,
        body: Bytes::copy_from_slice(bytes),
    })
}

#[cfg(test)]
mod tests;
