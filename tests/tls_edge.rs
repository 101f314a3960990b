//! TLS and HTTP/2 at the edge, end to end: HTTPS/1.1 and HTTPS/2 clients (ALPN), h2c with
//! prior knowledge on a plain listener, an https upstream trusted through a test CA (with
//! SNI override, client certificate and HTTP/2), and a certificate swapped on disk.
//! Every certificate is made by the test.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use support::pki::{self, Ca};
use support::{eventually, Sluice};
use tokio::net::TcpStream;

fn config(upstream: &str, extra: &str) -> String {
    format!(
        "\
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {upstream}
keys: [ {{ key: k1 }} ]
routes:
  - {{ name: all, match: {{ path: /** }}, limit: 1000/min }}
reload: {{ interval: 50ms }}
{extra}"
    )
}

/// sluice terminating TLS with a certificate for `localhost` from `ca`, files in `dir`.
fn tls_sluice(dir: &Path, ca: &Ca, upstream: SocketAddr) -> Sluice {
    tls_sluice_with(dir, ca, upstream, "")
}

fn tls_sluice_with(dir: &Path, ca: &Ca, upstream: SocketAddr, extra: &str) -> Sluice {
    ca.leaf(&["localhost"]).write(dir);
    let path = dir.join("sluice.yaml");
    // Relative paths: resolved against the config's directory.
    let text = config(
        &format!("{{ url: \"http://{upstream}\" }}"),
        &format!("tls: {{ cert: cert.pem, key: key.pem }}\n{extra}"),
    );
    std::fs::write(&path, text).unwrap();
    Sluice::start(&path, &[])
}

#[tokio::test]
async fn https_clients_speak_http1_and_http2_by_alpn() {
    let upstream = support::upstream().await;
    let dir = support::dir();
    let ca = Ca::new("test CA");
    let sluice = tls_sluice(dir.path(), &ca, upstream);

    for (alpn, h2) in [(&b"http/1.1"[..], false), (&b"h2"[..], true)] {
        let tls = pki::connect(&pki::client(&ca, &[alpn], None), sluice.listen, "localhost").await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let (status, body) = pki::get(tls, h2, "/v1/x", "k1").await;
        assert_eq!((status, body.as_str()), (200, "upstream ok"), "h2: {h2}");
    }
    // The policy applies over TLS like anywhere: an unknown key is refused.
    let tls = pki::connect(
        &pki::client(&ca, &[b"h2"], None),
        sluice.listen,
        "localhost",
    )
    .await;
    let (status, _) = pki::get(tls, true, "/v1/x", "nobody").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_tls_handshake_not_finished_within_the_header_timeout_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = support::dir();
    let ca = Ca::new("test CA");
    let limits = "limits: { header_read_timeout: 1s }\n";
    let sluice = tls_sluice_with(dir.path(), &ca, support::upstream().await, limits);
    // The start of a ClientHello record, and then nothing.
    let mut stalled = TcpStream::connect(sluice.listen).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stalled.read(&mut buf))
        .await
        .expect("the stalled handshake is cut off");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed, not answered: {read:?}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(800));
    // Others still get through.
    let tls = pki::connect(
        &pki::client(&ca, &[b"h2"], None),
        sluice.listen,
        "localhost",
    )
    .await;
    assert_eq!(pki::get(tls, true, "/v1/x", "k1").await.0, 200);
}

/// sluice on a plain (h2c-capable) listener in front of `upstream`; the folder holds its
/// config and must outlive it.
fn plain_sluice(upstream: SocketAddr) -> (tempfile::TempDir, Sluice) {
    let (dir, path) =
        support::config_file(&config(&format!("{{ url: \"http://{upstream}\" }}"), ""));
    (dir, Sluice::start(&path, &[]))
}

#[tokio::test]
async fn a_plain_listener_speaks_h2c_with_prior_knowledge() {
    let upstream = support::upstream().await;
    let (_dir, sluice) = plain_sluice(upstream);
    let tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let (status, body) = pki::get(tcp, true, "/v1/x", "k1").await;
    assert_eq!((status, body.as_str()), (200, "upstream ok"));
    // And HTTP/1.1 on the same listener.
    let tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let (status, _) = pki::get(tcp, false, "/v1/x", "k1").await;
    assert_eq!(status, 200);
}

/// An HTTP/2 client names the host in the request's authority: the upstream gets it as
/// `Host` and `X-Forwarded-Host`, as from an HTTP/1.1 client.
#[tokio::test]
async fn an_http2_clients_authority_reaches_the_upstream_as_host() {
    let upstream = support::serve(|request: http::Request<hyper::body::Incoming>| async move {
        let mut seen = String::new();
        for name in ["host", "x-forwarded-host"] {
            let value = request.headers().get(name).map(|v| v.to_str().unwrap());
            seen.push_str(&format!("{name}={} ", value.unwrap_or("-")));
        }
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(seen)))
    })
    .await;
    let (_dir, sluice) = plain_sluice(upstream);
    let tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let (status, body) = pki::get(tcp, true, "/v1/x", "k1").await;
    assert_eq!(status, 200);
    assert_eq!(body, "host=localhost x-forwarded-host=localhost ");
}

/// The upstream's own headers reach HTTP/1.1 clients (written by sluice's own server) and
/// HTTP/2 clients (through hyper's) alike: repeated ones all kept, an `X-RateLimit-*` of the
/// upstream's replaced by sluice's.
#[tokio::test]
async fn the_upstreams_headers_reach_http1_and_http2_clients_alike() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = support::serve(
        |_request: http::Request<hyper::body::Incoming>| async move {
            http::Response::builder()
                .header("x-upstream", "yes")
                .header("set-cookie", "a=1")
                .header("set-cookie", "b=2")
                .header("x-ratelimit-limit", "999")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
                .unwrap()
        },
    )
    .await;
    let (_dir, sluice) = plain_sluice(upstream);

    let mut tcp = TcpStream::connect(sluice.listen).await.unwrap();
    tcp.write_all(
        b"GET /v1/x HTTP/1.1\r\nhost: localhost\r\nx-api-key: k1\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    let lines: Vec<String> = text.lines().map(str::to_ascii_lowercase).collect();
    let has = |line: &str| lines.iter().any(|l| l == line);
    assert!(has("x-upstream: yes"), "{text}");
    assert!(has("set-cookie: a=1") && has("set-cookie: b=2"), "{text}");
    assert!(has("x-ratelimit-limit: 1000"), "{text}");
    assert!(!has("x-ratelimit-limit: 999"), "{text}");

    let tcp = TcpStream::connect(sluice.listen).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = http::Request::builder()
        .uri("http://localhost/v1/x")
        .header("x-api-key", "k1")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let headers = response.headers();
    assert_eq!(headers["x-upstream"], "yes");
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(headers["x-ratelimit-limit"], "1000");
    assert_eq!(headers.get_all("x-ratelimit-limit").iter().count(), 1);
}

#[tokio::test]
async fn a_certificate_swapped_on_disk_is_served_to_the_next_connection() {
    let upstream = support::upstream().await;
    let dir = support::dir();
    let ca = Ca::new("test CA");
    let sluice = tls_sluice(dir.path(), &ca, upstream);
    let client = pki::client(&ca, &[b"http/1.1"], None);

    // A connection made before the swap, kept open across it.
    let before = pki::connect(&client, sluice.listen, "localhost").await;
    let old_der = before.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(before))
            .await
            .unwrap();
    tokio::spawn(conn);

    let next = ca.leaf(&["localhost", "127.0.0.1"]);
    assert_ne!(next.der, old_der);
    next.write(dir.path());
    eventually("the new certificate to be served", async || {
        let tls = pki::connect(&client, sluice.listen, "localhost").await;
        tls.get_ref().1.peer_certificates().unwrap()[0].as_ref() == next.der.as_slice()
    })
    .await;
    assert!(sluice.log_text().contains("TLS certificate reloaded"));

    // The old connection was not dropped.
    let request = http::Request::builder()
        .uri("/v1/x")
        .header("host", "localhost")
        .header("x-api-key", "k1")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("still open");
    assert_eq!(response.status(), 200);

    // A broken key is refused and the current certificate stays.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    eventually("the broken key to be reported", async || {
        sluice.log_text().contains("TLS certificate not reloaded")
    })
    .await;
    let tls = pki::connect(&client, sluice.listen, "localhost").await;
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        next.der.as_slice()
    );
}

#[tokio::test]
async fn an_https_upstream_is_trusted_through_a_ca_file() {
    let ca = Ca::new("upstream CA");
    let leaf = ca.leaf(&["127.0.0.1"]);
    let upstream = pki::https_upstream(&leaf, &[b"http/1.1"], None).await;
    let dir = support::dir();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let path = dir.path().join("sluice.yaml");
    let url = format!("{{ url: \"https://{upstream}\", tls: {{ ca_file: ca.pem }} }}");
    std::fs::write(&path, config(&url, "")).unwrap();
    let sluice = Sluice::start(&path, &[]);
    let reply = sluice.connect().await.get("/v1/x", "k1").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, "upstream ok over HTTP/1.1");
}

#[tokio::test]
async fn an_untrusted_https_upstream_is_a_502() {
    let leaf = Ca::new("someone else").leaf(&["127.0.0.1"]);
    let upstream = pki::https_upstream(&leaf, &[b"http/1.1"], None).await;
    let dir = support::dir();
    std::fs::write(dir.path().join("ca.pem"), Ca::new("ours").pem).unwrap();
    let path = dir.path().join("sluice.yaml");
    let url =
        format!("{{ url: \"https://{upstream}\", tls: {{ ca_file: ca.pem, ca_only: true }} }}");
    std::fs::write(&path, config(&url, "")).unwrap();
    let sluice = Sluice::start(&path, &[]);
    let reply = sluice.connect().await.get("/v1/x", "k1").await.unwrap();
    assert_eq!(reply.status, 502, "{}", reply.body);
}

#[tokio::test]
async fn an_https_upstream_with_sni_a_client_certificate_and_http2() {
    let ca = Ca::new("upstream CA");
    // The upstream's certificate names only `api.internal`, not the address dialled.
    let leaf = ca.leaf(&["api.internal"]);
    let client_ca = Ca::new("client CA");
    let client = client_ca.leaf(&["sluice"]);
    let upstream = pki::https_upstream(&leaf, &[b"h2"], Some(&client_ca)).await;
    let dir = support::dir();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(dir.path().join("client.pem"), &client.cert_pem).unwrap();
    std::fs::write(dir.path().join("client.key"), &client.key_pem).unwrap();
    let path = dir.path().join("sluice.yaml");
    let url = format!(
        "{{ url: \"https://{upstream}\", http2: true, tls: {{ ca_file: ca.pem, ca_only: true, \
         server_name: api.internal, cert: client.pem, key: client.key }} }}"
    );
    std::fs::write(&path, config(&url, "")).unwrap();
    let sluice = Sluice::start(&path, &[]);
    let reply = sluice.connect().await.get("/v1/x", "k1").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.body,
        "upstream ok over HTTP/2.0 with a client certificate"
    );
}

#[test]
fn check_reports_a_bad_certificate_with_its_place() {
    let dir = support::dir();
    std::fs::write(dir.path().join("cert.pem"), "nope").unwrap();
    let path = dir.path().join("sluice.yaml");
    let text = config(
        "{ url: \"http://127.0.0.1:1\" }",
        "tls: { cert: cert.pem, key: missing.pem }\n",
    );
    std::fs::write(&path, text).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(":8:"), "{stderr}");
    assert!(stderr.contains("tls: cannot read"), "{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");
}
