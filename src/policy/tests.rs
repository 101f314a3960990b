use std::net::IpAddr;

use http::Request;

use crate::config::file::Scope;
use crate::config::load_str;
use crate::identity::{Identity, Kind};
use crate::policy::Policy;

const TEXT: &str = "
upstream: { url: \"demo:\" }
routes:
  - { name: exact, match: { method: POST, path: /v1/messages }, limit: 1/s }
  - { name: param, match: { path: \"/v1/users/{id}\" }, limit: 1/s }
  - { name: hosted, match: { host: api.example.com, path: /v1/** }, limit: 1/s }
  - { name: any, match: { path: /v1/** }, limit: [ { rate: 1/s, per: ip }, { rate: 1/s, per: org, name: o }, { rate: 1/s, per: global, name: g } ] }
";

fn parts(method: &str, uri: &str, host: &str) -> http::request::Parts {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host)
        .body(())
        .unwrap()
        .into_parts()
        .0
}

#[test]
fn first_matching_route_wins() {
    let c = load_str(TEXT, "t", None).unwrap();
    let p = &c.policy;
    let name = |m, u, h| {
        p.find(&parts(m, u, h))
            .map(|r| p.routes[r].name.to_string())
    };
    assert_eq!(name("POST", "/v1/messages", "x").as_deref(), Some("exact"));
    assert_eq!(name("GET", "/v1/messages", "x").as_deref(), Some("any"));
    assert_eq!(
        name("GET", "/v1/users/7?x=1", "x").as_deref(),
        Some("param")
    );
    assert_eq!(
        name("GET", "/v1/other", "API.example.com:8080").as_deref(),
        Some("hosted")
    );
    assert_eq!(name("GET", "/v2", "x"), None);
}

#[test]
fn checks_pick_the_subject_of_each_scope() {
    let c = load_str(TEXT, "t", None).unwrap();
    let p = &c.policy;
    let limits = p.limits(&p.profiles[0], Some(3)).unwrap();
    assert_eq!(
        limits.iter().map(|l| l.scope).collect::<Vec<_>>(),
        vec![Scope::Ip, Scope::Org, Scope::Global]
    );
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let who = Identity {
        kind: Kind::Key,
        subject: 42,
        org: None,
        profile: 0,
    };
    let checks = Policy::checks(limits, &who, ip, 2);
    assert_eq!(checks[0].key.subject, crate::identity::ip_hash(ip));
    assert_eq!(checks[1].key.subject, 42, "no org: the identity itself");
    assert_eq!(checks[2].key.subject, 0);
    assert!(checks.iter().all(|c| c.cost == 2));
    let with_org = Identity {
        org: Some(7),
        ..who
    };
    assert_eq!(Policy::checks(limits, &with_org, ip, 1)[1].key.subject, 7);
}
