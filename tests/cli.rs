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
fn check_summarises_a_good_policy() {
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sluice.yaml"))
        .unwrap();
    let (code, stdout, stderr) = check(&yaml);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("hello: 5/min sliding_window per key (route)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("plan free  (access denied: 403)"),
        "{stdout}"
    );
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
