//! The deployment kit stays true to the binary: every file under deploy/ parses, the
//! policies in it compile, the manifests validate, and every metric the dashboard and the
//! alert rules use is one sluice really exports — checked by a real Prometheus scrape.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn deploy_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .as_path(),
        &mut files,
    );
    files.sort();
    files
}

fn yaml_documents(path: &Path) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

#[test]
fn every_file_parses_and_every_policy_compiles() {
    let mut policies = 0;
    for path in deploy_files() {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                let text = std::fs::read_to_string(&path).unwrap();
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            Some("yaml" | "yml") => {
                for doc in yaml_documents(&path) {
                    // A ConfigMap carrying a sluice policy: it must compile.
                    if let Some(policy) = doc
                        .get("data")
                        .and_then(|d| d.get("sluice.yaml"))
                        .and_then(|p| p.as_str())
                    {
                        sluice::config::load_str(policy, &path.display().to_string(), None)
                            .unwrap_or_else(|e| panic!("{e}"));
                        policies += 1;
                    }
                }
                if path.parent().is_some_and(|p| p.ends_with("compose")) {
                    sluice::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                    policies += 1;
                }
            }
            _ => panic!("unexpected file in deploy/: {}", path.display()),
        }
    }
    assert_eq!(
        policies, 3,
        "the Kubernetes ConfigMap and the two compose replicas' policies"
    );
}

#[test]
fn kubernetes_manifests_validate_against_their_schemas() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/sluice.yaml");
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn"])
        .arg(&manifest)
        .output()
        .expect(
            "kubernetes-validate is installed by scripts/test (pip install kubernetes-validate)",
        );
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(report.matches("passed").count(), 3, "{report}");
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    let output = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Metric names in PromQL expressions of the dashboard and the alert rules.
fn metrics_used() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut text = std::fs::read_to_string(dir.join("grafana/dashboards/sluice.json")).unwrap();
    text.push_str(&std::fs::read_to_string(dir.join("prometheus/alerts.yml")).unwrap());
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("sluice_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_real_prometheus_scrapes_every_metric_the_kit_uses() {
    let dir = std::env::temp_dir().join(format!("sluice-deploy-kit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (proxy, admin, prom) = (free_port(), free_port(), free_port());
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    std::fs::write(
        dir.join("sluice.yaml"),
        format!(
            "listen: 127.0.0.1:{proxy}\nadmin: {{ listen: 127.0.0.1:{admin} }}\nupstream: {{ url: \"demo:\" }}\n\
             routes: [ {{ name: hello, limit: 1/min }} ]\nunknown_key: {{ plan: default, per: key }}\nlog: {{ level: warn }}\n"
        ),
    )
    .unwrap();
    let _sluice = Process(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "-c"])
            .arg(dir.join("sluice.yaml"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("sluice", || {
        get(admin_addr, "/healthz").is_some_and(|(s, _)| s == 200)
    });
    // One allowed and one limited request, so the decision series have moved.
    let proxy_addr: SocketAddr = format!("127.0.0.1:{proxy}").parse().unwrap();
    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy_addr).unwrap();
        write!(s, "GET /x HTTP/1.0\r\nX-API-Key: k\r\n\r\n").unwrap();
        let _ = s.read_to_string(&mut String::new());
    }

    let (_, exposition) = get(admin_addr, "/metrics").unwrap();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let used = metrics_used();
    assert!(used.len() >= 8, "{used:?}");
    for name in &used {
        assert!(
            exposition.contains(&format!("\n{name}"))
                || exposition.contains(&format!("# TYPE {name} ")),
            "{name} is used by deploy/ but not exported"
        );
    }

    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: sluice\n    static_configs: [ {{ targets: ['127.0.0.1:{admin}'] }} ]\n"),
    )
    .unwrap();
    let _prometheus = Process(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus"),
    );
    let prom_addr: SocketAddr = format!("127.0.0.1:{prom}").parse().unwrap();
    let query = |q: &str| get(prom_addr, &format!("/api/v1/query?query={q}")).map(|(_, body)| body);
    wait_for("a Prometheus scrape of sluice", || {
        query("sluice_build_info").is_some_and(|b| b.contains("\"version\":\"0.1.0\""))
    });
    let limited =
        query("sluice_requests_total%7Bdecision%3D%22limited%22%2Croute%3D%22hello%22%7D").unwrap();
    assert!(
        limited.contains("\"value\":[") && limited.contains("\"1\"]"),
        "{limited}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
