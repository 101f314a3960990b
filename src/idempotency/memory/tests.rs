use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::*;

const SECOND: Nanos = 1_000_000_000;

fn key(n: u8) -> RecordKey {
    let mut key = [0; 32];
    // Spread over shards like real digests do, and keep keys distinct within one.
    key[0] = n.wrapping_mul(37);
    key[1] = n;
    key
}

fn fp(n: u8) -> Fingerprint {
    [n; 32]
}

fn record(body: usize) -> Record {
    Record {
        status: StatusCode::CREATED,
        headers: HeaderMap::new(),
        body: Bytes::from(vec![b'x'; body]),
    }
}

fn claim(store: &MemoryRecords, k: u8, f: u8, expires: Nanos, now: Nanos) -> Claimed {
    match store.claim(&key(k), &fp(f), expires, now) {
        Answer::Ready(answer) => answer.unwrap(),
        Answer::Later(_) => panic!("the memory store answers at once"),
    }
}

fn owned(claimed: Claimed) -> u64 {
    match claimed {
        Claimed::Owned(token) => token,
        other => panic!("expected a claim, got {other:?}"),
    }
}

fn commit(store: &MemoryRecords, k: u8, token: u64, body: usize) -> bool {
    match store.commit(&key(k), token, record(body)) {
        Answer::Ready(answer) => answer.unwrap(),
        Answer::Later(_) => panic!("the memory store answers at once"),
    }
}

#[test]
fn first_claims_then_in_flight_then_stored_and_a_changed_request_mismatches() {
    let store = MemoryRecords::new(100, 1 << 20);
    let token = owned(claim(&store, 1, 1, 100 * SECOND, 0));
    assert_eq!(claim(&store, 1, 1, 100 * SECOND, 1), Claimed::InFlight);
    assert_eq!(claim(&store, 1, 2, 100 * SECOND, 1), Claimed::Mismatch);
    assert!(commit(&store, 1, token, 10));
    assert_eq!(
        claim(&store, 1, 1, 100 * SECOND, 2),
        Claimed::Stored(Arc::new(record(10)))
    );
    assert_eq!(claim(&store, 1, 2, 100 * SECOND, 2), Claimed::Mismatch);
    assert_eq!(store.usage(), (1, 10));
    // Another key is independent.
    owned(claim(&store, 2, 1, 100 * SECOND, 2));
    assert_eq!(store.usage().0, 2);
}

#[test]
fn a_released_claim_lets_the_retry_through_and_a_stale_token_changes_nothing() {
    let store = MemoryRecords::new(100, 1 << 20);
    let first = owned(claim(&store, 1, 1, 100, 0));
    let _ = store.release(&key(1), first + 1000);
    assert_eq!(claim(&store, 1, 1, 100, 0), Claimed::InFlight);
    let _ = store.release(&key(1), first);
    assert_eq!(store.usage(), (0, 0));
    let second = owned(claim(&store, 1, 1, 100, 0));
    assert_ne!(first, second);
    // The old claim can no longer fill the record.
    assert!(!commit(&store, 1, first, 5));
    assert!(commit(&store, 1, second, 5));
    assert_eq!(store.usage(), (1, 5));
}

#[test]
fn records_expire_at_their_deadline_and_the_sweep_frees_them() {
    let store = MemoryRecords::new(100, 1 << 20);
    let token = owned(claim(&store, 1, 1, 10 * SECOND, 0));
    assert!(commit(&store, 1, token, 10));
    let token = owned(claim(&store, 2, 1, 20 * SECOND, 0));
    assert!(commit(&store, 2, token, 20));
    assert!(matches!(
        claim(&store, 1, 1, 0, 10 * SECOND - 1),
        Claimed::Stored(_)
    ));
    store.sweep(10 * SECOND);
    assert_eq!(store.usage(), (1, 20));
    // Expired: the key is free again, even with another request.
    owned(claim(&store, 1, 9, 30 * SECOND, 10 * SECOND));
    // An expired record is dropped when looked up, before any sweep.
    owned(claim(&store, 2, 1, 40 * SECOND, 20 * SECOND));
    assert_eq!(store.usage(), (2, 0));
    store.sweep(u64::MAX);
    assert_eq!(store.usage(), (0, 0));
}

#[test]
fn a_claim_swept_while_in_flight_is_not_filled() {
    let store = MemoryRecords::new(100, 1 << 20);
    let token = owned(claim(&store, 1, 1, SECOND, 0));
    store.sweep(SECOND);
    assert!(!commit(&store, 1, token, 10));
    assert_eq!(store.usage(), (0, 0));
}

#[test]
fn entries_are_bounded_by_evicting_the_oldest_stored_record_never_a_claim() {
    let store = MemoryRecords::new(2, 1 << 20);
    let a = owned(claim(&store, 1, 1, 100, 0));
    let _b = owned(claim(&store, 2, 1, 100, 0));
    // Full of requests in flight: a new key waits like a duplicate would.
    assert_eq!(claim(&store, 3, 1, 100, 0), Claimed::InFlight);
    assert!(commit(&store, 1, a, 1));
    // The stored record goes to make room; the claim in flight stays.
    let c = owned(claim(&store, 3, 1, 100, 0));
    assert_eq!(store.usage(), (2, 0));
    assert!(matches!(claim(&store, 1, 1, 100, 0), Claimed::InFlight));
    assert_eq!(claim(&store, 2, 1, 100, 0), Claimed::InFlight);
    assert!(commit(&store, 3, c, 1));
    assert!(matches!(claim(&store, 3, 1, 100, 0), Claimed::Stored(_)));
}

#[test]
fn bytes_are_bounded_by_evicting_the_oldest_and_an_oversized_record_is_not_kept() {
    let store = MemoryRecords::new(100, 100);
    let a = owned(claim(&store, 1, 1, 100, 0));
    assert!(commit(&store, 1, a, 60));
    let b = owned(claim(&store, 2, 1, 100, 0));
    assert!(commit(&store, 2, b, 60));
    assert_eq!(store.usage(), (1, 60));
    owned(claim(&store, 1, 1, 100, 0));
    assert!(matches!(claim(&store, 2, 1, 100, 0), Claimed::Stored(_)));

    let c = owned(claim(&store, 3, 1, 100, 0));
    assert!(!commit(&store, 3, c, 101));
    // Not kept, and released: the retry is forwarded.
    owned(claim(&store, 3, 1, 100, 0));
    assert!(matches!(claim(&store, 2, 1, 100, 0), Claimed::Stored(_)));
    assert_eq!(store.usage().1, 60);
}

#[test]
fn concurrent_claims_of_one_key_give_exactly_one_owner() {
    let store = Arc::new(MemoryRecords::new(1000, 1 << 20));
    let owners: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                scope.spawn(move || {
                    (0..50u8)
                        .filter(|&k| matches!(claim(&store, k, 1, 100, 0), Claimed::Owned(_)))
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(owners, 50);
    assert_eq!(store.usage(), (50, 0));
}
