use std::borrow::Cow;

use proptest::prelude::*;

use super::*;

fn normaliser() -> Normaliser {
    Normaliser::default()
}

/// `path` under `n`: the canonical text, or why it is refused.
fn canonical(n: &Normaliser, path: &str) -> Result<String, Invalid> {
    n.path(path).map(Cow::into_owned)
}

fn check(n: &Normaliser, table: &[(&str, Result<&str, Invalid>)]) {
    for (path, expected) in table {
        let got = canonical(n, path);
        assert_eq!(got.as_deref(), expected.as_deref(), "{path}");
        if let Ok(canonical) = &got {
            // Canonical means a second pass changes nothing and does not allocate.
            assert!(
                matches!(n.path(canonical), Ok(Cow::Borrowed(_))),
                "{path} -> {canonical} is not a fixed point"
            );
        }
    }
}

#[test]
fn every_alias_of_the_issue_is_the_canonical_path_or_refused() {
    use Invalid::*;
    check(
        &normaliser(),
        &[
            ("/v1/limited", Ok("/v1/limited")),
            ("/v1/%6cimited", Ok("/v1/limited")),
            ("/v1/%6Cimited", Ok("/v1/limited")),
            ("/%76%31/%6c%69%6d%69%74%65%64", Ok("/v1/limited")),
            ("/v1%2flimited", Err(EncodedSlash)),
            ("/v1%2Flimited", Err(EncodedSlash)),
            ("/v1%5climited", Err(EncodedSlash)),
            ("/v1\\limited", Err(EncodedSlash)),
            ("//v1/limited", Ok("/v1/limited")),
            ("/v1//limited", Ok("/v1/limited")),
            ("/v1/./limited", Ok("/v1/limited")),
            ("/./v1/limited", Ok("/v1/limited")),
            ("/v1/x/../limited", Ok("/v1/limited")),
            ("/v1/%2e/limited", Ok("/v1/limited")),
            ("/v1/%2E/limited", Ok("/v1/limited")),
            ("/v1/items//1", Ok("/v1/items/1")),
            ("/v1/items/./1", Ok("/v1/items/1")),
            ("/", Ok("/")),
            ("//", Ok("/")),
            ("/.", Ok("/")),
            ("/%2e", Ok("/")),
        ],
    );
}

#[test]
fn rfc_3986_examples() {
    use Invalid::*;
    // §6.2.2: `eXAMPLE://a/./b/../b/%63/%7bfoo%7d` is `example://a/b/c/%7Bfoo%7D`.
    // §5.2.4: remove_dot_segments.
    // §5.4: the reference resolution examples against the base `http://a/b/c/d;p?q`,
    // written as the merged path (`/b/c/` + reference) a client would send.
    check(
        &normaliser(),
        &[
            ("/./b/../b/%63/%7bfoo%7d", Ok("/b/c/%7Bfoo%7D")),
            ("/a/b/c/./../../g", Ok("/a/g")),
            ("/mid/content=5/../6", Ok("/mid/6")),
            ("/b/c/g", Ok("/b/c/g")),
            ("/b/c/./g", Ok("/b/c/g")),
            ("/b/c/g/", Ok("/b/c/g/")),
            ("/b/c/.", Ok("/b/c/")),
            ("/b/c/./", Ok("/b/c/")),
            ("/b/c/..", Ok("/b/")),
            ("/b/c/../", Ok("/b/")),
            ("/b/c/../g", Ok("/b/g")),
            ("/b/c/../..", Ok("/")),
            ("/b/c/../../", Ok("/")),
            ("/b/c/../../g", Ok("/g")),
            ("/b/c/g;x", Ok("/b/c/g;x")),
            ("/b/c/g;x=1/./y", Ok("/b/c/g;x=1/y")),
            ("/b/c/g;x=1/../y", Ok("/b/c/y")),
            ("/b/c/g.", Ok("/b/c/g.")),
            ("/b/c/.g", Ok("/b/c/.g")),
            ("/b/c/g..", Ok("/b/c/g..")),
            ("/b/c/..g", Ok("/b/c/..g")),
            ("/b/c/./../g", Ok("/b/g")),
            ("/b/c/./g/.", Ok("/b/c/g/")),
            ("/b/c/g/./h", Ok("/b/c/g/h")),
            ("/b/c/g/../h", Ok("/b/c/h")),
            // §5.4.2's abnormal `../../../g` resolves to `/g` by clamping at the root; a
            // request that climbs above it is refused instead, as nginx does.
            ("/b/c/../../../g", Err(AboveRoot)),
            ("/b/c/../../../../g", Err(AboveRoot)),
            ("/..", Err(AboveRoot)),
            ("/%2e%2e/", Err(AboveRoot)),
            ("/v1/../../x", Err(AboveRoot)),
        ],
    );
}

