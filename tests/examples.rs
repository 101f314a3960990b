//! Every config in `config/examples/` passes `sluice check`, and the examples of issue 4 say
//! what their comments promise: keys by SHA-256 are found, org limits are shared.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use http::StatusCode;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_passes_check() {
    let files = examples();
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("check")
            .arg("-c")
            .arg(&file)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}:\n{}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Runs an example against a real upstream on loopback ports.
async fn run(example: &str) -> (support::Sluice, tempfile::TempDir) {
    let upstream = support::upstream().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let text = std::fs::read_to_string(root.join(example))
        .unwrap()
        .replace(
            "listen: 0.0.0.0:8080",
            "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }",
        )
        .replace("http://127.0.0.1:3000", &format!("http://{upstream}"));
    let dir = support::dir();
    let path = dir.path().join(example);
    std::fs::write(&path, text).unwrap();
    (support::Sluice::start(&path, &[]), dir)
}

#[tokio::test]
async fn keys_listed_by_sha256_are_found_by_their_clear_text() {
    let (sluice, _dir) = run("sha256-keys.yaml").await;
    let mut conn = sluice.connect().await;
    let ok = conn.get("/v1/things", "zk_live_acme_ops").await.unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        ok.header("x-ratelimit-limit"),
        Some("300"),
        "the read limit"
    );
    let bearer = conn
        .send(
            "GET",
            "/v1/things",
            &[("authorization", "Bearer zk_live_globex")],
        )
        .await
        .unwrap();
    assert_eq!(bearer.status, StatusCode::OK);
    let unknown = conn.get("/v1/things", "zk_live_guess").await.unwrap();
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn keys_of_one_organisation_share_its_limit() {
    let (sluice, _dir) = run("org-wide.yaml").await;
    let mut conn = sluice.connect().await;
    // acme's sends: 120/min per key, 200/min for the organisation.
    let send = async |conn: &mut support::Conn, key: &str| {
        conn.send("POST", "/v1/messages", &[("x-api-key", key)])
            .await
            .unwrap()
            .status
    };
    for _ in 0..120 {
        assert_eq!(send(&mut conn, "zk_live_acme_web").await, StatusCode::OK);
    }
    for _ in 0..80 {
        assert_eq!(send(&mut conn, "zk_live_acme_batch").await, StatusCode::OK);
    }
    // The second key has 40 of its own left, but the organisation has none.
    let over = conn
        .send(
            "POST",
            "/v1/messages",
            &[("x-api-key", "zk_live_acme_batch")],
        )
        .await
        .unwrap();
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(over.body.contains("send-org"), "{}", over.body);
    let other = conn
        .send("POST", "/v1/messages", &[("x-api-key", "zk_live_globex")])
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::OK);
}
