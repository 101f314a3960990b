//! The HTTP/1.1 client for plain `http://` upstreams.
//!
//! hyper's pooled client runs every upstream connection as a task of its own and hands each
//! request and response across channels to it: per request, a pool lookup under a lock, a
//! hashed key, a send to the connection task, a wake-up there, a oneshot back, another
//! wake-up for every body frame. Profiles put that at about a third of sluice's user time on
//! the allow path. This client does the exchange inside the request's own task instead:
//! it takes an idle connection, writes the head (and the first body frame) in one call,
//! reads and parses the response head, and hands back a body that reads the socket itself
//! and puts the connection back in the pool when the response has ended.
//!
//! TLS upstreams, HTTP/2 upstreams and upgrades (WebSocket) still go through hyper's client.
//!
//! Framing (RFC 9112 §6): the request carries `Content-Length` when its size is known and is
//! chunked otherwise; the response is read by `Transfer-Encoding: chunked` (any other coding
//! is refused), `Content-Length`, or to the end of the connection, and a response to HEAD, a
//! 204 or a 304 has no body.
//! A connection is reused only after a complete exchange with neither side asking to close.
//! An upstream that answers before it has read the whole request body gets no more of it,
//! and that connection is closed afterwards.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::net::TcpStream;

use crate::body::{BodyError, RequestBody};
use crate::http1::chunked::{Chunked, Decoded};
use crate::http1::{chunk_size, line, read, RawHeaders};
use crate::upstream::Added;

/// Largest response head read (status line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers parsed (as hyper's client).
const MAX_HEADERS: usize = 100;
/// Space made in the read buffer before a read of the response head.
const HEAD_READ: usize = 8 * 1024;
/// Space made in the read buffer before a read of a response body.
const BODY_READ: usize = 64 * 1024;
/// Idle connections keep a read buffer up to this size; larger ones are freed.
const KEPT_BUFFER: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be opened.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// Opening a connection took longer than `connect_timeout`.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The connection broke while the request was being written.
    #[error("connection broke while the request was sent: {0}")]
    Unsent(io::Error),
    /// The connection was closed (EOF) or reset before any byte of a response arrived.
    #[error("connection closed before the response: {0}")]
    Closed(io::Error),
    /// The connection failed during the response.
    #[error("{0}")]
    Io(io::Error),
    /// No response head within the response timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The upstream's response is not HTTP/1.1.
    #[error("invalid response: {0}")]
    Protocol(&'static str),
    /// The request body failed (the client left, or it passed the route's `max_body`).
    #[error("request body: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Whether the upstream cannot have acted on the request, which is what makes a
    /// resend safe: the connection broke while the request was being written (it never
    /// had all of it), or was reset before a byte of the response (its kernel discarded
    /// what the server had left unread: a connection it closed as the request arrived).
    /// A plain close before the response is also what a server that read the request and
    /// then gave up looks like, so that counts only for a method the upstream may see
    /// twice (Go's `net/http` transport draws the same line).
    fn unprocessed(&self, idempotent: bool) -> bool {
        match self {
            Error::Unsent(_) => true,
            Error::Closed(error) => {
                idempotent
                    || matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                            | io::ErrorKind::ConnectionAborted
                    )
            }
            _ => false,
        }
    }

    /// A read failure met while the request was still being written is a write failure:
    /// the upstream never had the whole request.
    fn unsent(self) -> Self {
        match self {
            Error::Closed(error) => Error::Unsent(error),
            other => other,
        }
    }
}

/// A pooled HTTP/1.1 client for one `http://` upstream.
#[derive(Debug)]
pub struct Client {
    host: String,
    port: u16,
    authority: HeaderValue,
    prefix: String,
    connect_timeout: Duration,
    pool: Arc<Pool>,
}

