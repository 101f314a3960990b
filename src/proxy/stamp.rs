//! What sluice adds to every response it sends: the request id and the rate-limit headers.
//!
//! The gateway hands them to the server beside the response rather than inside its header
//! map: sluice's HTTP/1.1 server writes them straight into the head, formatted in place
//! (a map insert per header costs more than the whole line), and hyper's server (TLS,
//! HTTP/2, upgrades) gets them inserted into the map first.

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::response::LimitHeaders;

/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// sluice's own headers for one response; they replace any of the same name it has.
#[derive(Debug)]
pub struct Stamp {
    /// `X-Request-Id`.
    pub request_id: RequestId,
    /// The rate-limit headers.
    pub limits: LimitHeaders,
}

impl Stamp {
    /// Inserts the headers into `headers`.
    pub fn apply(self, headers: &mut HeaderMap) {
        headers.insert(X_REQUEST_ID, self.request_id.header_value());
        self.limits.apply(headers);
    }

    /// Whether the stamp writes a header named `name` (in any case): the response's own
    /// header of that name is left out.
    pub fn owns(&self, name: &[u8]) -> bool {
        name.eq_ignore_ascii_case(X_REQUEST_ID.as_str().as_bytes()) || self.limits.owns(name)
    }

    /// Writes the headers as HTTP/1.1 header lines.
    pub fn encode(&self, out: &mut Vec<u8>) {
        crate::http1::line(out, X_REQUEST_ID.as_str(), self.request_id.as_bytes());
        self.limits.encode(out);
    }
}

/// A request's id: the client's, or one sluice made up.
#[derive(Clone, Debug)]
pub enum RequestId {
    /// The client's `X-Request-Id` (visible ASCII, at most 200 bytes).
    Client(HeaderValue),
    /// 32 lowercase hex digits.
    Generated([u8; 32]),
}

impl RequestId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        match self {
            // Checked visible ASCII when taken from the request.
            RequestId::Client(value) => value.to_str().unwrap_or_default(),
            RequestId::Generated(hex) => std::str::from_utf8(hex).unwrap_or_default(),
        }
    }

    /// The id's bytes, as they go into a head (no UTF-8 check: hex digits or a value
    /// checked when taken from the request).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Client(value) => value.as_bytes(),
            RequestId::Generated(hex) => hex,
        }
    }

    /// The id as a header value.
    pub fn header_value(&self) -> HeaderValue {
        match self {
            RequestId::Client(value) => value.clone(),
            RequestId::Generated(hex) => {
                HeaderValue::from_bytes(hex).expect("hex is a valid header value")
            }
        }
    }

    /// Whether the request did not carry it: it must be added to what goes upstream.
    pub fn generated(&self) -> bool {
        matches!(self, RequestId::Generated(_))
    }
}

/// Request ids: the client's when it sent a usable one, else a per-process random prefix
/// and a counter (unique, and cheap: no randomness per request).
pub struct RequestIds {
    prefix: [u8; 16],
    next: AtomicU64,
}

impl RequestIds {
    /// Ids with a random prefix.
    pub fn new() -> Self {
        Self::starting(rand::random(), rand::random::<u32>().into())
    }

    fn starting(prefix: u64, next: u64) -> Self {
        let mut hex = [0u8; 16];
        write_hex(prefix, &mut hex);
        Self {
            prefix: hex,
            next: AtomicU64::new(next),
        }
    }

    /// The request's id: the client's usable `X-Request-Id`, or a new one.
    pub fn of(&self, headers: &HeaderMap) -> RequestId {
        if let Some(id) = crate::headers::get(headers, &X_REQUEST_ID) {
            if id.to_str().is_ok() && !id.is_empty() && id.len() <= 200 {
                return RequestId::Client(id.clone());
            }
        }
        let mut hex = [0u8; 32];
        hex[..16].copy_from_slice(&self.prefix);
        write_hex(self.next.fetch_add(1, Ordering::Relaxed), &mut hex[16..]);
        RequestId::Generated(hex)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// `n` as 16 lowercase hex digits.
fn write_hex(n: u64, out: &mut [u8]) {
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((n >> (4 * (15 - i))) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::limiter::Decision;

    #[test]
    fn generated_request_ids_are_the_prefix_and_the_counter_in_hex() {
        let ids = RequestIds::starting(0x0123_4567_89ab_cdef, 0xff);
        let mut headers = HeaderMap::new();
        let id = ids.of(&headers);
        assert!(id.generated());
        assert_eq!(id.as_str(), "0123456789abcdef00000000000000ff");
        assert_eq!(id.header_value(), "0123456789abcdef00000000000000ff");
        assert_eq!(
            ids.of(&headers).as_str(),
            "0123456789abcdef0000000000000100"
        );
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("client-7"));
        let kept = ids.of(&headers);
        assert!(!kept.generated(), "a client's id is kept");
        assert_eq!(kept.as_str(), "client-7");
        headers.insert(X_REQUEST_ID, HeaderValue::from_static(""));
        assert!(ids.of(&headers).generated(), "an empty id is replaced");
    }

    /// The head's lines and the map's entries say the same, and both replace the
    /// response's own headers of those names.
    #[test]
    fn encoding_and_applying_write_the_same_headers() {
        let config = load_str(
            "upstream: { url: \"demo:\" }\nroutes:\n  - { name: send, limit: 120/min }\nresponses: { headers: both }\n",
            "t",
            None,
        )
        .unwrap();
        let limits = config
            .policy
            .limits(&config.policy.profiles[0], Some(0))
            .unwrap();
        let stamp = || Stamp {
            request_id: RequestIds::starting(1, 2).of(&HeaderMap::new()),
            limits: config.responses.limit_headers(
                Some(&Decision::allow_all()),
                limits,
                crate::limiter::clock::SECOND,
            ),
        };
        // allow_all has no headline: only the request id.
        let mut out = Vec::new();
        stamp().encode(&mut out);
        assert_eq!(out, b"x-request-id: 00000000000000010000000000000002\r\n");
        assert!(stamp().owns(b"x-request-id"));
        assert!(
            !stamp().owns(b"x-ratelimit-limit"),
            "nothing to replace it with"
        );

        let none = Stamp {
            request_id: RequestId::Client(HeaderValue::from_static("c")),
            limits: config.responses.limit_headers(None, &[], 0),
        };
        let mut out = Vec::new();
        none.encode(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "x-request-id: c\r\nx-ratelimit-limit: 0\r\nx-ratelimit-remaining: 0\r\nx-ratelimit-reset: 0\r\n"
        );
        assert!(none.owns(b"x-ratelimit-reset") && !none.owns(b"ratelimit-policy"));
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit", HeaderValue::from_static("999"));
        none.apply(&mut headers);
        assert_eq!(headers.len(), 4);
        assert_eq!(headers["x-ratelimit-limit"], "0", "replaced, not added");
        assert_eq!(headers[&X_REQUEST_ID], "c");
    }
}
