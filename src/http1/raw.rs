//! A response's header lines kept in the bytes they arrived in.
//!
//! sluice's HTTP/1.1 client hands the upstream's end-to-end headers to sluice's HTTP/1.1
//! server this way, and the server writes them back out as they came: no header map is
//! built for a response that only passes through (per request, a name lookup and a hash
//! per header, a map allocation and its drop). Whatever needs a map (hyper's server for
//! TLS and HTTP/2 clients, an idempotency record) moves the lines into one with
//! [`RawHeaders::into_map`].

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

/// Header lines as the parser accepted them: names are tokens and values hold only the
/// bytes a `HeaderValue` takes (httparse checks exactly what `http` does), so writing
/// them out again or moving them into a map needs no second check.
#[derive(Debug, Default)]
pub struct RawHeaders {
    head: Bytes,
    lines: SmallVec<[Line; 12]>,
}

/// Where one header's name and value are in the head.
#[derive(Clone, Copy, Debug)]
struct Line {
    name: (u32, u32),
    value: (u32, u32),
}

impl RawHeaders {
    /// No headers yet, in `head` (the message head the lines are found in).
    pub fn new(head: Bytes) -> Self {
        Self {
            head,
            lines: SmallVec::new(),
        }
    }

    /// Keeps the header whose name and value are these parts of the head.
    pub fn push(&mut self, name: std::ops::Range<usize>, value: std::ops::Range<usize>) {
        let span = |r: std::ops::Range<usize>| (r.start as u32, r.end as u32);
        self.lines.push(Line {
            name: span(name),
            value: span(value),
        });
    }

    /// Keeps only the headers whose names `wanted` accepts.
    pub fn retain(&mut self, mut wanted: impl FnMut(&[u8]) -> bool) {
        let head = &self.head;
        self.lines
            .retain(|line| wanted(&head[line.name.0 as usize..line.name.1 as usize]));
    }

    /// The headers in the order they came: name (as sent, any case) and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let at = |(start, end): (u32, u32)| &self.head[start as usize..end as usize];
        self.lines
            .iter()
            .map(move |line| (at(line.name), at(line.value)))
    }

    /// The values of the headers named `name` (lowercase).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
    }

    /// Whether a header is named `name` (lowercase).
    pub fn contains(&self, name: &str) -> bool {
        self.get_all(name).next().is_some()
    }

    /// Appends the headers to `map`, sharing the head's bytes.
    pub fn into_map(self, map: &mut HeaderMap) {
        map.reserve(self.lines.len());
        for line in &self.lines {
            let (name, value) = (line.name, line.value);
            let name = HeaderName::from_bytes(&self.head[name.0 as usize..name.1 as usize]);
            let value =
                HeaderValue::from_maybe_shared(self.head.slice(value.0 as usize..value.1 as usize));
            // Both were checked by the parser; a line either check refuses is left out
            // rather than trusted.
            if let (Ok(name), Ok(value)) = (name, value) {
                map.append(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RawHeaders {
        let head = Bytes::from_static(b"Server: up\r\nX-Two: a\r\nx-two: b\r\n");
        let mut raw = RawHeaders::new(head);
        raw.push(0..6, 8..10);
        raw.push(12..17, 19..20);
        raw.push(22..27, 29..30);
        raw
    }

    #[test]
    fn lines_come_back_in_order_and_as_sent() {
        let raw = sample();
        let lines: Vec<_> = raw.iter().collect();
        assert_eq!(
            lines,
            [
                (&b"Server"[..], &b"up"[..]),
                (b"X-Two", b"a"),
                (b"x-two", b"b")
            ]
        );
        assert_eq!(raw.get_all("x-two").collect::<Vec<_>>(), [b"a", b"b"]);
        assert!(raw.contains("server") && !raw.contains("date"));
    }

    #[test]
    fn retain_drops_by_name_and_the_map_gets_the_rest_lowercased() {
        let mut raw = sample();
        raw.retain(|name| !name.eq_ignore_ascii_case(b"server"));
        let mut map = HeaderMap::new();
        raw.into_map(&mut map);
        assert_eq!(map.len(), 2);
        assert_eq!(map.get_all("x-two").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(!map.contains_key("server"));
    }
}
