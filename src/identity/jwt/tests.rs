use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use base64::Engine as _;
use http::request::Parts;
use http::Request;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::TokenError;
use crate::config::{load_str, Config};
use crate::identity::{subject_hash, Identity, Kind, Unidentified};
use crate::limiter::clock::SECOND;

const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// 2023-11-14T22:13:20Z.
const NOW_S: u64 = 1_700_000_000;
const NOW: u64 = NOW_S * SECOND;
const SECRET: &[u8] = b"a test secret of reasonable length!";

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt"))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

/// A config whose first identify source is `jwt: { <source> }`, followed by an API key.
fn config(source: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), [SECRET, b"\n"].concat()).unwrap();
    for name in ["rs256-public.pem", "es256-public.pem", "jwks.json"] {
        std::fs::write(dir.path().join(name), fixture(name)).unwrap();
    }
    let text = format!(
        "upstream: {{ url: \"demo:\" }}\n\
         identify:\n  - jwt: {{ {source} }}\n  - api_key: {{ header: X-API-Key }}\n\
         keys: [ {{ key: alice, plan: pro }} ]\n\
         plans: {{ pro: {{ limits: {{ all: 10/min }} }}, jwt: {{ limits: {{ all: 5/min }} }} }}\n"
    );
    load_str(&text, "t.yaml", Some(dir.path())).unwrap_or_else(|e| panic!("{e}"))
}

fn hs256() -> Config {
    config("algorithms: [HS256], secret_file: secret, plan_claim: plan, org_claim: org, plan: jwt")
}

fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": NOW_S + 600, "plan": "pro", "org": "acme" })
}

