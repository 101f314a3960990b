//! Entry points for the fuzz targets in `fuzz/` (run by `scripts/fuzz`): the parsers that
//! untrusted bytes reach, called on a buffer with no socket, each checking what must hold
//! whatever the bytes. Not an API (hidden from the docs); the regression tests of every
//! crash found run them too.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::Method;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http1::chunked::{Chunked, Decoded};
use crate::server::h1::head::{self, Framing, Limits, Refused};

/// The limits the targets parse under: the defaults.
pub const LIMITS: Limits = Limits {
    max_bytes: 64 * 1024,
    max_headers: 100,
};

/// One request as sluice's own HTTP/1.1 server frames it.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// A request read to the end of its body.
    Request {
        /// The method as sent.
        method: String,
        /// The request target as sent.
        target: String,
        /// The body's bytes (de-chunked).
        body: Vec<u8>,
    },
    /// Answered 400 or 431; the connection closes.
    Refused,
    /// hyper takes the connection from here.
    HandOff,
    /// The bytes end inside a head or a body.
    Incomplete,
}

/// The requests in `input`, framed as sluice's own server frames them (its head parser, and
/// bodies by length or by its chunked decoder), up to the first that ends the connection.
pub fn server_frames(input: &[u8]) -> Vec<Framed> {
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    loop {
        let head = match head::parse(&mut buf, LIMITS) {
            Ok(Some(head)) => head,
            Ok(None) if buf.is_empty() => return frames,
            Ok(None) => return with(frames, Framed::Incomplete),
            Err(Refused::HandOff) => return with(frames, Framed::HandOff),
            Err(_) => return with(frames, Framed::Refused),
        };
        let mut body = Vec::new();
        let ended = match head.framing {
            Framing::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                let ended = buf.len() >= n;
                body.extend_from_slice(&buf.split_to(n.min(buf.len())));
                ended
            }
            Framing::Chunked(mut decoder) => loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(data)) => body.extend_from_slice(&data),
                    Ok(Decoded::End) => break true,
                    Ok(Decoded::More) => break false,
                    Err(_) => return with(frames, Framed::Refused),
                }
            },
        };
        if !ended {
            return with(frames, Framed::Incomplete);
        }
        frames.push(Framed::Request {
            method: head.parts.method.to_string(),
            target: head.parts.uri.to_string(),
            body,
        });
        if !head.keep_alive {
            return frames;
        }
    }
}

fn with(mut frames: Vec<Framed>, last: Framed) -> Vec<Framed> {
    frames.push(last);
    frames
}

/// Parses `input` as a request head and checks the result against httparse's own reading:
/// a parsed head consumed exactly its bytes, within the limit, and carries every header
/// line (names lower-cased, values as sent, in order per name); a hand-off left the buffer
/// untouched.
pub fn request_head(input: &[u8]) {
    let mut buf = BytesMut::from(input);
    match head::parse(&mut buf, LIMITS) {
        Ok(Some(parsed)) => {
            let consumed = input.len() - buf.len();
            assert!(consumed <= LIMITS.max_bytes);
            assert_eq!(&input[consumed..], &buf[..]);
            let mut slots = [httparse::EMPTY_HEADER; 100];
            let mut request = httparse::Request::new(&mut slots);
            let status = request
                .parse(input)
                .expect("httparse agrees the head is valid");
            assert_eq!(status, httparse::Status::Complete(consumed));
            assert_eq!(request.method, Some(parsed.parts.method.as_str()));
            assert_eq!(parsed.parts.headers.len(), request.headers.len());
            for name in parsed.parts.headers.keys() {
                let values: Vec<&[u8]> = parsed
                    .parts
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                let sent: Vec<&[u8]> = request
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case(name.as_str()))
                    .map(|h| h.value)
                    .collect();
                assert_eq!(values, sent, "header {name}");
            }
            if let Framing::Length(n) = parsed.framing {
                assert!(n <= crate::http1::MAX_LENGTH);
            }
        }
        Ok(None) | Err(Refused::HandOff) => assert_eq!(&buf[..], input),
        Err(Refused::BadRequest(_) | Refused::TooLarge) => {}
    }
}

/// Decodes `input`'s tail as a chunked body twice, whole and in pieces whose sizes its first
/// byte picks, and checks both readings agree: the same bytes, the same end, the same
/// bytes left after it, and an error in one only where the other has one.
pub fn chunked(input: &[u8]) {
    let Some((&seed, body)) = input.split_first() else {
        return;
    };
    let whole = decode(body, &mut std::iter::repeat(usize::MAX));
    let mut sizes = [1, 2, 3, 5, 8, 13, 64, 4097]
        .into_iter()
        .cycle()
        .skip(usize::from(seed % 8))
        .step_by(usize::from(seed / 8 % 3) + 1);
    let pieces = decode(body, &mut sizes);
    match (&whole, &pieces) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => panic!("whole: {whole:?}, in pieces: {pieces:?}"),
    }
    if let Ok((data, _, _)) = &whole {
        assert!(data.len() <= body.len());
    }
}