#[test]
fn escapes_are_decoded_upper_cased_or_added() {
    use Invalid::*;
    check(
        &normaliser(),
        &[
            ("/a%20b", Ok("/a%20b")),
            ("/a%3ab", Ok("/a%3Ab")),
            ("/a%7euser", Ok("/a~user")),
            ("/%41%5a%61%7a%30%39%2d%2e%5f%7e", Ok("/AZaz09-._~")),
            // Reserved characters keep their escapes: decoded they could mean something else.
            ("/a%3F%23%5B%40", Ok("/a%3F%23%5B%40")),
            ("/a%25b", Ok("/a%25b")),
            ("/a%2541", Ok("/a%2541")),
            // Bytes a path may not hold are escaped, as a browser would send them.
            ("/caf\u{e9}", Ok("/caf%C3%A9")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/a\"b{c}|^", Ok("/a%22b%7Bc%7D%7C%5E")),
            ("/a[b]", Ok("/a%5Bb%5D")),
            ("/sub-delims!$&'()*+,;=:@", Ok("/sub-delims!$&'()*+,;=:@")),
            ("/a%00b", Err(Nul)),
            ("/a\0b", Err(Nul)),
            ("/a%zz", Err(BadEscape)),
            ("/a%4", Err(BadEscape)),
            ("/a%", Err(BadEscape)),
            ("/%2e%2E", Err(AboveRoot)),
            ("/a/.%2e/b", Ok("/b")),
            ("/a/%2e./b", Ok("/b")),
            ("/a/...", Ok("/a/...")),
            ("/a/%2e%2e%2e", Ok("/a/...")),
        ],
    );
}

#[test]
fn encoded_slashes_decoded_or_kept() {
    use Invalid::*;
    let decode = Normaliser {
        encoded_slashes: EncodedSlashes::Decode,
        ..normaliser()
    };
    check(
        &decode,
        &[
            ("/v1%2flimited", Ok("/v1/limited")),
            ("/v1%5Climited", Ok("/v1/limited")),
            ("/v1\\limited", Ok("/v1/limited")),
            ("/v1%2F%2Flimited", Ok("/v1/limited")),
            ("/v1/x%2f..%2flimited", Ok("/v1/limited")),
            ("/%2F..", Err(AboveRoot)),
        ],
    );
    let keep = Normaliser {
        encoded_slashes: EncodedSlashes::Keep,
        ..normaliser()
    };
    check(
        &keep,
        &[
            ("/v1%2flimited", Ok("/v1%2Flimited")),
            ("/v1%5climited", Ok("/v1%5Climited")),
            ("/v1\\limited", Ok("/v1%5Climited")),
            ("/v1%2F..%2Flimited", Ok("/v1%2F..%2Flimited")),
            ("/a/%2F/..", Ok("/a/")),
        ],
    );
}

