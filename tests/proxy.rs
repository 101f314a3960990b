//! The core gateway end to end: the real binary between a real client and a real upstream,
//! all on loopback. Exact counting under concurrency, all-or-nothing limits, headers on every
//! outcome, streaming without buffering, and graceful shutdown.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use support::{Conn, Sluice};
use tokio::net::TcpStream;

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// An upstream with a few behaviours chosen by path:
/// `/echo` answers the request headers it received as `name: value` lines;
/// `/slow/MS` waits MS milliseconds before answering;
/// `/download/MB` streams MB mebibytes; `/upload` reads the body and answers its length;
/// anything else answers `upstream ok`. Counts the requests it saw.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<AtomicU64>,
}

async fn upstream() -> Upstream {
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let addr = support::serve(move |req| {
        counter.fetch_add(1, Ordering::SeqCst);
        answer(req)
    })
    .await;
    Upstream { addr, seen }
}

async fn answer(req: Request<Incoming>) -> Response<UpBody> {
    let path = req.uri().path().to_string();
    let full = |text: String| Full::new(Bytes::from(text)).boxed();
    let body = if path == "/echo" {
        let mut text = String::new();
        for (name, value) in req.headers() {
            text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
        }
        full(text)
    } else if path.starts_with("/mine/") {
        full(path)
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        full("slow done".into())
    } else if let Some(mb) = path.strip_prefix("/download/") {
        let chunks: usize = mb.parse::<usize>().unwrap() * 16;
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::iter(
            (0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
        );
        StreamBody::new(stream).boxed()
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len() as u64;
            }
        }
        full(total.to_string())
    } else {
        full("upstream ok".into())
    };
    Response::new(body)
}

/// Starts sluice on `yaml`; the returned folder holds the config and must outlive it.
fn start(yaml: &str) -> (Sluice, tempfile::TempDir) {
    let (dir, path) = support::config_file(yaml);
    (Sluice::start(&path, &[]), dir)
}

fn config(upstream: SocketAddr, rest: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nupstream: {{ url: http://{upstream}, timeout: 500ms }}\n{rest}"
    )
}

/// 64 connections at once, three requests each, against a limit of 50: exactly 50 pass,
/// for every algorithm. Daily limits, so no window or refill can move during the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_get_exactly_the_limit() {
    let up = upstream().await;
    for algorithm in ["fixed_window", "sliding_window", "token_bucket"] {
        let (sluice, _dir) = start(
            &config(
                up.addr,
                &format!(
                    "keys: [{{ key: k1 }}]\nroutes:\n  - {{ name: all, limit: {{ rate: 50/d, algorithm: {algorithm} }} }}\n"
                ),
            ),
        );
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let listen = sluice.listen;
            tasks.push(tokio::spawn(async move {
                let mut conn = Conn::open(listen).await;
                let mut statuses = Vec::new();
                for _ in 0..3 {
                    statuses.push(conn.get("/x", "k1").await.unwrap().status);
                }
                statuses
            }));
        }
        let mut ok = 0;
        let mut limited = 0;
        for task in tasks {
            for status in task.await.unwrap() {
                match status {
                    StatusCode::OK => ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => limited += 1,
                    other => panic!("unexpected {other}"),
                }
            }
        }
        assert_eq!((ok, limited), (50, 142), "{algorithm}");
    }
}