impl Client {
    /// A client for `base` (an `http://` URL; its path prefixes every request's).
    pub fn new(base: &Uri, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        let authority = base.authority().map_or("", |a| a.as_str());
        let host = base.host().unwrap_or_default();
        Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: base.port_u16().unwrap_or(80),
            authority: HeaderValue::from_str(authority)
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            prefix: base.path().trim_end_matches('/').to_owned(),
            connect_timeout,
            pool: Arc::new(Pool {
                idle: Mutex::new(VecDeque::new()),
                idle_timeout,
                max_idle: MAX_IDLE,
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Keeps at most `max_idle` idle connections (1024 unless told); with 0, none is
    /// reused and every request asks the upstream to close its connection.
    pub fn max_idle(mut self, max_idle: usize) -> Self {
        if let Some(pool) = Arc::get_mut(&mut self.pool) {
            pool.max_idle = max_idle;
        }
        self
    }

    /// Sends the request (hop-by-hop headers already removed) and returns the response head
    /// with its body streaming from the connection; fails if the head has not arrived
    /// within `timeout`.
    pub async fn send(
        &self,
        parts: &Parts,
        added: &Added,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<Response<ResponseBody>, Error> {
        let now = Instant::now();
        let deadline = tokio::time::Instant::from_std(now + timeout);
        let length = body.size_hint().exact();
        let bodyless = length == Some(0);
        let head = self.encode_head(parts, added, length);
        // Boxed for the same reason as connecting (below): bodiless requests need none of it.
        let mut body = (!bodyless).then(|| Box::new(Outgoing::new(body, length.is_none())));
        let idempotent = parts.method.is_idempotent();
        // Let the other requests that became ready in this turn of the event loop get this
        // far too, so that their writes reach the upstream back to back: an upstream on the
        // same CPU (a sidecar) is woken by a write and often given the CPU at once, and
        // writes spread out between the requests' other work wake it once per request. Here
        // rather than in the exchange: the response timer is polled only while the response
        // is awaited, not again for this turn. The yield also has the runtime poll for
        // events before the pool is looked at, so a FIN or stray bytes that arrived on an
        // idle connection since are seen (`Conn::still_open`).
        tokio::task::yield_now().await;
        let mut resent = false;
        loop {
            // A resend goes on a new connection: the pool may hold more the upstream closed.
            let pooled = if resent { None } else { self.pool.take(now) };
            let (conn, reused) = match pooled {
                Some(conn) => (conn, true),
                None => {
                    // Boxed: connecting is rare with a warm pool, and its future (the name
                    // lookup included) would otherwise grow every request's future, which
                    // is copied whole at each `.await` on the way here.
                    let connect = tokio::time::timeout_at(deadline, Box::pin(self.connect()));
                    (connect.await.map_err(|_| Error::Timeout(timeout))??, false)
                }
            };
            let result = {
                let exchange = conn.exchange(&head, body.as_deref_mut(), &parts.method, deadline);
                std::pin::pin!(exchange).await
            };
            match result {
                Err(Error::Timeout(_)) => return Err(Error::Timeout(timeout)),
                // A kept-alive connection the upstream closed as the request went out (its
                // idle timeout, a restart, or a server that closes after every response
                // without saying so): sent again, once, when the upstream cannot have acted
                // on it and sluice still has all of it.
                Err(error)
                    if reused
                        && error.unprocessed(idempotent)
                        && body.as_deref_mut().is_none_or(Outgoing::rewind) =>
                {
                    tracing::debug!(%error, "pooled upstream connection lost; sending again on a new one");
                    crate::telemetry::upstream_retried();
                    resent = true;
                }
                Err(error) => return Err(error),
                Ok((response, conn)) => return Ok(self.respond(response, conn)),
            }
        }
    }

    fn respond(&self, head: Head, conn: Conn) -> Response<ResponseBody> {
        let body = ResponseBody {
            conn: Some(conn),
            framing: head.framing,
            reusable: head.reusable,
            pool: self.pool.clone(),
            headers: Some(head.headers),
        };
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.version_mut() = Version::HTTP_11;
        if matches!(response.body().framing, Framing::Length(0)) {
            response.body_mut().finish();
        }
        response
    }

    /// The request line and headers, with this client's framing.
    fn encode_head(&self, parts: &Parts, added: &Added, length: Option<u64>) -> Vec<u8> {
        let mut head = Vec::with_capacity(256 + parts.headers.len() * 32);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(self.prefix.as_bytes());
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        head.extend_from_slice(if path.is_empty() { "/" } else { path }.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        if !added.has_host {
            line(&mut head, header::HOST.as_str(), self.authority.as_bytes());
        }
        let mut announced = false;
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH {
                announced = true;
                continue;
            }
            // The client's `Expect: 100-continue` was answered by sluice's server already.
            if name == header::EXPECT || added.replaces(name) {
                continue;
            }
            line(&mut head, name.as_str(), value.as_bytes());
        }
        for (name, value) in added.iter() {
            line(&mut head, name.as_str(), value.as_bytes());
        }
        if self.pool.max_idle == 0 {
            line(&mut head, header::CONNECTION.as_str(), b"close");
        }
        match length {
            Some(0) if !(announced || sends_body(&parts.method)) => {}
            Some(n) => line(
                &mut head,
                header::CONTENT_LENGTH.as_str(),
                itoa::Buffer::new().format(n).as_bytes(),
            ),
            None => line(&mut head, header::TRANSFER_ENCODING.as_str(), b"chunked"),
        }
        head.extend_from_slice(b"\r\n");
        head
    }

    async fn connect(&self) -> Result<Conn, Error> {
        let connecting = async {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
            for address in self.addresses().await? {
                match TcpStream::connect(address).await {
                    Ok(stream) => return Ok(stream),
                    Err(error) => last = error,
                }
            }
            Err(last)
        };
        let stream = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| Error::ConnectTimeout)?
            .map_err(Error::Connect)?;
        crate::telemetry::upstream_connected();
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            timer: Some(Box::pin(tokio::time::sleep(Duration::ZERO))),
        })
    }

    async fn addresses(&self) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.host.parse() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect())
    }
}

