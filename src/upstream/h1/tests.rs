//! The client against a raw TCP upstream on loopback that answers canned bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// An upstream that answers each request with the next canned response (closing the
/// connection after one that says `connection: close`, or as `CLOSE` and
/// `SILENT_CLOSE_AFTER_OK` say) and keeps what it was sent.
struct Upstream {
    base: Uri,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

/// A listener on a loopback port, and its `http://` URL.
async fn listen() -> (TcpListener, Uri) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    (listener, base)
}

async fn upstream(responses: &[&'static str]) -> Upstream {
    let (listener, base) = listen().await;
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let queue = Arc::new(Mutex::new(
        responses.iter().copied().collect::<VecDeque<_>>(),
    ));
    let (count, seen) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let (queue, seen) = (queue.clone(), seen.clone());
            tokio::spawn(async move {
                let mut pending = Vec::new();
                loop {
                    let next = queue.lock().unwrap().front().copied();
                    let Some(mut response) = next else { return };
                    if response == RESET_UNREAD {
                        // Closed with the request unread: the kernel answers with a reset.
                        queue.lock().unwrap().pop_front();
                        let _ = socket.readable().await;
                        return;
                    }
                    let head_only = response.starts_with(EARLY);
                    let Some(request) = read_request(&mut socket, &mut pending, head_only).await
                    else {
                        return;
                    };
                    seen.lock().unwrap().push(request);
                    queue.lock().unwrap().pop_front();
                    response = response.trim_start_matches(EARLY);
                    if response == HANG {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    let silent_close = response.ends_with('\0');
                    let response = response.trim_end_matches('\0');
                    if response.is_empty()
                        || socket.write_all(response.as_bytes()).await.is_err()
                        || silent_close
                        || response.contains("connection: close")
                    {
                        return;
                    }
                }
            });
        }
    });
    Upstream {
        base,
        connections,
        requests,
    }
}

/// One request: its head and (unless `head_only`) a body framed by `content-length` or
/// chunks.
async fn read_request(
    socket: &mut TcpStream,
    pending: &mut Vec<u8>,
    head_only: bool,
) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(pending).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse::<usize>().unwrap());
            let total = match length {
                _ if head_only => Some(end + 4),
                Some(n) => (end + 4 + n <= pending.len()).then_some(end + 4 + n),
                None if head.contains("transfer-encoding: chunked") => {
                    text[end..].find("\r\n0\r\n\r\n").map(|i| end + i + 7)
                }
                None => Some(end + 4),
            };
            if let Some(total) = total {
                let request = String::from_utf8_lossy(&pending[..total]).into_owned();
                pending.drain(..total);
                return Some(request);
            }
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

fn client(up: &Upstream) -> Client {
    Client::new(&up.base, Duration::from_secs(1), Duration::from_secs(60))
}

/// What `prepare_request` would have found of `parts`' own headers.
fn added_for(parts: &Parts) -> Added {
    Added {
        has_host: parts.headers.contains_key(header::HOST),
        ..Added::default()
    }
}

fn get(path: &str) -> Parts {
    let mut parts = http::Request::get(path).body(()).unwrap().into_parts().0;
    parts
        .headers
        .insert(header::HOST, HeaderValue::from_static("api.example"));
    parts
}

/// Sends `parts` with no body, one second to answer; the response's headers, which the client keeps raw in the body, are
/// moved into its map for the tests to read.
async fn send(client: &Client, parts: &Parts) -> Result<Response<ResponseBody>, Error> {
    let mut response = client
        .send(
            parts,
            &added_for(parts),
            RequestBody::whole(Bytes::new()),
            SECOND,
        )
        .await?;
    if let Some(raw) = response.body_mut().take_raw_headers() {
        raw.into_map(response.headers_mut());
    }
    Ok(response)
}

