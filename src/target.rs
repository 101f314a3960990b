//! The canonical request target: one spelling of a request's path, host and target form,
//! decided once before identity and matching, and the one forwarded upstream.
//!
//! A client can spell one resource many ways (`/v1/%6cimited`, `//v1/limited`,
//! `/v1/x/../limited`, `GET http://host/v1/limited`); the upstream decodes and normalises
//! them all to the same handler. So sluice rewrites the target to one form first
//! (RFC 3986 §6.2.2): escapes of unreserved characters decoded and the others upper-cased,
//! bytes a path may not hold escaped, dot-segments removed, repeated slashes merged, an
//! absolute-form target turned into origin form with its authority as the `Host`. What is
//! matched and counted is then exactly what the upstream serves. Spellings whose meaning
//! upstreams disagree on (an encoded slash, an invalid escape, a NUL, a `..` above the
//! root, two `Host` headers) are refused with 400 instead of guessed at.
//!
//! Owns the target; knows nothing of routes beyond whether any takes `CONNECT` or `*`.
//! A target already in canonical form is left untouched, without allocating.

use std::borrow::Cow;

use http::header::{HeaderValue, HOST};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Method, Version};

/// What to do with `%2F` and `%5C` (and a raw `\`): escapes that, decoded, would move a
/// segment boundary, which upstreams disagree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodedSlashes {
    /// 400: the safe default.
    Reject,
    /// Read them as the `/` they spell (a `\` too, as Windows servers do).
    Decode,
    /// Forward them encoded (upper-cased), part of their segment.
    Keep,
}

/// What to do when `Host` names another host than the target's authority (absolute-form,
/// or HTTP/2's `:authority`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictingHost {
    /// The authority wins (RFC 9112 §3.2.2): `Host` is replaced by it.
    Replace,
    /// 400.
    Reject,
}

/// The compiled normalisation settings (`normalise` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normaliser {
    /// Decode escapes of unreserved characters, upper-case the others, escape raw bytes a
    /// path may not hold (RFC 3986 §6.2.2.1–2).
    pub percent_encoding: bool,
    /// Resolve `.` and `..` segments (RFC 3986 §5.2.4); a `..` above the root is a 400.
    pub dot_segments: bool,
    /// Read `//` as `/`.
    pub merge_slashes: bool,
    /// `%2F`, `%5C` and `\`.
    pub encoded_slashes: EncodedSlashes,
    /// A `Host` that disagrees with the target's authority.
    pub conflicting_host: ConflictingHost,
    /// Some route lists `CONNECT` by name; otherwise `CONNECT` gets 405.
    pub allow_connect: bool,
    /// Some route has the path `*`; otherwise an asterisk-form target gets 400.
    pub allow_asterisk: bool,
}

impl Default for Normaliser {
    fn default() -> Self {
        Self {
            percent_encoding: true,
            dot_segments: true,
            merge_slashes: true,
            encoded_slashes: EncodedSlashes::Reject,
            conflicting_host: ConflictingHost::Replace,
            allow_connect: false,
            allow_asterisk: false,
        }
    }
}

/// Why a request target was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// 400.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// 405: `CONNECT`, which no route lists.
    #[error("CONNECT is not allowed here (no route lists it)")]
    Connect,
}

/// What makes a target invalid (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// `%` not followed by two hex digits.
    #[error("a '%' in the path is not followed by two hex digits")]
    BadEscape,
    /// `%00`, or a NUL byte.
    #[error("the path holds a NUL (%00)")]
    Nul,
    /// `%2F`, `%5C` or `\` under `encoded_slashes: reject`.
    #[error("the path holds an encoded slash (%2F, %5C or \\)")]
    EncodedSlash,
    /// A `..` with no segment left to remove.
    #[error("a '..' segment climbs above the root")]
    AboveRoot,
    /// A target that is none of the four forms (a path, an absolute URL, `host:port`, `*`).
    #[error("the target is not a path, an absolute URL, host:port or '*'")]
    Form,
    /// `*` with another method than `OPTIONS`, or with no route taking it.
    #[error("an asterisk-form target ('*') is only for OPTIONS, and no route takes it")]
    Asterisk,
    /// `host:port` with another method than `CONNECT`.
    #[error("an authority-form target (host:port) is only for CONNECT")]
    AuthorityForm,
    /// `CONNECT` with another target than `host:port`.
    #[error("CONNECT needs an authority-form target (host:port)")]
    ConnectTarget,
    /// An absolute-form target with another scheme than http or https.
    #[error("the target's scheme is not http or https")]
    Scheme,
    /// `http://user@host/`.
    #[error("the target's authority holds user information")]
    UserInfo,
    /// A `Host` that is not a host.
    #[error("the Host header is not a host[:port]")]
    Host,
    /// Two `Host` headers.
    #[error("the request has more than one Host header")]
    DuplicateHost,
    /// An HTTP/1.1 request in origin or asterisk form without `Host`.
    #[error("the HTTP/1.1 request has no Host header")]
    MissingHost,
    /// `Host` disagrees with the authority under `conflicting_host: reject`.
    #[error("the Host header disagrees with the target's authority")]
    ConflictingHost,
}