/// Methods whose empty body is announced (`Content-Length: 0`), as clients do.
fn sends_body(method: &Method) -> bool {
    method == Method::POST || method == Method::PUT || method == Method::PATCH
}

/// A request body on its way out. While what it has sent is small, that is kept (the
/// frames are reference-counted: nothing is copied), so a request lost to a connection the
/// upstream had closed can be sent again whole on a new one.
struct Outgoing {
    body: RequestBody,
    /// Framed by chunks (its size was not known).
    chunked: bool,
    /// The frames taken from `body` so far, while they fit [`KEPT_BODY`].
    kept: smallvec::SmallVec<[Bytes; 2]>,
    kept_len: usize,
    /// Everything taken from `body` is in `kept`.
    whole: bool,
    /// Frames of `kept` given out on the current connection.
    given: usize,
}

/// Most body bytes (and frames) kept for a resend; a longer body is never sent twice.
const KEPT_BODY: usize = 64 * 1024;
const KEPT_FRAMES: usize = 16;

impl Outgoing {
    fn new(body: RequestBody, chunked: bool) -> Self {
        Self {
            body,
            chunked,
            kept: smallvec::SmallVec::new(),
            kept_len: 0,
            whole: true,
            given: 0,
        }
    }

    /// The next piece of the body: first what was kept, then the rest of the stream.
    /// Trailers are not forwarded (an empty piece).
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        if let Some(data) = self.kept.get(self.given) {
            self.given += 1;
            return Poll::Ready(Some(Ok(data.clone())));
        }
        let data = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(error)) => return Poll::Ready(Some(Err(error))),
            Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
        };
        if self.whole {
            if self.kept_len + data.len() <= KEPT_BODY && self.kept.len() < KEPT_FRAMES {
                self.kept_len += data.len();
                self.kept.push(data.clone());
                self.given += 1;
            } else {
                self.whole = false;
                self.kept = smallvec::SmallVec::new();
            }
        }
        Poll::Ready(Some(Ok(data)))
    }

    /// Starts over for a resend; false when part of the body is gone.
    fn rewind(&mut self) -> bool {
        self.given = 0;
        self.whole
    }
}

/// Idle connections, most recently used last.
#[derive(Debug)]
struct Pool {
    idle: Mutex<VecDeque<(Conn, Instant)>>,
    idle_timeout: Duration,
    /// Most idle connections kept (`upstream.max_idle_connections`).
    max_idle: usize,
    /// Whether the background sweep runs (started by the first connection put back).
    sweeping: AtomicBool,
}