fn sign(alg: Algorithm, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture("rs256-private.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture("es256-private.pem")).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    encode(&Header::new(alg), claims, &key).unwrap()
}

fn request(headers: &[(&str, &str)]) -> Parts {
    let mut builder = Request::builder().uri("/v1/x");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

fn identify(config: &Config, token: &str) -> Result<Identity, Unidentified> {
    let parts = request(&[("authorization", &format!("Bearer {token}"))]);
    config.policy.identifier.identify(&parts, IP, NOW)
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn plan(config: &Config, identity: &Identity) -> String {
    config.policy.profile(identity).plan.to_string()
}

#[test]
fn a_valid_hs256_token_names_subject_plan_and_org() {
    let c = hs256();
    let who = identify(&c, &sign(Algorithm::HS256, &claims("alice"))).unwrap();
    assert_eq!(who.kind, Kind::Jwt);
    assert_eq!(who.subject, subject_hash(b'j', b"alice"));
    assert_eq!(who.org, Some(subject_hash(b'o', b"acme")));
    assert_eq!(plan(&c, &who), "pro");
    // No plan claim, or one naming no plan: the source's `plan`.
    let who = identify(
        &c,
        &sign(
            Algorithm::HS256,
            &json!({"sub": "bob", "exp": NOW_S + 1, "plan": "gold"}),
        ),
    )
    .unwrap();
    assert_eq!(plan(&c, &who), "jwt");
    assert_eq!(who.org, None);
}

#[test]
fn jwt_and_api_key_callers_with_the_same_name_never_share_a_subject() {
    let c = hs256();
    let by_token = identify(&c, &sign(Algorithm::HS256, &claims("alice"))).unwrap();
    let by_key = c
        .policy
        .identifier
        .identify(&request(&[("x-api-key", "alice")]), IP, NOW)
        .unwrap();
    assert_eq!(by_key.kind, Kind::Key);
    assert_ne!(by_token.subject, by_key.subject);
}

#[test]
fn forged_tokens_are_refused() {
    let c = hs256();
    let refused = |token: &str| match identify(&c, token) {
        Err(Unidentified::InvalidToken(why)) => why,
        other => panic!("{token}: {other:?}"),
    };
    // alg: none, unsigned.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims("alice"))
    );
    assert_eq!(refused(&none), TokenError::Malformed);
    // Signed with another secret.
    let other = encode(
        &Header::new(Algorithm::HS256),
        &claims("alice"),
        &EncodingKey::from_secret(b"not the secret"),
    )
    .unwrap();
    assert_eq!(refused(&other), TokenError::Signature);
    // A valid token with its subject swapped.
    let valid = sign(Algorithm::HS256, &claims("alice"));
    let mut parts: Vec<&str> = valid.split('.').collect();
    let tampered_payload = b64(&claims("mallory"));
    parts[1] = &tampered_payload;
    assert_eq!(refused(&parts.join(".")), TokenError::Signature);
    // An algorithm the source does not accept, even correctly signed.
    let hs384 = encode(
        &Header::new(Algorithm::HS384),
        &claims("alice"),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_eq!(refused(&hs384), TokenError::Algorithm);
    // Garbage shaped like a token.
    assert_eq!(refused("a.b.c"), TokenError::Malformed);
}

#[test]
fn expiry_and_not_before_are_checked_with_the_leeway() {
    let c = hs256();
    let at = |claims: Value| identify(&c, &sign(Algorithm::HS256, &claims));
    let expired = at(json!({"sub": "a", "exp": NOW_S - 31}));
    assert_eq!(
        expired,
        Err(Unidentified::InvalidToken(TokenError::Expired))
    );
    assert!(
        at(json!({"sub": "a", "exp": NOW_S - 29})).is_ok(),
        "within the 30s leeway"
    );
    let no_exp = at(json!({"sub": "a"}));
    assert_eq!(no_exp, Err(Unidentified::InvalidToken(TokenError::Expired)));
    let early = at(json!({"sub": "a", "exp": NOW_S + 600, "nbf": NOW_S + 31}));
    assert_eq!(
        early,
        Err(Unidentified::InvalidToken(TokenError::NotYetValid))
    );
    assert!(at(json!({"sub": "a", "exp": NOW_S + 600, "nbf": NOW_S + 29})).is_ok());
    let no_sub = at(json!({"exp": NOW_S + 600}));
    assert_eq!(
        no_sub,
        Err(Unidentified::InvalidToken(TokenError::NoSubject))
    );
}

#[test]
fn issuer_and_audience_when_configured() {
    let c = config(
        "algorithms: [HS256], secret_file: secret, issuer: https://auth.example, audience: api",
    );
    let at = |claims: Value| identify(&c, &sign(Algorithm::HS256, &claims));
    let base = json!({"sub": "a", "exp": NOW_S + 60, "iss": "https://auth.example", "aud": ["web", "api"]});
    assert!(at(base.clone()).is_ok());
    let mut wrong = base.clone();
    wrong["iss"] = json!("https://evil.example");
    assert_eq!(
        at(wrong),
        Err(Unidentified::InvalidToken(TokenError::Issuer))
    );
    let mut wrong = base.clone();
    wrong["aud"] = json!("web");
    assert_eq!(
        at(wrong),
        Err(Unidentified::InvalidToken(TokenError::Audience))
    );
    let mut missing = base;
    missing.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        at(missing),
        Err(Unidentified::InvalidToken(TokenError::Issuer))
    );
}

#[test]
fn rs256_and_es256_public_keys_and_a_jwks() {
    let rs = config("algorithms: [RS256], public_key_file: rs256-public.pem");
    assert!(identify(&rs, &sign(Algorithm::RS256, &claims("a"))).is_ok());
    let es = config("algorithms: [ES256], public_key_file: es256-public.pem");
    assert!(identify(&es, &sign(Algorithm::ES256, &claims("a"))).is_ok());
    // The ES256 key does not verify an RS256 token, nor the other way round.
    assert!(identify(&es, &sign(Algorithm::RS256, &claims("a"))).is_err());
    assert!(identify(&rs, &sign(Algorithm::ES256, &claims("a"))).is_err());

    let jwks = config("algorithms: [RS256], jwks_file: jwks.json");
    let key = EncodingKey::from_rsa_pem(&fixture("rs256-private.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("sluice-test-1".into());
    assert!(identify(&jwks, &encode(&header, &claims("a"), &key).unwrap()).is_ok());
    // No kid with a one-key set: that key.
    assert!(identify(&jwks, &sign(Algorithm::RS256, &claims("a"))).is_ok());
    header.kid = Some("rotated-away".into());
    assert_eq!(
        identify(&jwks, &encode(&header, &claims("a"), &key).unwrap()),
        Err(Unidentified::InvalidToken(TokenError::UnknownKey))
    );
}

#[test]
fn an_hmac_token_signed_with_the_public_key_is_refused() {
    // The classic algorithm confusion: the attacker knows the RSA public key.
    let rs = config("algorithms: [RS256], public_key_file: rs256-public.pem");
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims("a"),
        &EncodingKey::from_secret(&fixture("rs256-public.pem")),
    )
    .unwrap();
    assert_eq!(
        identify(&rs, &forged),
        Err(Unidentified::InvalidToken(TokenError::Algorithm))
    );
}

#[test]
fn non_token_credentials_go_to_the_next_source() {
    let c = hs256();
    // An API key in its header, and a bearer value that is no JWT.
    let parts = request(&[("authorization", "Bearer plainkey"), ("x-api-key", "alice")]);
    let who = c.policy.identifier.identify(&parts, IP, NOW).unwrap();
    assert_eq!(who.kind, Kind::Key);
    // A token in a custom header, with or without `Bearer`.
    let custom = config("algorithms: [HS256], secret_file: secret, header: X-Token");
    let token = sign(Algorithm::HS256, &claims("a"));
    for value in [token.clone(), format!("Bearer {token}")] {
        let parts = request(&[("x-token", &value)]);
        assert_eq!(
            custom
                .policy
                .identifier
                .identify(&parts, IP, NOW)
                .unwrap()
                .kind,
            Kind::Jwt
        );
    }
}

#[test]
fn bad_sources_are_reported_with_their_place() {
    let bad = |source: &str| {
        let text = format!("upstream: {{ url: \"demo:\" }}\nidentify:\n  - jwt: {{ {source} }}\n");
        load_str(&text, "t.yaml", Some(fixtures()))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        bad("algorithms: [HS256, RS256], secret_env: X"),
        "t.yaml:3:24: identify[0].jwt.algorithms: all algorithms of one source must be of one family (HS*, RS*/PS*, ES* or EdDSA); add a second `jwt` source for another"
    );
    assert_eq!(
        bad("algorithms: [HS257], secret_env: X"),
        "t.yaml:3:25: identify[0].jwt.algorithms[0]: unknown algorithm \"HS257\"; expected HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"
    );
    assert!(bad("algorithms: [RS256], secret_env: X")
        .contains("identify[0].jwt: an RSA source needs exactly one of `public_key_file: PATH` (PEM) or `jwks_file: PATH`"));
    assert!(
        bad("algorithms: [HS256], secret_env: SLUICE_TEST_SURELY_UNSET")
            .contains("environment variable SLUICE_TEST_SURELY_UNSET is not set or empty")
    );
    assert!(
        bad("algorithms: [ES256], public_key_file: rs256-public.pem")
            .contains("identify[0].jwt.public_key_file: not a PEM public key for Ec algorithms")
    );
    assert!(bad("algorithms: [RS256], public_key_file: nope.pem").contains("cannot read"));
    assert!(bad("algorithms: [RS256], jwks_file: jwks.json, plan: gold")
        .contains("unknown plan \"gold\""));
}
