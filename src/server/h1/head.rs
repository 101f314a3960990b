//! A request head off the front of the read buffer: the request's parts, how its body is
//! framed and whether the connection stays open, or [`Unsupported`] when hyper must serve
//! it. Header values and the target share the buffer; nothing is copied.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Uri, Version};

use crate::http1::chunked::{Chunked, Decoded};

/// Most headers parsed here; a head with more goes to hyper, which applies `max_headers`.
const MAX_HEADERS: usize = 100;

/// Header names with where their values are in the head.
type Names = smallvec::SmallVec<[(HeaderName, Range<usize>); 16]>;

/// A parsed request head.
pub struct Head {
    /// Method, target, version and headers.
    pub parts: Parts,
    /// How the body is framed.
    pub framing: Framing,
    /// The client did not ask to close after this request.
    pub keep_alive: bool,
}

/// How a request body is framed.
#[derive(Debug)]
pub enum Framing {
    /// `Content-Length` (0: no body), with this many bytes to go.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunked),
}

impl Framing {
    /// Whether what is left is known to be at most `max` bytes.
    pub fn drainable(&self, max: u64) -> bool {
        matches!(self, Framing::Length(n) if *n <= max)
    }

    /// Drops body bytes off the front of `buf`; true once the body has ended.
    pub fn skip(&mut self, buf: &mut BytesMut) -> Result<bool, &'static str> {
        match self {
            Framing::Length(remaining) => {
                let n = buf
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                buf.advance(n);
                *remaining -= n as u64;
                Ok(*remaining == 0)
            }
            Framing::Chunked(decoder) => loop {
                match decoder.decode(buf)? {
                    Decoded::Data(_) => {}
                    Decoded::More => return Ok(false),
                    Decoded::End => return Ok(true),
                }
            },
        }
    }
}

/// A head this server does not serve: hyper takes the connection, and answers it.
#[derive(Debug, PartialEq)]
pub struct Unsupported;

/// Parses the head at the front of `buf` and takes it off; `None` while it is incomplete.
/// On [`Unsupported`] the buffer is left as it was.
pub fn parse(buf: &mut BytesMut, max_headers: usize) -> Result<Option<Head>, Unsupported> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Left uninitialised: zeroing 100 slots costs more than parsing a typical head.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let slots = &mut slots[..max_headers.min(MAX_HEADERS)];
    let mut request = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Unsupported),
    };
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let method = request.method.unwrap_or_default();
    let target = request.path.unwrap_or_default();
    if method == "CONNECT" || !(target.starts_with('/') || target.starts_with("http")) {
        return Err(Unsupported);
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| Unsupported)?;
    let target = range(target.as_bytes());

    let mut names = Names::new();
    let mut framing = Framing::Length(0);
    let (mut length, mut chunked, mut close, mut keep_alive) = (None, false, false, false);
    for header in request.headers.iter() {
        let (name, value) = (header.name.as_bytes(), header.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = crate::http1::length(value.trim_ascii()).ok_or(Unsupported)?;
            if length.is_some_and(|seen| seen != n) {
                return Err(Unsupported);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Unsupported);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in crate::http1::tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Err(Unsupported);
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"expect") {
            return Err(Unsupported);
        }
        let name = names::lookup(name).ok_or(Unsupported)?;
        names.push((name, range(value)));
    }
    match (length, chunked) {
        (Some(_), true) => return Err(Unsupported),
        (_, true) if version == Version::HTTP_10 => return Err(Unsupported),
        (_, true) => framing = Framing::Chunked(Chunked::default()),
        (Some(n), false) => framing = Framing::Length(n),
        (None, false) => {}
    }
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive);

    let head = buf.split_to(len).freeze();
    let built = build(&head, method, target, version, names);
    let Some(parts) = built else {
        // Values httparse let through and `http` does not (cannot happen for header
        // values; a target `Uri` refuses): put the bytes back for hyper to answer.
        let mut whole = BytesMut::from(&head[..]);
        whole.extend_from_slice(buf);
        *buf = whole;
        return Err(Unsupported);
    };
    Ok(Some(Head {
        parts,
        framing,
        keep_alive,
    }))
}