async fn text(response: Response<ResponseBody>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

const SECOND: Duration = Duration::from_secs(1);
const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
/// Answer as soon as the request's head is in, leaving its body unread.
const EARLY: &str = "early:";
/// Read the request, then never answer.
const HANG: &str = "hang";
/// Read the request, then close without answering.
const CLOSE: &str = "";
/// `OK`, then close without saying so.
const SILENT_CLOSE_AFTER_OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok\0";
/// Wait for the next request, then close without reading it (the connection is reset).
const RESET_UNREAD: &str = "reset";

#[tokio::test]
async fn a_finished_exchange_leaves_the_connection_for_the_next() {
    let up = upstream(&[OK, OK, OK]).await;
    let client = client(&up);
    for _ in 0..3 {
        let response = send(&client, &get("/a?b=1")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, "ok");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    let requests = up.requests.lock().unwrap();
    assert_eq!(
        requests[0],
        "GET /a?b=1 HTTP/1.1\r\nhost: api.example\r\n\r\n"
    );
}

#[tokio::test]
async fn the_base_path_prefixes_and_a_missing_host_is_the_upstreams() {
    let mut up = upstream(&[OK]).await;
    up.base = format!("{}api/", up.base).parse().unwrap();
    let mut parts = get("/v1/x");
    parts.headers.remove(header::HOST);
    let response = send(&client(&up), &parts).await.unwrap();
    text(response).await;
    let authority = up.base.authority().unwrap().to_string();
    assert_eq!(
        up.requests.lock().unwrap()[0],
        format!("GET /api/v1/x HTTP/1.1\r\nhost: {authority}\r\n\r\n")
    );
}

#[tokio::test]
async fn a_known_body_is_sent_with_its_length() {
    let up = upstream(&[OK]).await;
    let mut parts = get("/send");
    parts.method = Method::POST;
    parts
        .headers
        .insert(header::EXPECT, HeaderValue::from_static("100-continue"));
    let body = RequestBody::whole(Bytes::from_static(b"{\"to\":1}"));
    text(
        client(&up)
            .send(&parts, &added_for(&parts), body, SECOND)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        up.requests.lock().unwrap()[0],
        "POST /send HTTP/1.1\r\nhost: api.example\r\ncontent-length: 8\r\n\r\n{\"to\":1}"
    );
}

#[tokio::test]
async fn an_empty_post_announces_its_length() {
    let up = upstream(&[OK]).await;
    let mut parts = get("/send");
    parts.method = Method::POST;
    text(send(&client(&up), &parts).await.unwrap()).await;
    assert!(up.requests.lock().unwrap()[0].ends_with("content-length: 0\r\n\r\n"));
}

#[tokio::test]
async fn chunked_responses_are_decoded_and_the_connection_reused() {
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nx-t: 1\r\n\r\n";
    let up = upstream(&[chunked, OK]).await;
    let client = client(&up);
    let response = send(&client, &get("/")).await.unwrap();
    // The framing is this connection's: the client re-frames the body for its own.
    assert!(!response.headers().contains_key("transfer-encoding"));
    assert_eq!(text(response).await, "abcde");
    let response = send(&client, &get("/")).await.unwrap();
    assert_eq!(text(response).await, "ok");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn hop_by_hop_headers_and_those_connection_names_stay_out_of_the_response() {
    let head = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Local\r\nKeep-Alive: timeout=5\r\nX-Local: 1\r\nUpgrade: h2\r\nX-Kept: 2\r\ncontent-length: 2\r\n\r\nok";
    let up = upstream(&[head, OK]).await;
    let client = client(&up);
    let response = send(&client, &get("/")).await.unwrap();
    let mut names: Vec<_> = response.headers().keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["content-length", "x-kept"]);
    assert_eq!(text(response).await, "ok");
    // `keep-alive` in `Connection` did not close it.
    text(send(&client, &get("/")).await.unwrap()).await;
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

/// Chunks win over a `Content-Length` sent with them, which is dropped, and the connection
/// is not trusted again.
#[tokio::test]
async fn chunks_override_a_content_length_sent_with_them() {
    let both = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let up = upstream(&[both]).await;
    let client = client(&up);
    let response = send(&client, &get("/")).await.unwrap();
    assert!(!response.headers().contains_key("content-length"));
    assert_eq!(text(response).await, "ok");
    assert!(client.pool.take(Instant::now()).is_none());
}

#[tokio::test]
async fn connection_close_and_unframed_bodies_end_the_connection() {
    let close = "HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\nA";
    let up = upstream(&[close]).await;
    let closing = client(&up);
    text(send(&closing, &get("/")).await.unwrap()).await;
    assert!(closing.pool.take(Instant::now()).is_none());

    // No length and no chunks: the body is what comes until the upstream closes.
    let unframed = "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nto the end";
    let up = upstream(&[unframed]).await;
    let response = send(&client(&up), &get("/")).await.unwrap();
    assert_eq!(text(response).await, "to the end");
}

#[tokio::test]
async fn head_204_and_304_have_no_body_whatever_their_length_says() {
    let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
    let not_modified = "HTTP/1.1 304 Not Modified\r\ncontent-length: 100\r\n\r\n";
    let up = upstream(&[head, not_modified, OK]).await;
    let client = client(&up);
    let mut parts = get("/");
    parts.method = Method::HEAD;
    let response = send(&client, &parts).await.unwrap();
    assert_eq!(response.headers()["content-length"], "100");
    assert!(response.body().is_end_stream());
    let response = send(&client, &get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(text(response).await, "");
    let response = send(&client, &get("/")).await.unwrap();
    assert_eq!(text(response).await, "ok");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let interim = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n";
    let up = upstream(&[interim]).await;
    let response = send(&client(&up), &get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!response.headers().contains_key("link"));
}

/// An idle connection the upstream closed is noticed before it is used.
#[tokio::test]
async fn idle_connections_the_upstream_closed_are_not_used() {
    let mut post = get("/");
    post.method = Method::POST;
    // The first answer is followed by a close that the response does not announce.
    let up = upstream(&[SILENT_CLOSE_AFTER_OK, OK]).await;
    let client = client(&up);
    for _ in 0..2 {
        // POST: not sent again after a failure, so only the check before use can save it.
        let response = send(&client, &post).await.unwrap();
        assert_eq!(text(response).await, "ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

/// Idle connections that expire or that the upstream closes are closed in the background,
/// with no request needed to notice.
#[tokio::test]
async fn idle_connections_are_swept_without_traffic() {
    let up = upstream(&[SILENT_CLOSE_AFTER_OK, OK]).await;
    let client = Client::new(&up.base, SECOND, Duration::from_millis(400));
    text(send(&client, &get("/")).await.unwrap()).await;
    // Closed by the upstream: gone at the next sweep (every 100 ms here).
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(client.pool.idle.lock().unwrap().is_empty());

    text(send(&client, &get("/")).await.unwrap()).await;
    assert_eq!(client.pool.idle.lock().unwrap().len(), 1);
    // Expired after 400 ms idle.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(client.pool.idle.lock().unwrap().is_empty());
}

/// A kept-alive connection the upstream closes when the next request arrives, with that
/// request unread (the race with an upstream closing idle connections): the reset says it
/// was never acted on, so even a POST goes again, whole, on a new connection. Once.
#[tokio::test]
async fn a_request_reset_unread_on_a_reused_connection_is_sent_again_once() {
    let up = upstream(&[OK, RESET_UNREAD, OK]).await;
    let pooled = client(&up);
    text(send(&pooled, &get("/")).await.unwrap()).await;
    let mut post = get("/send");
    post.method = Method::POST;
    let body = RequestBody::whole(Bytes::from_static(b"{\"to\":1}"));
    let response = pooled
        .send(&post, &added_for(&post), body, SECOND)
        .await
        .unwrap();
    assert_eq!(text(response).await, "ok");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    assert_eq!(
        up.requests.lock().unwrap()[1],
        "POST /send HTTP/1.1\r\nhost: api.example\r\ncontent-length: 8\r\n\r\n{\"to\":1}"
    );

    // A fresh connection that fails is not tried again.
    let up = upstream(&[RESET_UNREAD, OK]).await;
    let result = send(&client(&up), &get("/")).await;
    assert!(matches!(result, Err(Error::Closed(_))), "{result:?}");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

/// A connection the upstream closed while the runtime was busy (its reactor has not yet
/// seen the FIN, so tokio still takes the socket for quiet) is not given a request either:
/// the yield before the exchange lets the runtime poll for events first (without it this
/// fails). A body this large is not kept, so it could not be resent.
#[tokio::test]
async fn a_connection_closed_while_the_runtime_was_busy_is_not_used() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base: Uri = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let (close, closing) = std::sync::mpsc::channel::<()>();
    let (closed, has_closed) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        // Reads until `end` is in what arrived; how much arrived.
        let read_until = |socket: &mut std::net::TcpStream, end: &[u8]| {
            let mut seen = Vec::new();
            let mut chunk = [0u8; 65536];
            while !seen.windows(end.len()).any(|w| w == end) {
                let n = socket.read(&mut chunk).unwrap();
                assert!(n > 0, "the request ended early");
                seen.extend_from_slice(&chunk[..n]);
            }
            seen.len()
        };
        let (mut first, _) = listener.accept().unwrap();
        read_until(&mut first, b"\r\n\r\n");
        first.write_all(OK.as_bytes()).unwrap();
        closing.recv().unwrap();
        drop(first);
        closed.send(()).unwrap();
        let (mut second, _) = listener.accept().unwrap();
        let got = read_until(&mut second, b"xz");
        second.write_all(OK.as_bytes()).unwrap();
        got
    });
    let client = Client::new(&base, SECOND, Duration::from_secs(60));
    text(send(&client, &get("/")).await.unwrap()).await;
    close.send(()).unwrap();
    // Blocks the runtime's one thread until the FIN is in the socket (loopback delivers it
    // within the close): the reactor cannot run and note it.
    has_closed.recv().unwrap();
    let mut post = get("/upload");
    post.method = Method::POST;
    let mut upload = vec![b'x'; 1 << 20];
    *upload.last_mut().unwrap() = b'z';
    let body = RequestBody::whole(Bytes::from(upload));
    let response = client
        .send(&post, &added_for(&post), body, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(text(response).await, "ok");
    assert!(server.join().unwrap() > 1 << 20);
}

/// What was taken of a body is kept while it is small, and given out again first.
#[test]
fn a_body_is_kept_for_a_resend_while_it_is_small() {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut small = Outgoing::new(RequestBody::whole(Bytes::from_static(b"abc")), false);
    for _ in 0..2 {
        let data = small.poll_next(&mut cx);
        assert!(
            matches!(&data, Poll::Ready(Some(Ok(d))) if d == "abc"),
            "{data:?}"
        );
        assert!(matches!(small.poll_next(&mut cx), Poll::Ready(None)));
        assert!(small.rewind());
    }
    let large = Bytes::from(vec![b'x'; KEPT_BODY + 1]);
    let mut large = Outgoing::new(RequestBody::whole(large), false);
    assert!(matches!(large.poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
    assert!(!large.rewind(), "part of it is gone");
}

/// A connection that closes as the request goes out: a GET is sent again on a new
/// connection, a POST gets the error (the upstream might have acted on it).
#[tokio::test]
async fn a_request_lost_to_a_closing_connection_is_retried_only_when_safe() {
    let up = upstream(&[OK, CLOSE, OK, CLOSE]).await;
    let client = client(&up);
    for _ in 0..2 {
        let response = send(&client, &get("/")).await.unwrap();
        assert_eq!(text(response).await, "ok");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    let mut post = get("/");
    post.method = Method::POST;
    let result = send(&client, &post).await;
    assert!(matches!(result, Err(Error::Closed(_))), "{result:?}");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_early_answer_stops_the_upload() {
    let up = upstream(&["early:HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n"]).await;
    let mut parts = get("/upload");
    parts.method = Method::POST;
    // Far more than the socket buffers hold: the upstream reads only the head.
    let body = RequestBody::whole(Bytes::from(vec![b'x'; 64 * 1024 * 1024]));
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client(&up).send(&parts, &added_for(&parts), body, Duration::from_secs(30)),
    )
    .await
    .expect("the answer arrives while the body is still being sent")
    .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The rest of the body was never sent: the connection cannot be reused.
    assert!(!response.body().reusable);
}

#[tokio::test]
async fn no_answer_within_the_timeout_is_a_timeout() {
    let up = upstream(&[HANG]).await;
    let timeout = Duration::from_millis(200);
    let result = client(&up)
        .send(
            &get("/"),
            &added_for(&get("/")),
            RequestBody::whole(Bytes::new()),
            timeout,
        )
        .await;
    assert!(
        matches!(result, Err(Error::Timeout(t)) if t == timeout),
        "{result:?}"
    );
}

#[tokio::test]
async fn broken_responses_are_protocol_errors() {
    for (response, why) in [
        ("HTTP/1.1 abc\r\n\r\n", "malformed response head"),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\n",
            "conflicting content-length",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "invalid content-length",
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "101 to a request that asked for no upgrade",
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "transfer-encoding other than chunked",
        ),
    ] {
        let up = upstream(&[response]).await;
        match send(&client(&up), &get("/")).await {
            Err(Error::Protocol(got)) => assert_eq!(got, why, "{response}"),
            other => panic!("{response}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_body_cut_short_is_an_error() {
    let up = upstream(&["HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nshort"])
        .await;
    let response = send(&client(&up), &get("/")).await.unwrap();
    assert!(response.into_body().collect().await.is_err());
}

#[tokio::test]
async fn refused_and_unreachable_upstreams() {
    let (listener, base) = listen().await;
    drop(listener);
    let client = Client::new(&base, Duration::from_secs(1), Duration::from_secs(60));
    let result = send(&client, &get("/")).await;
    assert!(matches!(result, Err(Error::Connect(_))), "{result:?}");
}

/// Prepares `parts` as the proxy does for an untrusted peer at 1.2.3.4 (with `request_id`
/// generated, if any) and sends it bodiless.
async fn send_prepared(up: &Upstream, mut parts: Parts, request_id: Option<&'static str>) {
    let forwarded = crate::upstream::Forwarded {
        peer: "1.2.3.4".parse().unwrap(),
        peer_trusted: false,
        proto: "http",
        request_id: request_id.map(HeaderValue::from_static),
    };
    let host = crate::config::HostHeader::Preserve;
    let added = crate::upstream::prepare_request(&mut parts, forwarded, &host, &up.base);
    let body = RequestBody::whole(Bytes::new());
    text(client(up).send(&parts, &added, body, SECOND).await.unwrap()).await;
}

#[tokio::test]
async fn added_headers_replace_the_requests_own_of_their_names() {
    let up = upstream(&[OK]).await;
    let mut parts = get("/");
    let claimed = HeaderValue::from_static("6.6.6.6");
    parts
        .headers
        .insert(crate::upstream::X_FORWARDED_FOR, claimed);
    parts
        .headers
        .insert("x-other", HeaderValue::from_static("kept"));
    send_prepared(&up, parts, Some("id-1")).await;
    assert_eq!(
        up.requests.lock().unwrap()[0],
        concat!(
            "GET / HTTP/1.1\r\nhost: api.example\r\nx-other: kept\r\n",
            "x-forwarded-for: 1.2.3.4\r\nx-forwarded-proto: http\r\n",
            "x-forwarded-host: api.example\r\nx-request-id: id-1\r\n\r\n"
        )
    );
}

#[tokio::test]
async fn a_connection_header_cannot_remove_host() {
    let up = upstream(&[OK]).await;
    let mut parts = get("/");
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("Host, x-drop"));
    parts
        .headers
        .insert("x-drop", HeaderValue::from_static("gone"));
    send_prepared(&up, parts, None).await;
    let sent = up.requests.lock().unwrap()[0].clone();
    assert!(
        sent.starts_with("GET / HTTP/1.1\r\nhost: api.example\r\n"),
        "{sent}"
    );
    assert!(!sent.contains("x-drop"), "{sent}");
}

#[tokio::test]
async fn end_to_end_headers_are_kept_raw_as_sent_and_in_order() {
    let head = "HTTP/1.1 200 OK\r\nServer: up\r\nX-Kept: 2\r\nConnection: keep-alive\r\nx-kept: 3\r\ncontent-length: 2\r\n\r\nok";
    let up = upstream(&[head]).await;
    let response = client(&up)
        .send(
            &get("/"),
            &added_for(&get("/")),
            RequestBody::whole(Bytes::new()),
            SECOND,
        )
        .await
        .unwrap();
    assert!(response.headers().is_empty(), "no map is built");
    let raw: Vec<(String, String)> = response
        .body()
        .raw_headers()
        .unwrap()
        .iter()
        .map(|(n, v)| {
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
            (text(n), text(v))
        })
        .collect();
    let expected = [
        ("Server", "up"),
        ("X-Kept", "2"),
        ("x-kept", "3"),
        ("content-length", "2"),
    ];
    assert_eq!(raw, expected.map(|(n, v)| (n.to_string(), v.to_string())));
    assert_eq!(text(response).await, "ok");
}

/// A head larger than the socket takes at once is written whole, in order, over several
/// writes.
#[tokio::test]
async fn a_head_larger_than_the_socket_buffers_is_written_whole() {
    let (listener, base) = listen().await;
    let received = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        while !head.ends_with(b"\r\n\r\n") {
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the head ended early");
            head.extend_from_slice(&chunk[..n]);
        }
        socket.write_all(OK.as_bytes()).await.unwrap();
        head
    });
    let mut parts = get("/big");
    // Over what loopback buffers hold (4 MiB send, 6 MiB receive at most by default).
    let value = "v".repeat(16 << 20);
    parts
        .headers
        .insert("x-big", HeaderValue::from_str(&value).unwrap());
    let client = Client::new(&base, SECOND, Duration::from_secs(60));
    let response = send(&client, &parts).await.unwrap();
    assert_eq!(text(response).await, "ok");
    let head = received.await.unwrap();
    let expected = format!("GET /big HTTP/1.1\r\nhost: api.example\r\nx-big: {value}\r\n\r\n");
    assert!(
        head == expected.as_bytes(),
        "{} bytes arrived, {} sent",
        head.len(),
        expected.len()
    );
}