/// The decoded bytes, whether the body ended, and how many input bytes followed its end.
type Decoding = Result<(Vec<u8>, bool, usize), &'static str>;

fn decode(mut input: &[u8], sizes: &mut impl Iterator<Item = usize>) -> Decoding {
    let mut decoder = Chunked::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    loop {
        match decoder.decode(&mut buf)? {
            Decoded::Data(data) => out.extend_from_slice(&data),
            Decoded::End => return Ok((out, true, buf.len() + input.len())),
            Decoded::More if input.is_empty() => return Ok((out, false, 0)),
            Decoded::More => {
                let n = sizes.next().unwrap_or(1).clamp(1, input.len());
                buf.extend_from_slice(&input[..n]);
                input = &input[n..];
            }
        }
    }
}

/// Parses `input` as an upstream's response head (to a GET, or a HEAD when its first byte
/// is odd), as sluice's HTTP/1.1 client does: it must not panic, and a parsed head is a
/// final (not 1xx) status that consumed bytes.
pub fn response_head(input: &[u8]) {
    let Some((&seed, head)) = input.split_first() else {
        return;
    };
    let method = if seed % 2 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let mut buf = BytesMut::from(head);
    if let Ok(Some(status)) = crate::upstream::h1::parse_response_head(&mut buf, &method) {
        assert!(!status.is_informational());
        assert!(buf.len() < head.len());
    }
}

/// Feeds `input` to sluice's own server framing ([`server_frames`]) and to hyper's HTTP/1.1
/// server: every request sluice reads to its end must be one hyper reads too, in the same
/// place, with the same method, target and body bytes. Where sluice refuses, hands off or
/// waits for more, nothing further is compared: sluice may be stricter than hyper, never
/// looser or different.
pub fn differential(input: &[u8]) {
    let sluice = server_frames(input);
    let hyper = hyper_frames(input);
    for (i, framed) in sluice.iter().enumerate() {
        let Framed::Request {
            method,
            target,
            body,
        } = framed
        else {
            break;
        };
        let Some((h_method, h_target, h_body)) = hyper.get(i) else {
            panic!("sluice read request {i} ({method} {target}); hyper did not: {hyper:?}");
        };
        assert_eq!((method, target), (h_method, h_target), "request {i}");
        assert_eq!(Some(body), h_body.as_ref(), "body of request {i}");
    }
}

/// A request as hyper's server read it: method, target, body (`None`: it failed).
type HyperRequest = (String, String, Option<Vec<u8>>);

/// The requests hyper's HTTP/1.1 server reads from `input`, under the limits sluice gives
/// it (src/server.rs).
fn hyper_frames(input: &[u8]) -> Vec<HyperRequest> {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let service = {
        let seen = seen.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let seen = seen.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.ok().map(|b| b.to_bytes().to_vec());
                let request = (parts.method.to_string(), parts.uri.to_string(), body);
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(request);
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // The input ends with the client's half-close; without this hyper drops the
        // request in flight when it reads the end.
        .half_close(true)
        .header_read_timeout(None)
        .max_headers(LIMITS.max_headers)
        .max_header_size(LIMITS.max_bytes)
        .max_buf_size(LIMITS.max_bytes);
    let io = hyper_util::rt::TokioIo::new(Replay {
        input: Bytes::copy_from_slice(input),
    });
    RUNTIME.with(|runtime| {
        let _ = runtime.block_on(builder.serve_connection(io, service));
    });
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    seen
}

/// A connection whose client sent `input` and then half-closed; responses are dropped.
struct Replay {
    input: Bytes,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.input.len().min(buf.remaining());
        let taken = self.input.split_to(n);
        buf.put_slice(&taken);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target on every input kept in `fuzz/corpus` (the seeds and the inputs that
    /// once failed), so the stable test suite replays them.
    #[test]
    fn the_fuzz_corpora_pass_every_check() {
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 4] = [
            ("request_head", request_head),
            ("chunked", chunked),
            ("response_head", response_head),
            ("differential", differential),
        ];
        for (target, check) in targets {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(target);
            let mut inputs = 0;
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                check(&std::fs::read(&path).unwrap());
                inputs += 1;
            }
            assert!(inputs > 0, "no corpus in {}", dir.display());
        }
    }

    #[test]
    fn sluice_frames_pipelined_requests_as_hyper_does() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nokPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nyes\r\n0\r\n\r\nGET /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        let frames = server_frames(input);
        let request = |method: &str, target: &str, body: &[u8]| Framed::Request {
            method: method.into(),
            target: target.into(),
            body: body.into(),
        };
        assert_eq!(
            frames,
            [
                request("POST", "/a", b"ok"),
                request("POST", "/b", b"yes"),
                Framed::Refused
            ]
        );
        // hyper reads the third too (it takes `gzip, chunked`): sluice is only stricter.
        assert_eq!(hyper_frames(input).len(), 3);
        differential(input);
    }
}