/// Most idle connections kept unless configured.
const MAX_IDLE: usize = crate::config::compile::DEFAULT_MAX_IDLE;

impl Pool {
    /// The most recently used idle connection still usable, if any. The others met on the
    /// way are closed after the lock is let go.
    fn take(&self, now: Instant) -> Option<Conn> {
        let mut closed = Vec::new();
        let idle = &mut *self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = idle.pop_back() {
            if self.usable(&conn, since, now) {
                return Some(conn);
            }
            closed.push(conn);
        }
        None
    }

    /// Neither expired nor closed by the upstream.
    fn usable(&self, conn: &Conn, since: Instant, now: Instant) -> bool {
        now.duration_since(since) < self.idle_timeout && conn.still_open()
    }

    fn put(self: &Arc<Self>, mut conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        if conn.buf.capacity() > KEPT_BUFFER {
            conn.buf = BytesMut::new();
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push_back((conn, now));
        }
        drop(idle);
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            self.start_sweeping();
        }
    }

    /// Closes, now and then, the idle connections that expired or that the upstream
    /// closed, so that a pool nobody uses holds no dead sockets. Stops with the pool.
    fn start_sweeping(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = Arc::downgrade(self);
        let every = (self.idle_timeout / 4).clamp(Duration::from_millis(10), SWEEP_EVERY);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep(Instant::now());
            }
        });
    }

    fn sweep(&self, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let (kept, closed): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut *idle)
            .into_iter()
            .partition(|(conn, since)| self.usable(conn, *since, now));
        *idle = kept;
        drop(idle);
        drop(closed);
    }
}

/// Longest time between two sweeps of the idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// One upstream connection.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The response timeout. Kept with the connection and moved forward for each request:
    /// pushing a registered timer later is an atomic store, where a new timer per request
    /// costs an insertion into and a removal from the timer wheel.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    /// Boxed: it travels in the response body, which is moved at every step out.
    headers: Box<RawHeaders>,
    framing: Framing,
    reusable: bool,
}

/// How the response body ends.
#[derive(Debug)]
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// With the last chunk.
    Chunked(Chunked),
    /// When the upstream closes the connection.
    Close,
}

