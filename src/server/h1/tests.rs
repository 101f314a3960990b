use super::*;
use crate::proxy::RequestId;

fn stamp() -> Stamp {
    Stamp {
        request_id: RequestId::Client(http::HeaderValue::from_static("t")),
        limits: Default::default(),
    }
}

/// The head written for a response with `headers`, which come out the same whether the
/// response holds them in its map or raw (as sluice's HTTP/1.1 client leaves them).
fn head(status: StatusCode, headers: &[(&str, &str)], framing: Out, keep: (bool, bool)) -> String {
    let mut map = HeaderMap::new();
    let mut text = String::new();
    let mut spans = Vec::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        let at = text.len();
        text.push_str(&format!("{name}: {value}\r\n"));
        let value_at = at + name.len() + 2;
        spans.push((at..at + name.len(), value_at..value_at + value.len()));
    }
    let mut raw = RawHeaders::new(text.into());
    for (name, value) in spans {
        raw.push(name, value);
    }
    let in_map = encode(status, (&map, None), framing, keep);
    let kept_raw = encode(status, (&HeaderMap::new(), Some(&raw)), framing, keep);
    assert_eq!(
        in_map, kept_raw,
        "the same head from the map and from raw lines"
    );
    in_map
}

fn encode(
    status: StatusCode,
    headers: (&HeaderMap, Option<&RawHeaders>),
    framing: Out,
    keep: (bool, bool),
) -> String {
    let length = match framing {
        Out::Length(n) => Some(n),
        _ => None,
    };
    let mut out = Vec::new();
    let bodiless = matches!(framing, Out::None);
    encode_head(
        &mut out,
        status,
        headers,
        &stamp(),
        (framing, length, bodiless),
        keep,
    );
    let text = String::from_utf8(out).unwrap();
    // The date changes; its presence is checked apart.
    text.lines()
        .filter(|line| !line.starts_with("date: "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn raw_lines_go_out_as_sent_and_the_stamp_replaces_them_in_any_case() {
    let mut raw = RawHeaders::new(bytes::Bytes::from_static(
        b"Server: up\r\nX-Request-Id: theirs\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
    ));
    raw.push(0..6, 8..10);
    raw.push(12..24, 26..32);
    raw.push(34..38, 40..69);
    let mut out = Vec::new();
    encode_head(
        &mut out,
        StatusCode::OK,
        (&HeaderMap::new(), Some(&raw)),
        &stamp(),
        (Out::Length(0), Some(0), false),
        (true, false),
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\nServer: up\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nx-request-id: t\r\ncontent-length: 0\r\n\r\n"
    );
}

#[test]
fn the_framing_is_the_servers_own() {
    let text = head(
        StatusCode::OK,
        &[
            ("content-length", "99"),
            ("transfer-encoding", "chunked"),
            ("x-ratelimit-remaining", "4"),
        ],
        Out::Length(2),
        (true, false),
    );
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\nx-ratelimit-remaining: 4\nx-request-id: t\ncontent-length: 2\n"
    );
    let text = head(StatusCode::OK, &[], Out::Chunked, (true, false));
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\nx-request-id: t\ntransfer-encoding: chunked\n"
    );
}

#[test]
fn connection_headers_say_what_the_server_will_do() {
    let close = head(
        StatusCode::TOO_MANY_REQUESTS,
        &[],
        Out::Length(0),
        (false, false),
    );
    assert_eq!(
        close,
        "HTTP/1.1 429 Too Many Requests\nx-request-id: t\ncontent-length: 0\nconnection: close\n"
    );
    let old = head(StatusCode::OK, &[], Out::Length(0), (true, true));
    assert_eq!(
        old,
        "HTTP/1.1 200 OK\nx-request-id: t\ncontent-length: 0\nconnection: keep-alive\n"
    );
    let old_closing = head(StatusCode::OK, &[], Out::Close, (false, true));
    assert_eq!(old_closing, "HTTP/1.1 200 OK\nx-request-id: t\n");
}

#[test]
fn a_bodiless_response_keeps_the_length_it_describes() {
    let text = head(
        StatusCode::OK,
        &[("content-length", "1234")],
        Out::None,
        (true, false),
    );
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\ncontent-length: 1234\nx-request-id: t\n"
    );
    let not_modified = head(StatusCode::NOT_MODIFIED, &[], Out::None, (true, false));
    assert_eq!(not_modified, "HTTP/1.1 304 Not Modified\nx-request-id: t\n");
}

#[test]
fn the_stamp_replaces_the_responses_own_headers_of_its_names() {
    let text = head(
        StatusCode::OK,
        &[("x-request-id", "upstream's"), ("x-other", "kept")],
        Out::Length(0),
        (true, false),
    );
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\nx-other: kept\nx-request-id: t\ncontent-length: 0\n"
    );
}

#[test]
fn a_date_is_added_unless_the_response_has_one() {
    let mut out = Vec::new();
    let framing = (Out::Length(0), Some(0), false);
    encode_head(
        &mut out,
        StatusCode::OK,
        (&HeaderMap::new(), None),
        &stamp(),
        framing,
        (true, false),
    );
    let text = String::from_utf8(out).unwrap();
    let date = text.lines().find_map(|l| l.strip_prefix("date: ")).unwrap();
    assert!(httpdate::parse_http_date(date).is_ok(), "{date}");

    let mut map = HeaderMap::new();
    map.insert(
        http::header::DATE,
        "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
    );
    let mut out = Vec::new();
    encode_head(
        &mut out,
        StatusCode::OK,
        (&map, None),
        &stamp(),
        framing,
        (true, false),
    );
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("date: ").count(), 1);
    assert!(text.contains("date: Sun, 06 Nov 1994 08:49:37 GMT"));
}
