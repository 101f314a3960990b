//! Decoding a chunked response body (RFC 9112 §7.1) as its bytes arrive, in pieces of any
//! size. Chunk extensions and trailers are read and dropped.

use bytes::{Buf, Bytes, BytesMut};

/// Longest size line (hex size plus extensions) or trailer section accepted.
const MAX_LINE: usize = 4096;

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
                }
                Chunked::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// Takes one line (without its CRLF or bare LF) off the front of `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, &'static str> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err("chunk size line too long"),
        None => Ok(None),
    }
}

/// The hex size at the start of a size line (extensions after `;` ignored).
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
    if !(rest.is_empty() || rest[0] == b';') {
        return Err("invalid chunk size");
    }
    Ok(size)
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
    fn accepts_bare_line_feeds() {
        let (data, ended) = decode_all(b"3\nabc\n0\n\n", &[1]).unwrap();
        assert_eq!(data, b"abc");
        assert!(ended);
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
        assert_eq!(
            decode_all(b"11111111111111111\r\n", &[100]),
            Err("chunk size too large")
        );
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
