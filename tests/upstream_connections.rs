//! sluice's connections to the upstream, end to end with raw loopback upstreams that
//! misbehave on purpose: keep-alive connections the upstream closes under a request, a
//! response split across writes, failures counted by who failed, and `keepalive: false`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::raw_upstream::{raw_upstream, read_request};
use support::Sluice;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

fn start(upstream: SocketAddr, settings: &str) -> (Sluice, tempfile::TempDir) {
    let (dir, path) = support::config_file(&format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n\
         upstream: {{ url: http://{upstream}, timeout: 5s{settings} }}\n\
         unknown_key: {{ plan: p, per: key }}\n\
         plans: {{ p: {{ limits: {{ all: 1000000/s }} }} }}\n"
    ));
    (Sluice::start(&path, &[]), dir)
}

/// How an upstream that closes after every response (without `Connection: close`) closes.
#[derive(Clone, Copy, Debug)]
enum Closing {
    /// `close()` right after the response.
    Close,
    /// `close()` a millisecond after the response (a server with bookkeeping to do after
    /// answering): sluice has often sent the next request by then, which the upstream
    /// closes on unread.
    CloseLater,
    /// Half-close (FIN) first, then `close()`, as Python's `socketserver` does.
    ShutdownThenClose,
}

/// An upstream answering one request per connection with `METHOD PATH BODY`, then closing
/// the connection without having said so. Counts the requests it answered.
async fn closing_upstream(closing: Closing) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                let Some(request) = read_request(&mut socket, &mut Vec::new()).await else {
                    return;
                };
                let text = format!(
                    "{} {} {}",
                    request.method,
                    request.path,
                    String::from_utf8_lossy(&request.body)
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                );
                if socket.write_all(response.as_bytes()).await.is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                match closing {
                    Closing::Close => {}
                    Closing::CloseLater => tokio::time::sleep(Duration::from_millis(1)).await,
                    Closing::ShutdownThenClose => {
                        let _ = socket.shutdown().await;
                    }
                }
            });
        }
    });
    (addr, answered)
}