/// A request a route limit rejects takes nothing from the plan-wide limit, and one the
/// plan-wide limit rejects takes nothing from the route limit.
#[tokio::test]
async fn a_rejected_request_consumes_no_other_limit() {
    let up = upstream().await;
    let (sluice, _dir) = start(
        &config(
            up.addr,
            "keys: [{ key: k1, plan: pro }]\nplans: { pro: { limits: { all: { rate: 10/d, algorithm: fixed_window } } } }\nroutes:\n  - { name: narrow, match: { path: /narrow }, limit: { rate: 2/d, algorithm: fixed_window } }\n",
        ),
    );
    let mut conn = sluice.connect().await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(conn.get("/narrow", "k1").await.unwrap().status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    // Two of the plan's ten were used; the three rejections took nothing.
    let first = conn.get("/other", "k1").await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-ratelimit-remaining"), Some("7"));
    let mut admitted = 1;
    while conn.get("/other", "k1").await.unwrap().status == StatusCode::OK {
        admitted += 1;
    }
    assert_eq!(admitted, 8);
    assert_eq!(up.seen.load(Ordering::SeqCst), 10);
}

/// The rate-limit headers are on every response: 200, 429, 401, 403, 502 and 504.
#[tokio::test]
async fn headers_on_every_outcome() {
    let up = upstream().await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let (sluice, _dir) = start(&format!(
        "listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {{ url: http://{}, timeout: 300ms }}
keys: [{{ key: k1, plan: pro }}, {{ key: k2, plan: free }}]
plans: {{ free: {{ access: deny }}, pro: {{}} }}
routes:
  - {{ name: gone, match: {{ path: /gone }}, limit: 100/d }}
  - {{ name: main, limit: {{ rate: 3/d, algorithm: fixed_window }} }}
responses:
  headers: both
  reset: delta_seconds
",
        up.addr
    ));
    // A route that forwards to a port nobody listens on: the 502 case uses a second sluice.
    let (broken, _dir502) = start(
        &config(
            dead,
            "keys: [{ key: k1 }]\nroutes: [{ name: main, limit: 100/d }]\nresponses: { headers: both }\n",
        ),
    );

    let mut conn = sluice.connect().await;
    let ok = conn.get("/x", "k1").await.unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("2"));
    let reset: u64 = ok.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&reset), "{reset}");
    assert_eq!(ok.header("ratelimit-policy"), Some("\"main\";q=3;w=86400"));
    assert_eq!(
        ok.header("ratelimit"),
        Some(format!("\"main\";r=2;t={reset}").as_str())
    );
    assert!(ok.header("x-request-id").is_some());

    let timeout = conn.get("/slow/2000", "k1").await.unwrap();
    assert_eq!(timeout.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(timeout.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(
        timeout.header("content-type"),
        Some("application/problem+json")
    );

    conn.get("/x", "k1").await.unwrap();
    let limited = conn.get("/x", "k1").await.unwrap();
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let problem: serde_json::Value = serde_json::from_str(&limited.body).unwrap();
    assert_eq!(
        problem["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(problem["violated-policies"], serde_json::json!(["main"]));

    let unauthorized = conn.get("/x", "nobody").await.unwrap();
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    let denied = conn.get("/x", "k2").await.unwrap();
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    for reply in [&unauthorized, &denied] {
        reply.assert_limit_headers();
    }

    let mut conn = broken.connect().await;
    let unavailable = conn.get("/x", "k1").await.unwrap();
    assert_eq!(unavailable.status, StatusCode::BAD_GATEWAY);
    assert_eq!(unavailable.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(unavailable.header("x-ratelimit-remaining"), Some("99"));
    assert!(unavailable.header("ratelimit").is_some());
}

/// What the upstream receives: forwarding headers set, hop-by-hop headers gone, the
/// client's request id kept; and the client gets the id back.
#[tokio::test]
async fn forwarding_headers() {
    let up = upstream().await;
    let (sluice, _dir) = start(&config(
        up.addr,
        "keys: [{ key: k1 }]\nroutes: [{ name: main, limit: 100/d }]\n",
    ));
    let mut conn = sluice.connect().await;
    let reply = conn
        .send(
            "GET",
            "/echo",
            &[
                ("x-api-key", "k1"),
                ("x-request-id", "req-42"),
                ("connection", "x-secret, keep-alive"),
                ("x-secret", "hop"),
                ("te", "trailers"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-request-id"), Some("req-42"));
    let seen = reply.body;
    assert!(seen.contains("x-request-id: req-42\n"), "{seen}");
    // The peer is not a trusted proxy: its own X-Forwarded-For is replaced, not extended.
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(
        seen.contains(&format!("x-forwarded-host: {}\n", sluice.listen)),
        "{seen}"
    );
    assert!(!seen.contains("x-secret"), "{seen}");
    assert!(!seen.contains("te: "), "{seen}");

    let generated = conn.get("/echo", "k1").await.unwrap();
    let id = generated.header("x-request-id").unwrap();
    assert_eq!(id.len(), 32);
    assert!(generated.body.contains(&format!("x-request-id: {id}\n")));
}

/// The resident set of the sluice process, peak, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// 200 MiB up and 200 MiB down go through while sluice's peak resident memory stays under
/// 64 MiB: bodies are streamed, never buffered whole.
#[tokio::test]
async fn large_bodies_stream_through() {
    const MIB: u64 = 1024 * 1024;
    let up = upstream().await;
    let (sluice, _dir) = start(
        &format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nupstream: {{ url: http://{}, timeout: 60s }}\nkeys: [{{ key: k1 }}]\nroutes: [{{ name: main, limit: 100/d }}]\n",
            up.addr
        ),
    );

    let stream = TcpStream::connect(sluice.listen).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, UpBody>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);

    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let upload = futures_util::stream::iter(
        (0..200 * 16).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
    );
    let request = Request::post("/upload")
        .header("host", "sluice")
        .header("x-api-key", "k1")
        .body(StreamBody::new(upload).boxed())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, (200 * MIB).to_string());

    let request = Request::get("/download/200")
        .header("host", "sluice")
        .header("x-api-key", "k1")
        .body(Full::new(Bytes::new()).boxed())
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len() as u64;
        }
    }
    assert_eq!(received, 200 * MIB);

    let peak = peak_rss(sluice.pid());
    assert!(peak < 64 * MIB, "peak RSS {} MiB", peak / MIB);
}

/// SIGTERM while requests are in flight: they complete, new connections are refused, and
/// the process exits 0.
#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let up = upstream().await;
    let (mut sluice, _dir) = start(
        &format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nupstream: {{ url: http://{}, timeout: 10s }}\nkeys: [{{ key: k1 }}]\nroutes: [{{ name: main, limit: 100/d }}]\nshutdown_timeout: 10s\n",
            up.addr
        ),
    );
    let mut in_flight = Vec::new();
    for _ in 0..4 {
        let listen = sluice.listen;
        in_flight.push(tokio::spawn(async move {
            let mut conn = Conn::open(listen).await;
            conn.get("/slow/1500", "k1").await
        }));
    }
    // Every request has reached the upstream before the signal.
    support::eventually("requests in flight", async || {
        up.seen.load(Ordering::SeqCst) == 4
    })
    .await;
    sluice.terminate();
    for task in in_flight {
        let reply = task
            .await
            .unwrap()
            .expect("the in-flight request completes");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "slow done");
    }
    let status = sluice.wait();
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(sluice.listen).await.is_err());
}

/// The default config on loopback ephemeral ports.
fn default_config() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sluice.yaml"))
        .unwrap()
        .replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:0")
        .replace("listen: 127.0.0.1:9090", "listen: 127.0.0.1:0")
}

/// The default config's demo upstream works with nothing else running: 200s, then 429.
#[tokio::test]
async fn default_config_demo() {
    let (sluice, _dir) = start(&default_config());
    demo_goes_from_200_to_429(&sluice).await;
}

/// Limited to one CPU, sluice runs its single-threaded scheduler and serves the same.
#[tokio::test]
async fn one_cpu_runs_one_thread() {
    let (_dir, path) = support::config_file(&default_config());
    let sluice = Sluice::start_on_one_cpu(&path);
    assert!(
        sluice.log_text().contains("threads=1"),
        "{}",
        sluice.log_text()
    );
    demo_goes_from_200_to_429(&sluice).await;
}

async fn demo_goes_from_200_to_429(sluice: &Sluice) {
    let mut conn = sluice.connect().await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            conn.get("/v1/hello", "demo-key")
                .await
                .unwrap()
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
}

/// An upstream that closes idle keep-alive connections quickly (as Node's 5 s default
/// does, here 100 ms): sluice notices before reusing one, so even a POST, which it never
/// sends twice, gets through every time on a fresh connection.
#[tokio::test]
async fn upstream_closing_idle_connections_costs_no_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(100))
                    .serve_connection(
                        TokioIo::new(stream),
                        hyper::service::service_fn(|req| async move {
                            Ok::<_, Infallible>(answer(req).await)
                        }),
                    ),
            );
        }
    });
    let (sluice, _dir) = start(&config(
        addr,
        "keys: [{ key: k1 }]\nroutes: [{ name: main, limit: 100/d }]\n",
    ));
    let mut client = Conn::open(sluice.listen).await;
    for i in 0..4 {
        let reply = client
            .send("POST", "/", &[("x-api-key", "k1")])
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "one upstream connection per request"
    );
    let opened = sluice
        .metric("sluice_upstream_connections_opened_total")
        .await;
    assert_eq!(opened, Some(4.0));
}

/// A pooled connection that the upstream closes as the next request arrives (the race a
/// close check cannot see): a GET is sent again on a new connection, and counted.
#[tokio::test]
async fn a_get_lost_to_a_closing_connection_is_sent_again() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                // Answers the first request of each connection, closes on the second.
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = socket.read(&mut chunk).await {
                    seen.extend_from_slice(&chunk[..n]);
                    let heads = seen.windows(4).filter(|w| w == b"\r\n\r\n").count();
                    if heads == 1 && seen.ends_with(b"\r\n\r\n") {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        socket.write_all(ok).await.unwrap();
                    } else if heads > 1 {
                        return;
                    }
                }
            });
        }
    });
    let (sluice, _dir) = start(&config(
        addr,
        "keys: [{ key: k1 }]\nroutes: [{ name: main, limit: 100/d }]\n",
    ));
    let mut client = Conn::open(sluice.listen).await;
    for _ in 0..2 {
        let reply = client.get("/", "k1").await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));
    }
    let retries = sluice.metric("sluice_upstream_retries_total").await;
    assert_eq!(retries, Some(1.0));
    let opened = sluice
        .metric("sluice_upstream_connections_opened_total")
        .await;
    assert_eq!(opened, Some(2.0));
}