#[test]
fn each_step_switches_off() {
    use Invalid::*;
    let raw_escapes = Normaliser {
        percent_encoding: false,
        ..normaliser()
    };
    check(
        &raw_escapes,
        &[
            ("/v1/%6cimited", Ok("/v1/%6cimited")),
            ("/caf\u{e9}", Ok("/caf\u{e9}")),
            ("/a%3ab", Ok("/a%3ab")),
            // Still a dot-segment, however it is spelled; still no invalid escapes.
            ("/v1/%2e/limited", Ok("/v1/limited")),
            ("/a%zz", Err(BadEscape)),
            ("/a%2fb", Err(EncodedSlash)),
        ],
    );
    let dots = Normaliser {
        dot_segments: false,
        ..normaliser()
    };
    check(
        &dots,
        &[
            ("/v1/./limited", Ok("/v1/./limited")),
            ("/v1/x/../limited", Ok("/v1/x/../limited")),
            ("/..", Ok("/..")),
            ("/v1/%2e/limited", Ok("/v1/./limited")),
        ],
    );
    let slashes = Normaliser {
        merge_slashes: false,
        ..normaliser()
    };
    check(
        &slashes,
        &[
            ("//v1/limited", Ok("//v1/limited")),
            ("/v1//limited", Ok("/v1//limited")),
            ("//", Ok("//")),
            ("/a//..", Ok("/a/")),
        ],
    );
}

#[test]
fn canonical_paths_are_borrowed() {
    let n = normaliser();
    for path in [
        "/",
        "/v1/messages/42",
        "/v1/limited/",
        "/a%20b/%3F",
        "/a;b=c/d:e@f",
        "/a/.b/..c/...",
    ] {
        assert!(
            matches!(n.path(path), Ok(Cow::Borrowed(p)) if p == path),
            "{path}"
        );
    }
}

fn parts(request: http::request::Builder) -> Parts {
    request.body(()).unwrap().into_parts().0
}

fn get(target: &str) -> http::request::Builder {
    http::Request::get(target)
}

#[test]
fn absolute_form_becomes_origin_form_with_its_host() {
    let n = normaliser();
    let mut p =
        parts(get("http://API.example:8080//v1/./limited?a=1").header("host", "api.example:8080"));
    n.apply(&mut p).unwrap();
    assert_eq!(p.uri, "/v1/limited?a=1");
    assert_eq!(p.uri.authority(), None);
    assert_eq!(p.headers["host"], "api.example:8080");

    // The authority wins over a Host that disagrees, or the request is refused.
    let mut p = parts(get("https://other.example/v1/limited").header("host", "api.example"));
    n.apply(&mut p).unwrap();
    assert_eq!(p.uri, "/v1/limited");
    assert_eq!(p.headers["host"], "other.example");
    assert_eq!(p.headers.get_all("host").iter().count(), 1);
    let strict = Normaliser {
        conflicting_host: ConflictingHost::Reject,
        ..normaliser()
    };
    let mut p = parts(get("https://other.example/v1/limited").header("host", "api.example"));
    assert_eq!(strict.apply(&mut p), Err(Invalid::ConflictingHost.into()));

    // HTTP/2's :authority with no Host header.
    let mut p = parts(get("https://api.example/v1/%6cimited").version(http::Version::HTTP_2));
    n.apply(&mut p).unwrap();
    assert_eq!(p.uri, "/v1/limited");
    assert_eq!(p.headers["host"], "api.example");
}

#[test]
fn targets_refused() {
    let n = normaliser();
    let refused = |builder: http::request::Builder| n.apply(&mut parts(builder)).unwrap_err();
    assert_eq!(
        refused(http::Request::connect("api.example:443")),
        Refused::Connect
    );
    assert_eq!(
        refused(http::Request::options("*")),
        Invalid::Asterisk.into()
    );
    assert_eq!(refused(get("*")), Invalid::Asterisk.into());
    assert_eq!(
        refused(get("api.example:443")),
        Invalid::AuthorityForm.into()
    );
    assert_eq!(refused(get("ftp://api.example/")), Invalid::Scheme.into());
    assert_eq!(
        refused(get("http://u@api.example/")),
        Invalid::UserInfo.into()
    );
    assert_eq!(
        refused(get("/").header("host", "a").header("host", "b")),
        Invalid::DuplicateHost.into()
    );
    // HTTP/1.1 needs a Host (RFC 9112 §3.2); HTTP/1.0 and HTTP/2 (:authority) do not.
    assert_eq!(refused(get("/")), Invalid::MissingHost.into());
    let mut p = parts(get("/").version(http::Version::HTTP_10));
    n.apply(&mut p).unwrap();
    assert_eq!(
        refused(get("/").header("host", "a/b")),
        Invalid::Host.into()
    );
    assert_eq!(
        refused(get("/").header("host", "u@a")),
        Invalid::Host.into()
    );
    assert_eq!(
        refused(get("/v1%2flimited").header("host", "a")),
        Invalid::EncodedSlash.into()
    );

    // A route that lists them lets them through, untouched.
    let open = Normaliser {
        allow_connect: true,
        allow_asterisk: true,
        ..normaliser()
    };
    let mut p = parts(http::Request::connect("api.example:443"));
    open.apply(&mut p).unwrap();
    assert_eq!(p.uri, "api.example:443");
    let mut p = parts(http::Request::options("*").header("host", "a"));
    open.apply(&mut p).unwrap();
    assert_eq!(p.uri, "*");
    assert_eq!(
        open.apply(&mut parts(http::Request::options("*"))),
        Err(Invalid::MissingHost.into())
    );
    assert_eq!(
        open.apply(&mut parts(get("*"))),
        Err(Invalid::Asterisk.into())
    );
}

