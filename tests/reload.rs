//! Hot reload end to end: the real binary under load, reloaded by the admin endpoint,
//! SIGHUP and file changes (editor renames, ConfigMap symlink swaps).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use http::StatusCode;
use sha2::{Digest, Sha256};
use support::{eventually, Sluice};

/// A config whose `probe` route allows `probe` requests a minute.
fn config(upstream: SocketAddr, probe: u32, extra: &str) -> String {
    format!(
        "\
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream: {{ url: \"http://{upstream}\" }}
unknown_key: {{ plan: default }}
routes:
  - {{ name: load,  match: {{ path: /load }},  limit: {{ rate: 1000000/s, algorithm: token_bucket }} }}
  - {{ name: probe, match: {{ path: /probe }}, limit: {probe}/min }}
{extra}"
    )
}

/// Invalid configs of several kinds, each with the line:column it must be reported at.
fn invalid(upstream: SocketAddr, n: usize) -> (String, &'static str) {
    let good = config(upstream, 100, "");
    match n % 4 {
        0 => (good.replace("100/min", "100/mni"), ":7:52: routes[1].limit"),
        1 => (
            good.replace("match: { path: /probe }", "mtch: { path: /probe }"),
            ":7:20: routes[1]: unknown field `mtch`",
        ),
        2 => (
            good.replace(
                "unknown_key: { plan: default }",
                "unknown_key: { plan: gold }",
            ),
            ":4:22: unknown_key.plan: unknown plan \"gold\"",
        ),
        _ => (good.replace("routes:", "routes: ["), ":6:"),
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_drop_no_connection() {
    let upstream = support::upstream().await;
    let dir = support::dir();
    let path = dir.path().join("sluice.yaml");
    // The watcher is off so that exactly the 50 admin reloads are counted.
    let no_watch = "reload: { watch: false }\n";
    write(&path, &config(upstream, 100, no_watch));
    let sluice = Sluice::start(&path, &[]);

    // Continuous load: four keep-alive connections, each sending request after request.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let mut conn = sluice.connect().await;
        let (stop, served) = (stop.clone(), served.clone());
        workers.push(tokio::spawn(async move {
            let key = format!("load-{w}");
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match conn.get("/load", &key).await {
                    Ok(reply) if reply.status == StatusCode::OK => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(reply) => failures.push(format!("status {}: {}", reply.status, reply.body)),
                    Err(error) => {
                        failures.push(format!("connection failed: {error}"));
                        break;
                    }
                }
            }
            failures
        }));
    }

    let mut probe = sluice.connect().await;
    let mut active = 100;
    for i in 0..50 {
        let at_start = served.load(Ordering::Relaxed);
        if i % 2 == 0 {
            active = 101 + i as u32;
            write(&path, &config(upstream, active, no_watch));
            let (status, body) = sluice.admin("POST", "/admin/reload", None).await;
            assert_eq!(status, StatusCode::OK, "reload {i}: {body}");
            let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(reply["result"], "ok");
            assert_eq!(reply["restart_required"], serde_json::json!([]));
        } else {
            let (text, place) = invalid(upstream, i / 2);
            write(&path, &text);
            let (status, body) = sluice.admin("POST", "/admin/reload", None).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "reload {i}: {body}"
            );
            let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
            let first = reply["errors"][0].as_str().unwrap();
            assert!(
                first.starts_with(&format!("{}{place}", path.display())),
                "reload {i}: {first}"
            );
        }
        // The limit in force is the last valid one.
        let reply = probe.get("/probe", "probe").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.header("x-ratelimit-limit"),
            Some(active.to_string().as_str()),
            "after reload {i}"
        );
        // Requests keep flowing between reloads (not a speed check: it only waits for one).
        eventually("load between reloads", async || {
            served.load(Ordering::Relaxed) > at_start
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let failures = worker.await.unwrap();
        assert!(failures.is_empty(), "{failures:#?}");
    }
    assert!(served.load(Ordering::Relaxed) >= 50);

    let ok = sluice
        .metric("sluice_config_reloads_total{result=\"ok\"}")
        .await;
    let error = sluice
        .metric("sluice_config_reloads_total{result=\"error\"}")
        .await;
    assert_eq!((ok, error), (Some(25.0), Some(25.0)));
    assert_eq!(
        sluice.metric("sluice_config_last_reload_successful").await,
        Some(0.0)
    );
    let last_ok = sluice
        .metric("sluice_config_last_reload_success_timestamp_seconds")
        .await
        .unwrap();
    assert!(last_ok > 1.6e9, "a unix time: {last_ok}");
    let log = sluice.log_text();
    assert_eq!(
        log.matches("config reload failed; keeping the running config")
            .count(),
        25
    );
    assert!(
        log.contains(&format!(
            "{}:7:52: routes[1].limit: malformed rate",
            path.display()
        )),
        "{log}"
    );
}

