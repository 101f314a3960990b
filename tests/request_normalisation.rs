//! No way around a limit, end to end over real HTTP: every spelling of a limited request
//! (path aliases, HEAD for GET, absolute form, key spellings) meets the limit the canonical
//! request meets, or is refused; and the upstream receives the canonical target. Each
//! protocol sluice serves is tried: its own HTTP/1.1 server, hyper's HTTP/1.1 (a request
//! it hands off) and HTTP/2.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use support::Sluice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the upstream received: `METHOD TARGET host=HOST`, one line per request.
type Seen = Arc<Mutex<Vec<String>>>;

/// An upstream recording what it is sent; it answers with the same line.
async fn recording_upstream() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let addr = support::serve(move |request: http::Request<hyper::body::Incoming>| {
        let host = request
            .headers()
            .get("host")
            .map_or("-", |h| h.to_str().unwrap());
        let line = format!("{} {} host={host}", request.method(), request.uri());
        log.lock().unwrap().push(line.clone());
        async move { http::Response::new(Full::new(Bytes::from(line))) }
    })
    .await;
    (addr, seen)
}

/// Every route limited 2/min per key, behind an exempt catch-all: a spelling that missed
/// its route would land there and never be limited.
fn start(upstream: SocketAddr, extra: &str) -> (tempfile::TempDir, Sluice) {
    let text = format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {{ url: "http://{upstream}" }}
identify:
  - api_key: {{ header: X-API-Key }}
  - api_key: {{ query: api_key }}
unknown_key: {{ plan: default, per: key }}
responses:
  unauthorized: {{ body: '{{"error":"unauthorized","status":${{status}}}}' }}
  bad_request: {{ body: '{{"error":"bad_request","status":${{status}}}}' }}
routes:
  - {{ name: hosted, match: {{ method: GET, host: api.example, path: /v1/hosted }}, limit: 2/min }}
  - {{ name: limited, match: {{ method: GET, path: /v1/limited }}, limit: 2/min }}
  - {{ name: item, match: {{ method: GET, path: "/v1/items/{{id}}" }}, limit: 2/min }}
  - {{ name: probe, match: {{ method: HEAD, path: /v1/probe }}, limit: none }}
  - {{ name: probed, match: {{ method: GET, path: /v1/probe }}, limit: 2/min }}
  - {{ name: root, match: {{ method: GET, path: / }}, limit: 2/min }}
  - {{ name: rest, match: {{ path: "/**" }}, limit: none }}
{extra}"#
    );
    let (dir, path) = support::config_file(&text);
    (dir, Sluice::start(&path, &[]))
}

/// One raw HTTP/1.1 exchange on a new connection: the status and the body.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// `METHOD TARGET` with `key`, sent by sluice's own HTTP/1.1 server.
async fn send(addr: SocketAddr, method: &str, target: &str, key: &str) -> (u16, String) {
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: api.example\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    );
    raw(addr, &request).await
}

fn last(seen: &Seen) -> String {
    seen.lock().unwrap().last().cloned().unwrap_or_default()
}

/// The aliases of the issue: each shares the canonical path's counter, and reaches the
/// upstream as the canonical path.
#[tokio::test]
async fn every_path_alias_meets_the_canonical_paths_limit() {
    let (upstream, seen) = recording_upstream().await;
    let (_dir, sluice) = start(upstream, "");
    // (what routes match, what the client sends, what the upstream receives)
    let aliases: &[(&str, &str, &str)] = &[
        ("/v1/limited", "/v1/%6cimited", "/v1/limited"),
        ("/v1/limited", "/v1/%6Cimited", "/v1/limited"),
        (
            "/v1/limited",
            "/%76%31/%6c%69%6d%69%74%65%64",
            "/v1/limited",
        ),
        ("/v1/limited", "//v1/limited", "/v1/limited"),
        ("/v1/limited", "/v1//limited", "/v1/limited"),
        ("/v1/limited", "/v1/./limited", "/v1/limited"),
        ("/v1/limited", "/./v1/limited", "/v1/limited"),
        ("/v1/limited", "/v1/x/../limited", "/v1/limited"),
        ("/v1/limited", "/v1/%2e/limited", "/v1/limited"),
        ("/v1/limited", "/v1/%2e/limited?q=%6c", "/v1/limited?q=%6c"),
        ("/v1/items/1", "/v1/items//1", "/v1/items/1"),
        ("/v1/items/1", "/v1/items/./1", "/v1/items/1"),
        ("/", "//", "/"),
        ("/", "/.", "/"),
        ("/", "/%2e", "/"),
    ];
    for (i, (canonical, alias, forwarded)) in aliases.iter().enumerate() {
        let key = format!("alias-{i}");
        // The alias takes the quota the canonical path then lacks.
        for _ in 0..2 {
            let (status, body) = send(sluice.listen, "GET", alias, &key).await;
            assert_eq!(status, 200, "{alias}: {body}");
            assert_eq!(body, format!("GET {forwarded} host=api.example"), "{alias}");
        }
        let (status, _) = send(sluice.listen, "GET", canonical, &key).await;
        assert_eq!(status, 429, "{canonical} after two of {alias}");
        let (status, _) = send(sluice.listen, "GET", alias, &key).await;
        assert_eq!(status, 429, "{alias} after its quota");
    }
    assert_eq!(seen.lock().unwrap().len(), 2 * aliases.len());
}

