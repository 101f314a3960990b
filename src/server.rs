//! Accepting connections: the accept loop, TLS termination, per-connection HTTP (HTTP/1.1
//! with keep-alive and upgrades, HTTP/2 by ALPN over TLS or with prior knowledge in the
//! clear), the limits that protect the listener from hostile clients, and graceful shutdown.
//! Cleartext connections start on sluice's own HTTP/1.1 server ([`h1`]), which hands a
//! connection to hyper's (with the bytes it read) at the first request it does not serve
//! itself; TLS connections are hyper's from the start.
//!
//! Limits (`limits` in the config):
//! - `max_connections`: each connection holds a permit for as long as its socket is open
//!   (a WebSocket tunnel included). With none free, the accept loop pauses: new connections
//!   wait in the kernel's listen backlog, unanswered, until one closes. Nothing is refused,
//!   and the pause is logged and counted (`sluice_connections_saturated_total`).
//! - `header_read_timeout`: the TLS handshake and the first request's head must arrive within
//!   it; on HTTP/1.1 every later head too, counted from the end of the previous response, so
//!   it also bounds keep-alive idleness ([`watch`]).
//! - `idle_timeout`: a connection that moves no byte either way for this long is shut down
//!   gracefully (a request in flight finishes first; [`watch`]).
//! - `max_header_bytes` / `max_headers`: larger heads get 431 from hyper on HTTP/1.1; on
//!   HTTP/2 the size is the peer's `SETTINGS_MAX_HEADER_LIST_SIZE`.
//!
//! On shutdown the listener closes at once; connections finish their in-flight requests
//! up to the deadline and are then dropped. Owns no request logic.

mod h1;
mod io;
mod watch;

pub use h1::BodyReader;

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::ConnectionLimits;
use crate::proxy::Gateway;
use crate::telemetry;
use io::{Stream, Watched};
use watch::{Close, Tracked, Watch, Watches};

/// Least time between two `max_connections reached` warnings.
const SATURATION_WARNING_EVERY: Duration = Duration::from_secs(10);

/// What the listener serves and how it protects itself.
pub struct Listener {
    /// The bound socket.
    pub tcp: TcpListener,
    /// TLS termination, when configured.
    pub tls: Option<TlsAcceptor>,
    /// Limits against hostile clients.
    pub limits: ConnectionLimits,
}

/// Serves the gateway on `listener` until `shutdown` resolves, then drains for at most `drain`.
pub async fn serve(
    listener: Listener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let Listener { tcp, tls, limits } = listener;
    let builder = Arc::new(http_builder(&limits));
    let max = limits.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let watches = Arc::new(Watches::new(
        limits.header_read_timeout,
        limits.idle_timeout,
    ));
    let sweeper = tokio::spawn({
        let watches = watches.clone();
        async move {
            let mut tick = tokio::time::interval(watches.period());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                watches.sweep(tick.tick().await);
            }
        }
    });
    let mut warned: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                telemetry::connections_saturated();
                // Under sustained saturation this happens per connection: warn now and then.
                if warned.is_none_or(|at| at.elapsed() >= SATURATION_WARNING_EVERY) {
                    warned = Some(tokio::time::Instant::now());
                    tracing::warn!(
                        max_connections = max,
                        "max_connections reached; new connections wait in the listen backlog"
                    );
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            Context {
                peer,
                permit,
                tls: tls.clone(),
                builder: builder.clone(),
                gateway: gateway.clone(),
                watch: watches.watch(tokio::time::Instant::now()),
                head_limits: (limits.max_header_bytes, limits.max_headers),
            },
        ));
    }
    drop(tcp);
    tracing::info!("shutting down: draining in-flight requests");
    watches.shutdown();
    // Every open connection holds a permit: having them all back means all are closed.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    tokio::select! {
        _ = permits.acquire_many(all) => tracing::info!("all connections drained"),
        () = tokio::time::sleep(drain) => tracing::warn!(?drain, "drain deadline passed; dropping the remaining connections"),
    }
    sweeper.abort();
}

/// HTTP/1.1 and HTTP/2 settings from the limits.
fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        // Kept by the watch instead: hyper's timer is a new timer for every request.
        .header_read_timeout(None)
        .max_headers(limits.max_headers)
        // A head that does not fit the read buffer is answered 431.
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .timer(TokioTimer::new());
    builder
}

/// What one connection task needs.
struct Context {
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    gateway: Arc<Gateway>,
    watch: Arc<Watch>,
    /// `limits.max_header_bytes` and `limits.max_headers`, for sluice's own HTTP/1.1 server.
    head_limits: (usize, usize),
}

/// Serves one connection: TLS handshake, HTTP, and closing when its [`Watch`] says so.
async fn connection(tcp: TcpStream, cx: Context) {
    let Context {
        peer,
        permit,
        tls,
        builder,
        gateway,
        watch,
        head_limits: (max_header_bytes, max_headers),
    } = cx;
    let secure = tls.is_some();
    let mut replay = bytes::BytesMut::new();
    let stream = match tls {
        None => {
            let env = h1::Env {
                gateway: &gateway,
                peer,
                watch: &watch,
                max_header_bytes,
                max_headers,
            };
            match std::pin::pin!(h1::serve(tcp, env)).await {
                h1::Served::Closed => return,
                h1::Served::HandOff(tcp, read) => {
                    replay = read;
                    Stream::Plain(tcp)
                }
            }
        }
        Some(acceptor) => match until_told_to_close(&watch, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
            Ok(Err(error)) => {
                tracing::debug!(%error, %peer, "TLS handshake failed");
                return;
            }
            Err(why) => {
                tracing::debug!(%peer, ?why, "TLS handshake not done; closing");
                return;
            }
        },
    };
    // The permit lives in the socket wrapper, so an upgraded (tunnelled) socket keeps it.
    let io = Watched::new(stream, watch.activity.clone(), permit).replaying(replay);
    let service = {
        let watch = watch.clone();
        service_fn(move |request: Request<Incoming>| {
            let in_flight = watch.request(request.version() == Version::HTTP_2);
            let gateway = gateway.clone();
            async move {
                let (mut response, stamp) =
                    gateway.handle(request.map(Into::into), peer, secure).await;
                crate::body::headers_into_map(&mut response);
                stamp.apply(response.headers_mut());
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
            }
        })
    };
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
    let mut closing = false;
    let result = poll_fn(|cx| {
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        match watch.poll_close(cx) {
            None => {}
            Some(Close::Silent) => {
                tracing::debug!(%peer, "no request head within header_read_timeout; closing");
                return Poll::Ready(Ok(()));
            }
            Some(why) if !closing => {
                if why == Close::Idle {
                    tracing::debug!(%peer, "idle_timeout passed; closing");
                }
                closing = true;
                conn.as_mut().graceful_shutdown();
                // hyper acts on it when polled next.
                cx.waker().wake_by_ref();
            }
            Some(_) => {}
        }
        Poll::Pending
    })
    .await;
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "connection closed with an error");
    }
}

/// Runs `work` unless the connection is told to close first.
async fn until_told_to_close<F: Future>(watch: &Watch, work: F) -> Result<F::Output, Close> {
    let mut work = pin!(work);
    poll_fn(|cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        watch
            .poll_close(cx)
            .map_or(Poll::Pending, |why| Poll::Ready(Err(why)))
    })
    .await
}

/// Binds a listener, naming the address in the error.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))
}