/// A keep-alive HTTP/1.1 client connection sending bodies.
struct Client(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Client {
    async fn open(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Client(sender)
    }

    /// Sends one request; its status and body.
    async fn send(&mut self, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "api.example")
            .header("x-api-key", "k")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        self.0.ready().await.unwrap();
        let response = self.0.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// The sum of `sluice_upstream_errors_total` over its kinds.
async fn upstream_errors(sluice: &Sluice) -> f64 {
    let (_, text) = sluice.admin("GET", "/metrics", None).await;
    text.lines()
        .filter(|l| l.starts_with("sluice_upstream_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An upstream that closes every connection after its response, without `Connection:
/// close`: sluice reuses none of them for a request that then fails. Every GET and POST
/// gets its own answer, under 1, 2, 4 and 16 connections at once, whichever way the
/// upstream closes (the issue measured 32–36% of POSTs answered 502 under 16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_after_every_response_costs_no_request() {
    const PER_CONNECTION: usize = 25;
    for closing in [
        Closing::Close,
        Closing::CloseLater,
        Closing::ShutdownThenClose,
    ] {
        let (upstream, answered) = closing_upstream(closing).await;
        let (sluice, _dir) = start(upstream, "");
        let mut sent = 0;
        for method in ["GET", "POST"] {
            for connections in [1, 2, 4, 16] {
                let mut clients = Vec::new();
                for c in 0..connections {
                    let listen = sluice.listen;
                    clients.push(tokio::spawn(async move {
                        let mut client = Client::open(listen).await;
                        let mut failures = Vec::new();
                        for i in 0..PER_CONNECTION {
                            let path = format!("/c{c}/r{i}");
                            let body = if method == "POST" {
                                format!("payload-{c}-{i}")
                            } else {
                                String::new()
                            };
                            let (status, text) = client.send(method, &path, &body).await;
                            if (status, text.as_str())
                                != (StatusCode::OK, &*format!("{method} {path} {body}"))
                            {
                                failures.push(format!("{status} {text}"));
                            }
                        }
                        failures
                    }));
                }
                for client in clients {
                    let failures = client.await.unwrap();
                    assert!(
                        failures.is_empty(),
                        "{closing:?}, {method} over {connections}: {failures:?}"
                    );
                }
                sent += connections * PER_CONNECTION;
            }
        }
        assert_eq!(upstream_errors(&sluice).await, 0.0, "{closing:?}");
        eprintln!(
            "{closing:?}: {sent} requests, {:?} resent, {:?} connections",
            sluice.metric("sluice_upstream_retries_total").await,
            sluice
                .metric("sluice_upstream_connections_opened_total")
                .await
        );
        // Each request reached the upstream once (a resend goes only where the first
        // attempt was reset unread, and so never answered).
        assert_eq!(answered.load(Ordering::SeqCst), sent as u64, "{closing:?}");
    }
}

/// The median of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// An upstream that writes a response's head and its body in two writes, with Nagle's
/// algorithm on (Python's `http.server`, many small frameworks): the body waits for the
/// head's ACK. sluice acknowledges at once while it waits for the rest of a response, so a
/// kept-alive connection costs no 40 ms delayed ACK per request: the median through sluice
/// is within 2 ms of the median straight to the upstream (on a fresh connection, which
/// the kernel acknowledges quickly anyway). A behaviour test with a wide margin: the stall
/// it guards against is 40 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_written_in_two_pieces_costs_no_delayed_ack() {
    let (upstream, _) = raw_upstream(|mut socket, _| async move {
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
            .await
            .ok()?;
        socket.write_all(b"ok").await.ok()?;
        Some(socket)
    })
    .await;
    let (sluice, _dir) = start(upstream, "");
    const REQUESTS: usize = 50;
    let mut direct = Vec::new();
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let (status, body) = Client::open(upstream).await.send("GET", "/", "").await;
        direct.push(started.elapsed());
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
    let mut client = Client::open(sluice.listen).await;
    // A few requests first: the kernel acknowledges a new connection's first segments
    // quickly by itself, and the stall shows only once the connection is warm.
    for _ in 0..10 {
        client.send("GET", "/", "").await;
    }
    let mut proxied = Vec::new();
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let (status, body) = client.send("GET", "/", "").await;
        proxied.push(started.elapsed());
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
    let (direct, proxied) = (median(direct), median(proxied));
    assert!(
        proxied <= direct + Duration::from_millis(2),
        "median {proxied:?} through sluice, {direct:?} direct"
    );
    assert_eq!(
        sluice
            .metric("sluice_upstream_connections_opened_total")
            .await,
        Some(1.0),
        "one kept-alive upstream connection"
    );
}

/// `keepalive: false`: every request on its own upstream connection, asking the upstream
/// to close it.
#[tokio::test]
async fn keepalive_false_opens_a_connection_per_request_and_says_close() {
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    let (upstream, accepted) = raw_upstream(move |mut socket, request| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(request.head);
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .ok()?;
            Some(socket)
        }
    })
    .await;
    let (sluice, _dir) = start(upstream, ", keepalive: false");
    let mut client = Client::open(sluice.listen).await;
    for _ in 0..3 {
        assert_eq!(client.send("GET", "/", "").await.0, StatusCode::OK);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    for head in heads.lock().unwrap().iter() {
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    }
}

/// Lines of sluice's log that contain every one of `words`.
fn lines_with(sluice: &Sluice, words: &[&str]) -> Vec<String> {
    sluice
        .log_text()
        .lines()
        .filter(|line| words.iter().all(|w| line.contains(w)))
        .map(str::to_owned)
        .collect()
}

/// An upstream that resets the connection part way through a response body: the client
/// sees the truncation, and sluice counts and logs it as the upstream's (`reset_body`).
#[tokio::test]
async fn a_response_body_the_upstream_resets_is_counted_and_logged() {
    let (upstream, _) = raw_upstream(|socket, _| async move {
        let mut socket = socket;
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..")
            .await
            .ok()?;
        // Closing with the linger time at zero resets the connection.
        socket2::SockRef::from(&socket)
            .set_linger(Some(Duration::ZERO))
            .ok()?;
        None
    })
    .await;
    let (sluice, _dir) = start(upstream, "");
    let stream = TcpStream::connect(sluice.listen).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get("/")
        .header("host", "a")
        .header("x-api-key", "k")
        .body(Full::default());
    let response = sender.send_request(request.unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err(), "truncated");
    support::eventually("the reset to be counted", async || {
        sluice
            .metric("sluice_upstream_errors_total{kind=\"reset_body\"}")
            .await
            == Some(1.0)
    })
    .await;
    let logged = lines_with(&sluice, &["WARN", "upstream failed", "kind=\"reset_body\""]);
    assert_eq!(logged.len(), 1, "{}", sluice.log_text());
}

/// A client that sends part of its body and leaves: counted as a client abort, logged at
/// DEBUG only, and no upstream error.
#[tokio::test]
async fn a_client_abandoning_its_upload_is_not_an_upstream_failure() {
    let (upstream, _) = raw_upstream(|socket, _| async move { Some(socket) }).await;
    let (sluice, _dir) = start(upstream, "");
    let mut client = TcpStream::connect(sluice.listen).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nhost: a\r\nx-api-key: k\r\ncontent-length: 1000\r\n\r\nten bytes.")
        .await
        .unwrap();
    support::eventually("the request to reach the upstream", async || {
        sluice
            .metric("sluice_upstream_connections_opened_total")
            .await
            == Some(1.0)
    })
    .await;
    drop(client);
    support::eventually("the abort to be counted", async || {
        sluice.metric("sluice_client_aborts_total").await == Some(1.0)
    })
    .await;
    assert_eq!(upstream_errors(&sluice).await, 0.0);
    assert!(lines_with(&sluice, &["upstream failed"]).is_empty());
}

/// An upstream that accepts no connection: the connect times out, counted and logged as
/// `connect_timeout` (504), not as a response `timeout`.
#[tokio::test]
async fn a_connect_timeout_is_its_own_kind() {
    // A listener whose accept queue is full drops further SYNs, so a connect never
    // completes (listen(0) queues one connection; two more are never accepted).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let upstream = listener.local_addr().unwrap();
    let mut filling = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        let connect = socket.connect(upstream);
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            filling.push(stream);
        }
    }
    let (sluice, _dir) = start(upstream, ", connect_timeout: 200ms");
    let mut client = Client::open(sluice.listen).await;
    let (status, _) = client.send("GET", "/", "").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let kind = |kind: &str| format!("sluice_upstream_errors_total{{kind=\"{kind}\"}}");
    assert_eq!(sluice.metric(&kind("connect_timeout")).await, Some(1.0));
    assert_eq!(sluice.metric(&kind("timeout")).await, Some(0.0));
    assert_eq!(sluice.metric(&kind("connect")).await, Some(0.0));
    let logged = lines_with(&sluice, &["upstream connect timed out after 200ms"]);
    assert_eq!(logged.len(), 1, "{}", sluice.log_text());
    drop((listener, filling));
}

