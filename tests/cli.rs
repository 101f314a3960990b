//! The command line: `check` reports every problem as `file:line:column: message` and exits 1;
//! `--version` and `--help` answer.

use std::process::{Command, Output};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn check(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = sluice(&["check", "-c", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "FILE");
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

#[test]
fn check_reports_every_policy_problem_with_its_place() {
    let (code, _, stderr) = check(
        "upstream: { url: \"demo:\" }
keys:
  - { key: a, plan: gold }
routes:
  - { name: r1, limit: 100/min }
  - { name: r1, match: { path: \"/a/**/b\" } }
",
    );
    assert_eq!(code, 1);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "FILE:3:21: keys[0].plan: unknown plan \"gold\"; plans are: default, anonymous",
            "FILE:6:13: routes[1].name: duplicate route name \"r1\" (first used by routes[0])",
            "FILE:6:32: routes[1].match.path: invalid path pattern \"/a/**/b\": a wildcard must be the last segment ('**' is segment 2)",
        ],
        "{stderr}"
    );
}

#[test]
fn check_reports_malformed_rates_and_unknown_fields() {
    let (code, _, stderr) =
        check("upstream: { url: \"demo:\" }\nroutes:\n  - { name: r1, limit: 100/mni }\n");
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("FILE:3:24: routes[0].limit: malformed rate \"100/mni\""),
        "{stderr}"
    );
    let (code, _, stderr) =
        check("upstream: { url: \"demo:\" }\nroutes:\n  - { name: r3, colour: red }\n");
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("FILE:3:17: routes[0]: unknown field `colour`, expected one of"),
        "{stderr}"
    );
}

#[test]
fn check_reports_every_mistake_in_the_file_in_one_pass() {
    let (code, _, stderr) = check(
        "\
upstream: { url: \"demo:\", timeout: soon }
identfy:
  - api_key: { header: X-API-Key }
plans:
  pro: { limits: { all: 100/mni } }
routes:
  - { name: batch, limt: 10/min, cost: many }
  - { name: read, limit: 300/hr }
plans:
  free: { access: deny }
",
    );
    assert_eq!(code, 1);
    let lines: Vec<&str> = stderr.lines().collect();
    let rate = "expected COUNT/UNIT with UNIT one of s, min, h, d (or COUNT/DURATION like 100/10s)";
    assert_eq!(lines.len(), 7, "{stderr}");
    assert_eq!(lines[0], "FILE:1:36: upstream.timeout: malformed duration \"soon\": expected a number followed by us, ms, s, m, h or d");
    assert!(
        lines[1].starts_with("FILE:2:1: unknown field `identfy`, expected one of `listen`,"),
        "{stderr}"
    );
    assert_eq!(
        lines[2],
        format!("FILE:5:25: plans.pro.limits.all: malformed rate \"100/mni\": {rate}")
    );
    assert!(
        lines[3].starts_with("FILE:7:20: routes[0]: unknown field `limt`, expected one of `name`,"),
        "{stderr}"
    );
    assert_eq!(
        lines[4],
        "FILE:7:40: routes[0].cost: invalid type: string \"many\", expected u32"
    );
    assert_eq!(
        lines[5],
        format!("FILE:8:26: routes[1].limit: malformed rate \"300/hr\": {rate}")
    );
    assert_eq!(
        lines[6],
        "FILE:9:1: plans: duplicate key, first given at line 4; a mapping names each key once"
    );
}

fn default_config() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sluice.yaml")).unwrap()
}

#[test]
fn check_summarises_a_good_policy_in_the_users_words() {
    let (code, stdout, stderr) = check(&default_config());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "", "the default config has no warnings");
    for line in [
        "  callers without a key: counted per ip under plan anonymous\n",
        "  unknown keys: rejected (401)\n",
        "plan free (keys): access denied (403)\n",
        "hello: 5/min sliding_window per key (route)\n",
        // Callers without a key are counted by address, whatever the limit's scope says.
        "hello: 5/min sliding_window per ip (route)\n",
        "read: 20/min sliding_window per ip (plan override)\n",
    ] {
        assert!(stdout.contains(line), "{line} in:\n{stdout}");
    }
    for debug in ["PerIp", "PerKey", "Reject", "Some(", "None", "Key", "Org"] {
        assert!(!stdout.contains(debug), "{debug} in:\n{stdout}");
    }
    assert!(stdout.ends_with(": ok\n"), "{stdout}");
}