#[tokio::test]
async fn sighup_reloads_and_counters_carry_over() {
    let upstream = support::upstream().await;
    let dir = support::dir();
    let path = dir.path().join("sluice.yaml");
    // Fixed hour windows: the count is exact unless an hour boundary falls inside the
    // test, which the reset header reveals; then the test starts over with a new key.
    let rated = |rate: &str| {
        config(upstream, 100, "").replace(
            "{ path: /probe }, limit: 100/min",
            &format!("{{ path: /probe }}, limit: {{ rate: {rate}, algorithm: fixed_window }}"),
        )
    };
    write(&path, &rated("5/h"));
    let sluice = Sluice::start(&path, &[]);
    let mut conn = sluice.connect().await;
    for attempt in 0..3 {
        write(&path, &rated("5/h"));
        let key = format!("upgrade-{attempt}");
        if attempt > 0 {
            sluice.hangup();
            wait_for_hash(&sluice, &path).await;
        }
        let mut resets = Vec::new();
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let reply = conn.get("/probe", &key).await.unwrap();
            resets.push(reply.header("x-ratelimit-reset").unwrap().to_string());
            statuses.push(reply.status.as_u16());
        }
        // 5/h → 10/h by SIGHUP: a tier upgrade on a key that has already used 5.
        write(&path, &rated("10/h"));
        sluice.hangup();
        wait_for_hash(&sluice, &path).await;
        for _ in 0..6 {
            let reply = conn.get("/probe", &key).await.unwrap();
            resets.push(reply.header("x-ratelimit-reset").unwrap().to_string());
            statuses.push(reply.status.as_u16());
        }
        if resets.iter().any(|r| *r != resets[0]) {
            continue; // an hour boundary passed mid-test
        }
        assert_eq!(
            statuses,
            [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 429]
        );
        assert!(
            sluice.log_text().contains("trigger=\"SIGHUP\"")
                || sluice.log_text().contains("trigger=SIGHUP")
        );
        return;
    }
    panic!("three hour boundaries in a row");
}

/// Waits until `/admin/config` reports the hash of the file at `path`.
async fn wait_for_hash(sluice: &Sluice, path: &Path) {
    let expected = hex::encode(Sha256::digest(std::fs::read(path).unwrap()));
    eventually("the new config", async || {
        sluice.admin_json("/admin/config").await["sha256"] == expected.as_str()
    })
    .await;
}

