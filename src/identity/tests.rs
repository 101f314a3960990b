use super::*;
use http::Request;

fn parts(builder: http::request::Builder) -> Parts {
    builder.body(()).unwrap().into_parts().0
}

fn identifier(anonymous: Fallback, unknown_key: Fallback) -> Identifier {
    let mut registry = Registry::default();
    registry.insert_clear(
        "clear-key",
        KeyInfo {
            profile: 1,
            org: Some(9),
        },
    );
    registry.insert_hashed(
        Sha256::digest(b"hashed-key").into(),
        KeyInfo {
            profile: 2,
            org: None,
        },
    );
    Identifier {
        sources: vec![
            KeySource::Header(HeaderName::from_static("x-api-key")),
            KeySource::Bearer,
            KeySource::Query("api_key".into()),
        ],
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        registry,
        anonymous,
        unknown_key,
    }
}

const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(1, 2, 3, 4));

#[test]
fn keys_come_from_header_bearer_or_query() {
    let id = identifier(Fallback::Reject, Fallback::Reject);
    let header = parts(Request::builder().header("X-API-Key", "clear-key"));
    let bearer = parts(Request::builder().header("authorization", "Bearer clear-key"));
    let query = parts(Request::builder().uri("/x?a=1&api_key=clear-key"));
    for p in [&header, &bearer, &query] {
        let who = id.identify(p, IP, 0).unwrap();
        assert_eq!((who.kind, who.profile, who.org), (Kind::Key, 1, Some(9)));
        assert_eq!(who.subject, subject_hash(b'k', b"clear-key"));
    }
    let basic = parts(Request::builder().header("authorization", "Basic clear-key"));
    assert_eq!(id.identify(&basic, IP, 0), Err(Unidentified::NoKey));
}

#[test]
fn a_query_key_is_read_as_the_upstream_decodes_it() {
    let id = identifier(Fallback::Reject, Fallback::PerKey(4));
    let plain = id
        .identify(&parts(Request::builder().uri("/x?api_key=user1")), IP, 0)
        .unwrap();
    for query in [
        "api_key=%75ser1",
        "api_key=%75%73%65%72%31",
        "api%5Fkey=user1",
        "api%5fkey=%75ser1",
        "a=1&api_key=user1&b=2",
        "api_key=+user1+",
        "api_key=%20user1",
    ] {
        let who = id
            .identify(&parts(Request::builder().uri(format!("/x?{query}"))), IP, 0)
            .unwrap();
        assert_eq!(who, plain, "{query}");
    }
    // A registered key spelled encoded is that key.
    let who = id
        .identify(
            &parts(Request::builder().uri("/x?api_key=clear%2Dkey")),
            IP,
            0,
        )
        .unwrap();
    assert_eq!((who.kind, who.profile), (Kind::Key, 1));
    // Not decoded further than once: `%2575` is the text `%75`.
    let twice = id
        .identify(
            &parts(Request::builder().uri("/x?api_key=%2575ser1")),
            IP,
            0,
        )
        .unwrap();
    assert_ne!(twice, plain);
    // Only the separators and trimming: case is the key's own.
    let upper = id
        .identify(&parts(Request::builder().uri("/x?api_key=USER1")), IP, 0)
        .unwrap();
    assert_ne!(upper, plain);
}