impl Conn {
    /// Whether an idle connection can take a request: the upstream has neither closed it
    /// nor sent anything unasked (a late response must not reach the next request's
    /// client). Costs no system call unless the socket became readable. tokio's readiness
    /// is as fresh as the runtime's last poll for events, which the yield before every
    /// exchange brings about (a one-byte `MSG_PEEK` instead would cost a system call, some
    /// 4% of a request's CPU, and still race with a close that comes after it).
    fn still_open(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Writes the request and reads the response head, until `deadline`.
    async fn exchange(
        mut self,
        head: &[u8],
        body: Option<&mut Outgoing>,
        method: &Method,
        deadline: tokio::time::Instant,
    ) -> Result<(Head, Self), Error> {
        let mut timer = self
            .timer
            .take()
            .expect("a connection at rest has its timer");
        timer.as_mut().reset(deadline);
        let result = tokio::select! {
            biased;
            result = self.request(head, body, method) => result,
            () = timer.as_mut() => Err(Error::Timeout(Duration::ZERO)),
        };
        self.timer = Some(timer);
        result.map(|head| (head, self))
    }

    async fn request(
        &mut self,
        head: &[u8],
        body: Option<&mut Outgoing>,
        method: &Method,
    ) -> Result<Head, Error> {
        let mut complete = true;
        match body {
            None => {
                self.write(&mut [IoSlice::new(head)], false).await?;
            }
            // Boxed for the same reason as connecting: bodiless requests need none of it.
            Some(body) => complete = Box::pin(self.send_body(head, body)).await?,
        }
        let mut parsed = self.read_head(method).await?;
        parsed.reusable &= complete;
        Ok(parsed)
    }

    /// Streams the body after the head; returns whether all of it was sent (false when the
    /// upstream answered first).
    async fn send_body(&mut self, head: &[u8], body: &mut Outgoing) -> Result<bool, Error> {
        let chunked = body.chunked;
        // The head goes out with the first frame when that is at hand (a small body usually
        // came in the same read as the request's head).
        let mut next = std::future::poll_fn(|cx| body.poll_next(cx)).now_or_never();
        let mut head = Some(head);
        loop {
            let frame = match next.take() {
                Some(frame) => frame,
                None => {
                    if let Some(head) = head.take() {
                        if !self.write(&mut [IoSlice::new(head)], true).await? {
                            return Ok(false);
                        }
                    }
                    tokio::select! {
                        frame = std::future::poll_fn(|cx| body.poll_next(cx)) => frame,
                        answered = answered(&self.stream, &mut self.buf, false) => {
                            if answered.map_err(Error::unsent)? {
                                return Ok(false);
                            }
                            continue;
                        }
                    }
                }
            };
            let head = head.take().unwrap_or_default();
            let data = match frame {
                None => {
                    let end: &[u8] = if chunked { b"0\r\n\r\n" } else { b"" };
                    return self
                        .write(&mut [IoSlice::new(head), IoSlice::new(end)], true)
                        .await;
                }
                Some(Err(error)) => return Err(Error::Body(error)),
                Some(Ok(data)) => data,
            };
            let mut size = [0u8; 18];
            let (open, close): (&[u8], &[u8]) = if chunked && !data.is_empty() {
                (chunk_size(data.len(), &mut size), b"\r\n")
            } else {
                (b"", b"")
            };
            let mut slices = [
                IoSlice::new(head),
                IoSlice::new(open),
                IoSlice::new(&data),
                IoSlice::new(close),
            ];
            if !self.write(&mut slices, true).await? {
                return Ok(false);
            }
        }
    }

    /// Writes all of `slices`. With `watch`, stops and returns false as soon as the
    /// upstream starts answering.
    async fn write(&mut self, mut slices: &mut [IoSlice<'_>], watch: bool) -> Result<bool, Error> {
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            match self.stream.try_write_vectored(slices) {
                Ok(0) => return Err(Error::Unsent(io::ErrorKind::WriteZero.into())),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !watch {
                        self.stream.writable().await.map_err(Error::Unsent)?;
                        continue;
                    }
                    tokio::select! {
                        ready = self.stream.writable() => ready.map_err(Error::Unsent)?,
                        answered = answered(&self.stream, &mut self.buf, false) => {
                            if answered.map_err(Error::unsent)? {
                                return Ok(false);
                            }
                        }
                    }
                }
                // An upstream that answered early and closed resets the connection; its
                // answer is still in the receive queue, ahead of the reset.
                Err(e) if watch && matches!(read(&self.stream, &mut self.buf), Ok(1..)) => {
                    tracing::debug!(error = %e, "upstream answered before the request body ended");
                    return Ok(false);
                }
                Err(e) => return Err(Error::Unsent(e)),
            }
        }
        Ok(true)
    }

    /// Reads until a whole final response head is in.
    async fn read_head(&mut self, method: &Method) -> Result<Head, Error> {
        // Whether any of the response arrived (an interim 1xx leaves nothing in the buffer).
        let mut started = !self.buf.is_empty();
        loop {
            if let Some(head) = Self::parse_head(&mut self.buf, method)? {
                return Ok(head);
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(Error::Protocol("response head too large"));
            }
            // Once part of the response is in, a wait for the rest asks for a quick ACK.
            match answered(&self.stream, &mut self.buf, started).await {
                Err(Error::Closed(error)) if started => return Err(Error::Io(error)),
                Ok(true) => started = true,
                result => {
                    result?;
                }
            };
        }
    }

