//! A request head off the front of the read buffer: the request's parts, how its body is
//! framed and whether the connection stays open; or why it is refused (400, 431); or
//! [`Parsed::HandOff`] when hyper must serve it. Header values and the target share the
//! buffer; nothing is copied.
//!
//! Framing is read strictly, as nginx reads it, because a message two readers frame
//! differently is how requests are smuggled past a hop (RFC 9112 §6.3, §11.2): one
//! `Content-Length` (digits only, below 2^63) or one `Transfer-Encoding: chunked`, never
//! both, never a list, a coding other than `chunked`, or a tab around either value; one
//! `Host`; a method in capitals. Anything else is refused before a byte goes upstream.

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
    /// The client waits for a 100 (Continue) before it sends the body.
    pub expect: bool,
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
    /// Whether what is left may be at most `max` bytes: known to be, or chunked (whose
    /// size shows only as it is drained).
    pub fn drainable(&self, max: u64) -> bool {
        match self {
            Framing::Length(n) => *n <= max,
            Framing::Chunked(_) => true,
        }
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

/// What the front of the buffer holds, when it is not a request this server serves.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// Malformed or ambiguous: 400, and the connection closes (where this request ends
    /// cannot be trusted, so neither can what follows it).
    BadRequest(&'static str),
    /// More than `max_header_bytes` or `max_headers`: 431, and the connection closes.
    TooLarge,
    /// A request hyper serves (an upgrade, `CONNECT`, a `*` target, the HTTP/2 preface, more
    /// headers than this parser has room for): the buffer is left as it was.
    HandOff,
}

/// The limits on a request head.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `limits.max_header_bytes`.
    pub max_bytes: usize,
    /// `limits.max_headers`.
    pub max_headers: usize,
}

/// The HTTP/2 connection preface's first line: hyper serves h2c with prior knowledge.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Parses the head at the front of `buf` and takes it off; `None` while it is incomplete.
/// On [`Refused::HandOff`] the buffer is left as it was.
pub fn parse(buf: &mut BytesMut, limits: Limits) -> Result<Option<Head>, Refused> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.starts_with(PREFACE) {
        return Err(Refused::HandOff);
    }
    // Left uninitialised: zeroing 100 slots costs more than parsing a typical head.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let slots = &mut slots[..limits.max_headers.min(MAX_HEADERS)];
    let mut request = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_bytes => {
            return Err(Refused::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) if limits.max_headers > MAX_HEADERS => {
            return Err(Refused::HandOff)
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Refused::TooLarge),
        Err(_) => return Err(Refused::BadRequest("malformed request head")),
    };
    if len > limits.max_bytes {
        return Err(Refused::TooLarge);
    }
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
    if !is_method(method.as_bytes()) {
        return Err(Refused::BadRequest("method not in capitals"));
    }
    let target = request.path.unwrap_or_default();
    let hand_off = method == "CONNECT" || !(target.starts_with('/') || target.starts_with("http"));
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| Refused::BadRequest("bad method"))?;
    let target = range(target.as_bytes());

    let mut names = Names::new();
    let (mut length, mut chunked, mut hosts) = (None, false, 0);
    let (mut close, mut keep_alive, mut upgrade, mut expect) = (false, false, false, false);
    for header in request.headers.iter() {
        let (name, value) = (header.name.as_bytes(), header.value);
        let value_at = range(value);
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Err(Refused::BadRequest("content-length repeated"));
            }
            let n = crate::http1::length(value)
                .filter(|_| spaced(buf, value_at.clone()))
                .ok_or(Refused::BadRequest("invalid content-length"))?;
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked {
                return Err(Refused::BadRequest("transfer-encoding repeated"));
            }
            if !value.eq_ignore_ascii_case(b"chunked") || !spaced(buf, value_at.clone()) {
                return Err(Refused::BadRequest("transfer-encoding other than chunked"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in crate::http1::tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect |= value.eq_ignore_ascii_case(b"100-continue");
        }
        let name = names::lookup(name).ok_or(Refused::BadRequest("invalid header name"))?;
        names.push((name, value_at));
    }
    if hosts > 1 {
        return Err(Refused::BadRequest("host repeated"));
    }
    let framing = match (length, chunked) {
        (Some(_), true) => {
            return Err(Refused::BadRequest(
                "both content-length and transfer-encoding",
            ))
        }
        (_, true) if version == Version::HTTP_10 => {
            return Err(Refused::BadRequest("transfer-encoding in HTTP/1.0"))
        }
        (_, true) => Framing::Chunked(Chunked::default()),
        (Some(n), false) => Framing::Length(n),
        (None, false) => Framing::Length(0),
    };
    if hand_off || upgrade {
        return Err(Refused::HandOff);
    }
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive);
    let expect = expect && !matches!(framing, Framing::Length(0));

    let head = buf.split_to(len).freeze();
    let parts = build(&head, method, target, version, names)
        .ok_or(Refused::BadRequest("invalid request target"))?;
    Ok(Some(Head {
        parts,
        framing,
        keep_alive,
        expect,
    }))
}