#[test]
fn a_key_given_more_than_once_is_ambiguous() {
    let id = identifier(Fallback::Reject, Fallback::PerKey(4));
    let ambiguous = [
        Request::builder()
            .header("x-api-key", "user1")
            .header("x-api-key", "user2"),
        Request::builder()
            .header("x-api-key", "user1")
            .header("x-api-key", "user1"),
        Request::builder().uri("/x?api_key=user1&api_key=user2"),
        Request::builder().uri("/x?api_key=user1&api_key=user1"),
        Request::builder().uri("/x?api_key=user1&api%5Fkey=user2"),
        Request::builder().uri("/x?api_key=user1&api_key="),
        Request::builder()
            .uri("/x?api_key=user2")
            .header("x-api-key", "user1"),
        Request::builder()
            .header("x-api-key", "user1")
            .header("authorization", "Bearer user2"),
        Request::builder()
            .header("authorization", "Bearer user1")
            .header("authorization", "Bearer user1"),
    ];
    for request in ambiguous {
        let p = parts(request);
        assert_eq!(
            id.identify(&p, IP, 0),
            Err(Unidentified::Ambiguous),
            "{:?} {:?}",
            p.uri,
            p.headers
        );
        assert_eq!(id.presented_key(&p), None);
    }
    // The same key in two places is one key.
    let p = parts(
        Request::builder()
            .uri("/x?api_key=%75ser1")
            .header("x-api-key", "user1")
            .header("authorization", "Bearer  user1 "),
    );
    let who = id.identify(&p, IP, 0).unwrap();
    assert_eq!(
        (who.kind, who.subject),
        (Kind::UnknownKey, subject_hash(b'u', b"user1"))
    );
    assert_eq!(id.presented_key(&p).as_deref(), Some("user1"));
}

#[test]
fn hashed_keys_are_found_by_digest() {
    let id = identifier(Fallback::Reject, Fallback::Reject);
    let who = id
        .identify(
            &parts(Request::builder().header("x-api-key", "hashed-key")),
            IP,
            0,
        )
        .unwrap();
    assert_eq!(who.profile, 2);
}

#[test]
fn fallbacks_for_unknown_and_missing_keys() {
    let reject = identifier(Fallback::Reject, Fallback::Reject);
    let unknown = parts(Request::builder().header("x-api-key", "who"));
    assert_eq!(
        reject.identify(&unknown, IP, 0),
        Err(Unidentified::UnknownKey)
    );
    assert_eq!(
        reject.identify(&parts(Request::builder()), IP, 0),
        Err(Unidentified::NoKey)
    );

    let lenient = identifier(Fallback::PerIp(3), Fallback::PerKey(4));
    let a = lenient.identify(&unknown, IP, 0).unwrap();
    assert_eq!((a.kind, a.profile), (Kind::UnknownKey, 4));
    // An unknown key never shares a counter with the registered key of the same text.
    assert_ne!(a.subject, subject_hash(b'k', b"who"));
    let anon = lenient.identify(&parts(Request::builder()), IP, 0).unwrap();
    assert_eq!(
        (anon.kind, anon.profile, anon.subject),
        (Kind::Ip, 3, ip_hash(IP))
    );
    let by_ip = identifier(Fallback::Reject, Fallback::PerIp(5))
        .identify(&unknown, IP, 0)
        .unwrap();
    assert_eq!((by_ip.kind, by_ip.subject), (Kind::Ip, ip_hash(IP)));
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let id = identifier(Fallback::Reject, Fallback::Reject);
    let p = parts(Request::builder().header("x-forwarded-for", "7.7.7.7, 10.0.0.9"));
    assert_eq!(
        id.client_ip(IP, &p),
        IP,
        "untrusted peer: its header is ignored"
    );
    let proxy: IpAddr = "10.1.1.1".parse().unwrap();
    assert_eq!(
        id.client_ip(proxy, &p),
        "7.7.7.7".parse::<IpAddr>().unwrap()
    );
    let spoof = parts(Request::builder().header("x-forwarded-for", "garbage, 8.8.8.8"));
    assert_eq!(
        id.client_ip(proxy, &spoof),
        "8.8.8.8".parse::<IpAddr>().unwrap()
    );
    let mapped: IpAddr = "::ffff:10.2.3.4".parse().unwrap();
    assert!(id.is_trusted(mapped));
}

#[test]
fn redaction_never_shows_the_key() {
    let shown = redact("zk_live_secret");
    assert!(shown.starts_with("sha256:") && shown.len() == 15);
    assert!(!shown.contains("secret"));
}