    /// Parses the final response head at the front of the buffer, consuming it and any
    /// interim (1xx) responses before it; `None` while it is incomplete.
    fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
        loop {
            if buf.is_empty() {
                return Ok(None);
            }
            if let Some(head) = Self::parse_one(buf, method)? {
                if head.status.is_informational() {
                    continue;
                }
                return Ok(Some(head));
            }
            return Ok(None);
        }
    }

    fn parse_one(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
        // Left uninitialised: zeroing 100 slots costs more than parsing a typical head.
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut slots,
        );
        let length = match parsed {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Protocol("too many response headers"))
            }
            Err(_) => return Err(Error::Protocol("malformed response head")),
        };
        let code = response.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| Error::Protocol("invalid status"))?;
        let minor = response.version.unwrap_or(1);
        let start = buf.as_ptr() as usize;
        let mut spans: smallvec::SmallVec<[(usize, usize, usize, usize); 32]> =
            smallvec::SmallVec::new();
        for h in response.headers.iter() {
            let name = h.name.as_ptr() as usize - start;
            let value = h.value.as_ptr() as usize - start;
            spans.push((name, h.name.len(), value, h.value.len()));
        }
        let bytes = buf.split_to(length).freeze();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Error::Protocol(
                "101 to a request that asked for no upgrade",
            ));
        }
        // Hop-by-hop headers are read here and never kept (the proxy would only remove
        // them again); `Connection` also names what else goes.
        let (mut close, mut keep_alive) = (false, false);
        let mut listed: smallvec::SmallVec<[&[u8]; 2]> = smallvec::SmallVec::new();
        let mut coding: Option<&[u8]> = None;
        let mut length: Option<u64> = None;
        let mut headers = RawHeaders::new(bytes.clone());
        for (name, name_len, value, value_len) in spans {
            let (name_bytes, value_bytes) = (
                &bytes[name..name + name_len],
                &bytes[value..value + value_len],
            );
            if name_bytes.eq_ignore_ascii_case(b"connection") {
                for token in crate::http1::tokens(value_bytes) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else {
                        listed.push(token);
                    }
                }
                continue;
            }
            if name_bytes.eq_ignore_ascii_case(b"transfer-encoding") {
                coding = crate::http1::tokens(value_bytes).next_back();
                continue;
            }
            if crate::upstream::is_hop_by_hop(name_bytes) {
                continue;
            }
            if name_bytes.eq_ignore_ascii_case(b"content-length") {
                length = content_length(length, value_bytes)?;
            }
            headers.push(name..name + name_len, value..value + value_len);
        }
        if !listed.is_empty() {
            headers.retain(|name| !listed.iter().any(|l| l.eq_ignore_ascii_case(name)));
            length = length.filter(|_| headers.contains("content-length"));
        }
        let mut reusable = if minor == 0 { keep_alive } else { !close };
        let framing = if method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else if let Some(last) = coding {
            let chunked = last.eq_ignore_ascii_case(b"chunked");
            // Transfer-Encoding overrides a Content-Length sent with it, which must not
            // reach the client; a message with both is suspect, so its connection is not
            // reused (RFC 9112 §6.3).
            if length.is_some() {
                headers.retain(|name| !name.eq_ignore_ascii_case(b"content-length"));
                reusable = false;
            }
            if !chunked {
                // Its body would reach the client still coded, with nothing saying so
                // (nginx answers 502 too).
                return Err(Error::Protocol("transfer-encoding other than chunked"));
            }
            Framing::Chunked(Chunked::default())
        } else if let Some(length) = length {
            Framing::Length(length)
        } else {
            reusable = false;
            Framing::Close
        };
        Ok(Some(Head {
            status,
            headers: Box::new(headers),
            framing,
            reusable,
        }))
    }

    /// Reads more of the response (part of which has arrived, so a wait asks for a quick
    /// ACK).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(BODY_READ);
        loop {
            ready!(poll_read_ready(&self.stream, cx, true))?;
            match read(&self.stream, &mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                read => return Poll::Ready(read),
            }
        }
    }
}

/// Waits until `stream` is readable and reads into `buf`: true when response bytes arrived
/// (readiness can be stale, so a read may find nothing). `ack`: part of the response is
/// in already, so a wait asks for a quick ACK.
async fn answered(stream: &TcpStream, buf: &mut BytesMut, ack: bool) -> Result<bool, Error> {
    std::future::poll_fn(|cx| poll_read_ready(stream, cx, ack))
        .await
        .map_err(Error::Closed)?;
    buf.reserve(HEAD_READ);
    match read(stream, buf) {
        // A reset that came after the upstream's FIN is reported by the socket's pending
        // error, not by the read: it says the upstream discarded the request unread.
        Ok(0) => Err(Error::Closed(
            stream
                .take_error()
                .ok()
                .flatten()
                .unwrap_or_else(|| io::ErrorKind::UnexpectedEof.into()),
        )),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(Error::Closed(e)),
    }
}

