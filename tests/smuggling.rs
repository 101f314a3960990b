//! Request smuggling, table-driven, on raw sockets: every way of framing a request that two
//! HTTP readers could disagree on (Content-Length with Transfer-Encoding, codings, repeated
//! and padded framing headers, chunk sizes, bare LF and CR, obs-fold), and pipelining after
//! a rejected request whose body was not read. Each case states what the client gets (the
//! statuses, and whether the connection closes or stays usable) and exactly which
//! requests reach a recording upstream on raw sockets; the answers match nginx's (docs/security.md),
//! with 400 for its 501s. No case may ever get `/smuggled` upstream, and none counts as an
//! upstream error.
//!
//! The upstream-side cases (an upstream that sends extra bytes, a body on 204/304/HEAD, a
//! second response) are in the upstream client's tests.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::raw_upstream::{raw_upstream, Received};
use support::{pki, Sluice};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every complete request a recording upstream received, as `METHOD /path BODY`.
type Seen = Arc<Mutex<Vec<String>>>;

/// An upstream on raw sockets that records each request it reads (framed as sluice frames
/// them: one length, or chunks) and answers it `200`.
async fn recording_upstream() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let log = seen.clone();
    let (addr, _) = raw_upstream(move |mut socket: TcpStream, request: Received| {
        let log = log.clone();
        async move {
            let body = String::from_utf8_lossy(&request.body).into_owned();
            let seen = format!("{} {} {body}", request.method, request.path);
            log.lock().unwrap().push(seen);
            let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            socket.write_all(ok.as_bytes()).await.ok()?;
            Some(socket)
        }
    })
    .await;
    (addr, seen)
}

