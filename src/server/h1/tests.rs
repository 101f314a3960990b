use super::*;
use crate::proxy::RequestId;

fn stamp() -> Stamp {
    Stamp {
        request_id: RequestId::Client(http::HeaderValue::from_static("t")),
        limits: Default::default(),
    }
}

fn head(status: StatusCode, headers: &[(&str, &str)], framing: Out, keep: (bool, bool)) -> String {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let length = match framing {
        Out::Length(n) => Some(n),
        _ => None,
    };
    let mut out = Vec::new();
    let bodiless = matches!(framing, Out::None);
    encode_head(
        &mut out,
        status,
        &map,
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
        &HeaderMap::new(),
        &stamp(),
        framing,
        (true, false),
    );
    let text = String::from_utf8(out).unwrap();
    let date = text.lines().find_map(|l| l.strip_prefix("date: ")).unwrap();
    assert!(httpdate::parse_http_date(date).is_ok(), "{date}");

    let mut map = HeaderMap::new();
    map.insert(
        header::DATE,
        "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
    );
    let mut out = Vec::new();
    encode_head(
        &mut out,
        StatusCode::OK,
        &map,
        &stamp(),
        framing,
        (true, false),
    );
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("date: ").count(), 1);
    assert!(text.contains("date: Sun, 06 Nov 1994 08:49:37 GMT"));
}
