//! Idempotency keys end to end: the real binary between a client and a counting upstream,
//! all on loopback. A retry is never forwarded twice, replays are byte-identical and take
//! no quota, duplicates in flight get 409, a changed request 422, and nothing is shared
//! between callers or kept from a failing upstream.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use support::Sluice;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// An upstream that counts what it sees. `/v1/messages` answers 201 with a fresh sequence
/// number and the request body; `/v1/fail` answers 503; `/v1/slow` answers only once the
/// gate opens; `/v1/broken` sends part of a body and then fails.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<AtomicU64>,
    gate: watch::Sender<bool>,
}

async fn upstream() -> Upstream {
    let seen = Arc::new(AtomicU64::new(0));
    let (gate, opened) = watch::channel(false);
    let counter = seen.clone();
    let addr = support::serve(move |req| {
        let seq = counter.fetch_add(1, Ordering::SeqCst) + 1;
        answer(req, seq, opened.clone())
    })
    .await;
    Upstream { addr, seen, gate }
}

type UpBody = BoxBody<Bytes, std::io::Error>;

async fn answer(
    req: Request<Incoming>,
    seq: u64,
    mut opened: watch::Receiver<bool>,
) -> Response<UpBody> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if path == "/v1/broken" {
        // A first chunk, then (once the test says so) a failure instead of the rest.
        let frames = futures_util::stream::unfold(0, move |step| {
            let mut opened = opened.clone();
            async move {
                let frame = match step {
                    0 => Ok(Frame::data(Bytes::from_static(b"partial"))),
                    1 => {
                        opened.wait_for(|open| *open).await.unwrap();
                        Err(std::io::Error::other("upstream broke mid-body"))
                    }
                    _ => return None,
                };
                Some((frame, step + 1))
            }
        });
        return Response::new(BodyExt::boxed(StreamBody::new(frames)));
    }
    let (status, text) = match path.as_str() {
        "/v1/fail" => (503, "busy".to_string()),
        "/v1/slow" => {
            opened.wait_for(|open| *open).await.unwrap();
            (201, format!("slow {seq}"))
        }
        _ => (
            201,
            format!(
                "{{\"id\":{seq},\"got\":\"{}\"}}",
                String::from_utf8_lossy(&body)
            ),
        ),
    };
    let full = Full::new(Bytes::from(text)).map_err(|never| match never {});
    let mut response = Response::new(BodyExt::boxed(full));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    let headers = response.headers_mut();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("x-seq", seq.to_string().parse().unwrap());
    headers.insert("location", format!("/v1/messages/{seq}").parse().unwrap());
    response
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One POST on a fresh connection, with an API key, an optional idempotency key and a body.
async fn post(
    addr: SocketAddr,
    path: &str,
    api_key: &str,
    idem: Option<&str>,
    body: &str,
) -> Reply {
    let (parts, body) = send(addr, path, api_key, idem, body).await.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Sends one POST and returns the response with its body still streaming.
async fn send(
    addr: SocketAddr,
    path: &str,
    api_key: &str,
    idem: Option<&str>,
    body: &str,
) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::post(path)
        .header("host", addr.to_string())
        .header("x-api-key", api_key);
    if let Some(idem) = idem {
        request = request.header("idempotency-key", idem);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    sender.send_request(request).await.unwrap()
}

fn start(dir: &Path, upstream: SocketAddr) -> Sluice {
    Sluice::start(&config(dir, upstream, ""), &[])
}

/// Writes the test config, with `extra` (top-level lines such as a `store`) at its end.
fn config(dir: &Path, upstream: SocketAddr, extra: &str) -> PathBuf {
    let yaml = format!(
        r#"listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {{ url: "http://{upstream}" }}
keys: [ {{ key: alice }}, {{ key: bob }} ]
routes:
  - {{ name: send, match: {{ method: POST, path: /v1/messages }}, limit: {{ rate: 3/d, algorithm: fixed_window }}, idempotency: {{ max_body: 64 }} }}
  - {{ name: fail, match: {{ method: POST, path: /v1/fail }}, limit: 100/d, idempotency: {{}} }}
  - {{ name: slow, match: {{ method: POST, path: /v1/slow }}, limit: 100/d, idempotency: {{}} }}
  - {{ name: broken, match: {{ method: POST, path: /v1/broken }}, limit: 100/d, idempotency: {{}} }}
responses:
  idempotency_conflict:
    body: '{{"code":"IN_PROGRESS","status":${{status}},"request_id":"${{request_id}}"}}'
{extra}"#
    );
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Headers that must match between the first response and its replays.
fn stable(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut kept: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| {
            !["date", "x-request-id", "idempotent-replayed"].contains(&name.as_str())
        })
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    kept.sort();
    kept
}

#[tokio::test]
async fn ten_retries_reach_the_upstream_once_and_replay_byte_identically() {
    let up = upstream().await;
    let dir = support::dir();
    let sluice = start(dir.path(), up.addr);
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(
            post(
                sluice.listen,
                "/v1/messages",
                "alice",
                Some("retry-1"),
                "hi",
            )
            .await,
        );
    }
    assert_eq!(up.seen.load(Ordering::SeqCst), 1);
    let first = &replies[0];
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body, r#"{"id":1,"got":"hi"}"#);
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(first.header("x-ratelimit-remaining"), Some("2"));
    // The upstream's own headers, recorded with the body.
    assert_eq!(first.header("location"), Some("/v1/messages/1"));
    for replay in &replies[1..] {
        assert_eq!(replay.status, StatusCode::CREATED);
        assert_eq!(replay.body, first.body, "byte-identical");
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_eq!(stable(&replay.headers), stable(&first.headers));
        assert_ne!(replay.header("x-request-id"), first.header("x-request-id"));
    }

    // The nine replays took no quota: two of the three requests a day are left.
    let second = post(sluice.listen, "/v1/messages", "alice", Some("retry-2"), "x").await;
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(second.header("x-ratelimit-remaining"), Some("1"));
    // A replay shows the caller's quota as it is now, without taking any.
    let again = post(
        sluice.listen,
        "/v1/messages",
        "alice",
        Some("retry-1"),
        "hi",
    )
    .await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(up.seen.load(Ordering::SeqCst), 2);

    let replayed = r#"sluice_idempotency_total{outcome="replayed"}"#;
    assert_eq!(sluice.metric(replayed).await, Some(10.0));
    assert_eq!(sluice.metric("sluice_idempotency_entries").await, Some(2.0));
    let requests = r#"sluice_requests_total{route="send",plan="default",decision="replayed"}"#;
    assert_eq!(sluice.metric(requests).await, Some(10.0));
}

