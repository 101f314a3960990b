//! sluice's own HTTP/1.1 server on the wire, with raw sockets: pipelined requests answered
//! in order, request bodies by length and by chunks, a rejected request's unread body
//! drained (small) or the connection closed (large), HEAD, HTTP/1.0 clients, responses of
//! unannounced length (chunked, or to the close for HTTP/1.0), `Expect: 100-continue`
//! (answered, or refused with the connection kept), and a request handed to hyper part way
//! through a connection (an upgrade), after which the connection closes.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use support::Sluice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream answering `METHOD PATH: N bytes` for the request body it read, and
/// `/stream` with a body of unannounced length (chunked).
async fn echo_upstream() -> SocketAddr {
    support::serve(|request: http::Request<hyper::body::Incoming>| async move {
        if request.uri() == "/stream" {
            let frames = ["str", "eamed"].map(|s| Ok::<_, Infallible>(Frame::data(Bytes::from(s))));
            let body = StreamBody::new(futures_util::stream::iter(frames));
            return hyper::Response::new(body.boxed());
        }
        let line = format!("{} {}", request.method(), request.uri());
        let text = match request.into_body().collect().await {
            Ok(body) => format!("{line}: {} bytes", body.to_bytes().len()),
            Err(e) => format!("{line}: broken body: {e}"),
        };
        hyper::Response::new(Full::new(Bytes::from(text)).boxed())
    })
    .await
}

