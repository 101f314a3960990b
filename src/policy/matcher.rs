//! Request matchers compiled once at config load: method set, path pattern, host.
//!
//! Everything here is parsed and validated when the config is loaded, so that
//! matching on the hot path is a handful of comparisons and never allocates.

use std::fmt;

use http::Method;

mod cover;

/// The nine standard methods, in display order; index `i` is bit `1 << i`.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

const GET: u16 = 1;
const HEAD: u16 = 1 << 1;
const CONNECT: u16 = 1 << 5;

/// Bit for a standard method name (exact, upper-case), or `None` for an extension.
/// Must agree with the order of `STANDARD_METHODS` (checked by a test).
#[inline]
fn standard_bit(name: &str) -> Option<u16> {
    let i = match name {
        "GET" => 0,
        "HEAD" => 1,
        "POST" => 2,
        "PUT" => 3,
        "DELETE" => 4,
        "CONNECT" => 5,
        "OPTIONS" => 6,
        "TRACE" => 7,
        "PATCH" => 8,
        _ => return None,
    };
    Some(1 << i)
}

/// Set of HTTP methods a route accepts; empty config = any method.
///
/// Standard methods live in a bitmask so the common case is one `AND`;
/// extension methods (e.g. `PURGE`) are kept in a short sorted list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodSet {
    any: bool,
    standard: u16,
    /// Sorted by name and deduplicated, so equal sets compare equal.
    extensions: Vec<Method>,
}

impl MethodSet {
    /// A set that accepts every method, used when a route names none.
    pub fn any() -> Self {
        MethodSet {
            any: true,
            standard: 0,
            extensions: Vec::new(),
        }
    }

    /// Parse names like `"GET"`, `"post"` (case-insensitive for the standard
    /// ones; extension methods are case-sensitive, as HTTP says), `"*"` or
    /// `"ANY"` = any. No names at all also means any.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut any = false;
        let mut seen = false;
        let mut standard = 0u16;
        let mut extensions: Vec<Method> = Vec::new();
        for raw in names {
            seen = true;
            let name = raw.trim();
            if name.is_empty() {
                return Err(format!("invalid HTTP method {raw:?}: the name is empty"));
            }
            if name == "*" || name.eq_ignore_ascii_case("ANY") {
                any = true;
                continue;
            }
            if let Some(i) = STANDARD_METHODS
                .iter()
                .position(|m| m.eq_ignore_ascii_case(name))
            {
                standard |= 1 << i;
                continue;
            }
            let method = Method::from_bytes(name.as_bytes()).map_err(|_| {
                format!(
                    "invalid HTTP method {raw:?}: a method name may only contain \
                     letters, digits and !#$%&'*+-.^_`|~"
                )
            })?;
            if !extensions.contains(&method) {
                extensions.push(method);
            }
        }
        if any || !seen {
            return Ok(Self::any());
        }
        extensions.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(MethodSet {
            any: false,
            standard,
            extensions,
        })
    }

    /// Whether a request with this method is accepted. Never allocates.
    ///
    /// `HEAD` is accepted wherever `GET` is: upstreams run the GET handler for it, so it
    /// must meet the GET route's limits. `CONNECT` only where it is listed by name: `*`
    /// means every method a resource takes, and opening tunnels is not one of them.
    #[inline]
    pub fn matches(&self, method: &Method) -> bool {
        match standard_bit(method.as_str()) {
            Some(CONNECT) => self.standard & CONNECT != 0,
            _ if self.any => true,
            Some(HEAD) => self.standard & (HEAD | GET) != 0,
            Some(bit) => self.standard & bit != 0,
            None => self.extensions.iter().any(|m| m == method),
        }
    }

    /// Whether `method` is named in the set itself (not through `*`, nor HEAD through GET).
    pub fn lists(&self, method: &Method) -> bool {
        match standard_bit(method.as_str()) {
            Some(bit) => self.standard & bit != 0,
            None => self.extensions.contains(method),
        }
    }

    /// True when the set accepts every method, so callers can skip the check
    /// or print it as `*`.
    pub fn is_any(&self) -> bool {
        self.any
    }
}