impl Normaliser {
    /// Puts the request's target in canonical form, in place: the path normalised, an
    /// absolute-form target in origin form, its authority in `Host`. A request already in
    /// that form is not touched.
    pub fn apply(&self, parts: &mut Parts) -> Result<(), Refused> {
        let host = single_host(parts)?;
        let uri = &parts.uri;
        if parts.method == Method::CONNECT {
            if !self.allow_connect {
                return Err(Refused::Connect);
            }
            return match uri.authority() {
                Some(authority) if uri.scheme().is_none() && uri.path().is_empty() => {
                    check_authority(authority.as_str())?;
                    Ok(())
                }
                _ => Err(Invalid::ConnectTarget.into()),
            };
        }
        let Some(scheme) = uri.scheme_str() else {
            // RFC 9112 §3.2: an HTTP/1.1 request without `Host` is a 400, as nginx answers.
            let hostless = host.is_none() && parts.version == Version::HTTP_11;
            return match (uri.authority(), uri.path()) {
                (Some(_), _) => Err(Invalid::AuthorityForm.into()),
                (None, "*") if parts.method == Method::OPTIONS && self.allow_asterisk => {
                    if hostless {
                        return Err(Invalid::MissingHost.into());
                    }
                    Ok(())
                }
                (None, "*") => Err(Invalid::Asterisk.into()),
                (None, path) if !path.starts_with('/') => Err(Invalid::Form.into()),
                (None, _) if hostless => Err(Invalid::MissingHost.into()),
                (None, path) => {
                    if let Cow::Owned(path) = self.path(path)? {
                        parts.uri = origin_form(path, parts.uri.query());
                    }
                    Ok(())
                }
            };
        };
        // Absolute form (or HTTP/2's :scheme and :authority): origin form, the authority as Host.
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(Invalid::Scheme.into());
        }
        let authority = uri.authority().map_or("", |a| a.as_str());
        check_authority(authority)?;
        let replace = match host {
            None => true,
            Some(host) if host.eq_ignore_ascii_case(authority.as_bytes()) => false,
            Some(_) if self.conflicting_host == ConflictingHost::Replace => true,
            Some(_) => return Err(Invalid::ConflictingHost.into()),
        };
        let host = replace
            .then(|| HeaderValue::from_str(authority).map_err(|_| Invalid::Host))
            .transpose()?;
        let path = self.path(uri.path())?.into_owned();
        parts.uri = origin_form(path, parts.uri.query());
        if let Some(host) = host {
            parts.headers.insert(HOST, host);
        }
        Ok(())
    }

    /// The canonical form of an origin-form path (`/` and on, no query). Borrowed when the
    /// path is canonical already, which costs one pass over it and no allocation.
    pub fn path<'a>(&self, path: &'a str) -> Result<Cow<'a, str>, Invalid> {
        if self.is_canonical(path) {
            return Ok(Cow::Borrowed(path));
        }
        let rewritten = self.rewrite(path)?;
        Ok(if rewritten == path {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(rewritten)
        })
    }

    /// Whether `rewrite` would return `path` unchanged. May answer `false` for a
    /// canonical path (then `rewrite` decides), never `true` for another.
    fn is_canonical(&self, path: &str) -> bool {
        let bytes = path.as_bytes();
        if bytes.first() != Some(&b'/') {
            return false;
        }
        let mut segment_start = 1;
        let mut i = 1;
        while i < bytes.len() {
            // Most bytes are letters and digits: one table load each.
            if is_pchar(bytes[i]) {
                i += 1;
                continue;
            }
            match bytes[i] {
                b'/' => {
                    if !self.plain_segment(&bytes[segment_start..i], false) {
                        return false;
                    }
                    segment_start = i + 1;
                }
                b'%' => {
                    let Some(byte) = escaped(bytes, i) else {
                        return false;
                    };
                    let upper = bytes[i + 1..i + 3].iter().all(|b| !b.is_ascii_lowercase());
                    let plain = match byte {
                        0 => false,
                        b'/' | b'\\' => self.encoded_slashes == EncodedSlashes::Keep && upper,
                        b'.' => false,
                        byte if self.percent_encoding => !is_unreserved(byte) && upper,
                        _ => true,
                    };
                    if !plain {
                        return false;
                    }
                    i += 2;
                }
                b'\\' | 0 => return false,
                _ if !self.percent_encoding => {}
                _ => return false,
            }
            i += 1;
        }
        self.plain_segment(&bytes[segment_start..], true)
    }

    /// A segment `rewrite` keeps as it is, as far as slashes and dots go.
    fn plain_segment(&self, segment: &[u8], last: bool) -> bool {
        match segment {
            b"" => last || !self.merge_slashes,
            b"." | b".." => !self.dot_segments,
            _ => true,
        }
    }

    /// The canonical form of `path`, built.
    fn rewrite(&self, path: &str) -> Result<String, Invalid> {
        let mut out = String::with_capacity(path.len() + 8);
        // Where each segment kept so far starts in `out` (at its '/').
        let mut starts: smallvec::SmallVec<[usize; 16]> = smallvec::SmallVec::new();
        let mut trailing_slash = false;
        let mut segments = self
            .segments(path.strip_prefix('/').unwrap_or(path))
            .peekable();
        while let Some(segment) = segments.next() {
            let last = segments.peek().is_none();
            trailing_slash = last;
            match dots(segment) {
                1 if self.dot_segments => continue,
                2 if self.dot_segments => {
                    let start = starts.pop().ok_or(Invalid::AboveRoot)?;
                    out.truncate(start);
                    continue;
                }
                _ => {}
            }
            if segment.is_empty() && self.merge_slashes {
                continue;
            }
            trailing_slash = false;
            starts.push(out.len());
            out.push('/');
            self.encode(segment, &mut out)?;
        }
        if out.is_empty() || trailing_slash {
            out.push('/');
        }
        Ok(out)
    }

    /// The segments of a path after its leading `/`: split at `/`, and under
    /// `encoded_slashes: decode` at `%2F`, `%5C` and `\` too.
    fn segments<'a>(&self, path: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let decode = self.encoded_slashes == EncodedSlashes::Decode;
        let bytes = path.as_bytes();
        let mut start = 0;
        let mut i = 0;
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            while i < bytes.len() {
                let width = match bytes[i] {
                    b'/' => 1,
                    b'\\' if decode => 1,
                    b'%' if decode && matches!(escaped(bytes, i), Some(b'/' | b'\\')) => 3,
                    _ => {
                        i += 1;
                        continue;
                    }
                };
                let segment = &path[start..i];
                i += width;
                start = i;
                return Some(segment);
            }
            done = true;
            Some(&path[start..])
        })
    }

    /// Appends one segment in canonical form.
    fn encode(&self, segment: &str, out: &mut String) -> Result<(), Invalid> {
        let bytes = segment.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let byte = bytes[i];
            if byte == b'%' {
                let decoded = escaped(bytes, i).ok_or(Invalid::BadEscape)?;
                i += 3;
                match decoded {
                    0 => return Err(Invalid::Nul),
                    b'/' | b'\\' => self.encoded_slash(decoded, out)?,
                    _ if self.percent_encoding && is_unreserved(decoded) => {
                        out.push(char::from(decoded))
                    }
                    _ if self.percent_encoding => push_escape(decoded, out),
                    _ => out.push_str(&segment[i - 3..i]),
                }
                continue;
            }
            if byte == 0 {
                return Err(Invalid::Nul);
            }
            if byte == b'\\' {
                self.encoded_slash(byte, out)?;
                i += 1;
                continue;
            }
            if self.percent_encoding && !is_pchar(byte) {
                push_escape(byte, out);
                i += 1;
                continue;
            }
            // A run of bytes kept as they are (whole UTF-8 sequences when not escaping).
            let run = bytes[i..]
                .iter()
                .position(|&b| {
                    matches!(b, b'%' | b'\\' | 0) || (self.percent_encoding && !is_pchar(b))
                })
                .map_or(bytes.len(), |n| i + n);
            out.push_str(&segment[i..run]);
            i = run;
        }
        Ok(())
    }

    /// A `%2F`, `%5C` or `\` inside a segment (under `decode` they never get here).
    fn encoded_slash(&self, byte: u8, out: &mut String) -> Result<(), Invalid> {
        match self.encoded_slashes {
            EncodedSlashes::Reject => Err(Invalid::EncodedSlash),
            _ => {
                push_escape(byte, out);
                Ok(())
            }
        }
    }
}