async fn start() -> (Sluice, tempfile::TempDir) {
    let upstream = echo_upstream().await;
    let text = format!(
        "\
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {{ url: \"http://{upstream}\" }}
keys: [ {{ key: k1 }} ]
routes:
  - {{ name: all, match: {{ path: /** }}, limit: 1000/min }}
"
    );
    let (dir, path) = support::config_file(&text);
    (Sluice::start(&path, &[]), dir)
}

/// A response read off a raw connection: its head (lowercased) and body.
struct Raw {
    head: String,
    body: String,
}

impl Raw {
    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
    }
}

/// Reads one response framed by `Content-Length` (or bodiless, for `head_only`).
async fn read_response(tcp: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Raw {
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        fill(tcp, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end);
    let mut raw = Raw {
        head,
        body: String::new(),
    };
    let length: usize = match raw.header("content-length") {
        Some(n) if !head_only => n.parse().unwrap(),
        _ => 0,
    };
    while buf.len() < length {
        fill(tcp, buf).await;
    }
    raw.body = String::from_utf8_lossy(&buf[..length]).into_owned();
    buf.drain(..length);
    raw
}

async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
        .await
        .expect("a response within 10 s")
        .unwrap();
    assert!(
        n > 0,
        "connection closed; so far: {}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

/// Whether the server closes the connection (read to EOF within 5 s).
async fn closes(tcp: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order() {
    let (sluice, _dir) = start().await;
    let mut tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let mut requests = Vec::new();
    for i in 0..5 {
        requests.extend_from_slice(
            format!("GET /item/{i} HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n").as_bytes(),
        );
    }
    tcp.write_all(&requests).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..5 {
        let response = read_response(&mut tcp, &mut buf, false).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.body, format!("GET /item/{i}: 0 bytes"));
        assert!(response.header("x-ratelimit-remaining").is_some());
        assert!(response.header("x-request-id").is_some());
        assert!(response.header("date").is_some());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_by_length_and_by_chunks_reach_the_upstream() {
    let (sluice, _dir) = start().await;
    let mut tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let mut buf = Vec::new();
    let body = "x".repeat(100_000);
    tcp.write_all(
        format!(
            "POST /a HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\nContent-Length: 100000\r\n\r\n{body}"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let response = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(response.body, "POST /a: 100000 bytes");
    // Chunks in pieces, the last one with the next request behind it.
    tcp.write_all(b"POST /b HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tcp.write_all(
        b"6;ext=1\r\n world\r\n0\r\n\r\nGET /c HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n",
    )
    .await
    .unwrap();
    let response = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(response.body, "POST /b: 11 bytes");
    let response = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(response.body, "GET /c: 0 bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_requests_small_body_is_drained_and_a_large_one_closes() {
    let (sluice, _dir) = start().await;
    let mut tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let mut buf = Vec::new();
    // An unknown key is rejected before the body is read; the body follows in the stream.
    let body = "y".repeat(2000);
    tcp.write_all(
        format!("POST /a HTTP/1.1\r\nHost: a\r\nX-API-Key: nope\r\nContent-Length: 2000\r\n\r\n{body}GET /after HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let rejected = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(rejected.status(), 401);
    assert_eq!(rejected.header("connection"), None);
    let after = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(after.body, "GET /after: 0 bytes");

    // Announcing more than is worth reading: answered, then closed.
    tcp.write_all(
        b"POST /a HTTP/1.1\r\nHost: a\r\nX-API-Key: nope\r\nContent-Length: 10000000\r\n\r\nyyyy",
    )
    .await
    .unwrap();
    let rejected = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(rejected.status(), 401);
    assert_eq!(rejected.header("connection"), Some("close"));
    assert!(closes(&mut tcp).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn head_responses_carry_the_length_and_no_body() {
    let (sluice, _dir) = start().await;
    let mut tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let mut buf = Vec::new();
    tcp.write_all(b"HEAD /h HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\nGET /g HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n")
        .await
        .unwrap();
    let head = read_response(&mut tcp, &mut buf, true).await;
    assert_eq!(head.status(), 200);
    assert_eq!(head.header("content-length"), Some("16"), "{}", head.head);
    let get = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(get.body, "GET /g: 0 bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn http10_clients_get_keep_alive_only_when_they_ask() {
    let (sluice, _dir) = start().await;
    let mut tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let mut buf = Vec::new();
    tcp.write_all(b"GET /old HTTP/1.0\r\nX-API-Key: k1\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let kept = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(kept.body, "GET /old: 0 bytes");
    assert_eq!(kept.header("connection"), Some("keep-alive"));
    tcp.write_all(b"GET /old HTTP/1.0\r\nX-API-Key: k1\r\n\r\n")
        .await
        .unwrap();
    let last = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(last.status(), 200);
    assert!(closes(&mut tcp).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unannounced_length_is_chunked_or_for_http10_ends_with_the_connection() {
    let (sluice, _dir) = start().await;
    let mut tcp = TcpStream::connect(sluice.listen).await.unwrap();
    tcp.write_all(b"GET /stream HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    while !buf.ends_with(b"0\r\n\r\n") {
        fill(&mut tcp, &mut buf).await;
    }
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n3\r\nstr\r\n5\r\neamed\r\n0\r\n\r\n"),
        "{text}"
    );

    // HTTP/1.0 has no chunks: the body ends with the connection, keep-alive or not.
    let mut tcp = TcpStream::connect(sluice.listen).await.unwrap();
    tcp.write_all(b"GET /stream HTTP/1.0\r\nX-API-Key: k1\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut all))
        .await
        .expect("the connection closes after the body")
        .unwrap();
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(text.ends_with("\r\n\r\nstreamed"), "{text}");
    assert!(!text.contains("connection: keep-alive"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_100_continue_is_answered_when_the_body_is_wanted_and_kept_when_refused() {
    let (sluice, _dir) = start().await;
    let mut tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let mut buf = Vec::new();
    tcp.write_all(b"POST /expect HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let interim = read_response(&mut tcp, &mut buf, true).await;
    assert_eq!(interim.status(), 100);
    tcp.write_all(b"body").await.unwrap();
    let response = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(response.body, "POST /expect: 4 bytes");

    // Refused before the body was asked for: no 100, and the connection stays, its small
    // body drained when it comes (as nginx does).
    tcp.write_all(b"POST /expect HTTP/1.1\r\nHost: a\r\nX-API-Key: nope\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let refused = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.header("connection"), None, "{}", refused.head);
    tcp.write_all(b"bodyGET /later HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n")
        .await
        .unwrap();
    let later = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(later.body, "GET /later: 0 bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_for_hyper_part_way_through_a_connection_is_served_and_the_connection_closes() {
    let (sluice, _dir) = start().await;
    let mut tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let mut buf = Vec::new();
    tcp.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut tcp, &mut buf, false).await.body,
        "GET /first: 0 bytes"
    );
    // An upgrade is hyper's; the upstream does not switch, and hyper's reading of what
    // follows is never trusted: the connection closes after this one response.
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nGET /later HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(response.body, "GET /ws: 0 bytes");
    assert!(response.header("x-ratelimit-limit").is_some());
    assert_eq!(response.header("connection"), Some("close"));
    assert!(closes(&mut tcp).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_heads_get_400_in_the_envelope_and_close() {
    let (sluice, _dir) = start().await;
    let mut tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let mut buf = Vec::new();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut tcp, &mut buf, false).await;
    assert_eq!(response.status(), 400);
    assert!(
        response.body.contains("\"title\":\"Bad Request\""),
        "{}",
        response.body
    );
    assert!(response.header("x-request-id").is_some());
    assert_eq!(response.header("connection"), Some("close"));
    assert!(closes(&mut tcp).await);
}
