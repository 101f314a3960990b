//! JWT callers end to end: HS256, RS256 and ES256 tokens identify; forged, expired and
//! tampered tokens get 401 in the configured envelope and consume nothing; a JWT subject and
//! an API key of the same text count on separate counters.

mod support;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::StatusCode;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{Conn, Sluice};

const SECRET: &str = "an end-to-end test secret";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt")).join(name))
        .unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": unix_now() + 600, "plan": "partner" })
}

fn sign(alg: Algorithm, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture("rs256-private.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture("es256-private.pem")).unwrap(),
        other => panic!("no key for {other:?}"),
    };
    encode(&Header::new(alg), claims, &key).unwrap()
}

async fn start() -> (Sluice, tempfile::TempDir) {
    let upstream = support::upstream().await;
    let dir = support::dir();
    std::fs::write(dir.path().join("rs.pem"), fixture("rs256-public.pem")).unwrap();
    std::fs::write(dir.path().join("es.pem"), fixture("es256-public.pem")).unwrap();
    let config = dir.path().join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {{ url: "http://{upstream}" }}
identify:
  - jwt: {{ algorithms: [HS256], secret_env: SLUICE_TEST_JWT_SECRET, plan_claim: plan, plan: jwt }}
  - jwt: {{ algorithms: [RS256], public_key_file: rs.pem, header: X-RS-Token, plan: jwt }}
  - jwt: {{ algorithms: [ES256], public_key_file: es.pem, header: X-ES-Token, plan: jwt }}
  - api_key: {{ header: X-API-Key }}
keys: [ {{ key: alice, plan: default }} ]
plans:
  jwt: {{ limits: {{ all: 3/min }} }}
  partner: {{ limits: {{ all: 4/min }} }}
  default: {{ limits: {{ all: 2/min }} }}
routes:
  - {{ name: api, match: {{ path: /** }} }}
responses:
  unauthorized: {{ status: 401, body: '{{"statusCode":401,"message":"Unauthorized"}}' }}
"#
        ),
    )
    .unwrap();
    let sluice = Sluice::start(&config, &[("SLUICE_TEST_JWT_SECRET", SECRET)]);
    (sluice, dir)
}

async fn with(conn: &mut Conn, header: &str, value: &str) -> support::Reply {
    conn.send("GET", "/v1/things", &[(header, value)])
        .await
        .unwrap()
}

#[tokio::test]
async fn hs256_rs256_and_es256_tokens_identify_and_take_their_plan() {
    let (sluice, _dir) = start().await;
    let mut conn = sluice.connect().await;
    let hs = format!("Bearer {}", sign(Algorithm::HS256, &claims("hs-user")));
    let first = with(&mut conn, "authorization", &hs).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body, "upstream ok");
    // The plan claim names `partner`: 4/min.
    assert_eq!(first.header("x-ratelimit-limit"), Some("4"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("3"));

    // No plan claim: the source's `plan: jwt`, 3/min.
    let no_plan = json!({ "sub": "rs-user", "exp": unix_now() + 600 });
    let rs = with(&mut conn, "x-rs-token", &sign(Algorithm::RS256, &no_plan)).await;
    assert_eq!(rs.status, StatusCode::OK, "{}", rs.body);
    assert_eq!(rs.header("x-ratelimit-limit"), Some("3"));
    let es = with(&mut conn, "x-es-token", &sign(Algorithm::ES256, &no_plan)).await;
    assert_eq!(es.status, StatusCode::OK, "{}", es.body);
    assert_eq!(es.header("x-ratelimit-limit"), Some("3"));
}

#[tokio::test]
async fn forged_expired_and_tampered_tokens_get_401_and_consume_nothing() {
    let (sluice, _dir) = start().await;
    let mut conn = sluice.connect().await;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let valid = sign(Algorithm::HS256, &claims("victim"));
    let tampered = {
        let mut parts: Vec<String> = valid.split('.').map(String::from).collect();
        parts[1] =
            b64(&json!({ "sub": "someone-else", "exp": unix_now() + 600, "plan": "partner" }));
        parts.join(".")
    };
    let forged = [
        // alg: none
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims("victim"))
        ),
        // signed with another secret
        encode(
            &Header::new(Algorithm::HS256),
            &claims("victim"),
            &EncodingKey::from_secret(b"guess"),
        )
        .unwrap(),
        // expired an hour ago
        sign(
            Algorithm::HS256,
            &json!({ "sub": "victim", "exp": unix_now() - 3600, "plan": "partner" }),
        ),
        tampered,
    ];
    for token in &forged {
        for _ in 0..3 {
            let reply = with(&mut conn, "authorization", &format!("Bearer {token}")).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{token}");
            assert_eq!(reply.body, r#"{"statusCode":401,"message":"Unauthorized"}"#);
        }
    }
    // None of that touched the victim's quota, nor created one for the forged subject.
    for remaining in ["3", "2", "1", "0"] {
        let reply = with(&mut conn, "authorization", &format!("Bearer {valid}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-ratelimit-remaining"), Some(remaining));
    }
    let over = with(&mut conn, "authorization", &format!("Bearer {valid}")).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        sluice
            .metric(r#"sluice_requests_total{route="api",plan="none",decision="unauthorized"}"#)
            .await,
        Some(12.0)
    );
}

#[tokio::test]
async fn a_jwt_subject_and_an_api_key_of_the_same_text_count_separately() {
    let (sluice, _dir) = start().await;
    let mut conn = sluice.connect().await;
    // The key `alice` (plan default, 2/min) used up...
    for _ in 0..2 {
        assert_eq!(
            conn.get("/v1/things", "alice").await.unwrap().status,
            StatusCode::OK
        );
    }
    assert_eq!(
        conn.get("/v1/things", "alice").await.unwrap().status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...leaves the token subject `alice` on the same plan untouched.
    let token = sign(
        Algorithm::HS256,
        &json!({ "sub": "alice", "exp": unix_now() + 600, "plan": "default" }),
    );
    let reply = with(&mut conn, "authorization", &format!("Bearer {token}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("1"));
}