/// The one `Host` value of the request, if any; two are refused.
fn single_host(parts: &Parts) -> Result<Option<&[u8]>, Invalid> {
    let host =
        crate::headers::single(&parts.headers, &HOST).map_err(|()| Invalid::DuplicateHost)?;
    let Some(host) = host.map(HeaderValue::as_bytes) else {
        return Ok(None);
    };
    if !host.iter().all(|&b| is_host_byte(b)) {
        return Err(Invalid::Host);
    }
    Ok(Some(host))
}

/// An absolute-form or authority-form target's authority: a host, no user information.
fn check_authority(authority: &str) -> Result<(), Invalid> {
    if authority.contains('@') {
        return Err(Invalid::UserInfo);
    }
    if authority.is_empty() || !authority.bytes().all(is_host_byte) {
        return Err(Invalid::Host);
    }
    Ok(())
}

/// A URI of `path` and `query` alone.
fn origin_form(mut path: String, query: Option<&str>) -> Uri {
    if let Some(query) = query {
        path.push('?');
        path.push_str(query);
    }
    let path_and_query = PathAndQuery::try_from(path)
        .expect("a canonical path and a query http parsed are a valid path-and-query");
    Uri::from(path_and_query)
}

/// The byte `%XY` at `i` spells, if `X` and `Y` are hex digits.
fn escaped(bytes: &[u8], i: usize) -> Option<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let high = hex(*bytes.get(i + 1)?)?;
    let low = hex(*bytes.get(i + 2)?)?;
    Some((high * 16 + low) as u8)
}