impl Default for MethodSet {
    fn default() -> Self {
        Self::any()
    }
}

/// Shown as `GET|POST` (standard order, then extensions) or `*`.
impl fmt::Display for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any {
            return f.write_str("*");
        }
        let standard = STANDARD_METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.standard & (1 << i) != 0)
            .map(|(_, m)| *m);
        let extensions = self.extensions.iter().map(Method::as_str);
        for (i, name) in standard.chain(extensions).enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// One compiled segment of a pattern with parameters or a wildcard.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// Matches exactly this text (case-sensitive).
    Literal(Box<str>),
    /// `{name}`: exactly one non-empty segment.
    Param,
}

/// What a pattern allows after its fixed segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    /// Nothing: the path must end here.
    End,
    /// `*`: exactly one more non-empty segment.
    One,
    /// `**`: zero or more segments of any depth.
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PathKind {
    /// `*`: the asterisk-form target of `OPTIONS *`, and nothing else.
    Asterisk,
    /// No parameters or wildcards: a plain string compare against the source.
    Exact,
    /// Literal segments then `**`: `path == prefix` or `path` starts with
    /// `prefix` followed by `/`. `/**` has an empty prefix.
    Prefix(Box<str>),
    /// The general case, walked segment by segment.
    Segments {
        segments: Box<[Segment]>,
        tail: Tail,
    },
}

/// Compiled path pattern.
///
/// Syntax: starts with `/`; literal segments match exactly; `{name}` matches
/// one non-empty segment; a last segment of `*` matches one non-empty
/// segment and `**` matches zero or more segments (`/v1/**` matches `/v1`,
/// `/v1/` and `/v1/a/b`). A trailing `/` in the pattern is significant.
///
/// `*` alone matches the asterisk-form target of `OPTIONS *` and nothing else.
///
/// Paths are compared as they are, byte for byte: the request path is in canonical form
/// by then ([`crate::target`]), and that canonical path is the one forwarded, so what is
/// matched is what the upstream serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    source: Box<str>,
    kind: PathKind,
}

/// Is `name` an identifier (`[A-Za-z_][A-Za-z0-9_]*`)?
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why a character can never appear in a request path, if it can't.
fn impossible_path_char(c: char) -> Option<&'static str> {
    match c {
        '?' => Some("starts the query string, which is not part of the path"),
        '#' => Some("starts the fragment, which clients never send"),
        ' ' => Some("is not allowed in a request path (a space is sent as %20)"),
        '<' | '>' | '`' => Some("is not allowed unencoded in a request path"),
        c if c.is_ascii_control() => {
            Some("is a control character, which is not allowed in a request path")
        }
        _ => None,
    }
}

impl PathPattern {
    /// Compile a pattern; errors explain why a pattern is malformed or can
    /// never match, so config mistakes surface at load rather than as
    /// routes that silently never fire.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let err = |why: &str| format!("invalid path pattern {pattern:?}: {why}");
        if pattern.is_empty() {
            return Err(err("the pattern is empty; use \"/**\" to match every path"));
        }
        if pattern == "*" {
            return Ok(PathPattern {
                source: pattern.into(),
                kind: PathKind::Asterisk,
            });
        }
        if !pattern.starts_with('/') {
            return Err(err("it must start with '/'"));
        }
        if let Some(c) = pattern.chars().find(|&c| impossible_path_char(c).is_some()) {
            let why = impossible_path_char(c).unwrap_or_default();
            return Err(format!(
                "path pattern {pattern:?} can never match: {c:?} {why}"
            ));
        }

