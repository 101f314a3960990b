//! The effective config: `/admin/config` shows the compiled policy of the running gateway,
//! `sluice check --json` shows the same for the file, and neither shows a secret.

mod support;

use std::process::Command;

use support::{config_file, Sluice};

const SECRETS: [(&str, &str); 2] = [
    ("SLUICE_TEST_ADMIN_TOKEN", "admin-token-SECRET-1"),
    ("SLUICE_TEST_JWT_SECRET", "jwt-hmac-SECRET-2"),
];
const KEY: &str = "clear-key-SECRET-3";

#[tokio::test]
async fn the_running_policy_matches_check_json_and_shows_no_secret() {
    let (_dir, path) = config_file(&format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0, token_env: SLUICE_TEST_ADMIN_TOKEN }}
upstream: {{ url: "demo:" }}
identify:
  - jwt: {{ algorithms: [HS256], secret_env: SLUICE_TEST_JWT_SECRET }}
  - api_key: {{ header: X-API-Key }}
  - ip: {{}}
keys:
  - {{ key: {KEY}, plan: pro, limits: {{ send: 5/s }} }}
plans:
  pro: {{ limits: {{ all: 1000/min }} }}
  anonymous: {{ limits: {{ all: 600/min }} }}
routes:
  - {{ name: send, match: {{ method: POST, path: /send }}, limit: 120/min }}
  - {{ name: open, match: {{ path: /open }} }}
  - {{ name: read, match: {{ path: /read }}, limit: 10/s }}
  - {{ name: reread, match: {{ method: GET, path: /read }}, limit: 10/s }}
"#
    ));
    let sluice = Sluice::start(&path, &SECRETS);
    let (status, body) = sluice
        .admin("GET", "/admin/config", Some(SECRETS[0].1))
        .await;
    assert_eq!(status, 200, "{body}");
    let running: serde_json::Value = serde_json::from_str(&body).unwrap();

    let checked = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--json", "-c"])
        .arg(&path)
        .envs(SECRETS)
        .output()
        .unwrap();
    assert!(checked.status.success());
    let checked_text = String::from_utf8(checked.stdout).unwrap();
    let checked: serde_json::Value = serde_json::from_str(&checked_text).unwrap();

    for field in ["source", "sha256", "files", "warnings"] {
        assert_eq!(running[field], checked[field], "{field}");
    }
    // The running policy listens where the OS put it; the rest is the file's.
    let mut policy = running["policy"].clone();
    policy["listen"] = checked["policy"]["listen"].clone();
    policy["admin"]["listen"] = checked["policy"]["admin"]["listen"].clone();
    assert_eq!(policy, checked["policy"]);

    for text in [&body, &checked_text] {
        for secret in SECRETS.iter().map(|(_, s)| *s).chain([KEY]) {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    assert_eq!(running["policy"]["admin"]["token"], true);
    assert_eq!(running["policy"]["identify"]["registered_keys"], 1);

    // Every plan, route and limit with its origin.
    let pro = &running["policy"]["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "pro")
        .unwrap()["routes"];
    assert_eq!(pro[0]["route"], "send");
    assert_eq!(pro[0]["limits"][0]["origin"], "route");
    assert_eq!(pro[0]["limits"][1]["origin"], "plan-wide");
    assert_eq!(pro[4]["route"], "unmatched");
    let anonymous = running["policy"]["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "anonymous")
        .unwrap()
        .clone();
    assert_eq!(anonymous["callers"], serde_json::json!(["client ips"]));
    assert_eq!(anonymous["routes"][0]["limits"][0]["per"], "ip");

    // The warning a start logs is the one the document lists.
    let warnings = running["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let message = warnings[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("routes[3].match: route \"reread\" never matches"),
        "{message}"
    );
    assert!(sluice.log_text().contains(message), "{}", sluice.log_text());
}