/// 1 for `.`, 2 for `..`, in any spelling (`%2e`, `.%2E`); 0 otherwise.
fn dots(segment: &str) -> usize {
    let rest = segment.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < rest.len() {
        if rest[i] == b'.' {
            i += 1;
        } else if rest[i] == b'%' && escaped(rest, i) == Some(b'.') {
            i += 3;
        } else {
            return 0;
        }
        n += 1;
        if n > 2 {
            return 0;
        }
    }
    n
}

fn push_escape(byte: u8, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 15)]));
}

/// RFC 3986 `unreserved`: the characters whose escapes mean the same as themselves.
const UNRESERVED: u8 = 1;
/// RFC 3986 `pchar` less `%`: what a path segment may hold unescaped.
const PCHAR: u8 = 2;
/// What `host[:port]` may hold (reg-name, IPv4, IP-literal, port).
const HOST_BYTE: u8 = 4;

/// The classes of every byte: one load per byte on the request path.
static CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            table[i] = UNRESERVED | PCHAR | HOST_BYTE;
        } else if matches!(
            c,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':'
        ) {
            // sub-delims and ':'
            table[i] = PCHAR | HOST_BYTE;
        } else if c == b'@' {
            table[i] = PCHAR;
        } else if matches!(c, b'[' | b']' | b'%') {
            table[i] = HOST_BYTE;
        }
        i += 1;
    }
    table
};

fn is_unreserved(byte: u8) -> bool {
    CLASSES[usize::from(byte)] & UNRESERVED != 0
}

fn is_pchar(byte: u8) -> bool {
    CLASSES[usize::from(byte)] & PCHAR != 0
}

fn is_host_byte(byte: u8) -> bool {
    CLASSES[usize::from(byte)] & HOST_BYTE != 0
}

#[cfg(test)]
mod tests;