#[test]
fn a_canonical_request_is_left_as_it_came() {
    let n = normaliser();
    let mut p = parts(get("/v1/messages/42?x=%6c").header("host", "api.example"));
    let before = p.uri.clone();
    n.apply(&mut p).unwrap();
    assert_eq!(p.uri, before);
    assert_eq!(
        p.uri.query(),
        Some("x=%6c"),
        "the query is the upstream's to decode"
    );
}

/// Paths from the grammar the aliases are made of.
fn alias() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just("/.".to_string()),
        Just("/..".to_string()),
        Just("/%2e".to_string()),
        Just("/%2E%2e".to_string()),
        Just("%2f".to_string()),
        Just("%5C".to_string()),
        Just("\\".to_string()),
        Just("%6c".to_string()),
        Just("%7E".to_string()),
        Just("%20".to_string()),
        Just("%3a".to_string()),
        Just("%zz".to_string()),
        Just("%00".to_string()),
        Just("\0".to_string()),
        Just("\u{e9}".to_string()),
        Just("{".to_string()),
        "[a-z0-9.;=~-]{1,4}",
    ];
    prop::collection::vec(piece, 0..10).prop_map(|pieces| format!("/{}", pieces.concat()))
}

fn settings() -> impl Strategy<Value = Normaliser> {
    (
        any::<[bool; 3]>(),
        prop_oneof![
            Just(EncodedSlashes::Reject),
            Just(EncodedSlashes::Decode),
            Just(EncodedSlashes::Keep)
        ],
    )
        .prop_map(
            |([percent_encoding, dot_segments, merge_slashes], encoded_slashes)| Normaliser {
                percent_encoding,
                dot_segments,
                merge_slashes,
                encoded_slashes,
                ..Normaliser::default()
            },
        )
}

proptest! {
    /// Canonical is a fixed point, the fast check never disagrees with the rewrite, and
    /// what comes out is a valid request path.
    #[test]
    fn canonical_is_a_fixed_point(n in settings(), path in alias()) {
        let fast = n.is_canonical(&path);
        match n.path(&path) {
            Ok(canonical) => {
                prop_assert!(!fast || canonical == path);
                let again = n.path(&canonical).unwrap();
                prop_assert!(matches!(again, Cow::Borrowed(_)), "{} -> {}", path, canonical);
                prop_assert_eq!(&again, &canonical);
                prop_assert!(canonical.starts_with('/'));
                prop_assert!(PathAndQuery::try_from(&*canonical).is_ok());
                if n.merge_slashes {
                    prop_assert!(!canonical.contains("//"));
                }
                if n.dot_segments {
                    prop_assert!(canonical.split('/').all(|s| dots(s) == 0));
                }
                if n.percent_encoding {
                    let b = canonical.as_bytes();
                    for (i, _) in canonical.match_indices('%') {
                        let byte = escaped(b, i).unwrap();
                        prop_assert!(!is_unreserved(byte), "{}", canonical);
                        prop_assert!(!b[i + 1..i + 3].iter().any(u8::is_ascii_lowercase));
                    }
                    prop_assert!(b.iter().all(|&b| b == b'%' || b == b'/' || is_pchar(b)));
                }
            }
            Err(_) => prop_assert!(!fast),
        }
    }
}