/// tokio's one read-readiness slot rather than `readable()`, whose future takes a place in
/// the socket's waiter list and gives it back: only the exchange under way reads the socket.
///
/// With `ack`, a wait (the socket has nothing more yet) first asks the kernel for a quick
/// ACK of what arrived. An upstream that writes its response in two pieces (the head, then
/// the body) with Nagle's algorithm on holds the second until the first is acknowledged,
/// and a delayed ACK comes only after 40 ms: every such response would stall that long.
/// One `setsockopt`, only when a response is split across reads.
fn poll_read_ready(stream: &TcpStream, cx: &mut Context<'_>, ack: bool) -> Poll<io::Result<()>> {
    let ready = stream.poll_read_ready(cx);
    if ack && ready.is_pending() {
        quick_ack(stream);
    }
    ready
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn quick_ack(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
}

/// Elsewhere there is no such option: ACKs are as the kernel delays them.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn quick_ack(_: &TcpStream) {}

/// Parses a response head (and the interim ones before it) off the front of `buf`, as the
/// client does, for the fuzz targets: its status, or `None` while it is incomplete.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<StatusCode>, Error> {
    Ok(Conn::parse_head(buf, method)?.map(|head| head.status))
}

/// The length so far with one more `Content-Length` value, refusing conflicting or
/// malformed values.
fn content_length(mut length: Option<u64>, value: &[u8]) -> Result<Option<u64>, Error> {
    for part in crate::http1::tokens(value) {
        let n = crate::http1::length(part).ok_or(Error::Protocol("invalid content-length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(Error::Protocol("conflicting content-length"));
        }
        length = Some(n);
    }
    Ok(length)
}

/// A response body read from the upstream connection as the client takes it. A complete
/// body gives the connection back to the pool; a dropped or failed one closes it.
#[derive(Debug)]
pub struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
    pool: Arc<Pool>,
    /// The response's end-to-end headers, until something takes them: the response's own
    /// header map is left empty (see [`RawHeaders`]).
    headers: Option<Box<RawHeaders>>,
}

impl ResponseBody {
    /// The response's headers, while they are kept here.
    pub fn raw_headers(&self) -> Option<&RawHeaders> {
        self.headers.as_deref()
    }

    /// Takes the response's headers out.
    pub fn take_raw_headers(&mut self) -> Option<Box<RawHeaders>> {
        self.headers.take()
    }

    /// The body has ended: the connection goes back to the pool if it can take another
    /// request.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.buf.is_empty() {
                self.pool.put(conn);
            }
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let data = match &mut self.framing {
                Framing::Length(remaining) => {
                    if !conn.buf.is_empty() {
                        let n = conn
                            .buf
                            .len()
                            .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                        *remaining -= n as u64;
                        Some(conn.buf.split_to(n).freeze())
                    } else {
                        None
                    }
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => Some(data),
                    Ok(Decoded::End) => {
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::More) => None,
                    Err(why) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(Error::Protocol(why))));
                    }
                },
                Framing::Close => (!conn.buf.is_empty()).then(|| conn.buf.split().freeze()),
            };
            if let Some(data) = data {
                if matches!(self.framing, Framing::Length(0)) {
                    self.finish();
                }
                return Poll::Ready(Some(Ok(data)));
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(self.framing, Framing::Close) => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Error::Io(io::ErrorKind::UnexpectedEof.into()))));
                }
                Ok(_) => {}
                Err(error) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Error::Io(error))));
                }
            }
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.get_mut()
            .poll_data(cx)
            .map(|data| data.map(|data| data.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.framing) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Framing::Length(remaining)) => SizeHint::with_exact(*remaining),
            (Some(_), _) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