        let raw: Vec<&str> = pattern[1..].split('/').collect();
        let last = raw.len() - 1;
        let mut segments = Vec::with_capacity(raw.len());
        let mut params: Vec<&str> = Vec::new();
        let mut tail = Tail::End;
        for (i, seg) in raw.iter().copied().enumerate() {
            if seg == "*" || seg == "**" {
                if i != last {
                    return Err(err(&format!(
                        "a wildcard must be the last segment ('{seg}' is segment {})",
                        i + 1
                    )));
                }
                tail = if seg == "*" { Tail::One } else { Tail::Any };
            } else if seg.contains('*') {
                return Err(err(&format!(
                    "'*' must be a whole segment ('*' or '**', last), not part of '{seg}'"
                )));
            } else if seg.is_empty() {
                // Only a trailing slash (the last segment) may be empty; a
                // lone "/" is the single empty segment.
                if i != last {
                    return Err(err(
                        "empty segment ('//'); a request path with '//' is not normalized, \
                         so write the segments you mean",
                    ));
                }
                segments.push(Segment::Literal("".into()));
            } else if seg.contains('{') || seg.contains('}') {
                let Some(inner) = seg.strip_prefix('{') else {
                    return Err(if seg.contains('{') {
                        err(&format!(
                            "segment '{seg}' mixes literal text and a {{parameter}}; \
                             a parameter must be the whole segment"
                        ))
                    } else {
                        err(&format!("'}}' without a matching '{{' in segment '{seg}'"))
                    });
                };
                let Some(close) = inner.find('}') else {
                    return Err(err(&format!(
                        "'{{' without a matching '}}' in segment '{seg}'"
                    )));
                };
                let (name, rest) = (&inner[..close], &inner[close + 1..]);
                if !rest.is_empty() {
                    return Err(err(&format!(
                        "segment '{seg}' mixes literal text and a {{parameter}}; \
                         a parameter must be the whole segment"
                    )));
                }
                if !is_identifier(name) {
                    return Err(err(&format!(
                        "parameter name '{name}' must be an identifier \
                         (letters, digits, '_', not starting with a digit)"
                    )));
                }
                if params.contains(&name) {
                    return Err(err(&format!("duplicate parameter name '{name}'")));
                }
                params.push(name);
                segments.push(Segment::Param);
            } else {
                segments.push(Segment::Literal(seg.into()));
            }
        }

        let all_literal = segments.iter().all(|s| matches!(s, Segment::Literal(_)));
        let kind = match tail {
            Tail::End if all_literal => PathKind::Exact,
            // `/v1/**`: source minus the trailing "/**".
            Tail::Any if all_literal => PathKind::Prefix(pattern[..pattern.len() - 3].into()),
            _ => PathKind::Segments {
                segments: segments.into_boxed_slice(),
                tail,
            },
        };
        Ok(PathPattern {
            source: pattern.into(),
            kind,
        })
    }

    /// Whether `path` (the request URI path, without the query) matches.
    /// Never allocates.
    #[inline]
    pub fn matches(&self, path: &str) -> bool {
        match &self.kind {
            PathKind::Exact | PathKind::Asterisk => path == &*self.source,
            PathKind::Prefix(prefix) => match path.strip_prefix(&**prefix) {
                Some(rest) => rest.starts_with('/') || (rest.is_empty() && !prefix.is_empty()),
                None => false,
            },
            PathKind::Segments { segments, tail } => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                for segment in segments.iter() {
                    let Some(part) = parts.next() else {
                        return false;
                    };
                    let ok = match segment {
                        Segment::Literal(lit) => part == &**lit,
                        Segment::Param => !part.is_empty(),
                    };
                    if !ok {
                        return false;
                    }
                }
                match tail {
                    Tail::End => parts.next().is_none(),
                    Tail::One => {
                        matches!(parts.next(), Some(p) if !p.is_empty()) && parts.next().is_none()
                    }
                    Tail::Any => true,
                }
            }
        }
    }

    /// The source pattern, for display and logs.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether this is `*`, the pattern of `OPTIONS *`.
    pub fn is_asterisk(&self) -> bool {
        self.kind == PathKind::Asterisk
    }

    /// The literal segments, as written: a request path is normalised before it is
    /// matched, so a literal that is not in canonical form never matches.
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        let literal = |s: &&str| !(s.starts_with('{') || *s == "*" || *s == "**");
        let segments = match self.kind {
            PathKind::Asterisk => None,
            _ => Some(self.source[1..].split('/').filter(literal)),
        };
        segments.into_iter().flatten()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostKind {
    /// The lower-cased name.
    Exact(Box<str>),
    /// `*.example.com` stored as `.example.com` (lower-cased).
    Suffix(Box<str>),
}