/// A failing upstream fails every request; its WARN lines are one per kind per second at
/// most, each saying how many it stands for, and together they account for every failure.
#[tokio::test]
async fn upstream_failure_lines_are_one_per_kind_per_second_with_a_count() {
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let (sluice, _dir) = start(refused, "");
    let mut client = Client::open(sluice.listen).await;
    let mut sent = 0;
    let started = Instant::now();
    for _ in 0..200 {
        assert_eq!(client.send("GET", "/", "").await.0, StatusCode::BAD_GATEWAY);
        sent += 1;
    }
    let burst = started.elapsed();
    let lines = lines_with(&sluice, &["upstream failed", "kind=\"connect\""]);
    assert!(
        lines.len() as u64 <= burst.as_secs() + 1,
        "{} lines in {burst:?}",
        lines.len()
    );
    // One more failure once the gate opens again reports the ones held back.
    let mut suppressed = 0;
    support::eventually("a line counting the held-back failures", async || {
        assert_eq!(client.send("GET", "/", "").await.0, StatusCode::BAD_GATEWAY);
        sent += 1;
        let lines = lines_with(&sluice, &["upstream failed", "kind=\"connect\""]);
        suppressed = lines
            .iter()
            .filter_map(|l| {
                l.split("suppressed=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>();
        suppressed > 0
    })
    .await;
    let lines = lines_with(&sluice, &["upstream failed", "kind=\"connect\""]).len() as u64;
    assert_eq!(
        sluice
            .metric("sluice_upstream_errors_total{kind=\"connect\"}")
            .await,
        Some(sent as f64)
    );
    // Every failure of the burst is a line or counted in a later one.
    assert!(
        (200..=sent).contains(&(lines + suppressed)),
        "{lines} + {suppressed} of {sent}"
    );
}
