//! sluice's own HTTP/1.1 server for cleartext connections.
//!
//! hyper's server hands each request to the service through its dispatcher and encodes the
//! response through its own buffers; profiles put that at about a quarter of sluice's user
//! time per request (BENCHMARKS.md). This server does the ordinary exchange in the
//! connection's task with nothing in between: it reads and parses the head with httparse
//! (header values share the read buffer), calls the gateway, and writes the response head
//! and its first body bytes in one `writev`.
//!
//! Every request head is read here first, strictly ([`head`]): a malformed head or framing
//! two readers could disagree on is answered 400 in the `bad_request` envelope, a head over
//! `max_header_bytes` or `max_headers` 431, and the connection closes. Of the rest it serves
//! all but what needs hyper — an upgrade (WebSocket, h2c), `CONNECT`, a `*` target, the
//! HTTP/2 preface — for which it hands the connection, with every byte read from it, to
//! hyper ([`Served::HandOff`]), which serves that one request (and a tunnel after a 101).
//!
//! Framing (RFC 9112 §6): request bodies by `Content-Length` or `chunked`, streamed as they
//! arrive ([`body::BodyReader`]), after a 100 (Continue) when the client expects one.
//! Responses carry `Content-Length` when their size is
//! known and are chunked otherwise (close-delimited to an HTTP/1.0 client); HEAD, 1xx, 204
//! and 304 responses have no body. A request body the gateway did not read (a rejection,
//! an `Expect: 100-continue` request refused before its body was asked for) is drained
//! afterwards when it is small, as nginx does, and the connection closed otherwise. A body
//! that breaks its framing is answered 400 and closes the connection. Requests on one
//! connection are answered in order (pipelining).

mod body;
pub(crate) mod head;

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{ready, Poll};

use bytes::{Bytes, BytesMut};
use http::header::HeaderMap;
use http::{Response, StatusCode};
use http_body::{Body as _, Frame};
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

use super::io::Activity;
use super::watch::Watch;
use crate::body::{Body, ClientBody};
use crate::http1::{chunk_size, line, RawHeaders};
use crate::proxy::{Gateway, Stamp};

pub use body::BodyReader;
pub use head::{is_method, PREFACE};
use head::{Framing, Head, Refused};

/// Space made in the read buffer before reading a request head.
const HEAD_READ: usize = 8 * 1024;
/// Most bytes of an unread request body read and dropped to keep the connection open.
const MAX_DRAIN: u64 = 64 * 1024;
/// After a refusal, how long and how much of what the client still sends is read and
/// dropped before the socket closes (closing with unread bytes resets the connection, and
/// the client may lose the answer).
const LINGER: (std::time::Duration, usize) = (std::time::Duration::from_secs(2), 1 << 20);
/// The answer to a head over `max_header_bytes` or `max_headers` (before a request exists:
/// no envelope, as hyper's).
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The socket of one connection, shared with the request body reading from it.
struct Socket {
    tcp: TcpStream,
    activity: Activity,
    /// Where a request body leaves the connection's read buffer when it is done with it.
    returned: Mutex<Option<Returned>>,
}

/// A request body's read buffer, given back to the connection.
enum Returned {
    /// The body was read to its end; the buffer holds what followed it.
    Done(BytesMut),
    /// The body was dropped before its end.
    Unread(BytesMut, Framing),
}

/// What the connection needs from its listener.
pub struct Env<'a> {
    /// The request path.
    pub gateway: &'a Gateway,
    /// The client.
    pub peer: SocketAddr,
    /// This connection's deadlines.
    pub watch: &'a Arc<Watch>,
    /// `limits.max_header_bytes`.
    pub max_header_bytes: usize,
    /// `limits.max_headers`.
    pub max_headers: usize,
}

/// How a connection left this server.
pub enum Served {
    /// It is closed (or must be: the client left, a deadline passed, the listener is
    /// shutting down, an exchange failed).
    Closed,
    /// hyper serves the rest of it, starting with these bytes already read from it.
    HandOff(TcpStream, BytesMut),
}