/// Routes over the alias grammar's words, first match wins.
const ROUTES: &str = r#"
upstream: { url: "demo:" }
routes:
  - { name: limited, match: { method: GET, path: /v1/limited }, limit: 2/min }
  - { name: item, match: { path: "/v1/items/{id}" }, limit: 2/min }
  - { name: tilde, match: { path: "/a~/*" }, limit: 2/min }
  - { name: space, match: { path: "/a%20b/**" }, limit: 2/min }
  - { name: root, match: { path: / }, limit: 2/min }
  - { name: v1, match: { path: /v1/** }, limit: 2/min }
"#;

/// Paths built from the words routes use, each spelled two ways: with escapes, and
/// plainly (the spelling a route is written in).
fn routed_alias() -> impl Strategy<Value = (String, String)> {
    let piece = prop_oneof![
        Just(("/", "/")),
        Just(("/v1", "/v1")),
        Just(("/%76%31", "/v1")),
        Just(("/limited", "/limited")),
        Just(("/%6cimited", "/limited")),
        Just(("/items", "/items")),
        Just(("/1", "/1")),
        Just(("/%31", "/1")),
        Just(("/a~", "/a~")),
        Just(("/a%7e", "/a~")),
        Just(("/a%20b", "/a%20b")),
        Just(("/a b", "/a%20b")),
        Just(("/.", "/.")),
        Just(("/%2E", "/.")),
        Just(("/..", "/..")),
        Just(("/.%2e", "/..")),
        Just(("//", "//")),
        Just(("%2F", "%2F")),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| {
        let spelled: String = pieces.iter().map(|p| p.0).collect();
        let plain: String = pieces.iter().map(|p| p.1).collect();
        (format!("/{spelled}"), format!("/{plain}"))
    })
}

proptest! {
    /// The route a request matches is decided by its canonical target alone: a second
    /// normalisation changes neither the target nor the route, any spelling of the path
    /// matches the route its plain spelling matches, and the target forwarded (the
    /// request's URI after `apply`) is canonical.
    #[test]
    fn matching_sees_only_the_canonical_target(
        n in settings(),
        (spelled, plain) in routed_alias(),
        method in prop_oneof![Just(Method::GET), Just(Method::HEAD), Just(Method::POST)],
    ) {
        let mut config = crate::config::load_str(ROUTES, "t.yaml", None).unwrap();
        config.target = Normaliser { percent_encoding: true, ..n };
        let target = &config.target;
        let request = |path: &str| {
            parts(http::Request::builder().method(method.clone()).uri(path.replace(' ', "%20")))
        };
        let mut once = request(&spelled);
        let mut plainly = request(&plain);
        let (first, plain_result) = (target.apply(&mut once), target.apply(&mut plainly));
        prop_assert_eq!(first.is_ok(), plain_result.is_ok(), "{} and {}", spelled, plain);
        if first.is_err() {
            return Ok(());
        }
        let route = config.policy.find(&once);
        prop_assert_eq!(route, config.policy.find(&plainly), "{} and {}", spelled, plain);
        prop_assert_eq!(&once.uri, &plainly.uri);
        let mut twice = once.clone();
        target.apply(&mut twice).unwrap();
        prop_assert_eq!(&twice.uri, &once.uri, "the forwarded target is canonical");
        prop_assert!(matches!(target.path(once.uri.path()), Ok(Cow::Borrowed(_))));
        prop_assert_eq!(config.policy.find(&twice), route);
    }
}

#[test]
fn byte_classes_are_rfc_3986s() {
    for b in 0..=255u8 {
        let c = char::from(b);
        let unreserved = c.is_ascii_alphanumeric() || "-._~".contains(c);
        assert_eq!(is_unreserved(b), unreserved, "{c:?}");
        assert_eq!(
            is_pchar(b),
            unreserved || "!$&'()*+,;=:@".contains(c),
            "{c:?}"
        );
        assert_eq!(
            is_host_byte(b),
            unreserved || "!$&'()*+,;=:[]%".contains(c),
            "{c:?}"
        );
    }
}
