//! Clients that misbehave, end to end: a slowloris dripping its headers (on a new connection
//! and after a slow response), a connection that never speaks, oversized and too many headers (431), idle keep-alive connections, more
//! connections than `max_connections`, and bodies over a route's `max_body` (413).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{eventually, Conn, Sluice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream that reads the whole request body and answers with its length.
async fn counting_upstream() -> SocketAddr {
    support::serve(|request: http::Request<hyper::body::Incoming>| async move {
        let text = match request.into_body().collect().await {
            Ok(body) => format!("got {} bytes", body.to_bytes().len()),
            Err(e) => format!("broken body: {e}"),
        };
        hyper::Response::new(Full::new(Bytes::from(text)))
    })
    .await
}

fn start(upstream: SocketAddr, limits: &str, extra: &str) -> (Sluice, tempfile::TempDir) {
    let text = format!(
        "\
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {{ url: \"http://{upstream}\" }}
keys: [ {{ key: k1 }} ]
limits: {limits}
routes:
  - {{ name: upload, match: {{ path: /upload }}, max_body: 1KiB, limit: 1000/min }}
  - {{ name: all, match: {{ path: /** }}, limit: 1000/min }}
{extra}"
    );
    let (dir, path) = support::config_file(&text);
    (Sluice::start(&path, &[]), dir)
}

/// Writes `request` on a new connection and reads until the server closes it.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the peer has closed `tcp` (EOF or reset), without blocking.
fn closed(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tcp.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an error response before the close: keep reading
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_is_cut_off_while_others_are_served() {
    let (sluice, _dir) = start(support::upstream().await, "{ header_read_timeout: 1s }", "");
    let head = b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut slow = TcpStream::connect(sluice.listen).await.unwrap();
    let mut quiet = TcpStream::connect(sluice.listen).await.unwrap();

    // One byte a second, as a slowloris does; the whole head would take over a minute.
    let mut sent = 0;
    for byte in head {
        if slow.write_all(&[*byte]).await.is_err() || closed(&slow) {
            break;
        }
        sent += 1;
        // Meanwhile everyone else is served.
        let mut other = Conn::open(sluice.listen).await;
        let reply = other.get("/v1/x", "k1").await.expect("served");
        assert_eq!(reply.status, 200);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        sent < head.len(),
        "the whole head went through, one byte at a time"
    );
    assert!(
        sent <= 4,
        "cut after {sent} bytes with a 1 s header timeout"
    );

    // A connection that never sent a byte was closed too.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), quiet.read(&mut buf))
        .await
        .expect("the silent connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let mut other = Conn::open(sluice.listen).await;
    assert_eq!(other.get("/v1/x", "k1").await.unwrap().status, 200);
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let (sluice, _dir) = start(
        support::upstream().await,
        "{ max_header_bytes: 8KiB, max_headers: 20 }",
        "",
    );
    let big = "x".repeat(9 * 1024);
    let reply = Conn::open(sluice.listen)
        .await
        .send("GET", "/v1/x", &[("x-api-key", "k1"), ("x-big", &big)])
        .await
        .unwrap();
    assert_eq!(reply.status, 431);

    let names: Vec<String> = (0..25).map(|i| format!("x-h{i}")).collect();
    let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    headers.push(("x-api-key", "k1"));
    let reply = Conn::open(sluice.listen)
        .await
        .send("GET", "/v1/x", &headers)
        .await
        .unwrap();
    assert_eq!(reply.status, 431);

    // Just inside both limits: served.
    let fits = "x".repeat(6 * 1024);
    let headers: Vec<(&str, &str)> = names[..15]
        .iter()
        .map(|n| (n.as_str(), "1"))
        .chain([("x-api-key", "k1"), ("x-fits", fits.as_str())])
        .collect();
    let reply = Conn::open(sluice.listen)
        .await
        .send("GET", "/v1/x", &headers)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_response_is_not_cut_off_but_a_slow_next_head_is() {
    // Five chunks 500 ms apart: the response takes over twice the header timeout.
    let upstream = support::serve(|_request| async {
        let chunks = futures_util::stream::unfold(0, |i| async move {
            if i == 5 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let frame = hyper::body::Frame::data(Bytes::from(format!("chunk{i};")));
            Some((Ok::<_, std::convert::Infallible>(frame), i + 1))
        });
        hyper::Response::new(http_body_util::StreamBody::new(chunks))
    })
    .await;
    let (sluice, _dir) = start(upstream, "{ header_read_timeout: 1s }", "");
    let mut tcp = TcpStream::connect(sluice.listen).await.unwrap();
    tcp.write_all(b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"0\r\n\r\n") {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "cut off mid-response: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("chunk4;"));

    // The next head, dripped: the wait counts from the end of the response.
    let next = b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n";
    let mut sent = 0;
    for byte in next {
        if tcp.write_all(&[*byte]).await.is_err() || closed(&tcp) {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        (3..=7).contains(&sent),
        "cut after {sent} bytes, 250 ms apart, with a 1 s header timeout"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let (sluice, _dir) = start(support::upstream().await, "{ idle_timeout: 1s }", "");
    // HTTP/1.1 keep-alive: one request, then silence (the header timeout is 30 s).
    let mut h1 = TcpStream::connect(sluice.listen).await.unwrap();
    h1.write_all(b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).ends_with("upstream ok") {
        let n = h1.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the response");
        seen.extend_from_slice(&buf[..n]);
    }
    let n = tokio::time::timeout(Duration::from_secs(10), h1.read(&mut buf))
        .await
        .expect("the idle HTTP/1.1 connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);

    // HTTP/2 (h2c): hyper has no idle timeout of its own there.
    let tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::builder()
        .uri(format!("http://{}/v1/x", sluice.listen))
        .header("x-api-key", "k1")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_connections_wait_for_a_free_slot() {
    let (sluice, _dir) = start(support::upstream().await, "{ max_connections: 2 }", "");
    let mut a = Conn::open(sluice.listen).await;
    let mut b = Conn::open(sluice.listen).await;
    assert_eq!(a.get("/v1/x", "k1").await.unwrap().status, 200);
    assert_eq!(b.get("/v1/x", "k1").await.unwrap().status, 200);
    eventually("the accept loop to pause", async || {
        sluice.metric("sluice_connections_saturated_total").await >= Some(1.0)
    })
    .await;

    // A third connection is in the listen backlog: connected, but not served yet.
    let addr = sluice.listen;
    let mut third = tokio::spawn(async move {
        let mut c = Conn::open(addr).await;
        c.get("/v1/x", "k1").await
    });
    let waiting = tokio::time::timeout(Duration::from_millis(500), &mut third).await;
    assert!(waiting.is_err(), "the third connection was served at once");
    assert_eq!(b.get("/v1/x", "k1").await.unwrap().status, 200);

    // One closes: the third is served.
    drop(b);
    assert_eq!(third.await.unwrap().unwrap().status, 200);
    assert_eq!(a.get("/v1/x", "k1").await.unwrap().status, 200);
    assert!(sluice.log_text().contains("max_connections reached"));
}

#[tokio::test]
async fn bodies_over_max_body_get_413_in_the_envelope() {
    let envelope = "\
responses:
  payload_too_large: { body: '{\"error\":\"too_large\",\"route\":\"${route}\",\"id\":\"${request_id}\"}' }
";
    let (sluice, _dir) = start(counting_upstream().await, "{}", envelope);

    // Announced too large: refused before anything is read or forwarded.
    let body = "a".repeat(2000);
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\nX-Request-Id: r1\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{body}"
    );
    let response = raw(sluice.listen, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.ends_with(r#"{"error":"too_large","route":"upload","id":"r1"}"#),
        "{response}"
    );

    // Unannounced (chunked) and too large: cut off on its way upstream, answered 413.
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        request.extend_from_slice(format!("200\r\n{}\r\n", "b".repeat(0x200)).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let response = raw(sluice.listen, &request).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains(r#""error":"too_large""#), "{response}");

    // Within the limit, and on routes without one: forwarded whole.
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{}",
        "c".repeat(1024)
    );
    let response = raw(sluice.listen, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("got 1024 bytes"), "{response}");
    let request = format!(
        "POST /other HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{}",
        "d".repeat(5000)
    );
    let response = raw(sluice.listen, request.as_bytes()).await;
    assert!(response.ends_with("got 5000 bytes"), "{response}");
    // Refused before identification: counted with no plan.
    let too_large = "sluice_requests_total{route=\"upload\",plan=\"none\",decision=\"too_large\"}";
    assert_eq!(sluice.metric(too_large).await, Some(1.0));
}