/// Spellings upstreams disagree on are refused in the configured envelope: nothing is
/// forwarded, nothing counted.
#[tokio::test]
async fn ambiguous_paths_are_refused_with_400() {
    let (upstream, seen) = recording_upstream().await;
    let (_dir, sluice) = start(upstream, "");
    for alias in [
        "/v1%2flimited",
        "/v1%2Flimited",
        "/v1%5climited",
        "/v1\\limited",
        "/v1/%00",
        "/v1/%zz",
        "/..",
        "/v1/../../limited",
        "/%2e%2e/v1/limited",
    ] {
        let (status, body) = send(sluice.listen, "GET", alias, "refused").await;
        assert_eq!(
            (status, body.as_str()),
            (400, r#"{"error":"bad_request","status":400}"#),
            "{alias}"
        );
    }
    assert!(seen.lock().unwrap().is_empty());
    // Nothing was counted: the canonical path has its whole quota.
    for _ in 0..2 {
        assert_eq!(
            send(sluice.listen, "GET", "/v1/limited", "refused").await.0,
            200
        );
    }
    assert_eq!(
        send(sluice.listen, "GET", "/v1/limited", "refused").await.0,
        429
    );
}

/// `encoded_slashes: decode` reads `%2F` as the slash it spells: the same limit again.
#[tokio::test]
async fn decoded_slashes_meet_the_same_limit() {
    let (upstream, seen) = recording_upstream().await;
    let (_dir, sluice) = start(upstream, "normalise: { encoded_slashes: decode }\n");
    for alias in ["/v1%2flimited", "/v1%5Climited"] {
        assert_eq!(send(sluice.listen, "GET", alias, "slash").await.0, 200);
        assert_eq!(last(&seen), "GET /v1/limited host=api.example");
    }
    assert_eq!(
        send(sluice.listen, "GET", "/v1/limited", "slash").await.0,
        429
    );
}

/// HEAD runs the GET handler upstream, so it counts on the GET route; a route that lists
/// HEAD before it takes HEAD instead.
#[tokio::test]
async fn head_counts_against_the_get_route() {
    let (upstream, seen) = recording_upstream().await;
    let (_dir, sluice) = start(upstream, "");
    for _ in 0..2 {
        assert_eq!(
            send(sluice.listen, "HEAD", "/v1/limited", "head").await.0,
            200
        );
        assert_eq!(last(&seen), "HEAD /v1/limited host=api.example");
    }
    assert_eq!(
        send(sluice.listen, "GET", "/v1/limited", "head").await.0,
        429
    );
    assert_eq!(
        send(sluice.listen, "HEAD", "/v1/%6cimited", "head").await.0,
        429
    );

    // /v1/probe: HEAD has its own (exempt) route listed first.
    for _ in 0..3 {
        assert_eq!(
            send(sluice.listen, "HEAD", "/v1/probe", "probe").await.0,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            send(sluice.listen, "GET", "/v1/probe", "probe").await.0,
            200
        );
    }
    assert_eq!(
        send(sluice.listen, "GET", "/v1/probe", "probe").await.0,
        429
    );
}

/// An absolute-form target is the origin-form request to its authority: it meets the same
/// limit, the host route is matched on that authority, and the upstream gets both.
#[tokio::test]
async fn absolute_form_meets_the_origin_form_limit() {
    let (upstream, seen) = recording_upstream().await;
    let (_dir, sluice) = start(upstream, "");
    let absolute = |target: &str, host: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: abs\r\nConnection: close\r\n\r\n"
        )
    };
    let (status, body) = raw(
        sluice.listen,
        &absolute("http://api.example/v1/limited", "api.example"),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "GET /v1/limited host=api.example")
    );
    let (status, body) = raw(
        sluice.listen,
        &absolute("HTTP://API.example//v1/./limited", "api.example"),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "GET /v1/limited host=api.example")
    );
    assert_eq!(
        send(sluice.listen, "GET", "/v1/limited", "abs").await.0,
        429
    );

    // The authority wins over a Host that names another host: the host route is matched
    // on it, and the upstream is sent it.
    for _ in 0..2 {
        let (status, body) = raw(
            sluice.listen,
            &absolute("http://api.example/v1/hosted", "other.example"),
        )
        .await;
        assert_eq!(
            (status, body.as_str()),
            (200, "GET /v1/hosted host=api.example")
        );
    }
    let request = "GET /v1/hosted HTTP/1.1\r\nHost: api.example\r\nX-API-Key: abs\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(sluice.listen, request).await.0, 429);
    // ... and the other way round: another authority is not the host route's.
    let (status, _) = raw(
        sluice.listen,
        &absolute("http://other.example/v1/hosted", "api.example"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(last(&seen), "GET /v1/hosted host=other.example");
}

/// Target forms no route asked for: CONNECT 405, `*` and authority form 400; never
/// forwarded. Two Host headers: 400.
#[tokio::test]
async fn connect_asterisk_and_authority_forms_are_refused() {
    let (upstream, seen) = recording_upstream().await;
    let (_dir, sluice) = start(upstream, "");
    let (status, body) = raw(
        sluice.listen,
        "CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("CONNECT is not allowed here"), "{body}");
    for request in [
        "OPTIONS * HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n",
        "GET api.example:80 HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n",
        "GET http://u@api.example/v1/limited HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n",
        "GET /v1/limited HTTP/1.1\r\nHost: api.example\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    ] {
        let (status, body) = raw(sluice.listen, request).await;
        assert_eq!(
            (status, body.as_str()),
            (400, r#"{"error":"bad_request","status":400}"#),
            "{request:?}"
        );
    }
    assert!(seen.lock().unwrap().is_empty());
}

/// A route that lists CONNECT, or has the path `*`, lets that form through.
#[tokio::test]
async fn routes_can_allow_options_asterisk() {
    let (upstream, seen) = recording_upstream().await;
    let (_dir, sluice) = start(
        upstream,
        "  - { name: asterisk, match: { method: OPTIONS, path: \"*\" }, limit: 1/min }\n",
    );
    let request =
        "OPTIONS * HTTP/1.1\r\nHost: api.example\r\nX-API-Key: star\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(sluice.listen, request).await.0, 200);
    assert_eq!(last(&seen), "OPTIONS * host=api.example");
    assert_eq!(raw(sluice.listen, request).await.0, 429);
}

/// Key spellings in the sidecar mode: one real key, however it is spelled, is one quota;
/// a key given twice, or two keys, is refused with the unauthorized envelope and 400.
#[tokio::test]
async fn key_spellings_share_one_quota_or_are_refused() {
    let (upstream, seen) = recording_upstream().await;
    let (_dir, sluice) = start(upstream, "");
    let get = |target: &str, headers: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: api.example\r\n{headers}Connection: close\r\n\r\n")
    };
    assert_eq!(
        raw(sluice.listen, &get("/v1/limited?api_key=user1", ""))
            .await
            .0,
        200
    );
    let (status, body) = raw(sluice.listen, &get("/v1/limited?api_key=%75ser1", "")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "GET /v1/limited?api_key=%75ser1 host=api.example");
    for spelling in [
        get("/v1/limited?api_key=user1", ""),
        get("/v1/limited?api%5Fkey=user1", ""),
        get("/v1/limited?api_key=+user1", ""),
        get("/v1/limited", "X-API-Key: user1\r\n"),
        get("/v1/limited?api_key=user1", "X-API-Key: user1\r\n"),
    ] {
        let (status, body) = raw(sluice.listen, &spelling).await;
        assert_eq!(status, 429, "{spelling:?}: {body}");
    }
    let forwarded = seen.lock().unwrap().len();
    for ambiguous in [
        get("/v1/limited?api_key=user9&api_key=user8", ""),
        get("/v1/limited?api_key=user9&api%5Fkey=user9", ""),
        get("/v1/limited?api_key=user9", "X-API-Key: user8\r\n"),
        get("/v1/limited", "X-API-Key: user9\r\nX-API-Key: user8\r\n"),
    ] {
        let (status, body) = raw(sluice.listen, &ambiguous).await;
        assert_eq!(
            (status, body.as_str()),
            (400, r#"{"error":"unauthorized","status":400}"#),
            "{ambiguous:?}"
        );
    }
    assert_eq!(seen.lock().unwrap().len(), forwarded);
}

/// The same normalisation on the other two ways in: a request sluice's HTTP/1.1 server
/// hands to hyper's (`Expect: 100-continue`), and HTTP/2 with prior knowledge.
#[tokio::test]
async fn hyper_http1_and_http2_requests_are_normalised_too() {
    let (upstream, seen) = recording_upstream().await;
    let (_dir, sluice) = start(upstream, "");
    let handed_off = "GET /v1/%6cimited HTTP/1.1\r\nHost: api.example\r\nX-API-Key: proto\r\nExpect: 100-continue\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (status, body) = raw(sluice.listen, handed_off).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "GET /v1/limited host=api.example")
    );

    let tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut h2 = async |target: &str| {
        let request = http::Request::get(target)
            .header("x-api-key", "proto")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let (status, body) = h2("http://api.example//v1/./limited").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "GET /v1/limited host=api.example")
    );
    assert_eq!(h2("http://api.example/v1/limited").await.0, 429);
    assert_eq!(h2("http://api.example/v1%2flimited").await.0, 400);
    assert_eq!(seen.lock().unwrap().len(), 2);
}
