//! WebSocket through sluice, end to end: a real echo upstream (tokio-tungstenite), messages
//! round-tripping through the tunnel, and the handshake counted against the route's limit.

mod support;

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use support::Sluice;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A WebSocket upstream echoing every text and binary message.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    let echo = message.is_text() || message.is_binary();
                    if echo && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn start(upstream: SocketAddr) -> (Sluice, tempfile::TempDir) {
    start_with(upstream, "{ rate: 2/min, algorithm: fixed_window }")
}

fn start_with(upstream: SocketAddr, limit: &str) -> (Sluice, tempfile::TempDir) {
    let text = format!(
        "\
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {{ url: \"http://{upstream}\" }}
keys: [ {{ key: k1 }} ]
routes:
  - {{ name: ws, match: {{ path: /ws }}, limit: {limit} }}
"
    );
    let (dir, path) = support::config_file(&text);
    (Sluice::start(&path, &[]), dir)
}

async fn handshake(
    sluice: &Sluice,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, WsError> {
    let mut request = format!("ws://{}/ws", sluice.listen)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-api-key", "k1".parse().unwrap());
    let tcp = TcpStream::connect(sluice.listen).await.unwrap();
    tokio_tungstenite::client_async(request, tcp)
        .await
        .map(|(ws, _)| ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_round_trip_and_the_handshake_is_counted() {
    let (sluice, _dir) = start(echo_upstream().await);

    let mut first = handshake(&sluice).await.expect("first handshake");
    let mut second = handshake(&sluice).await.expect("second handshake");
    for (i, ws) in [&mut first, &mut second].into_iter().enumerate() {
        for n in 0..3 {
            let text = format!("hello {i}.{n}");
            ws.send(Message::text(text.clone())).await.unwrap();
            let echoed = ws.next().await.unwrap().unwrap();
            assert_eq!(echoed, Message::text(text));
        }
        ws.send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(vec![0u8, 1, 2, 255])
        );
    }
    assert_eq!(sluice.metric("sluice_tunnels_open").await, Some(2.0));

    // 2/min: the third handshake is refused with the configured 429, and no tunnel opens.
    match handshake(&sluice).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("expected a 429, got {:?}", other.map(|_| "a tunnel")),
    }

    // The open tunnels are unaffected by the rejection, and close cleanly.
    first.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        first.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    first.close(None).await.unwrap();
    second.close(None).await.unwrap();
    drop((first, second));
    support::eventually("both tunnels to close", async || {
        sluice.metric("sluice_tunnels_open").await == Some(0.0)
    })
    .await;
    assert_eq!(
        sluice
            .metric("sluice_requests_total{route=\"ws\",plan=\"default\",decision=\"limited\"}")
            .await,
        Some(1.0)
    );
}

/// A concurrency limit holds its slot for the life of the tunnel, not of the 101 response:
/// with one slot, a second WebSocket is refused while the first is open, and admitted
/// once it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_holds_its_concurrency_slot_until_it_closes() {
    let (sluice, _dir) = start_with(echo_upstream().await, "{ concurrency: 1 }");
    let mut first = handshake(&sluice).await.expect("first handshake");
    first.send(Message::text("one")).await.unwrap();
    assert_eq!(first.next().await.unwrap().unwrap(), Message::text("one"));
    match handshake(&sluice).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("expected a 429, got {:?}", other.map(|_| "a tunnel")),
    }
    first.close(None).await.unwrap();
    drop(first);
    support::eventually("the slot to come back", async || {
        sluice.metric("sluice_concurrency_in_flight").await == Some(0.0)
    })
    .await;
    let mut second = handshake(&sluice)
        .await
        .expect("a handshake after the close");
    second.send(Message::text("two")).await.unwrap();
    assert_eq!(second.next().await.unwrap().unwrap(), Message::text("two"));
}