#[tokio::test]
async fn file_changes_are_picked_up_by_rename_and_configmap_symlink_swap() {
    let upstream = support::upstream().await;
    let dir = support::dir();
    let root = dir.path();
    let fast = "reload: { interval: 50ms }\n";
    // Kubernetes layout: sluice.yaml → ..data/sluice.yaml, ..data → ..<version>.
    let publish = |version: &str, text: &str| {
        let dir = root.join(version);
        std::fs::create_dir(&dir).unwrap();
        write(&dir.join("sluice.yaml"), text);
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
    };
    publish("..2024_01", &config(upstream, 100, fast));
    std::os::unix::fs::symlink("..data/sluice.yaml", root.join("sluice.yaml")).unwrap();
    let path = root.join("sluice.yaml");
    let sluice = Sluice::start(&path, &[]);
    let mut conn = sluice.connect().await;
    let limit = async |conn: &mut support::Conn| {
        let reply = conn.get("/probe", "watcher").await.unwrap();
        reply.header("x-ratelimit-limit").unwrap().to_string()
    };
    assert_eq!(limit(&mut conn).await, "100");

    publish("..2024_02", &config(upstream, 200, fast));
    eventually("the ConfigMap swap", async || {
        limit(&mut conn).await == "200"
    })
    .await;

    // A broken file is reported and ignored; the running limit stays.
    publish("..2024_03", "routes: [\n");
    eventually("the failed reload", async || {
        sluice
            .metric("sluice_config_reloads_total{result=\"error\"}")
            .await
            == Some(1.0)
    })
    .await;
    assert_eq!(limit(&mut conn).await, "200");

    // An editor saving by rename over the target (here the versioned file itself).
    support::replace(
        &root.join("..2024_03/sluice.yaml"),
        &config(upstream, 400, fast),
    );
    eventually("the editor save", async || limit(&mut conn).await == "400").await;
    let shown = sluice.admin_json("/admin/config").await;
    assert_eq!(shown["source"], path.display().to_string());
    assert_eq!(
        sluice
            .metric("sluice_config_reloads_total{result=\"ok\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn admin_endpoints_need_the_token_when_one_is_set() {
    let upstream = support::upstream().await;
    let dir = support::dir();
    let path = dir.path().join("sluice.yaml");
    let extra = "reload: { watch: false }\n";
    let text = config(upstream, 100, extra).replace(
        "admin: { listen: 127.0.0.1:0 }",
        "admin: { listen: 127.0.0.1:0, token_env: SLUICE_TEST_ADMIN_TOKEN }",
    );
    write(&path, &text);
    let sluice = Sluice::start(&path, &[("SLUICE_TEST_ADMIN_TOKEN", "s3cret")]);

    let (status, body) = sluice.admin("GET", "/admin/config", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = sluice.admin("POST", "/admin/reload", Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Probes and scrapers need no token.
    assert_eq!(
        sluice.admin("GET", "/metrics", None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        sluice.admin("GET", "/healthz", None).await.0,
        StatusCode::OK
    );

    let (status, body) = sluice.admin("GET", "/admin/config", Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    assert_eq!(shown["sha256"], sha.as_str());
    assert_eq!(shown["files"][0]["sha256"], sha.as_str());
    assert_eq!(shown["source"], path.display().to_string());
    assert!(shown["loaded_at"].as_str().unwrap().ends_with('Z'));

    let mut conn = sluice.connect().await;
    for _ in 0..3 {
        assert_eq!(
            conn.get("/probe", "k-usage").await.unwrap().status,
            StatusCode::OK
        );
    }
    let (status, body) = sluice
        .admin("GET", "/admin/usage?key=k-usage", Some("s3cret"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let usage: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(usage["caller"]["kind"], "unknown_key");
    assert!(!body.contains("k-usage"), "the key is never echoed");
    let probe = usage["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "probe")
        .unwrap();
    assert_eq!(
        (probe["used"].as_u64(), probe["remaining"].as_u64()),
        (Some(3), Some(97))
    );
    let (status, body) = sluice.admin("GET", "/admin/usage", Some("s3cret")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("?key=KEY, ?jwt=TOKEN or ?ip=ADDR"), "{body}");

    // The token itself is re-read on reload: a config without one opens the endpoints.
    write(&path, &config(upstream, 100, extra));
    let (status, body) = sluice.admin("POST", "/admin/reload", Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        sluice.admin("GET", "/admin/config", None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn restart_only_settings_are_reported_and_left_alone() {
    let upstream = support::upstream().await;
    let dir = support::dir();
    let path = dir.path().join("sluice.yaml");
    write(&path, &config(upstream, 100, "reload: { watch: false }\n"));
    let sluice = Sluice::start(&path, &[]);
    let moved = config(upstream, 150, "reload: { watch: false }\n")
        .replace("listen: 127.0.0.1:0\n", "listen: 127.0.0.1:1\n");
    write(&path, &moved);
    let (status, body) = sluice.admin("POST", "/admin/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        reply["restart_required"],
        serde_json::json!(["listen: 127.0.0.1:0 → 127.0.0.1:1"])
    );
    // Still serving on the old socket, with the new limits.
    let mut conn = sluice.connect().await;
    let reply = conn.get("/probe", "k").await.unwrap();
    assert_eq!(reply.header("x-ratelimit-limit"), Some("150"));
    assert!(sluice.log_text().contains("restart required"));
}