/// Optional host match: exact name (`api.example.com`) or a leading wildcard
/// (`*.example.com` = one or more labels before `example.com`, but not
/// `example.com` itself), case-insensitive, with the port in the Host header
/// ignored. Lets one proxy front several virtual hosts with different limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    source: Box<str>,
    kind: HostKind,
}

/// Strip the port (and one trailing FQDN dot) from a Host header value,
/// keeping IPv6 literals like `[::1]` whole.
fn host_without_port(host: &str) -> &str {
    let name = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.find(':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// Check a dot-separated host name (no wildcard) for config errors.
fn check_host_name(name: &str) -> Result<(), String> {
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label ('..' or a leading '.')".to_owned());
        }
        if let Some(c) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(format!(
                "{c:?} is not allowed in a host name (letters, digits, '-', '_' and '.')"
            ));
        }
    }
    Ok(())
}

impl HostPattern {
    /// Compile a host pattern; rejects ports, misplaced wildcards and
    /// characters that can't appear in a host name.
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = |why: &str| format!("invalid host pattern {s:?}: {why}");
        let trimmed = s.trim();
        let name = trimmed.strip_suffix('.').unwrap_or(trimmed);
        if name.is_empty() {
            return Err(err(
                "the pattern is empty; leave the host out to match any host",
            ));
        }
        if name == "*" {
            return Err(err(
                "'*' alone is not a pattern; leave the host out to match any host",
            ));
        }
        let lower = name.to_ascii_lowercase();
        // IPv6 literal, e.g. "[::1]".
        if let Some(inner) = lower.strip_prefix('[') {
            let ok = inner.strip_suffix(']').is_some_and(|addr| {
                !addr.is_empty()
                    && addr
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
            });
            if !ok {
                return Err(err(
                    "an IPv6 address must look like \"[::1]\", without a port",
                ));
            }
            return Ok(HostPattern {
                source: s.into(),
                kind: HostKind::Exact(lower.into()),
            });
        }
        if let Some((_, port)) = lower.rsplit_once(':') {
            return Err(format!(
                "host pattern {s:?} can never match: the port in the Host header is \
                 ignored when matching, so remove ':{port}'"
            ));
        }
        let kind = if let Some(suffix) = lower.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(err(
                    "a wildcard may only be the whole first label, as in \"*.example.com\"",
                ));
            }
            check_host_name(suffix).map_err(|why| err(&why))?;
            HostKind::Suffix(format!(".{suffix}").into())
        } else {
            if lower.contains('*') {
                return Err(err(
                    "a wildcard may only be the whole first label, as in \"*.example.com\"",
                ));
            }
            check_host_name(&lower).map_err(|why| err(&why))?;
            HostKind::Exact(lower.into())
        };
        Ok(HostPattern {
            source: s.into(),
            kind,
        })
    }

    /// Whether a Host header value (port allowed) matches. Never allocates.
    #[inline]
    pub fn matches(&self, host: &str) -> bool {
        let host = host_without_port(host);
        match &self.kind {
            HostKind::Exact(name) => host.eq_ignore_ascii_case(name),
            HostKind::Suffix(suffix) => {
                let (h, s) = (host.as_bytes(), suffix.as_bytes());
                if h.len() <= s.len() || !h[h.len() - s.len()..].eq_ignore_ascii_case(s) {
                    return false;
                }
                // The labels before the suffix: non-empty, no empty label.
                let labels = &h[..h.len() - s.len()];
                labels[0] != b'.'
                    && labels[labels.len() - 1] != b'.'
                    && !labels.windows(2).any(|w| w == b"..")
            }
        }
    }

    /// The source pattern, for display and logs.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn perr(s: &str) -> String {
        PathPattern::parse(s).expect_err(s)
    }

    fn h(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ms(names: &[&str]) -> MethodSet {
        MethodSet::parse(names.iter().copied()).unwrap_or_else(|e| panic!("{e}"))
    }

    // ---- methods ----

    #[test]
    fn method_get() {
        let m = ms(&["GET"]);
        assert!(m.matches(&Method::GET));
        assert!(!m.matches(&Method::POST));
        assert!(!m.is_any());
        assert_eq!(m.to_string(), "GET");
    }

    #[test]
    fn head_is_taken_wherever_get_is() {
        assert!(ms(&["GET"]).matches(&Method::HEAD));
        assert!(!ms(&["GET"]).lists(&Method::HEAD));
        assert!(ms(&["HEAD"]).matches(&Method::HEAD));
        assert!(!ms(&["HEAD"]).matches(&Method::GET));
        assert!(!ms(&["POST"]).matches(&Method::HEAD));
        assert!(MethodSet::any().matches(&Method::HEAD));
    }

    #[test]
    fn connect_only_where_listed() {
        assert!(!MethodSet::any().matches(&Method::CONNECT));
        assert!(!ms(&["*"]).lists(&Method::CONNECT));
        assert!(!ms(&["GET", "POST"]).matches(&Method::CONNECT));
        assert!(ms(&["CONNECT"]).matches(&Method::CONNECT));
        assert!(ms(&["connect"]).lists(&Method::CONNECT));
    }

    #[test]
    fn asterisk_pattern_matches_only_asterisk() {
        let pat = p("*");
        assert!(pat.is_asterisk());
        assert!(pat.matches("*"));
        assert!(!pat.matches("/"));
        assert!(!p("/**").matches("*"));
        assert_eq!(pat.literals().count(), 0);
        assert_eq!(
            p("/v1/{id}/a%7e/*").literals().collect::<Vec<_>>(),
            ["v1", "a%7e"]
        );
    }

    #[test]
    fn method_lowercase_standard() {
        let m = ms(&["post", "Get"]);
        assert!(m.matches(&Method::POST));
        assert!(m.matches(&Method::GET));
        assert!(!m.matches(&Method::PUT));
        assert_eq!(m.to_string(), "GET|POST");
        assert_eq!(m, ms(&["GET", "POST", "get"]));
    }

    #[test]
    fn method_star_and_any() {
        for names in [&["*"][..], &["ANY"], &["any"], &["GET", "*"], &[]] {
            let m = ms(names);
            assert!(m.is_any(), "{names:?}");
            assert_eq!(m, MethodSet::any());
            assert_eq!(m.to_string(), "*");
            assert!(m.matches(&Method::DELETE));
            assert!(m.matches(&Method::from_bytes(b"PURGE").unwrap()));
        }
        assert_eq!(MethodSet::default(), MethodSet::any());
    }

    #[test]
    fn method_all_standard() {
        let m = ms(&STANDARD_METHODS);
        for name in STANDARD_METHODS {
            assert!(m.matches(&Method::from_bytes(name.as_bytes()).unwrap()));
        }
        assert!(!m.is_any());
        assert!(!m.matches(&Method::from_bytes(b"PURGE").unwrap()));
        for (i, name) in STANDARD_METHODS.iter().enumerate() {
            assert_eq!(standard_bit(name), Some(1 << i), "{name}");
        }
    }

    #[test]
    fn method_extension() {
        let m = ms(&["PURGE", "GET", "LINK", "PURGE"]);
        let purge = Method::from_bytes(b"PURGE").unwrap();
        assert!(m.matches(&purge));
        assert!(m.matches(&Method::GET));
        assert!(!m.matches(&Method::from_bytes(b"purge").unwrap()));
        assert!(!m.matches(&Method::POST));
        assert_eq!(m.to_string(), "GET|LINK|PURGE");
        assert_eq!(m, ms(&["LINK", "PURGE", "GET"]));
    }

    #[test]
    fn method_errors() {
        let e = MethodSet::parse(["GET", "G T"]).unwrap_err();
        assert!(e.contains("invalid HTTP method \"G T\""), "{e}");
        let e = MethodSet::parse(["GET", ""]).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = MethodSet::parse(["GET/POST"]).unwrap_err();
        assert!(e.contains("may only contain"), "{e}");
    }

    // ---- paths ----

    #[test]
    fn exact_paths() {
        let pat = p("/v1/messages");
        assert_eq!(pat.kind, PathKind::Exact);
        assert!(pat.matches("/v1/messages"));
        assert!(!pat.matches("/v1/messages/"));
        assert!(!pat.matches("/v1/Messages"));
        assert!(!pat.matches("/v1/messages/x"));
        assert!(!pat.matches("/v1"));
        assert_eq!(pat.as_str(), "/v1/messages");
        assert_eq!(pat.to_string(), "/v1/messages");

        let pat = p("/v1/campaigns/batch");
        assert!(pat.matches("/v1/campaigns/batch"));
        assert!(!pat.matches("/v1/campaigns"));
        assert!(!pat.matches("/v1/campaigns/batch2"));

        let root = p("/");
        assert!(root.matches("/"));
        assert!(!root.matches("/a"));
        assert!(!root.matches(""));
    }

    #[test]
    fn trailing_slash_is_exact() {
        let pat = p("/users/");
        assert!(pat.matches("/users/"));
        assert!(!pat.matches("/users"));
        assert!(!pat.matches("/users/42"));

        let pat = p("/users/{id}/");
        assert!(pat.matches("/users/42/"));
        assert!(!pat.matches("/users/42"));
        assert!(!pat.matches("/users/42/x"));
    }

    /// Matching compares bytes: the request path was made canonical before.
    #[test]
    fn no_decoding_or_normalization() {
        assert!(p("/a%20b").matches("/a%20b"));
        assert!(!p("/a%20b").matches("/a%20B"));
        assert!(!p("/a/b").matches("/a//b"));
        assert!(!p("/a/b").matches("/a/./b"));
        assert!(!p("/users/{id}").matches("/users/%2e%2e/x"));
    }

    #[test]
    fn params() {
        let pat = p("/users/{id}/posts");
        assert!(pat.matches("/users/42/posts"));
        assert!(pat.matches("/users/abc/posts"));
        assert!(!pat.matches("/users//posts"));
        assert!(!pat.matches("/users/42/posts/"));
        assert!(!pat.matches("/users/42/posts/1"));
        assert!(!pat.matches("/users/42"));
        assert!(!pat.matches("/users/4/2/posts"));
        assert!(!pat.matches("users/42/posts"));

        let two = p("/orgs/{org}/users/{user_id}");
        assert!(two.matches("/orgs/a/users/b"));
        assert!(!two.matches("/orgs/a/users/"));
    }

    #[test]
    fn single_wildcard() {
        let pat = p("/files/*");
        assert!(pat.matches("/files/a.txt"));
        assert!(pat.matches("/files/42"));
        assert!(!pat.matches("/files"));
        assert!(!pat.matches("/files/"));
        assert!(!pat.matches("/files/a/b"));
        assert!(!pat.matches("/filesx/a"));

        let root = p("/*");
        assert!(root.matches("/a"));
        assert!(!root.matches("/"));
        assert!(!root.matches("/a/b"));

        let with_param = p("/users/{id}/*");
        assert!(with_param.matches("/users/1/x"));
        assert!(!with_param.matches("/users/1"));
        assert!(!with_param.matches("/users/1/x/y"));
    }

    #[test]
    fn double_wildcard() {
        let pat = p("/v1/**");
        assert!(matches!(pat.kind, PathKind::Prefix(_)));
        for ok in ["/v1", "/v1/", "/v1/a", "/v1/a/b/c", "/v1//x"] {
            assert!(pat.matches(ok), "{ok}");
        }
        for bad in ["/v1x", "/v2/a", "/", "", "v1/a", "/V1/a"] {
            assert!(!pat.matches(bad), "{bad}");
        }

        let all = p("/**");
        for ok in ["/", "/a", "/a/b/c", "//", "/v1/messages?"] {
            assert!(all.matches(ok), "{ok}");
        }
        assert!(!all.matches(""));
        assert!(!all.matches("*"));

        let with_param = p("/users/{id}/**");
        assert!(with_param.matches("/users/1"));
        assert!(with_param.matches("/users/1/"));
        assert!(with_param.matches("/users/1/a/b"));
        assert!(!with_param.matches("/users"));
        assert!(!with_param.matches("/users/"));
    }

    #[test]
    fn wildcard_not_last_is_error() {
        for pat in ["/*/users", "/**/x", "/a/**/b", "/a/*/"] {
            let e = perr(pat);
            assert!(e.contains("a wildcard must be the last segment"), "{e}");
        }
        let e = perr("/files/*.png");
        assert!(e.contains("'*' must be a whole segment"), "{e}");
        assert!(perr("/a/***").contains("'*' must be a whole segment"));
    }

    #[test]
    fn structural_errors() {
        let e = perr("");
        assert!(e.contains("the pattern is empty"), "{e}");
        let e = perr("v1/messages");
        assert!(e.contains("must start with '/'"), "{e}");
        let e = perr("/a//b");
        assert!(e.contains("empty segment ('//')"), "{e}");
        assert!(perr("//").contains("empty segment"));
    }

    #[test]
    fn param_errors() {
        let e = perr("/users/{id");
        assert!(e.contains("'{' without a matching '}'"), "{e}");
        let e = perr("/users/id}");
        assert!(e.contains("'}' without a matching '{'"), "{e}");
        let e = perr("/v{n}");
        assert!(e.contains("mixes literal text and a {parameter}"), "{e}");
        let e = perr("/{n}v");
        assert!(e.contains("mixes literal text and a {parameter}"), "{e}");
        let e = perr("/{}");
        assert!(e.contains("must be an identifier"), "{e}");
        let e = perr("/{1id}");
        assert!(
            e.contains("parameter name '1id' must be an identifier"),
            "{e}"
        );
        let e = perr("/{a-b}");
        assert!(e.contains("must be an identifier"), "{e}");
        let e = perr("/a/{id}/b/{id}");
        assert!(e.contains("duplicate parameter name 'id'"), "{e}");
    }

    #[test]
    fn never_match_errors() {
        assert_eq!(
            perr("/a?b"),
            "path pattern \"/a?b\" can never match: '?' starts the query string, \
             which is not part of the path"
        );
        let e = perr("/a#frag");
        assert!(
            e.contains("can never match: '#' starts the fragment"),
            "{e}"
        );
        let e = perr("/a b");
        assert!(e.contains("can never match: ' ' is not allowed"), "{e}");
        let e = perr("/a\tb");
        assert!(e.contains("is a control character"), "{e}");
        let e = perr("/<x>");
        assert!(e.contains("can never match"), "{e}");
    }

    #[test]
    fn pattern_equality_and_clone() {
        assert_eq!(p("/users/{id}"), p("/users/{id}").clone());
        assert_ne!(p("/users/{id}"), p("/users/{uid}"));
    }

    #[test]
    fn first_match_wins_table() {
        let table = [
            p("/v1/messages"),
            p("/v1/campaigns/batch"),
            p("/users/{id}/posts"),
            p("/files/*"),
            p("/v1/**"),
            p("/**"),
        ];
        let first = |path: &str| table.iter().position(|pat| pat.matches(path));
        assert_eq!(first("/v1/messages"), Some(0));
        assert_eq!(first("/v1/campaigns/batch"), Some(1));
        assert_eq!(first("/users/7/posts"), Some(2));
        assert_eq!(first("/files/x"), Some(3));
        assert_eq!(first("/v1/campaigns"), Some(4));
        assert_eq!(first("/other"), Some(5));
        assert_eq!(first("*"), None);
    }

    // ---- hosts ----

    #[test]
    fn host_exact() {
        let pat = h("api.example.com");
        assert!(pat.matches("api.example.com"));
        assert!(pat.matches("API.Example.COM"));
        assert!(pat.matches("api.example.com:8443"));
        assert!(pat.matches("api.example.com."));
        assert!(!pat.matches("example.com"));
        assert!(!pat.matches("x.api.example.com"));
        assert!(!pat.matches("api.example.com.evil"));
        assert_eq!(pat.as_str(), "api.example.com");
        assert_eq!(
            h("API.Example.com"),
            HostPattern::parse("API.Example.com").unwrap()
        );
        assert!(h("API.Example.com").matches("api.example.com"));
    }

    #[test]
    fn host_wildcard() {
        let pat = h("*.example.com");
        assert!(pat.matches("api.example.com"));
        assert!(pat.matches("a.b.example.com"));
        assert!(pat.matches("Api.EXAMPLE.com:80"));
        assert!(!pat.matches("example.com"));
        assert!(!pat.matches(".example.com"));
        assert!(!pat.matches("a..example.com"));
        assert!(!pat.matches("badexample.com"));
        assert!(!pat.matches("api.example.org"));
        assert!(!pat.matches(""));
        assert!(!pat.matches("ü.example.co"));
        assert_eq!(pat.to_string(), "*.example.com");
    }

    #[test]
    fn host_ip_literals() {
        let v4 = h("127.0.0.1");
        assert!(v4.matches("127.0.0.1:8080"));
        assert!(!v4.matches("127.0.0.2"));
        let v6 = h("[::1]");
        assert!(v6.matches("[::1]"));
        assert!(v6.matches("[::1]:8080"));
        assert!(!v6.matches("[::2]:8080"));
    }

    #[test]
    fn host_errors() {
        let e = HostPattern::parse("").unwrap_err();
        assert!(e.contains("the pattern is empty"), "{e}");
        let e = HostPattern::parse("*").unwrap_err();
        assert!(e.contains("'*' alone"), "{e}");
        let e = HostPattern::parse("api.example.com:8080").unwrap_err();
        assert_eq!(
            e,
            "host pattern \"api.example.com:8080\" can never match: the port in the Host \
             header is ignored when matching, so remove ':8080'"
        );
        for bad in ["api.*.com", "*example.com", "**.example.com", "*.*.com"] {
            let e = HostPattern::parse(bad).unwrap_err();
            assert!(
                e.contains("a wildcard may only be the whole first label"),
                "{bad}: {e}"
            );
        }
        let e = HostPattern::parse("a..com").unwrap_err();
        assert!(e.contains("empty label"), "{e}");
        let e = HostPattern::parse("a b.com").unwrap_err();
        assert!(e.contains("' ' is not allowed in a host name"), "{e}");
        let e = HostPattern::parse("[::1").unwrap_err();
        assert!(e.contains("IPv6"), "{e}");
    }

    // ---- properties ----

    proptest! {
        #[test]
        fn literal_pattern_matches_only_itself(
            segs in prop::collection::vec("[A-Za-z0-9._~%-]{1,8}", 0..6),
            trailing in any::<bool>(),
            other in "/[A-Za-z0-9._~%/-]{0,40}",
        ) {
            let mut pattern = format!("/{}", segs.join("/"));
            if trailing && !segs.is_empty() {
                pattern.push('/');
            }
            let pat = PathPattern::parse(&pattern).unwrap();
            prop_assert_eq!(&pat.kind, &PathKind::Exact);
            prop_assert!(pat.matches(&pattern));
            prop_assert_eq!(pat.matches(&other), other == pattern);
        }

        #[test]
        fn double_star_root_matches_any_slash_path(path in "/\\PC{0,60}") {
            prop_assert!(p("/**").matches(&path));
        }

        #[test]
        fn prefix_fast_path_agrees_with_segment_walk(
            prefix in prop::collection::vec("[ab]{1,2}", 0..3),
            path in "/[ab/]{0,10}",
        ) {
            let fast = p(&format!("/{}**", prefix.iter().map(|s| format!("{s}/")).collect::<String>()));
            // Same pattern forced through the general walker.
            let slow = PathPattern {
                source: fast.source.clone(),
                kind: PathKind::Segments {
                    segments: prefix.iter().map(|s| Segment::Literal(s.as_str().into())).collect(),
                    tail: Tail::Any,
                },
            };
            prop_assert_eq!(fast.matches(&path), slow.matches(&path));
        }
    }
}
