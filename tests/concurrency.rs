//! `concurrency` limits end to end: a limit of 5 admits exactly 5 slow requests at once, and
//! slots come back however a response ends: body finished, client gone mid-response, or
//! upstream failing mid-body. 1,000 client aborts leave no slot held.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use support::Sluice;
use tokio::net::TcpStream;

type UpBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// `/stream`: a chunk now and one every 20 ms, forever (until the connection goes);
/// `/broken`: a chunk, then the upstream fails mid-body; anything else: `done`.
async fn upstream() -> SocketAddr {
    support::serve(|req: Request<Incoming>| async move {
        let body: UpBody = match req.uri().path() {
            "/stream" => {
                let chunks = futures_util::stream::unfold(0u64, |n| async move {
                    if n > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Some((Ok(Frame::data(Bytes::from_static(b"tick\n"))), n + 1))
                });
                StreamBody::new(chunks).boxed()
            }
            "/broken" => {
                let chunks = futures_util::stream::unfold(0, |n| async move {
                    match n {
                        0 => Some((Ok(Frame::data(Bytes::from_static(b"half"))), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Some((Err(std::io::Error::other("upstream died")), 2))
                        }
                        _ => None,
                    }
                });
                StreamBody::new(chunks).boxed()
            }
            _ => http_body_util::Full::new(Bytes::from_static(b"done"))
                .map_err(|never: Infallible| match never {})
                .boxed(),
        };
        Response::new(body)
    })
    .await
}

/// A request whose response is being received: its head has arrived, its body is open.
struct Open {
    status: StatusCode,
    retry_after: Option<String>,
    body: Incoming,
    connection: tokio::task::JoinHandle<()>,
}

impl Open {
    /// Sends `GET path` on a new connection and waits for the response head.
    async fn start(addr: SocketAddr, path: &str, key: &str) -> Open {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::get(path)
            .header("host", "sluice.test")
            .header("x-api-key", key)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        Open {
            status: response.status(),
            retry_after,
            body: response.into_body(),
            connection,
        }
    }

    /// Reads one frame of the body.
    async fn read_some(&mut self) -> Option<Bytes> {
        let frame = self.body.frame().await?.ok()?;
        frame.into_data().ok()
    }

    /// Closes the connection mid-response, as a client that gives up does.
    fn abort(self) {
        self.connection.abort();
    }
}

async fn start(upstream: SocketAddr) -> (Sluice, tempfile::TempDir) {
    let dir = support::dir();
    let config = dir.path().join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            r#"listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {{ url: "http://{upstream}" }}
unknown_key: {{ plan: default, per: key }}
routes:
  - {{ name: slow, match: {{ path: /** }}, limit: {{ concurrency: 5 }} }}
"#
        ),
    )
    .unwrap();
    (Sluice::start(&config, &[]), dir)
}

async fn in_flight(sluice: &Sluice) -> f64 {
    sluice.metric("sluice_concurrency_in_flight").await.unwrap()
}

/// Opens 8 streams at once for `key`: exactly 5 are admitted (and kept open), 3 rejected.
async fn exactly_five(sluice: &Sluice, key: &str) -> Vec<Open> {
    let opens =
        futures_util::future::join_all((0..8).map(|_| Open::start(sluice.listen, "/stream", key)))
            .await;
    let (mut admitted, rejected): (Vec<Open>, Vec<Open>) =
        opens.into_iter().partition(|o| o.status == StatusCode::OK);
    assert_eq!(admitted.len(), 5);
    assert_eq!(rejected.len(), 3);
    for open in &rejected {
        assert_eq!(open.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(open.retry_after.as_deref(), Some("1"));
    }
    for open in &mut admitted {
        assert_eq!(open.read_some().await.as_deref(), Some(&b"tick\n"[..]));
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_of_five_admits_exactly_five_slow_requests_at_once() {
    let (sluice, _dir) = start(upstream().await).await;
    let five = exactly_five(&sluice, "k").await;
    assert_eq!(in_flight(&sluice).await, 5.0);
    // Another key has slots of its own.
    let mut other = Open::start(sluice.listen, "/stream", "other").await;
    assert_eq!(other.status, StatusCode::OK);
    assert!(other.read_some().await.is_some());
    other.abort();
    // Closing the five frees their slots for five more.
    for open in five {
        open.abort();
    }
    support::eventually("the slots to come back", async || {
        in_flight(&sluice).await == 0.0
    })
    .await;
    let again = exactly_five(&sluice, "k").await;
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_client_aborts_mid_response_leave_no_slot_held() {
    let (sluice, _dir) = start(upstream().await).await;
    let mut admitted = 0;
    for _ in 0..200 {
        let batch = futures_util::future::join_all(
            (0..5).map(|_| Open::start(sluice.listen, "/stream", "k")),
        )
        .await;
        for mut open in batch {
            if open.status == StatusCode::OK {
                admitted += 1;
                assert!(open.read_some().await.is_some());
            }
            open.abort();
        }
    }
    assert!(admitted > 0);
    support::eventually("every slot to come back", async || {
        in_flight(&sluice).await == 0.0
    })
    .await;
    drop(exactly_five(&sluice, "k").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finished_bodies_and_upstream_failures_give_slots_back() {
    let (sluice, _dir) = start(upstream().await).await;
    let mut conn = sluice.connect().await;
    for _ in 0..20 {
        let reply = conn.get("/done", "k").await.unwrap();
        assert_eq!(reply.body, "done");
    }
    for _ in 0..20 {
        let mut open = Open::start(sluice.listen, "/broken", "k").await;
        // The head is through before the upstream fails (or, failing first, it is a 502).
        assert!(
            [StatusCode::OK, StatusCode::BAD_GATEWAY].contains(&open.status),
            "{}",
            open.status
        );
        // The body breaks off where the upstream failed.
        while open.read_some().await.is_some() {}
    }
    support::eventually("every slot to come back", async || {
        in_flight(&sluice).await == 0.0
    })
    .await;
    drop(exactly_five(&sluice, "k").await);
}
