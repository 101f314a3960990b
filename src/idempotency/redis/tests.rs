//! The Redis record store on a real `redis-server` started per test.

use std::time::Duration;

use http::header::{CONTENT_TYPE, SET_COOKIE};

use super::*;
use crate::limiter::clock::SECOND;
use crate::limiter::store::redis::tests::{system_clock, Server};
use crate::limiter::store::OnError;

const T0: Nanos = 1_700_000_000 * SECOND;
const FP: Fingerprint = [1; 32];
const OTHER_FP: Fingerprint = [2; 32];
const KEY: RecordKey = [9; 32];

fn records(server: &Server) -> RedisRecords {
    let store = RedisStore::start(&server.settings(OnError::Allow), 100, system_clock()).unwrap();
    RedisRecords::new(Arc::new(store), 1 << 20)
}

fn record(body: &'static [u8]) -> Record {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.append(SET_COOKIE, HeaderValue::from_static("a=1"));
    headers.append(SET_COOKIE, HeaderValue::from_bytes(b"b=\xe92").unwrap());
    Record {
        status: StatusCode::CREATED,
        headers,
        body: Bytes::from_static(body),
    }
}

async fn claim(records: &RedisRecords, fingerprint: &Fingerprint, ttl: Nanos) -> Claimed {
    records
        .claim(&KEY, fingerprint, T0 + ttl, T0)
        .resolve()
        .await
        .unwrap()
}

async fn owned(records: &RedisRecords, ttl: Nanos) -> u64 {
    match claim(records, &FP, ttl).await {
        Claimed::Owned(token) => token,
        other => panic!("expected a claim, got {other:?}"),
    }
}

/// Milliseconds the record of `KEY` has left in Redis (-2: none).
async fn pttl(server: &Server) -> i64 {
    let client = redis::Client::open(server.settings(OnError::Allow).url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let name = format!("{{test}}:idem1:{}", hex(&KEY));
    redis::cmd("PTTL")
        .arg(name)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[test]
fn records_round_trip_through_their_encoding() {
    let stored = record(b"\x00{\"id\":1}\xff");
    assert_eq!(decode(&encode(&stored)), Some(stored.clone()));
    let empty = Record {
        status: StatusCode::NO_CONTENT,
        headers: HeaderMap::new(),
        body: Bytes::new(),
    };
    assert_eq!(decode(&encode(&empty)), Some(empty));
    let bytes = encode(&stored);
    for cut in [0, 1, 3, 7, 12] {
        assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
    }
}

#[tokio::test]
async fn a_claim_answers_duplicates_until_committed_then_replays() {
    let server = Server::start();
    let records = records(&server);
    let token = owned(&records, 60 * SECOND).await;
    assert_eq!(records.usage(), (1, 0));
    assert_eq!(claim(&records, &FP, 60 * SECOND).await, Claimed::InFlight);
    assert_eq!(
        claim(&records, &OTHER_FP, 60 * SECOND).await,
        Claimed::Mismatch
    );

    let left = pttl(&server).await;
    assert!(left > 0 && left <= 60_000, "claim ttl {left}");
    // Another replica's token (or a stale one) cannot fill the claim.
    let stale = records.commit(&KEY, token ^ 1, record(b"x")).resolve();
    assert!(!stale.await.unwrap());
    assert!(records
        .commit(&KEY, token, record(b"{\"id\":1}"))
        .resolve()
        .await
        .unwrap());
    assert_eq!(records.usage(), (0, 0));
    let after = pttl(&server).await;
    assert!(
        after > 0 && after <= left,
        "the record keeps the claim's ttl: {after}"
    );

    // Any replica (a second store on the same Redis) replays it.
    let other = self::records(&server);
    assert_eq!(
        claim(&other, &FP, 60 * SECOND).await,
        Claimed::Stored(Arc::new(record(b"{\"id\":1}")))
    );
    assert_eq!(
        claim(&other, &OTHER_FP, 60 * SECOND).await,
        Claimed::Mismatch
    );
    // A stored record is not released by its old token.
    records.release(&KEY, token).resolve().await.unwrap();
    assert!(matches!(
        claim(&other, &FP, 60 * SECOND).await,
        Claimed::Stored(_)
    ));
}

#[tokio::test]
async fn a_released_claim_lets_the_retry_through_and_only_its_token_releases() {
    let server = Server::start();
    let records = records(&server);
    let token = owned(&records, 60 * SECOND).await;
    records.release(&KEY, token ^ 1).resolve().await.unwrap();
    assert_eq!(claim(&records, &FP, 60 * SECOND).await, Claimed::InFlight);
    records.release(&KEY, token).resolve().await.unwrap();
    assert_eq!(pttl(&server).await, -2);
    let again = owned(&records, 60 * SECOND).await;
    assert_ne!(again, token);
}

#[tokio::test]
async fn a_record_too_large_is_not_stored_and_releases_the_claim() {
    let server = Server::start();
    let store = RedisStore::start(&server.settings(OnError::Allow), 100, system_clock()).unwrap();
    let records = RedisRecords::new(Arc::new(store), 16);
    let token = owned(&records, 60 * SECOND).await;
    let big = record(b"a body longer than sixteen bytes");
    assert!(!records.commit(&KEY, token, big).resolve().await.unwrap());
    assert_eq!(pttl(&server).await, -2);
    owned(&records, 60 * SECOND).await;
}

#[tokio::test]
async fn claims_and_records_expire_with_their_ttl() {
    let server = Server::start();
    let records = records(&server);
    owned(&records, 30 * MILLISECOND).await;
    // Redis expires on its own clock: wait until it has, then the key is free again.
    let mut expired = false;
    for _ in 0..200 {
        if pttl(&server).await == -2 {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(expired, "the claim never expired");
    let token = owned(&records, 30 * MILLISECOND).await;
    assert!(records
        .commit(&KEY, token, record(b"1"))
        .resolve()
        .await
        .unwrap());
    let mut expired = false;
    for _ in 0..200 {
        if pttl(&server).await == -2 {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(expired, "the record never expired");
    owned(&records, 60 * SECOND).await;
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_within_the_timeout_never_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = crate::config::RedisSettings {
        url: format!("redis://127.0.0.1:{port}"),
        timeout: Duration::from_millis(200),
        on_error: OnError::Allow,
        prefix: "test".into(),
        sync_interval: None,
        cluster: false,
    };
    let store = RedisStore::start(&settings, 100, system_clock()).unwrap();
    let records = RedisRecords::new(Arc::new(store), 1 << 20);
    let answer = records.claim(&KEY, &FP, T0 + SECOND, T0).resolve();
    let claimed = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .expect("bounded by the store's timeout and retries");
    assert!(matches!(claimed, Err(RecordError::Unavailable(_))));
    assert_eq!(records.usage(), (0, 0));
}
