//! Accepting connections: the accept loop, TLS termination, per-connection HTTP (HTTP/1.1
//! with keep-alive and upgrades, HTTP/2 by ALPN over TLS or with prior knowledge in the
//! clear), the limits that protect the listener from hostile clients, and graceful shutdown.
//! Cleartext connections start on sluice's own HTTP/1.1 server ([`h1`]), which reads every
//! request head strictly and hands a connection to hyper's (with the bytes it read) for a
//! request it does not serve itself (an upgrade, `CONNECT`, the HTTP/2 preface); hyper then
//! serves that one HTTP/1.1 request and the connection closes after it (or becomes a
//! tunnel), so no later request skips sluice's own reading. TLS connections are hyper's
//! from the start (HTTP/2 by ALPN), with the checks hyper's parsed request still allows:
//! one `Host`, a method in capitals, `Transfer-Encoding` only `chunked`, and a
//! `Content-Length` below 2^63 (see docs/security.md for what only the cleartext path
//! refuses).
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
//! - `max_header_bytes` / `max_headers`: larger heads get 431 on HTTP/1.1, from sluice's
//!   server or hyper's (whose `max_header_size` counts the head exactly); on HTTP/2 the size
//!   is the peer's `SETTINGS_MAX_HEADER_LIST_SIZE`.
//!
//! On shutdown the listener closes at once; connections finish their in-flight requests
//! up to the deadline and are then dropped. Owns no request logic.

pub(crate) mod h1;
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

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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
    let builder = Arc::new(Builders::new(&limits));
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

/// hyper's HTTP/1.1 and HTTP/2 servers, set from the limits. Chosen per connection (ALPN,
/// or the preface sluice's own server saw) rather than by hyper-util's auto-detection,
/// whose HTTP/1.1 settings have no `max_header_size`.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &ConnectionLimits) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .keep_alive(true)
            // Kept by the watch instead: hyper's timer is a new timer for every request.
            .header_read_timeout(None)
            .max_headers(limits.max_headers)
            // Counted on the parsed head: the read buffer's bound alone lets a head of up
            // to twice its size through.
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(limits.max_header_bytes);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .timer(TokioTimer::new());
        Self { http1, http2 }
    }
}

/// What one connection task needs.
struct Context {
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    tls: Option<TlsAcceptor>,
    builder: Arc<Builders>,
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
    // hyper serves the connection from the start (TLS), or one request sluice's own server
    // handed over, after which it closes.
    let mut handed_off = false;
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
                    handed_off = true;
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
    let h2 = match &stream {
        Stream::Plain(_) => replay.starts_with(h1::PREFACE),
        Stream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
    };
    // The permit lives in the socket wrapper, so an upgraded (tunnelled) socket keeps it.
    let io = TokioIo::new(Watched::new(stream, watch.activity.clone(), permit).replaying(replay));
    let service = {
        let watch = watch.clone();
        service_fn(move |request: Request<Incoming>| {
            let in_flight = watch.request(request.version() == Version::HTTP_2);
            let gateway = gateway.clone();
            async move {
                let http1 = request.version() != Version::HTTP_2;
                let (mut response, stamp) = match refused(&request) {
                    Some(why) => {
                        tracing::debug!(%peer, why, "request refused");
                        gateway.bad_request()
                    }
                    None => gateway.handle(request.map(Into::into), peer, secure).await,
                };
                crate::body::headers_into_map(&mut response);
                stamp.apply(response.headers_mut());
                let bad = response.status() == http::StatusCode::BAD_REQUEST;
                if http1 && (bad || handed_off) {
                    close_after(&mut response);
                }
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
            }
        })
    };
    let result = if h2 {
        let conn = builder.http2.serve_connection(io, service);
        drive(
            pin!(conn),
            http2::Connection::graceful_shutdown,
            &watch,
            peer,
        )
        .await
    } else {
        let conn = builder.http1.serve_connection(io, service).with_upgrades();
        drive(
            pin!(conn),
            http1::UpgradeableConnection::graceful_shutdown,
            &watch,
            peer,
        )
        .await
    };
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "connection closed with an error");
    }
}

/// Why a request hyper parsed is refused (400), if it is: the checks sluice's own server
/// makes on the raw head that hyper's parsed request still shows.
fn refused<B>(request: &Request<B>) -> Option<&'static str> {
    if !h1::is_method(request.method().as_str().as_bytes()) {
        return Some("method not in capitals");
    }
    let headers = request.headers();
    if headers.get_all(http::header::HOST).iter().count() > 1 {
        return Some("host repeated");
    }
    let mut codings = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        if codings.next().is_some() || !coding.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Some("transfer-encoding other than chunked");
        }
    }
    let length = headers.get(http::header::CONTENT_LENGTH);
    if length.is_some_and(|n| crate::http1::length(n.as_bytes()).is_none()) {
        return Some("invalid content-length");
    }
    None
}

/// Makes hyper close the connection after this response, unless it opens a tunnel.
fn close_after<B>(response: &mut Response<B>) {
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
}

/// Runs a hyper connection until it ends, shutting it down gracefully when its watch says
/// so (and at once for a connection that never sent a head).
async fn drive<C, E>(
    mut conn: std::pin::Pin<&mut C>,
    graceful_shutdown: fn(std::pin::Pin<&mut C>),
    watch: &Watch,
    peer: SocketAddr,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut closing = false;
    poll_fn(|cx| {
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
                graceful_shutdown(conn.as_mut());
                // hyper acts on it when polled next.
                cx.waker().wake_by_ref();
            }
            Some(_) => {}
        }
        Poll::Pending
    })
    .await
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

/// Binds a listener that queues up to `backlog` connections for `accept` (the kernel caps
/// it at its own maximum), naming the address in the error. tokio's `bind` asks for 128 (the
/// standard library's value); a burst larger than the backlog loses SYNs, which clients
/// retry only after a second.
pub fn bind(address: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let listen = || {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(address),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        // As tokio's `bind`: a restart can listen again while old connections linger.
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&address.into())?;
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        TcpListener::from_std(socket.into())
    };
    listen().map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))
}

/// The largest listen backlog the system allows: `net.core.somaxconn` on Linux (4096 since
/// Linux 5.4), and 4096 where it cannot be read (the kernel caps what it is given).
pub fn system_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backlog a listening socket was given, as `ss` reports it (its send queue).
    fn listed_backlog(port: u16) -> u32 {
        let out = std::process::Command::new("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let columns: Vec<_> = text.split_whitespace().collect();
        columns[2]
            .parse()
            .unwrap_or_else(|_| panic!("ss said {text:?}"))
    }

    #[tokio::test]
    async fn the_listen_backlog_is_the_systems_maximum_or_the_configured_one() {
        let system = system_backlog();
        if let Ok(text) = std::fs::read_to_string("/proc/sys/net/core/somaxconn") {
            assert_eq!(system.to_string(), text.trim());
        }
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = bind(loopback, system).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listed_backlog(port), system);
        let listener = bind(loopback, 7).unwrap();
        assert_eq!(listed_backlog(listener.local_addr().unwrap().port()), 7);
    }
}