fn start(upstream: SocketAddr) -> (Sluice, tempfile::TempDir) {
    let text = format!(
        "\
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {{ url: \"http://{upstream}\", timeout: 5s }}
keys: [ {{ key: k1 }} ]
routes:
  - {{ name: all, match: {{ path: /** }}, limit: 1000000/min }}
"
    );
    let (dir, path) = support::config_file(&text);
    (Sluice::start(&path, &[]), dir)
}

/// One response off a raw connection: its status and head (lowercased), body dropped.
/// `None` if the connection closed first.
async fn response<S: AsyncRead + Unpin>(tcp: &mut S, buf: &mut Vec<u8>) -> Option<(u16, String)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_ascii_lowercase();
            let status: u16 = head[9..12].parse().unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            // An interim response has no body.
            let length = if status < 200 { 0 } else { length };
            while buf.len() < end + 4 + length {
                if !more(tcp, buf).await {
                    return None;
                }
            }
            buf.drain(..end + 4 + length);
            return Some((status, head));
        }
        if !more(tcp, buf).await {
            return None;
        }
    }
}

async fn more<S: AsyncRead + Unpin>(tcp: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
        .await
        .expect("an answer within 10 s (a hang is a failure)");
    match read {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// How the connection ends up after a case.
#[derive(Clone, Copy, Debug, PartialEq)]
enum After {
    /// Closed by sluice.
    Closed,
    /// Still open and in step: a request sent next gets its own answer.
    Open,
}
use After::{Closed, Open};

const KEY: &str = "Host: a\r\nX-API-Key: k1\r\n";
const NOKEY: &str = "Host: a\r\nX-API-Key: nobody\r\n";
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n";

fn post(headers: &str, rest: &str) -> String {
    format!("POST /p HTTP/1.1\r\n{KEY}{headers}\r\n{rest}")
}

fn chunked(rest: &str) -> String {
    post("Transfer-Encoding: chunked\r\n", rest)
}

/// One case: the bytes sent, the statuses answered, the connection after, and the
/// requests the upstream gets (`METHOD /path BODY`).
struct Case {
    name: &'static str,
    send: String,
    statuses: &'static [u16],
    after: After,
    upstream: &'static [&'static str],
}

fn case(
    name: &'static str,
    send: String,
    statuses: &'static [u16],
    after: After,
    upstream: &'static [&'static str],
) -> Case {
    Case {
        name,
        send,
        statuses,
        after,
        upstream,
    }
}

fn cases() -> Vec<Case> {
    let big = "x".repeat(100_000);
    let big_chunks = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    vec![
        // Content-Length with Transfer-Encoding, both orders: the classic CL.TE / TE.CL.
        case("cl.te", post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", &format!("0\r\n\r\n{SMUGGLED}")), &[400], Closed, &[]),
        case("te.cl", post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", &format!("5\r\nhello\r\n0\r\n\r\n{SMUGGLED}")), &[400], Closed, &[]),
        // Transfer-Encoding spelled so that readers differ.
        case("te repeated", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), &[400], Closed, &[]),
        case("te chunked, chunked", post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"), &[400], Closed, &[]),
        case("te identity, chunked", post("Transfer-Encoding: identity, chunked\r\n", "0\r\n\r\n"), &[400], Closed, &[]),
        case("te gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"), &[400], Closed, &[]),
        case("te identity", post("Transfer-Encoding: identity\r\n", ""), &[400], Closed, &[]),
        case("te trailing tab", post("Transfer-Encoding: chunked\t\r\n", "0\r\n\r\n"), &[400], Closed, &[]),
        case("te leading tab", post("Transfer-Encoding:\tchunked\r\n", "0\r\n\r\n"), &[400], Closed, &[]),
        case("te leading comma", post("Transfer-Encoding: ,chunked\r\n", "0\r\n\r\n"), &[400], Closed, &[]),
        case("te xchunked", post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"), &[400], Closed, &[]),
        case("te space before colon", post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"), &[400], Closed, &[]),
        case("te in HTTP/1.0", format!("POST /p HTTP/1.0\r\n{KEY}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), &[400], Closed, &[]),
        case("te Chunked, trailing space (as nginx)", post("Transfer-Encoding: Chunked \r\n", "2\r\nok\r\n0\r\n\r\n"), &[200], Open, &["POST /p ok"]),
        // Content-Length spelled so that readers differ.
        case("cl repeated", post("Content-Length: 2\r\nContent-Length: 2\r\n", "ok"), &[400], Closed, &[]),
        case("cl conflicting", post("Content-Length: 2\r\nContent-Length: 3\r\n", "ok!"), &[400], Closed, &[]),
        case("cl list", post("Content-Length: 2, 2\r\n", "ok"), &[400], Closed, &[]),
        case("cl plus", post("Content-Length: +2\r\n", "ok"), &[400], Closed, &[]),
        case("cl trailing tab", post("Content-Length: 2\t\r\n", "ok"), &[400], Closed, &[]),
        case("cl leading tab", post("Content-Length:\t2\r\n", "ok"), &[400], Closed, &[]),
        case("cl 2^63", post("Content-Length: 9223372036854775808\r\n", "ok"), &[400], Closed, &[]),
        case("cl 2^64", post("Content-Length: 18446744073709551616\r\n", "ok"), &[400], Closed, &[]),
        case("cl trailing space (as nginx)", post("Content-Length: 2 \r\n", "ok"), &[200], Open, &["POST /p ok"]),
        // Chunk sizes and chunk framing.
        case("chunk ffffffffffffffff", chunked("ffffffffffffffff\r\nab\r\n0\r\n\r\n"), &[400], Closed, &[]),
        case("chunk 8000000000000000", chunked("8000000000000000\r\nab\r\n0\r\n\r\n"), &[400], Closed, &[]),
        case("chunk overflow", chunked("10000000000000002\r\nab\r\n0\r\n\r\n"), &[400], Closed, &[]),
        case("chunk negative", chunked("-2\r\nab\r\n0\r\n\r\n"), &[400], Closed, &[]),
        case("chunk plus", chunked("+2\r\nab\r\n0\r\n\r\n"), &[400], Closed, &[]),
        case("chunk 0x", chunked("0x2\r\nab\r\n0\r\n\r\n"), &[400], Closed, &[]),
        case("chunk leading space", chunked(" 2\r\nab\r\n0\r\n\r\n"), &[400], Closed, &[]),
        case("chunk longer than stated", chunked(&format!("2\r\nabc\r\n0\r\n\r\n{SMUGGLED}")), &[400], Closed, &[]),
        case("chunk shorter than stated", chunked(&format!("5\r\nab\r\n0\r\n\r\n{SMUGGLED}")), &[400], Closed, &[]),
        case("chunk data without crlf", chunked("2\r\nab0\r\n\r\n"), &[400], Closed, &[]),
        case("chunk size bare lf", chunked("2\nab\r\n0\r\n\r\n"), &[400], Closed, &[]),
        case("chunk data bare lf", chunked("2\r\nab\n0\r\n\r\n"), &[400], Closed, &[]),
        case("last chunk bare lf", chunked(&format!("2\r\nab\r\n0\n\n{SMUGGLED}")), &[400], Closed, &[]),
        case("chunk size bare cr", chunked("2\rab\r\n0\r\n\r\n"), &[400], Closed, &[]),
        case("chunk extension bare cr", chunked("2;a\rb\r\nab\r\n0\r\n\r\n"), &[400], Closed, &[]),
        case("chunk extension bare lf", chunked("2;a\nab\r\n0\r\n\r\n"), &[400], Closed, &[]),
        case("trailer not a field", chunked("2\r\nab\r\n0\r\nGET /smuggled\r\n\r\n"), &[400], Closed, &[]),
        case("chunk extension and trailer", chunked("2;a=b\r\nab\r\n0\r\nX-T: 1\r\n\r\n"), &[200], Open, &["POST /p ab"]),
        case("chunk size with leading zeros", chunked("0002\r\nab\r\n0\r\n\r\n"), &[200], Open, &["POST /p ab"]),
        // Heads.
        case("bare lf head (as nginx, hyper)", "GET /lf HTTP/1.1\nHost: a\nX-API-Key: k1\n\n".into(), &[200], Open, &["GET /lf "]),
        case("bare cr in a header", format!("GET /cr HTTP/1.1\r\n{KEY}X: 1\r2\r\n\r\n"), &[400], Closed, &[]),
        case("obs-fold", format!("GET /fold HTTP/1.1\r\n{KEY}X: 1\r\n 2\r\n\r\n"), &[400], Closed, &[]),
        case("obs-fold hiding te", format!("POST /fold HTTP/1.1\r\n{KEY}X: 1\r\n Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nok"), &[400], Closed, &[]),
        case("host repeated", "GET /h HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-API-Key: k1\r\n\r\n".to_string(), &[400], Closed, &[]),
        case("host missing", "GET /h HTTP/1.1\r\nX-API-Key: k1\r\n\r\n".to_string(), &[400], Open, &[]),
        case("host missing, http/1.0", "GET /h10 HTTP/1.0\r\nX-API-Key: k1\r\n\r\n".to_string(), &[200], Closed, &["GET /h10 "]),
        case("method in lower case", format!("get /m HTTP/1.1\r\n{KEY}\r\n"), &[400], Closed, &[]),
        case("method mixed case", format!("Get /m HTTP/1.1\r\n{KEY}\r\n"), &[400], Closed, &[]),
        // Pipelining after a rejected request whose body was not read.
        case("rejected, small length body, pipelined", format!("POST /r HTTP/1.1\r\n{NOKEY}Content-Length: {}\r\n\r\n{SMUGGLED}GET /next HTTP/1.1\r\n{KEY}\r\n", SMUGGLED.len()), &[401, 200], Open, &["GET /next "]),
        case("rejected, large length body, pipelined", format!("POST /r HTTP/1.1\r\n{NOKEY}Content-Length: {}\r\n\r\n{big}{SMUGGLED}", big.len() + SMUGGLED.len()), &[401], Closed, &[]),
        case("rejected, small chunked body, pipelined", format!("POST /r HTTP/1.1\r\n{NOKEY}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\nGET /next HTTP/1.1\r\n{KEY}\r\n", SMUGGLED.len()), &[401, 200], Open, &["GET /next "]),
        case("rejected, large chunked body, pipelined", format!("POST /r HTTP/1.1\r\n{NOKEY}Transfer-Encoding: chunked\r\n\r\n{big_chunks}{SMUGGLED}"), &[401], Closed, &[]),
        case("rejected, malformed chunked body, pipelined", format!("POST /r HTTP/1.1\r\n{NOKEY}Transfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n{SMUGGLED}"), &[401], Closed, &[]),
        case("rejected expect-100 with its body, pipelined", format!("POST /r HTTP/1.1\r\n{NOKEY}Expect: 100-continue\r\nContent-Length: 4\r\n\r\nbodyGET /next HTTP/1.1\r\n{KEY}\r\n"), &[401, 200], Open, &["GET /next "]),
        case("forwarded bodies, pipelined", format!("{}{}", post("Content-Length: 2\r\n", "ok"), chunked("3\r\nyes\r\n0\r\n\r\n")), &[200, 200], Open, &["POST /p ok", "POST /p yes"]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_framing_two_readers_could_disagree_on_gets_through() {
    let (upstream, seen) = recording_upstream().await;
    let (sluice, _dir) = start(upstream);
    let mut failures = Vec::new();
    for case in cases() {
        seen.lock().unwrap().clear();
        let mut tcp = TcpStream::connect(sluice.listen).await.unwrap();
        tcp.write_all(case.send.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut statuses = Vec::new();
        for _ in case.statuses {
            match response(&mut tcp, &mut buf).await {
                Some((status, head)) => {
                    // A 400 for framing closes; a well-framed request refused for its
                    // target (a missing Host) keeps its connection.
                    if status == 400 && case.after == Closed {
                        assert!(head.contains("connection: close"), "{}: {head}", case.name);
                    }
                    statuses.push(status);
                }
                None => break,
            }
        }
        let after = match case.after {
            // Closed: nothing more comes, and the socket ends.
            Closed => match response(&mut tcp, &mut buf).await {
                None => Closed,
                Some(extra) => panic!("{}: an extra response {extra:?}", case.name),
            },
            // Open: a request sent now is answered as itself.
            Open => {
                let probe = format!("GET /probe HTTP/1.1\r\n{KEY}\r\n");
                let answered = match tcp.write_all(probe.as_bytes()).await {
                    Ok(()) => response(&mut tcp, &mut buf).await,
                    Err(_) => None,
                };
                match answered {
                    Some((200, _)) => Open,
                    _ => Closed,
                }
            }
        };
        let mut upstream = std::mem::take(&mut *seen.lock().unwrap());
        upstream.retain(|r| r != "GET /probe ");
        if statuses != case.statuses || after != case.after || upstream != case.upstream {
            failures.push(format!(
                "{}: got {statuses:?} {after:?} upstream {upstream:?}; want {:?} {:?} upstream {:?}",
                case.name, case.statuses, case.after, case.upstream
            ));
        }
        let smuggled = upstream.iter().find(|r| r.contains("/smuggled"));
        assert!(
            smuggled.is_none(),
            "{}: upstream got {smuggled:?}",
            case.name
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The client's errors are nobody else's: no upstream error counted for any of them.
    let errors = sluice
        .metric("sluice_upstream_errors_total{kind=\"reset\"}")
        .await;
    assert_eq!(errors, Some(0.0));
}

/// The same requests over TLS, where hyper's server reads the head: what its parsed request
/// still shows is refused the same way, and `max_header_bytes` is counted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_hypers_server_refuses_what_it_can_see_and_keeps_the_head_limit() {
    let (upstream, seen) = recording_upstream().await;
    let dir = support::dir();
    let ca = pki::Ca::new("test CA");
    ca.leaf(&["localhost"]).write(dir.path());
    let text = format!(
        "\
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {{ url: \"http://{upstream}\" }}
keys: [ {{ key: k1 }} ]
routes:
  - {{ name: all, match: {{ path: /** }}, limit: 1000000/min }}
tls: {{ cert: cert.pem, key: key.pem }}
limits: {{ max_header_bytes: 16KiB }}
"
    );
    let path = dir.path().join("sluice.yaml");
    std::fs::write(&path, text).unwrap();
    let sluice = Sluice::start(&path, &[]);
    let client = pki::client(&ca, &[b"http/1.1"], None);
    let big = "x".repeat(10_000);
    for (name, send, status) in [
        (
            "host repeated",
            "GET /h HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-API-Key: k1\r\n\r\n".to_string(),
            400,
        ),
        (
            "method in lower case",
            format!("get /m HTTP/1.1\r\n{KEY}\r\n"),
            400,
        ),
        (
            "te gzip, chunked",
            post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            400,
        ),
        (
            "te repeated",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            400,
        ),
        (
            "cl 2^63",
            post("Content-Length: 9223372036854775808\r\n", "ok"),
            400,
        ),
        (
            "chunk longer than stated",
            chunked("2\r\nabc\r\n0\r\n\r\n"),
            400,
        ),
        ("chunk size 0x", chunked("0x2\r\nab\r\n0\r\n\r\n"), 400),
        (
            "head just under the limit",
            format!("GET /big HTTP/1.1\r\n{KEY}X-A: {big}\r\n\r\n"),
            200,
        ),
        (
            "head over the limit",
            format!("GET /big HTTP/1.1\r\n{KEY}X-A: {big}\r\nX-B: {big}\r\n\r\n"),
            431,
        ),
    ] {
        let mut tls = pki::connect(&client, sluice.listen, "localhost").await;
        tls.write_all(send.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let (got, head) = response(&mut tls, &mut buf).await.expect("an answer");
        assert_eq!(got, status, "{name}: {head}");
        if status == 400 {
            assert!(head.contains("connection: close"), "{name}: {head}");
        }
        if status != 200 {
            assert!(
                response(&mut tls, &mut buf).await.is_none(),
                "{name}: closes"
            );
        }
        let _ = tls.shutdown().await;
    }
    let upstream = seen.lock().unwrap().clone();
    assert_eq!(upstream, ["GET /big "]);
    let errors = sluice
        .metric("sluice_upstream_errors_total{kind=\"reset\"}")
        .await;
    assert_eq!(
        errors.unwrap_or(0.0),
        0.0,
        "a malformed body is not an upstream error"
    );
}
