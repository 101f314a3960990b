//! `sluice explain` on the shipped default config: exact output, no key in it.

mod support;

use std::process::Command;

fn explain(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["explain", "-c"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sluice.yaml"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn explain_a_registered_key() {
    let (ok, out, _) = explain(&["--key", "demo-key", "POST", "/v1/messages"]);
    assert!(ok);
    assert_eq!(
        out,
        "\
request:  POST /v1/messages
target:   /v1/messages
client:   127.0.0.1 (default; set with --ip)
caller:   key sha256:c48a01f4 (registered)
plan:     pro
org:      demo
route:    send (POST /v1/messages), cost 1
limits:   2, every one must allow the request:
  send: 2/s token_bucket burst 4 per key (route), cost 1
  all: 100/min sliding_window per key (plan-wide), cost 1
"
    );
    assert!(!out.contains("demo-key"));
}

#[test]
fn explain_an_anonymous_caller_and_a_denied_plan() {
    let (ok, out, _) = explain(&["--ip", "192.0.2.1", "GET", "/v1/hello"]);
    assert!(ok);
    assert_eq!(
        out,
        "\
request:  GET /v1/hello
target:   /v1/hello
client:   192.0.2.1
caller:   client ip 192.0.2.1 (no key)
plan:     anonymous
route:    hello (GET /v1/hello), cost 1
limits:   2, every one must allow the request:
  hello: 5/min sliding_window per ip (route), cost 1
  all: 30/min sliding_window per ip (plan-wide), cost 1
"
    );
    let (ok, out, _) = explain(&["--key", "demo-free", "GET", "/v1/hello"]);
    assert!(ok);
    assert!(
        out.ends_with("result:   403 denied: plan free has no API access\n"),
        "{out}"
    );
}

/// The canonical target is what routes match: an alias is explained as its canonical path,
/// a target sluice refuses as the answer it gets.
#[test]
fn explain_shows_the_canonical_target() {
    let (ok, out, _) = explain(&["--key", "demo-key", "GET", "//v1/./%68ello"]);
    assert!(ok);
    assert!(
        out.starts_with("request:  GET //v1/./%68ello\ntarget:   /v1/hello\n"),
        "{out}"
    );
    assert!(out.contains("route:    hello (GET /v1/hello)"), "{out}");
    let (ok, out, _) = explain(&["GET", "/v1%2fhello"]);
    assert!(ok);
    assert_eq!(
        out,
        "request:  GET /v1%2fhello\nresult:   400 bad request: the path holds an encoded slash (%2F, %5C or \\)\n"
    );
}

#[test]
fn explain_reports_bad_input_and_bad_configs() {
    let (ok, _, err) = explain(&["GET", "no-slash"]);
    assert!(!ok);
    assert_eq!(
        err,
        "sluice explain: \"no-slash\" is not a request path (expected /PATH[?QUERY] or http://HOST/PATH)\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "upstream: { url: \"demo:\" }\nroutes: [ { name: a, limit: 1/fortnight } ]\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["explain", "-c"])
        .arg(&bad)
        .args(["GET", "/"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8(output.stderr).unwrap();
    assert!(
        err.starts_with(&format!(
            "{}:2:29: routes[0].limit: malformed rate",
            bad.display()
        )),
        "{err}"
    );
}

/// `--jwt` verifies the token as a live request would and explains its caller; a forged one
/// is a 401. `/admin/usage?jwt=` reports the same caller's limits.
#[tokio::test]
async fn explain_and_usage_of_a_jwt_caller() {
    let secret = "explain-secret";
    let token = |key: &[u8]| {
        let claims = serde_json::json!({
            "sub": "user-7",
            "exp": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 600,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples/c-passes.yaml");
    let run = |jwt: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["explain", "-c", config, "--jwt", jwt, "GET", "/passes"])
            .env("PASSES_JWT_SECRET", secret)
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    let out = run(&token(secret.as_bytes()));
    assert!(out.contains("caller:   a verified JWT's subject"), "{out}");
    assert!(out.contains("plan:     jwt"), "{out}");
    assert!(
        out.contains("all: 100/min fixed_window per key (plan-wide)"),
        "{out}"
    );
    let out = run(&token(b"forged"));
    assert!(
        out.contains("result:   401 unauthorized: the JWT failed verification"),
        "{out}"
    );

    let dir = support::dir();
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("listen: 0.0.0.0:8080", "listen: 127.0.0.1:0")
        .replace("listen: 127.0.0.1:9090", "listen: 127.0.0.1:0");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, text).unwrap();
    let sluice = support::Sluice::start(&path, &[("PASSES_JWT_SECRET", secret)]);
    let jwt = token(secret.as_bytes());
    let bearer = format!("Bearer {jwt}");
    let mut conn = sluice.connect().await;
    conn.send("GET", "/passes", &[("authorization", &bearer)])
        .await
        .unwrap();
    let usage = sluice.admin_json(&format!("/admin/usage?jwt={jwt}")).await;
    assert_eq!(usage["caller"]["kind"], "jwt", "{usage}");
    assert_eq!(usage["caller"]["plan"], "jwt", "{usage}");
    assert_eq!(usage["limits"][0]["remaining"], 99, "{usage}");
}