#[tokio::test]
async fn a_duplicate_in_flight_gets_409_and_the_retry_after_it_the_stored_response() {
    let up = upstream().await;
    let dir = support::dir();
    let sluice = start(dir.path(), up.addr);
    let listen = sluice.listen;
    let first =
        tokio::spawn(async move { post(listen, "/v1/slow", "alice", Some("dup"), "once").await });
    support::eventually("the first request to reach the upstream", async || {
        up.seen.load(Ordering::SeqCst) == 1
    })
    .await;
    let duplicates: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(
                async move { post(listen, "/v1/slow", "alice", Some("dup"), "once").await },
            )
        })
        .collect();
    for duplicate in duplicates {
        let duplicate = duplicate.await.unwrap();
        assert_eq!(duplicate.status, StatusCode::CONFLICT);
        let body = String::from_utf8(duplicate.body.to_vec()).unwrap();
        let request_id = duplicate.header("x-request-id").unwrap();
        assert_eq!(
            body,
            format!(r#"{{"code":"IN_PROGRESS","status":409,"request_id":"{request_id}"}}"#)
        );
        assert!(duplicate.header("x-ratelimit-limit").is_some());
    }
    up.gate.send(true).unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body, "slow 1");
    let retry = post(listen, "/v1/slow", "alice", Some("dup"), "once").await;
    assert_eq!(retry.body, "slow 1");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(up.seen.load(Ordering::SeqCst), 1);
    let conflicts = r#"sluice_idempotency_total{outcome="conflict"}"#;
    assert_eq!(sluice.metric(conflicts).await, Some(5.0));
}

#[tokio::test]
async fn the_same_key_with_another_request_gets_422() {
    let up = upstream().await;
    let dir = support::dir();
    let sluice = start(dir.path(), up.addr);
    let first = post(sluice.listen, "/v1/messages", "alice", Some("k"), "hello").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let changed = post(sluice.listen, "/v1/messages", "alice", Some("k"), "hellO").await;
    assert_eq!(changed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        changed.header("content-type"),
        Some("application/problem+json")
    );
    let body = String::from_utf8(changed.body.to_vec()).unwrap();
    assert!(body.contains("\"status\":422"), "{body}");
    assert_eq!(up.seen.load(Ordering::SeqCst), 1);
    // The original is still replayed.
    let same = post(sluice.listen, "/v1/messages", "alice", Some("k"), "hello").await;
    assert_eq!(same.body, first.body);
}