fn build(
    head: &Bytes,
    method: Method,
    target: Range<usize>,
    version: Version,
    names: Names,
) -> Option<Parts> {
    let uri = Uri::from_maybe_shared(head.slice(target)).ok()?;
    // No room for the forwarding headers and request id: sluice's own client writes them
    // straight into the upstream head, and only hyper's (`https://`, HTTP/2) inserts them.
    let mut headers = HeaderMap::with_capacity(names.len());
    for (name, value) in names {
        let value = HeaderValue::from_maybe_shared(head.slice(value)).ok()?;
        headers.append(name, value);
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Some(parts)
}

/// Header names as this thread's clients send them, parsed once: a name that comes with
/// every request (`X-API-Key`, `User-Agent`) is otherwise lowercased, matched against the
/// standard names and, when it is none of them, copied into an allocation of its own for
/// each request. A direct-mapped table on the name's bytes as sent (any case); a name
/// that collides with another replaces it, so junk names cost only misses.
mod names {
    use std::cell::RefCell;

    use http::header::HeaderName;

    const SLOTS: usize = 64;
    /// Longer names are parsed every time.
    const MAX_LEN: usize = 48;

    type Slot = Option<(Box<[u8]>, HeaderName)>;

    thread_local! {
        static SEEN: RefCell<[Slot; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
    }

    /// The header name `raw`, or `None` if it is not one.
    pub fn lookup(raw: &[u8]) -> Option<HeaderName> {
        let (Some(&first), Some(&last)) = (raw.first(), raw.last()) else {
            return None;
        };
        if raw.len() > MAX_LEN {
            return HeaderName::from_bytes(raw).ok();
        }
        let slot = (raw.len() * 7
            + usize::from(first) * 3
            + usize::from(last)
            + usize::from(raw[raw.len() / 2]))
            % SLOTS;
        SEEN.with(|seen| {
            let mut seen = seen.borrow_mut();
            if let Some((bytes, name)) = &seen[slot] {
                if **bytes == *raw {
                    return Some(name.clone());
                }
            }
            let name = HeaderName::from_bytes(raw).ok()?;
            seen[slot] = Some((raw.into(), name.clone()));
            Some(name)
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names_are_parsed_once_and_the_same_every_time() {
            for _ in 0..3 {
                for raw in ["X-API-Key", "x-api-key", "Host", "User-Agent", "X-Custom-1"] {
                    let name = lookup(raw.as_bytes()).unwrap();
                    assert_eq!(name.as_str(), raw.to_ascii_lowercase());
                }
            }
            let long = "X-".repeat(40);
            assert_eq!(
                lookup(long.as_bytes()).unwrap().as_str(),
                long.to_ascii_lowercase()
            );
            assert!(lookup(b"").is_none());
            assert!(lookup(b"Bad Name").is_none());
            assert!(
                lookup(b"Bad Name").is_none(),
                "a refusal is not cached as a name"
            );
        }

        #[test]
        fn colliding_names_replace_each_other_and_stay_correct() {
            // Same length and same first, middle and last bytes: the same slot.
            for _ in 0..3 {
                assert_eq!(lookup(b"X-ab-Y").unwrap().as_str(), "x-ab-y");
                assert_eq!(lookup(b"X-cb-Y").unwrap().as_str(), "x-cb-y");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(raw: &str) -> Result<Option<Head>, Unsupported> {
        parse(&mut BytesMut::from(raw), 100)
    }

    #[test]
    fn an_ordinary_head_is_parsed_and_taken_off_the_buffer() {
        let mut buf = BytesMut::from(
            "GET /v1/x?y=1 HTTP/1.1\r\nHost: a\r\nX-API-Key: k\r\nX-API-Key: k2\r\n\r\nGET /next",
        );
        let head = parse(&mut buf, 100).unwrap().unwrap();
        assert_eq!(&buf[..], b"GET /next");
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.uri, "/v1/x?y=1");
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["host"], "a");
        let keys: Vec<_> = head.parts.headers.get_all("x-api-key").iter().collect();
        assert_eq!(keys, ["k", "k2"]);
        assert!(matches!(head.framing, Framing::Length(0)));
        assert!(head.keep_alive);
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        assert!(parse_all("GET / HTTP/1.1\r\nHost: a\r\n")
            .unwrap()
            .is_none());
        assert!(parse_all("").unwrap().is_none());
    }

    #[test]
    fn bodies_are_framed_by_length_or_chunks() {
        let head = parse_all("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert!(matches!(head.unwrap().framing, Framing::Length(12)));
        let head = parse_all("POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n");
        assert!(matches!(head.unwrap().unwrap().framing, Framing::Length(5)));
        let head = parse_all("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert!(matches!(head.unwrap().framing, Framing::Chunked(_)));
    }

    #[test]
    fn connection_close_and_http10_keep_alive() {
        let close = parse_all("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n");
        assert!(!close.unwrap().unwrap().keep_alive);
        let old = parse_all("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!old.keep_alive);
        assert_eq!(old.parts.version, Version::HTTP_10);
        let kept = parse_all("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(kept.unwrap().unwrap().keep_alive);
    }

    #[test]
    fn whatever_hyper_must_answer_is_left_to_it_untouched() {
        for raw in [
            "GET /chat HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET /<x> HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "GET http:/x HTTP/1.1\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(raw);
            assert_eq!(parse(&mut buf, 100).err(), Some(Unsupported), "{raw}");
            assert_eq!(&buf[..], raw.as_bytes(), "left as it was: {raw}");
        }
    }

    #[test]
    fn more_headers_than_allowed_go_to_hyper() {
        let raw = "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
        assert_eq!(parse(&mut BytesMut::from(raw), 2).err(), Some(Unsupported));
        assert!(parse(&mut BytesMut::from(raw), 3).unwrap().is_some());
    }

    #[test]
    fn an_unread_body_is_skipped_to_its_end() {
        let mut framing = Framing::Length(5);
        let mut buf = BytesMut::from("abc");
        assert_eq!(framing.skip(&mut buf), Ok(false));
        buf.extend_from_slice(b"deGET");
        assert_eq!(framing.skip(&mut buf), Ok(true));
        assert_eq!(&buf[..], b"GET");
        let mut framing = Framing::Chunked(Chunked::default());
        let mut buf = BytesMut::from("3\r\nabc\r\n0\r\n\r\nnext");
        assert_eq!(framing.skip(&mut buf), Ok(true));
        assert_eq!(&buf[..], b"next");
        assert!(Framing::Length(10).drainable(10));
        assert!(!Framing::Length(11).drainable(10));
        assert!(!Framing::Chunked(Chunked::default()).drainable(10));
    }
}
