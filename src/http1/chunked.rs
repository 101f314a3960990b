//! Decoding a chunked body (RFC 9112 §7.1), a request's or a response's, as its bytes
//! arrive, in pieces of any size. Chunk extensions and trailers are checked and dropped.
//!
//! Strict where readers disagree, so that no other hop can find a different end in the same
//! bytes: every line ends in CRLF (no bare LF, no CR elsewhere), a size is hex digits only
//! (no sign, `0x` or leading whitespace) below 2^63 (nginx's limit; a larger one could only
//! be a lie), and a trailer line must be a header field. hyper's decoder refuses all of
//! that too except the largest sizes.

use bytes::{Buf, Bytes, BytesMut};

/// Longest size line (hex size plus extensions) or trailer section accepted.
const MAX_LINE: usize = 4096;
/// Largest chunk size: a signed 64-bit length, as nginx reads one.
const MAX_SIZE: u64 = i64::MAX as u64;

/// Where the decoder is in the body.
#[derive(Debug, Default)]
pub enum Chunked {
    /// Before a chunk's size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this many bytes to go.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one, with the bytes seen so far.
    Trailers(usize),
    /// The body has ended.
    Done,
}

/// What one step of decoding gave.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The buffer holds no more to decode: read more.
    More,
    /// The body has ended.
    End,
}

impl Chunked {
    /// Consumes what it can from the front of `buf`: stops at the first data, when more
    /// bytes are needed, or at the end of the body.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        loop {
            match self {
                Chunked::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::More);
                    };
                    let size = parse_size(&line)?;
                    *self = if size == 0 {
                        Chunked::Trailers(0)
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let n = buf
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        *self = Chunked::DataEnd;
                    }
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                Chunked::DataEnd => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::More);
                    };
                    if !line.is_empty() {
                        return Err("chunk data longer than its size");
                    }
                    *self = Chunked::Size;
                }
                Chunked::Trailers(seen) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::More);
                    };
                    if line.is_empty() {
                        *self = Chunked::Done;
                        return Ok(Decoded::End);
                    }
                    *seen += line.len();
                    if *seen > MAX_LINE {
                        return Err("trailers too large");
                    }
                    if !is_field_line(&line) {
                        return Err("invalid trailer line");
                    }
                }
                Chunked::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// Takes one line (without its CRLF) off the front of `buf`. A bare LF, or a CR anywhere