#[tokio::test]
async fn another_caller_with_the_same_key_is_forwarded_and_never_sees_the_first_response() {
    let up = upstream().await;
    let dir = support::dir();
    let sluice = start(dir.path(), up.addr);
    let alice = post(sluice.listen, "/v1/messages", "alice", Some("shared"), "a").await;
    let bob = post(sluice.listen, "/v1/messages", "bob", Some("shared"), "a").await;
    assert_eq!(up.seen.load(Ordering::SeqCst), 2);
    assert_eq!(alice.body, r#"{"id":1,"got":"a"}"#);
    assert_eq!(bob.body, r#"{"id":2,"got":"a"}"#);
    assert_eq!(bob.header("idempotent-replayed"), None);
    let bob_again = post(sluice.listen, "/v1/messages", "bob", Some("shared"), "a").await;
    assert_eq!(bob_again.body, bob.body);
    assert_eq!(up.seen.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_503_is_not_stored_and_the_retry_is_forwarded() {
    let up = upstream().await;
    let dir = support::dir();
    let sluice = start(dir.path(), up.addr);
    for expected in 1..=3 {
        let reply = post(sluice.listen, "/v1/fail", "alice", Some("f"), "x").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.header("idempotent-replayed"), None);
        assert_eq!(up.seen.load(Ordering::SeqCst), expected);
    }
    let not_stored = r#"sluice_idempotency_total{outcome="not_stored"}"#;
    assert_eq!(sluice.metric(not_stored).await, Some(3.0));
}

#[tokio::test]
async fn a_body_over_max_body_gets_413_and_requests_without_a_key_are_untouched() {
    let up = upstream().await;
    let dir = support::dir();
    let sluice = start(dir.path(), up.addr);
    let big = "x".repeat(65);
    let reply = post(sluice.listen, "/v1/messages", "alice", Some("big"), &big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(up.seen.load(Ordering::SeqCst), 0);
    // Without the header, the route forwards every request as usual.
    for expected in 1..=2 {
        let reply = post(sluice.listen, "/v1/messages", "alice", None, &big).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(up.seen.load(Ordering::SeqCst), expected);
    }
}

#[tokio::test]
async fn a_body_that_fails_midway_is_not_stored() {
    let up = upstream().await;
    let dir = support::dir();
    let sluice = start(dir.path(), up.addr);
    for expected in 1..=2 {
        let response = send(sluice.listen, "/v1/broken", "alice", Some("b"), "x").await;
        assert_eq!(response.status(), StatusCode::OK);
        up.gate.send(true).unwrap();
        assert!(response.into_body().collect().await.is_err());
        up.gate.send(false).unwrap();
        assert_eq!(up.seen.load(Ordering::SeqCst), expected);
    }
}

/// The case idempotency keys exist for: the client times out and goes away while the
/// upstream is still working. The exchange finishes anyway, and the retry gets its answer
/// instead of sending again.
#[tokio::test]
async fn a_client_that_leaves_early_gets_the_answer_on_retry_without_a_second_send() {
    let up = upstream().await;
    let dir = support::dir();
    let sluice = start(dir.path(), up.addr);
    let listen = sluice.listen;
    let first =
        tokio::spawn(async move { post(listen, "/v1/slow", "alice", Some("gone"), "x").await });
    support::eventually("the first request to reach the upstream", async || {
        up.seen.load(Ordering::SeqCst) == 1
    })
    .await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    up.gate.send(true).unwrap();
    let mut retries = Vec::new();
    support::eventually("the retry to be answered from the record", async || {
        let retry = post(listen, "/v1/slow", "alice", Some("gone"), "x").await;
        let replayed = retry.header("idempotent-replayed") == Some("true");
        retries.push(retry);
        replayed
    })
    .await;
    let last = retries.last().unwrap();
    assert_eq!(
        (last.status, &last.body[..]),
        (StatusCode::CREATED, &b"slow 1"[..])
    );
    // Until then, the retries were told the first was still in progress.
    for early in &retries[..retries.len() - 1] {
        assert_eq!(early.status, StatusCode::CONFLICT);
    }
    assert_eq!(up.seen.load(Ordering::SeqCst), 1);
}

/// Two sluice processes sharing one real `redis-server`.
fn replicas(dir: &Path, upstream: SocketAddr, redis: &support::Redis) -> (Sluice, Sluice) {
    let store = format!(
        "store: {{ backend: redis, url: \"{}\", timeout: 200ms, on_error: allow }}\n",
        redis.url()
    );
    let path = config(dir, upstream, &store);
    (Sluice::start(&path, &[]), Sluice::start(&path, &[]))
}

#[tokio::test]
async fn in_redis_mode_every_replica_replays_and_refuses_what_another_one_recorded() {
    let up = upstream().await;
    let redis = support::Redis::start();
    let dir = support::dir();
    let (a, b) = replicas(dir.path(), up.addr, &redis);

    let first = post(a.listen, "/v1/messages", "alice", Some("r-1"), "hi").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body, r#"{"id":1,"got":"hi"}"#);
    assert_eq!(first.header("idempotent-replayed"), None);
    for replica in [&b, &a, &b, &b, &a] {
        let replay = post(replica.listen, "/v1/messages", "alice", Some("r-1"), "hi").await;
        assert_eq!(replay.status, StatusCode::CREATED);
        assert_eq!(replay.body, first.body, "byte-identical");
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_eq!(stable(&replay.headers), stable(&first.headers));
    }
    assert_eq!(up.seen.load(Ordering::SeqCst), 1);
    // A changed request under the key is refused by the other replica too.
    let changed = post(b.listen, "/v1/messages", "alice", Some("r-1"), "hI").await;
    assert_eq!(changed.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Another caller's key of the same name is its own.
    let bob = post(b.listen, "/v1/messages", "bob", Some("r-1"), "hi").await;
    assert_eq!(bob.header("idempotent-replayed"), None);
    assert_eq!(up.seen.load(Ordering::SeqCst), 2);

    // A duplicate on B while A's first request is in flight: 409, then the replay.
    let listen = a.listen;
    let slow =
        tokio::spawn(async move { post(listen, "/v1/slow", "alice", Some("dup"), "once").await });
    support::eventually("the first request to reach the upstream", async || {
        up.seen.load(Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(a.metric("sluice_idempotency_entries").await, Some(1.0));
    let duplicate = post(b.listen, "/v1/slow", "alice", Some("dup"), "once").await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    let body = String::from_utf8(duplicate.body.to_vec()).unwrap();
    assert!(body.contains(r#""code":"IN_PROGRESS""#), "{body}");
    up.gate.send(true).unwrap();
    let slow = slow.await.unwrap();
    assert_eq!(
        slow.body,
        "slow 3",
        "{:?}\n{}\n{}",
        up.seen,
        a.log_text(),
        b.log_text()
    );
    let retry = post(b.listen, "/v1/slow", "alice", Some("dup"), "once").await;
    assert_eq!(retry.body, "slow 3");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(up.seen.load(Ordering::SeqCst), 3);

    // A 503 through A is not stored: B forwards the retry.
    let failed = post(a.listen, "/v1/fail", "alice", Some("f"), "x").await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    let again = post(b.listen, "/v1/fail", "alice", Some("f"), "x").await;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.seen.load(Ordering::SeqCst), 5);

    let replayed = r#"sluice_idempotency_total{outcome="replayed"}"#;
    assert_eq!(b.metric(replayed).await, Some(4.0));
    assert_eq!(a.metric(replayed).await, Some(2.0));
    support::eventually("A's claims to settle", async || {
        a.metric("sluice_idempotency_entries").await == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn in_redis_mode_a_dead_redis_forwards_without_a_record_counted_and_logged() {
    let up = upstream().await;
    let mut redis = support::Redis::start();
    let dir = support::dir();
    let (a, b) = replicas(dir.path(), up.addr, &redis);
    redis.kill();
    for replica in [&a, &a, &b] {
        let reply = post(replica.listen, "/v1/fail", "alice", Some("k"), "x").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(up.seen.load(Ordering::SeqCst), 3);
    let errors = r#"sluice_idempotency_total{outcome="error"}"#;
    assert_eq!(a.metric(errors).await, Some(2.0));
    assert_eq!(b.metric(errors).await, Some(1.0));
    assert!(a.log_text().contains("idempotency store failed"));
}