/// Whether a method is capitals (and `-`, `_`), as nginx takes them: `get` is not `GET`,
/// and a hop that upper-cases it would see another request than one that does not.
pub fn is_method(method: &[u8]) -> bool {
    !method.is_empty()
        && method
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// Whether the only whitespace around the value at `value` in its header line is spaces:
/// httparse trims tabs too, and readers that do not (nginx) see another value.
fn spaced(buf: &[u8], value: Range<usize>) -> bool {
    let before = buf[..value.start].iter().rev().take_while(|&&b| b != b':');
    let after = buf[value.end..]
        .iter()
        .take_while(|&&b| b != b'\r' && b != b'\n');
    before.chain(after).all(|&b| b == b' ')
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

    const LIMITS: Limits = Limits {
        max_bytes: 64 * 1024,
        max_headers: 100,
    };

    fn parse_all(raw: &str) -> Result<Option<Head>, Refused> {
        parse(&mut BytesMut::from(raw), LIMITS)
    }

    #[test]
    fn an_ordinary_head_is_parsed_and_taken_off_the_buffer() {
        let mut buf = BytesMut::from(
            "GET /v1/x?y=1 HTTP/1.1\r\nHost: a\r\nX-API-Key: k\r\nX-API-Key: k2\r\n\r\nGET /next",
        );
        let head = parse(&mut buf, LIMITS).unwrap().unwrap();
        assert_eq!(&buf[..], b"GET /next");
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.uri, "/v1/x?y=1");
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["host"], "a");
        let keys: Vec<_> = head.parts.headers.get_all("x-api-key").iter().collect();
        assert_eq!(keys, ["k", "k2"]);
        assert!(matches!(head.framing, Framing::Length(0)));
        assert!(head.keep_alive && !head.expect);
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        assert!(parse_all("GET / HTTP/1.1\r\nHost: a\r\n")
            .unwrap()
            .is_none());
        assert!(parse_all("").unwrap().is_none());
        assert!(parse_all("PRI * HTT").unwrap().is_none());
    }

    #[test]
    fn bodies_are_framed_by_one_length_or_chunks() {
        let head = parse_all("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert!(matches!(head.unwrap().framing, Framing::Length(12)));
        let head = parse_all("POST / HTTP/1.1\r\nContent-Length:  12  \r\n\r\n").unwrap();
        assert!(matches!(head.unwrap().framing, Framing::Length(12)));
        let head = parse_all("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert!(matches!(head.unwrap().framing, Framing::Chunked(_)));
        let big = "POST / HTTP/1.1\r\nContent-Length: 9223372036854775807\r\n\r\n";
        assert!(matches!(
            parse_all(big).unwrap().unwrap().framing,
            Framing::Length(n) if n == i64::MAX as u64
        ));
    }

    #[test]
    fn expect_100_continue_is_kept_for_a_body() {
        let head =
            parse_all("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n");
        assert!(head.unwrap().unwrap().expect);
        let head = parse_all("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        assert!(
            !head.unwrap().unwrap().expect,
            "no body, nothing to wait for"
        );
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
    fn ambiguous_framing_and_malformed_heads_are_refused() {
        for (raw, why) in [
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "both content-length and transfer-encoding"),
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "both content-length and transfer-encoding"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "transfer-encoding repeated"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "transfer-encoding other than chunked"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n", "transfer-encoding other than chunked"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "transfer-encoding other than chunked"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: ,chunked\r\n\r\n", "transfer-encoding other than chunked"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\t\r\n\r\n", "transfer-encoding other than chunked"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding:\tchunked\r\n\r\n", "transfer-encoding other than chunked"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", "transfer-encoding other than chunked"),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "transfer-encoding in HTTP/1.0"),
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", "content-length repeated"),
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "content-length repeated"),
            ("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n", "invalid content-length"),
            ("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", "invalid content-length"),
            ("POST / HTTP/1.1\r\nContent-Length: 3\t\r\n\r\n", "invalid content-length"),
            ("POST / HTTP/1.1\r\nContent-Length:\t3\r\n\r\n", "invalid content-length"),
            ("POST / HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n", "invalid content-length"),
            ("POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n", "invalid content-length"),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "host repeated"),
            ("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", "host repeated"),
            ("get / HTTP/1.1\r\n\r\n", "method not in capitals"),
            ("Get / HTTP/1.1\r\n\r\n", "method not in capitals"),
            ("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", "malformed request head"),
            ("GET / HTTP/1.1\r\nContent-Length : 3\r\n\r\n", "malformed request head"),
            ("GET / HTTP/1.1\r\nX: 1\r\n folded\r\n\r\n", "malformed request head"),
            ("GET / HTTP/1.1\r\nX: 1\r2\r\n\r\n", "malformed request head"),
            ("GET /<x> HTTP/1.1\r\n\r\n", "invalid request target"),
        ] {
            assert_eq!(parse_all(raw).err(), Some(Refused::BadRequest(why)), "{raw:?}");
        }
        // A refusal wins over a hand-off: hyper never sees an ambiguous head.
        let upgrade = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nHost: a\r\nHost: b\r\n\r\n";
        assert_eq!(
            parse_all(upgrade).err(),
            Some(Refused::BadRequest("host repeated"))
        );
    }

    #[test]
    fn whatever_hyper_must_answer_is_left_to_it_untouched() {
        for raw in [
            "GET /chat HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(raw);
            assert_eq!(
                parse(&mut buf, LIMITS).err(),
                Some(Refused::HandOff),
                "{raw}"
            );
            assert_eq!(&buf[..], raw.as_bytes(), "left as it was: {raw}");
        }
    }

    #[test]
    fn heads_over_the_limits_get_431() {
        let raw = "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
        let limits = |max_bytes, max_headers| Limits {
            max_bytes,
            max_headers,
        };
        let parse_with = |limits| parse(&mut BytesMut::from(raw), limits);
        assert_eq!(parse_with(limits(1024, 2)).err(), Some(Refused::TooLarge));
        assert!(parse_with(limits(1024, 3)).unwrap().is_some());
        assert!(parse_with(limits(raw.len(), 3)).unwrap().is_some());
        assert_eq!(
            parse_with(limits(raw.len() - 1, 3)).err(),
            Some(Refused::TooLarge)
        );
        let partial = &raw[..raw.len() - 2];
        let mut buf = BytesMut::from(partial);
        assert_eq!(
            parse(&mut buf, limits(partial.len(), 3)).err(),
            Some(Refused::TooLarge)
        );
        // More than this parser has room for, under a higher max_headers: hyper counts.
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "a: 1\r\n".repeat(101));
        let mut buf = BytesMut::from(many.as_str());
        assert_eq!(
            parse(&mut buf, limits(1 << 20, 200)).err(),
            Some(Refused::HandOff)
        );
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
        assert!(Framing::Chunked(Chunked::default()).drainable(10));
    }
}
