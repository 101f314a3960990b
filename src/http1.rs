//! What both HTTP/1.1 sides of sluice share: sluice's own server for cleartext clients
//! ([`crate::server`]) and its own client for `http://` upstreams ([`crate::upstream`]).
//! Chunked bodies ([`chunked`]), header lines (written, and kept raw: [`RawHeaders`]),
//! list-header tokens, `Content-Length` values
//! and the socket read that tells tokio when a socket is drained. Owns no connection and no
//! request.

use std::io;

use bytes::BytesMut;
use tokio::net::TcpStream;

pub mod chunked;
mod raw;

pub use raw::RawHeaders;

/// Writes the header line `name: value\r\n`. Inlined: most names are constants, and a
/// copy of known length is a few stores instead of a `memcpy` call.
#[inline(always)]
pub fn line(out: &mut Vec<u8>, name: impl AsRef<[u8]>, value: &[u8]) {
    out.extend_from_slice(name.as_ref());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Reads what has arrived into `buf`'s spare capacity. A read that leaves some of it empty
/// has drained the socket, so tokio is told to wait for the next readiness event rather
/// than let the next read find nothing (one `recv` per message instead of two).
pub fn read(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let space = buf.capacity() - buf.len();
    let mut read = 0;
    let drained = stream.try_io(tokio::io::Interest::READABLE, || {
        read = stream.try_read_buf(buf)?;
        if read > 0 && read < space {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    match drained {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && read > 0 => Ok(read),
        Err(e) => Err(e),
        Ok(()) => Ok(read),
    }
}

/// The comma-separated elements of a list header (`Connection`, `Transfer-Encoding`,
/// `Content-Length` repeated), trimmed of whitespace.
pub fn tokens(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// Largest `Content-Length` taken: a signed 64-bit length, as nginx reads one. A larger
/// one could only be a lie, and readers that wrap or saturate it would disagree.
pub const MAX_LENGTH: u64 = i64::MAX as u64;

/// One `Content-Length` value: digits only, at most [`MAX_LENGTH`].
pub fn length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    // Every response has one: parsed in place, with no UTF-8 check or `str::parse`.
    digits
        .iter()
        .try_fold(0u64, |n, &b| {
            let digit = b.wrapping_sub(b'0');
            (digit <= 9).then_some(())?;
            n.checked_mul(10)?.checked_add(u64::from(digit))
        })
        .filter(|&n| n <= MAX_LENGTH)
}

/// The `Content-Length` a message declares (its first, when repeated), if it parses.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    let value = headers.get(http::header::CONTENT_LENGTH)?;
    value.to_str().ok()?.trim().parse().ok()
}

/// The hex size line of a chunk of `len` bytes, written into `out`.
pub fn chunk_size(len: usize, out: &mut [u8; 18]) -> &[u8] {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, digit) in out[..digits].iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    &out[..digits + 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_digits_only_and_fit_in_64_bits() {
        assert_eq!(length(b"0"), Some(0));
        assert_eq!(length(b"0012"), Some(12));
        assert_eq!(length(b"9223372036854775807"), Some(MAX_LENGTH));
        for bad in [
            &b""[..],
            b"9223372036854775808",
            b"18446744073709551615",
            b"18446744073709551616",
            b"+1",
            b"-1",
            b"1 2",
            b"0x1",
            b"1a",
            b"/",
        ] {
            assert_eq!(length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        let mut out = [0u8; 18];
        assert_eq!(chunk_size(1, &mut out), b"1\r\n");
        assert_eq!(chunk_size(255, &mut out), b"ff\r\n");
        assert_eq!(chunk_size(65536, &mut out), b"10000\r\n");
    }
}