/// Serves HTTP/1.1 requests on `tcp` until it closes or needs hyper.
pub async fn serve(tcp: TcpStream, env: Env<'_>) -> Served {
    let mut conn = Conn {
        socket: Arc::new(Socket {
            tcp,
            activity: env.watch.activity.clone(),
            returned: Mutex::new(None),
        }),
        buf: BytesMut::with_capacity(HEAD_READ),
        out: Vec::with_capacity(512),
    };
    let limits = head::Limits {
        max_bytes: env.max_header_bytes,
        max_headers: env.max_headers,
    };
    loop {
        let head = loop {
            match head::parse(&mut conn.buf, limits) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(Refused::HandOff) => return conn.hand_off(),
                Err(refused) => {
                    conn.refuse(refused, &env).await;
                    return Served::Closed;
                }
            }
            if !conn.read_more(env.watch).await {
                return Served::Closed;
            }
        };
        match conn.exchange(head, &env).await {
            Ok(Next::Request) => {}
            Ok(Next::Close) => return Served::Closed,
            Ok(Next::Linger) => {
                conn.linger().await;
                return Served::Closed;
            }
            Err(error) => {
                tracing::debug!(%error, peer = %env.peer, "connection closed with an error");
                return Served::Closed;
            }
        }
    }
}

/// What a connection does after an exchange.
enum Next {
    /// Reads the next request.
    Request,
    /// Closes.
    Close,
    /// Closes, reading and dropping what the client still sends for a while first (it may
    /// still be sending a body nobody read).
    Linger,
}

struct Conn {
    socket: Arc<Socket>,
    /// Bytes read and not yet parsed.
    buf: BytesMut,
    /// The response head being written.
    out: Vec<u8>,
}

impl Conn {
    /// One request and its response, and what the connection does next.
    async fn exchange(&mut self, head: Head, env: &Env<'_>) -> io::Result<Next> {
        let Head {
            parts,
            framing,
            keep_alive,
            expect,
        } = head;
        let (head_only, http10) = (
            parts.method == http::Method::HEAD,
            parts.version == http::Version::HTTP_10,
        );
        let in_flight = env.watch.request(false);
        let has_body = !matches!(framing, Framing::Length(0));
        let body = if has_body {
            ClientBody::Direct {
                inner: BodyReader::new(
                    self.socket.clone(),
                    std::mem::take(&mut self.buf),
                    framing,
                    expect,
                ),
            }
        } else {
            ClientBody::Empty
        };
        let request = http::Request::from_parts(parts, body);
        // Pinned where it is built: the request's future is large, and every move copies it.
        let handled = pin!(env.gateway.handle(request, env.peer, false));
        let Some((response, stamp)) = self.unless_client_leaves(handled, has_body).await else {
            tracing::debug!(peer = %env.peer, "client closed the connection before its response");
            return Ok(Next::Close);
        };
        let mut keep_alive = keep_alive && env.watch.closing().is_none();
        let returned = has_body.then(|| self.take_returned());
        // Whether the client may still be sending a body nobody reads.
        let mut unread = false;
        if let Some(returned) = &returned {
            keep_alive &= match returned {
                Some(Returned::Done(_)) => true,
                Some(Returned::Unread(_, framing)) => {
                    unread = true;
                    framing.drainable(MAX_DRAIN)
                }
                // The body failed: malformed, or the socket did.
                None => {
                    unread = true;
                    false
                }
            };
        }
        let reusable = self
            .respond(response, &stamp, head_only, http10, keep_alive)
            .await?;
        drop(in_flight);
        match returned {
            Some(Some(Returned::Done(buf))) => self.buf = buf,
            Some(Some(Returned::Unread(buf, framing))) if reusable => {
                self.buf = buf;
                if !self.drain(framing, env.watch).await {
                    return Ok(Next::Linger);
                }
            }
            _ => {}
        }
        Ok(match (reusable, unread) {
            (true, _) => Next::Request,
            (false, true) => Next::Linger,
            (false, false) => Next::Close,
        })
    }

    /// Answers a head that is refused (400 in the envelope, or 431) and lingers.
    async fn refuse(&mut self, refused: Refused, env: &Env<'_>) {
        tracing::debug!(peer = %env.peer, ?refused, "request head refused");
        let written = match refused {
            Refused::TooLarge => write_all(&self.socket, &mut [IoSlice::new(TOO_LARGE)]).await,
            _ => {
                let (response, stamp) = env.gateway.bad_request();
                self.respond(response, &stamp, false, false, false)
                    .await
                    .map(drop)
            }
        };
        if written.is_ok() {
            self.linger().await;
        }
    }