#[test]
fn check_warns_about_what_is_valid_but_surely_not_meant_and_exits_0() {
    let (code, stdout, stderr) = check(
        "upstream: { url: \"demo:\" }
keys: [ { key: a, plan: pro }, { key: b, plan: internal } ]
plans:
  pro: { limits: { all: 100/min } }
  internal: { limits: { api: none, send: none } }
routes:
  - { name: api, match: { path: /v1/** }, limit: 300/min }
  - { name: send, match: { method: POST, path: /v1/messages }, limit: 120/min }
",
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "warning: FILE:5:3: plans.internal: plan \"internal\" has no limits at all: its callers are never limited; give it a plan-wide limit (`limits: { all: RATE }`) or `access: deny`",
            "warning: FILE:7:50: routes[0].limit: limit \"api\" (300/min) is never reached under plan \"pro\" (all: 100/min): the plan-wide limit counts the same requests and runs out no later",
            "warning: FILE:8:26: routes[1].match: route \"send\" never matches: route \"api\" (routes[0]) comes first and matches every request it would",
        ]
    );
    assert!(stdout.ends_with(": ok, 3 warnings\n"), "{stdout}");
}

#[test]
fn check_json_prints_the_policy_or_the_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, default_config()).unwrap();
    let out = sluice(&["check", "--json", "-c", path.to_str().unwrap()]);
    assert!(out.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["source"], path.to_str().unwrap());
    assert_eq!(shown["warnings"], serde_json::json!([]));
    let plans = shown["policy"]["plans"].as_array().unwrap();
    let pro = plans.iter().find(|p| p["name"] == "pro").unwrap();
    assert_eq!(pro["callers"], serde_json::json!(["keys"]));
    let hello = &pro["routes"][1];
    assert_eq!(hello["route"], "hello");
    assert_eq!(
        hello["limits"],
        serde_json::json!([
            { "name": "hello", "rate": "5/min", "algorithm": "sliding_window", "per": "key", "shadow": false, "origin": "route" },
            { "name": "all", "rate": "100/min", "algorithm": "sliding_window", "per": "key", "shadow": false, "origin": "plan-wide" },
        ])
    );
    let anonymous = plans.iter().find(|p| p["name"] == "anonymous").unwrap();
    assert_eq!(anonymous["routes"][1]["limits"][0]["per"], "ip");
    assert_eq!(
        shown["policy"]["identify"]["anonymous"],
        serde_json::json!({ "plan": "anonymous", "per": "ip" })
    );
    assert_eq!(shown["policy"]["identify"]["unknown_key"], "reject");

    std::fs::write(
        &path,
        "upstream: { url: \"demo:\" }\nroutes: [ { name: a, limit: 5/mni } ]\n",
    )
    .unwrap();
    let out = sluice(&["check", "--json", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = &shown["errors"][0];
    assert_eq!(
        (error["line"].as_u64(), error["column"].as_u64()),
        (Some(2), Some(29))
    );
    assert!(error["message"]
        .as_str()
        .unwrap()
        .starts_with("routes[0].limit: malformed rate"));
}

/// The policy in README.md's tour, as written.
fn readme_tour() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let tour = &readme[readme.find("## A tour of the YAML").unwrap()..];
    let start = tour.find("```yaml\n").unwrap() + "```yaml\n".len();
    let end = start + tour[start..].find("```").unwrap();
    tour[start..end].to_string()
}

#[test]
fn the_readme_tour_checks_without_warnings() {
    let (code, stdout, stderr) = check(&readme_tour());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "");
    assert!(stdout.contains("plan anonymous (client ips)\n"), "{stdout}");
}

/// `sluice … | head` closes the pipe early: every command ends quietly, with its own status.
#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, default_config()).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "upstream: { url: \"demo:\" }\nroutes: [ { name: a, limit: 5/mni } ]\n",
    )
    .unwrap();
    let (good, bad) = (good.to_str().unwrap(), bad.to_str().unwrap());
    for (args, status) in [
        (&["schema"][..], 0),
        (&["check", "-c", good], 0),
        (&["check", "--json", "-c", good], 0),
        (&["check", "-c", bad], 1),
        (&["check", "--json", "-c", bad], 1),
        (
            &[
                "explain",
                "-c",
                good,
                "--key",
                "demo-key",
                "GET",
                "/v1/hello",
            ],
            0,
        ),
        (&["--help"], 0),
        (&["--version"], 0),
    ] {
        // A real pipe whose reading end is closed before sluice writes a byte.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert_eq!(out.status.code(), Some(status), "{args:?}: {stderr}");
    }
}

/// A setting an older sluice used and this one ignores: accepted, with a warning that
/// names its place, so a fleet's next restart does not stop on it.
#[test]
fn check_warns_about_a_removed_setting_and_accepts_the_config() {
    let (code, stdout, stderr) = check("upstream:\n  url: \"demo:\"\n  batch_writes: false\n");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stderr.trim(),
        "warning: FILE:3:17: upstream.batch_writes: no longer used and ignored \
         (the io_uring write batching was removed); delete the line"
    );
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn version_and_help() {
    let out = sluice(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sluice {}", env!("CARGO_PKG_VERSION"))
    );
    let out = sluice(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "check"] {
        assert!(help.contains(command), "{help}");
    }
}
