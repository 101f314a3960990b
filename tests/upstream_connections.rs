//! sluice's connections to the upstream, end to end with raw loopback upstreams that
//! misbehave on purpose: keep-alive connections the upstream closes under a request, a
//! response split across writes, failures counted by who failed, and `keepalive: false`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::Sluice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// One request read off a raw socket: method, path and body (by `content-length`).
struct Received {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// Reads the next request from `socket` (`pending` keeps what came after it); `None` when
/// the connection ends first.
async fn read_request(socket: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Received> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if pending.len() >= end + 4 + length {
                let mut words = head.split(' ');
                let method = words.next().unwrap_or_default().to_ascii_uppercase();
                let path = words.next().unwrap_or_default().to_string();
                let body = pending[end + 4..end + 4 + length].to_vec();
                pending.drain(..end + 4 + length);
                return Some(Received { method, path, body });
            }
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
    }
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
