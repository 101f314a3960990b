//! A request body read from the client's connection as the upstream takes it. Done (read to
//! its end) or dropped, it gives the connection's read buffer back, with its framing when
//! it was not read to the end (so the connection can drain it, or must close). A client
//! that sent `Expect: 100-continue` is told to go on when the body is first read, so one
//! that is refused first never sends it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use super::head::Framing;
use super::{Returned, Socket};
use crate::body::{BodyError, Malformed};
use crate::http1::chunked::Decoded;

/// The interim response to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Space made in the read buffer before a read of a request body.
const BODY_READ: usize = 64 * 1024;

/// The body of a request on sluice's own HTTP/1.1 server.
pub struct BodyReader {
    /// `None` once the body has ended or failed.
    socket: Option<Arc<Socket>>,
    buf: BytesMut,
    framing: Framing,
    /// Bytes of the 100 (Continue) still to write before the body is read; 0 when the
    /// client did not ask for one, or has it.
    to_continue: usize,
}

impl std::fmt::Debug for BodyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyReader")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl BodyReader {
    pub(super) fn new(socket: Arc<Socket>, buf: BytesMut, framing: Framing, expect: bool) -> Self {
        Self {
            socket: Some(socket),
            buf,
            framing,
            to_continue: if expect { CONTINUE.len() } else { 0 },
        }
    }

    /// Writes what is left of the 100 (Continue).
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(socket) = self.socket.as_ref() else {
            return Poll::Ready(Ok(()));
        };
        while self.to_continue > 0 {
            ready!(socket.tcp.poll_write_ready(cx))?;
            match socket
                .tcp
                .try_write(&CONTINUE[CONTINUE.len() - self.to_continue..])
            {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.to_continue -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Gives the buffer back to the connection.
    fn give_back(&mut self, done: bool) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        let buf = std::mem::take(&mut self.buf);
        let framing = std::mem::replace(&mut self.framing, Framing::Length(0));
        let returned = if done {
            Returned::Done(buf)
        } else {
            Returned::Unread(buf, framing)
        };
        *socket.returned.lock().unwrap_or_else(|e| e.into_inner()) = Some(returned);
    }

    fn fail(
        &mut self,
        error: impl Into<BodyError>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // Failed part way: nothing to give back, the connection closes.
        self.socket = None;
        Poll::Ready(Some(Err(error.into())))
    }
}

impl Drop for BodyReader {
    fn drop(&mut self) {
        self.give_back(false);
    }
}

impl http_body::Body for BodyReader {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Err(error) = ready!(this.poll_continue(cx)) {
            return this.fail(error);
        }
        loop {
            if this.socket.is_none() {
                return Poll::Ready(None);
            }
            let data = match &mut this.framing {
                Framing::Length(0) => None,
                Framing::Length(remaining) if !this.buf.is_empty() => {
                    let n = this
                        .buf
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= n as u64;
                    Some(this.buf.split_to(n).freeze())
                }
                Framing::Length(_) => None,
                Framing::Chunked(decoder) => match decoder.decode(&mut this.buf) {
                    Ok(Decoded::Data(data)) => Some(data),
                    Ok(Decoded::End) => {
                        this.give_back(true);
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::More) => None,
                    Err(why) => return this.fail(Malformed(why)),
                },
            };
            if let Some(data) = data {
                if matches!(this.framing, Framing::Length(0)) {
                    this.give_back(true);
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if matches!(this.framing, Framing::Length(0)) {
                this.give_back(true);
                return Poll::Ready(None);
            }
            let Some(socket) = this.socket.as_ref() else {
                return Poll::Ready(None);
            };
            this.buf.reserve(BODY_READ);
            if let Err(error) = ready!(socket.tcp.poll_read_ready(cx)) {
                return this.fail(error);
            }
            match crate::http1::read(&socket.tcp, &mut this.buf) {
                Ok(0) => return this.fail(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(_) => socket.activity.bump(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return this.fail(error),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.socket.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.socket, &self.framing) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Framing::Length(remaining)) => SizeHint::with_exact(*remaining),
            (Some(_), Framing::Chunked(_)) => SizeHint::default(),
        }
    }
}