    /// Closes the way nginx's lingering close does: the write side first, then what the
    /// client still sends is read and dropped, for at most [`LINGER`], so that the client
    /// reads the answer before the socket closes.
    async fn linger(&mut self) {
        let tcp = &self.socket.tcp;
        if socket2::SockRef::from(tcp)
            .shutdown(std::net::Shutdown::Write)
            .is_err()
        {
            return;
        }
        let (time, bytes) = LINGER;
        let buf = &mut self.buf;
        let mut dropped = 0;
        let _ = tokio::time::timeout(time, async {
            while dropped < bytes {
                if tcp.readable().await.is_err() {
                    return;
                }
                buf.clear();
                buf.reserve(HEAD_READ);
                match tcp.try_read_buf(buf) {
                    Ok(0) => return,
                    Ok(n) => dropped += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }

    /// Runs `work` unless the client closes the connection first (as hyper does: a request
    /// whose client left is dropped, giving back what it holds, a queue place say). Looks
    /// only once the request body is done with the socket; a byte of a pipelined request
    /// ends the looking, it is read after this response.
    async fn unless_client_leaves<F: Future>(
        &self,
        mut work: Pin<&mut F>,
        has_body: bool,
    ) -> Option<F::Output> {
        let mut looking = true;
        let socket = &self.socket;
        poll_fn(|cx| {
            if let Poll::Ready(output) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            let body_done = || {
                socket
                    .returned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some()
            };
            if looking && (!has_body || body_done()) {
                let mut byte = [0u8; 1];
                match socket.tcp.poll_peek(cx, &mut ReadBuf::new(&mut byte)) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(_)) => looking = false,
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }

    /// What the request body left behind, if it is done with the connection.
    fn take_returned(&self) -> Option<Returned> {
        self.socket
            .returned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Writes the response; true when the connection can take another request (false when
    /// it must close: asked to, a body that ends with the connection, or a body that failed
    /// part way, where the client cannot tell where it ended).
    async fn respond(
        &mut self,
        response: Response<Body>,
        stamp: &Stamp,
        head_only: bool,
        http10: bool,
        keep_alive: bool,
    ) -> io::Result<bool> {
        let (parts, body) = response.into_parts();
        let status = parts.status;
        let bodiless = head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let length = body
            .size_hint()
            .exact()
            .or_else(|| crate::http1::declared_length(&parts.headers));
        let framing = match length {
            _ if bodiless => Out::None,
            Some(n) => Out::Length(n),
            None if http10 => Out::Close,
            None => Out::Chunked,
        };
        let keep_alive = keep_alive && !matches!(framing, Out::Close);
        self.out.clear();
        let keep_alive = encode_head(
            &mut self.out,
            status,
            (&parts.headers, body.raw_headers()),
            stamp,
            (framing, length, bodiless),
            (keep_alive, http10),
        );
        if matches!(framing, Out::None) {
            write_all(&self.socket, &mut [IoSlice::new(&self.out)]).await?;
            return Ok(keep_alive);
        }
        let chunked = matches!(framing, Out::Chunked);
        let mut body = pin!(body);
        let mut remaining = length.unwrap_or(u64::MAX);
        let mut head_sent = false;
        let mut ended = false;
        loop {
            let frame = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
                // Nothing yet: the head goes out now rather than wait for the body.
                Poll::Pending if !head_sent => Poll::Ready(Some(Ok(Frame::data(Bytes::new())))),
                polled => polled,
            })
            .await;
            let data = match frame {
                None => break,
                Some(Err(error)) => {
                    tracing::debug!(%error, "response body failed");
                    return Ok(false);
                }
                Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
            };
            if data.len() as u64 > remaining {
                tracing::debug!("response body longer than its Content-Length");
                return Ok(false);
            }
            remaining -= data.len() as u64;
            // The last chunk goes out with the last data, not in a write of its own.
            let last = chunked && body.is_end_stream();
            let mut size = [0u8; 18];
            let open: &[u8] = if chunked && !data.is_empty() {
                chunk_size(data.len(), &mut size)
            } else {
                b""
            };
            let close: &[u8] = match (chunked && !data.is_empty(), last) {
                (true, true) => b"\r\n0\r\n\r\n",
                (true, false) => b"\r\n",
                (false, true) => b"0\r\n\r\n",
                (false, false) => b"",
            };
            let head: &[u8] = if head_sent { b"" } else { &self.out };
            if head.is_empty() && data.is_empty() && close.is_empty() {
                continue;
            }
            let mut slices = [
                IoSlice::new(head),
                IoSlice::new(open),
                IoSlice::new(&data),
                IoSlice::new(close),
            ];
            write_all(&self.socket, &mut slices).await?;
            head_sent = true;
            ended |= last;
        }
        let head: &[u8] = if head_sent { b"" } else { &self.out };
        let end: &[u8] = if chunked && !ended { b"0\r\n\r\n" } else { b"" };
        if !(head.is_empty() && end.is_empty()) {
            write_all(&self.socket, &mut [IoSlice::new(head), IoSlice::new(end)]).await?;
        }
        Ok(keep_alive && (remaining == 0 || !matches!(framing, Out::Length(_))))
    }

    /// Reads more into the buffer; false when the connection must close instead (the
    /// client left, or its watch says so).
    async fn read_more(&mut self, watch: &Watch) -> bool {
        let socket = &self.socket;
        let buf = &mut self.buf;
        poll_fn(|cx| {
            if watch.poll_close(cx).is_some() {
                return Poll::Ready(false);
            }
            buf.reserve(HEAD_READ);
            loop {
                if ready!(socket.tcp.poll_read_ready(cx)).is_err() {
                    return Poll::Ready(false);
                }
                match crate::http1::read(&socket.tcp, buf) {
                    Ok(0) => return Poll::Ready(false),
                    Ok(_) => {
                        socket.activity.bump();
                        return Poll::Ready(true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Poll::Ready(false),
                }
            }
        })
        .await
    }

    /// Reads and drops the rest of a request body nobody read; false if the connection
    /// closed first, the body was malformed, or it ran past [`MAX_DRAIN`] (a chunked one,
    /// whose size nobody announced).
    async fn drain(&mut self, mut framing: Framing, watch: &Watch) -> bool {
        let mut drained = 0;
        loop {
            let before = self.buf.len();
            match framing.skip(&mut self.buf) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(why) => {
                    tracing::debug!(why, "unread request body malformed");
                    return false;
                }
            }
            drained += before - self.buf.len();
            if drained as u64 > MAX_DRAIN {
                tracing::debug!("unread chunked request body too long to drain");
                return false;
            }
            if !self.read_more(watch).await {
                return false;
            }
        }
    }

    /// Gives the socket and what was read from it to hyper.
    fn hand_off(self) -> Served {
        match Arc::try_unwrap(self.socket) {
            Ok(socket) => Served::HandOff(socket.tcp, self.buf),
            // A request body from an earlier request still holds it: cannot happen once
            // that body was done, and a connection with an unfinished one closes.
            Err(_) => Served::Closed,
        }
    }
}

/// How the response body is framed.
#[derive(Clone, Copy)]
enum Out {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (HTTP/1.0, size unknown).
    Close,
}

/// The status line and headers, with the stamp's and this server's framing and connection
/// headers; returns whether the connection stays open (`keep_alive`, unless the response
/// says close).
fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    (headers, raw): (&HeaderMap, Option<&RawHeaders>),
    stamp: &Stamp,
    (framing, length, bodiless): (Out, Option<u64>, bool),
    (mut keep_alive, http10): (bool, bool),
) -> bool {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut dated, mut lengthed) = (false, false);
    let map = headers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
    for (name, value) in map.chain(raw.into_iter().flat_map(RawHeaders::iter)) {
        // The connection headers below are this server's own; a response that asks to
        // close is closed.
        if name.eq_ignore_ascii_case(b"connection") {
            keep_alive &=
                !crate::http1::tokens(value).any(|token| token.eq_ignore_ascii_case(b"close"));
            continue;
        }
        // A bodiless response keeps the length it describes (of the GET, or the cached
        // body); otherwise the framing below is the only one.
        if name.eq_ignore_ascii_case(b"content-length") {
            lengthed = true;
            if !bodiless {
                continue;
            }
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") || stamp.owns(name) {
            continue;
        }
        dated |= name.eq_ignore_ascii_case(b"date");
        line(out, name, value);
    }
    stamp.encode(out);
    if !dated {
        date::write(out);
    }
    match framing {
        Out::Length(n) => line(
            out,
            "content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        Out::Chunked => line(out, "transfer-encoding", b"chunked"),
        // HEAD: the length the GET would have, when the response does not say it.
        Out::None if !lengthed && status.is_success() => {
            if let Some(n) = length.filter(|&n| n > 0) {
                line(
                    out,
                    "content-length",
                    itoa::Buffer::new().format(n).as_bytes(),
                );
            }
        }
        Out::None | Out::Close => {}
    }
    if !keep_alive && !http10 {
        line(out, "connection", b"close");
    } else if keep_alive && http10 {
        line(out, "connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    keep_alive
}

/// Writes all of `slices` to the client.
async fn write_all(socket: &Socket, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match socket.tcp.try_write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                socket.activity.bump();
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.tcp.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The `Date` header, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    /// Writes `date: <IMF-fixdate>\r\n`.
    pub fn write(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != second {
                let text = httpdate::fmt_http_date(now);
                if text.len() == 29 {
                    cached.1.copy_from_slice(text.as_bytes());
                    cached.0 = second;
                }
            }
            crate::http1::line(out, "date", &cached.1);
        });
    }
}

#[cfg(test)]
mod tests;