/// but before the LF, is refused: readers that end lines differently would split the body
/// differently.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, &'static str> {
    match buf.iter().position(|&b| b == b'\n') {
        // However the line arrived: in one read it would otherwise pass where in pieces
        // the check below refuses it.
        Some(end) if end > MAX_LINE => Err("chunk size line too long"),
        Some(end) => {
            if end == 0 || buf[end - 1] != b'\r' {
                return Err("chunk line ends in a bare LF");
            }
            let mut line = buf.split_to(end + 1);
            line.truncate(end - 1);
            if line.contains(&b'\r') {
                return Err("bare CR in a chunk line");
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err("chunk size line too long"),
        None => Ok(None),
    }
}

/// Whether a trailer line is a header field: a token, a colon, and a value with no control
/// character but tab (what httparse, and so hyper, accepts).
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name.iter().all(|&b| is_tchar(b))
        && value
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The hex size at the start of a size line; extensions after `;` are checked for control
/// characters and otherwise ignored.
fn parse_size(line: &[u8]) -> Result<u64, &'static str> {
    let mut size: u64 = 0;
    let mut digits = 0;
    let mut rest = line;
    while let Some((&b, tail)) = rest.split_first() {
        let Some(digit) = (b as char).to_digit(16) else {
            break;
        };
        size = size
            .checked_mul(16)
            .map(|s| s + u64::from(digit))
            .filter(|&s| s <= MAX_SIZE)
            .ok_or("chunk size too large")?;
        digits += 1;
        rest = tail;
    }
    if digits == 0 {
        return Err("invalid chunk size");
    }
    while rest.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        rest.advance(1);
    }
    match rest.split_first() {
        None => Ok(size),
        Some((b';', extensions))
            if extensions
                .iter()
                .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)) =>
        {
            Ok(size)
        }
        Some((b';', _)) => Err("invalid chunk extension"),
        Some(_) => Err("invalid chunk size"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(input: &[u8], pieces: &[usize]) -> Result<(Vec<u8>, bool), &'static str> {
        let mut decoder = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = input;
        let mut pieces = pieces.iter().cycle();
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => out.extend_from_slice(&data),
                Decoded::End => return Ok((out, true)),
                Decoded::More => {
                    if rest.is_empty() {
                        return Ok((out, false));
                    }
                    let n = (*pieces.next().unwrap()).clamp(1, rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
            }
        }
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let body = b"5\r\nhello\r\n1;name=value\r\n \r\nA \r\n0123456789\r\n0\r\nx-sum: 1\r\n\r\n";
        let (data, ended) = decode_all(body, &[1000]).unwrap();
        assert_eq!(data, b"hello 0123456789");
        assert!(ended);
    }

    #[test]
    fn refuses_bare_line_feeds_and_carriage_returns() {
        for (body, why) in [
            (&b"3\nabc\r\n0\r\n\r\n"[..], "chunk line ends in a bare LF"),
            (b"3\r\nabc\n0\r\n\r\n", "chunk line ends in a bare LF"),
            (b"3\r\nabc\r\n0\n\r\n", "chunk line ends in a bare LF"),
            (b"3\r\nabc\r\n0\r\n\n", "chunk line ends in a bare LF"),
            (b"\n", "chunk line ends in a bare LF"),
            (b"3\rabc\r\n0\r\n\r\n", "bare CR in a chunk line"),
            (b"3;a\rb\r\nabc\r\n0\r\n\r\n", "bare CR in a chunk line"),
            (b"3\r\nabc\r\r\n0\r\n\r\n", "bare CR in a chunk line"),
        ] {
            for pieces in [&[1][..], &[100]] {
                assert_eq!(
                    decode_all(body, pieces).map(|_| ()),
                    Err(why),
                    "{:?}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn stops_at_the_end_and_leaves_what_follows() {
        let mut buf = BytesMut::from(&b"2\r\nok\r\n0\r\n\r\nHTTP/1.1"[..]);
        let mut decoder = Chunked::default();
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"ok")))
        );
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::End));
        assert_eq!(&buf[..], b"HTTP/1.1");
    }

    #[test]
    fn refuses_malformed_bodies() {
        assert_eq!(decode_all(b"zz\r\n", &[100]), Err("invalid chunk size"));
        assert_eq!(
            decode_all(b"2\r\nabc\r\n", &[100]),
            Err("chunk data longer than its size")
        );
        for size in [
            &b"11111111111111111"[..],
            b"ffffffffffffffff",
            b"8000000000000000",
            b"10000000000000000",
        ] {
            let mut line = size.to_vec();
            line.extend_from_slice(b"\r\nab\r\n0\r\n\r\n");
            assert_eq!(decode_all(&line, &[100]), Err("chunk size too large"));
        }
        // The largest size nginx takes is a size (the body is then merely unfinished).
        let (data, ended) = decode_all(b"7fffffffffffffff\r\nab", &[100]).unwrap();
        assert_eq!((&data[..], ended), (&b"ab"[..], false));
        for bad in [
            &b"-2\r\nab\r\n"[..],
            b"+2\r\nab\r\n",
            b"0x2\r\nab\r\n",
            b" 2\r\nab\r\n",
            b"2 x\r\nab\r\n",
            b"\r\n",
        ] {
            assert_eq!(decode_all(bad, &[100]), Err("invalid chunk size"));
        }
        assert_eq!(
            decode_all(b"2;a\x00\r\nab\r\n", &[100]),
            Err("invalid chunk extension")
        );
        assert_eq!(
            decode_all(b"4\r\nab\r\n0\r\n\r\n", &[100]),
            Err("chunk data longer than its size"),
            "a shorter chunk than stated runs into what follows"
        );
        assert_eq!(
            decode_all(b"2\r\nab0\r\n\r\n", &[100]),
            Err("chunk data longer than its size")
        );
        for trailer in [&b"x"[..], b": 1", b"a b: 1", b" folded", b"x: \x01"] {
            let mut body = b"0\r\n".to_vec();
            body.extend_from_slice(trailer);
            body.extend_from_slice(b"\r\n\r\n");
            assert_eq!(decode_all(&body, &[100]), Err("invalid trailer line"));
        }
        assert_eq!(
            decode_all(&[b'1'; 5000], &[5000]),
            Err("chunk size line too long")
        );
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..500 {
            trailers.extend_from_slice(b"x-long-trailer: 1\r\n");
        }
        assert_eq!(decode_all(&trailers, &[64]), Err("trailers too large"));
    }

    #[test]
    fn a_long_line_is_refused_however_it_arrives() {
        let mut body = b"1;".to_vec();
        body.extend_from_slice(&[b'a'; MAX_LINE]);
        body.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
        for pieces in [&[body.len()][..], &[1000]] {
            assert_eq!(decode_all(&body, pieces), Err("chunk size line too long"));
        }
        let mut seeded = vec![6];
        seeded.extend_from_slice(&body);
        crate::fuzz::chunked(&seeded);
    }

    #[test]
    fn an_unfinished_body_asks_for_more() {
        let (data, ended) = decode_all(b"5\r\nhel", &[2]).unwrap();
        assert_eq!(data, b"hel");
        assert!(!ended);
    }

    proptest! {
        /// Any body cut into any chunks, delivered in pieces of any size, decodes to itself.
        #[test]
        fn any_split_decodes_to_the_original(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            chunk_sizes in proptest::collection::vec(1usize..300, 1..20),
            pieces in proptest::collection::vec(1usize..64, 1..20),
        ) {
            let mut encoded = Vec::new();
            let mut rest = &body[..];
            let mut sizes = chunk_sizes.iter().cycle();
            while !rest.is_empty() {
                let n = (*sizes.next().unwrap()).min(rest.len());
                encoded.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                encoded.extend_from_slice(&rest[..n]);
                encoded.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            encoded.extend_from_slice(b"0\r\n\r\n");
            let (data, ended) = decode_all(&encoded, &pieces).unwrap();
            prop_assert_eq!(data, body);
            prop_assert!(ended);
        }
    }
}
