use std::path::Path;

use super::*;
use crate::inspect::{head, Caller, DEFAULT_IP};
use crate::limiter::clock::{Clock, ManualClock};
use crate::limiter::store::memory::MemoryStore;
use crate::limiter::store::{Checking, Store};
use crate::policy::Policy;

/// 2023-11-14T22:13:20Z plus 15 s: mid-window, the clock never moves.
const NOW: Nanos = 1_700_000_015 * SECOND;

fn policy(rate: &str) -> String {
    format!(
        "upstream: {{ url: \"demo:\" }}\nkeys: [ {{ key: k1, plan: default }} ]\nroutes:\n  - {{ name: hello, match: {{ path: /hello }}, limit: {rate} }}\n"
    )
}

fn gateway(path: &Path) -> Arc<Gateway> {
    let config = config::load(path).unwrap_or_else(|e| panic!("{e}"));
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::at(NOW));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1000));
    Arc::new(Gateway::new(config, store, clock))
}

/// Counts one request of `k1` on `/hello` under the running config, as the proxy would.
fn allowed(gateway: &Gateway) -> bool {
    let snapshot = gateway.snapshot.load();
    let policy = &snapshot.config.policy;
    let caller = Caller {
        key: Some("k1".into()),
        ..Caller::default()
    };
    let parts = head(policy, &caller, "GET", "/hello").unwrap();
    let identity = policy.identifier.identify(&parts, DEFAULT_IP, 0).unwrap();
    let route = policy.find(&parts);
    let limits = policy.limits(policy.profile(&identity), route).unwrap();
    let checks = Policy::checks(limits, &identity, DEFAULT_IP, 1);
    let Checking::Ready(Ok(outcomes)) = gateway.store.check(&checks, NOW) else {
        panic!("the memory store answers at once");
    };
    outcomes.iter().all(|o| o.allowed)
}

fn count_allowed(gateway: &Gateway, tries: usize) -> usize {
    (0..tries).filter(|_| allowed(gateway)).count()
}

#[test]
fn raising_a_limit_keeps_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.yaml");
    std::fs::write(&path, policy("5/min")).unwrap();
    let gateway = gateway(&path);
    let reloader = Reloader::new(gateway.clone());

    assert_eq!(count_allowed(&gateway, 5), 5);
    assert!(!allowed(&gateway), "the 6th of 5/min is rejected");

    std::fs::write(&path, policy("10/min")).unwrap();
    let applied = reloader.reload(Trigger::Admin).unwrap();
    assert!(applied.restart_required.is_empty());
    // 5 counted before the reload: 5 more fit under 10/min, not 10.
    assert_eq!(count_allowed(&gateway, 10), 5);

    // Lowering it below the count rejects at once; raising it again frees the difference.
    std::fs::write(&path, policy("8/min")).unwrap();
    reloader.reload(Trigger::Signal).unwrap();
    assert!(!allowed(&gateway));
    std::fs::write(&path, policy("12/min")).unwrap();
    reloader.reload(Trigger::Watch).unwrap();
    assert_eq!(count_allowed(&gateway, 5), 2);
}

#[test]
fn a_bad_file_keeps_the_running_config_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.yaml");
    std::fs::write(&path, policy("5/min")).unwrap();
    let gateway = gateway(&path);
    let reloader = Reloader::new(gateway.clone());
    let before = gateway.snapshot.load().config.sha256;

    std::fs::write(&path, policy("5/fortnight")).unwrap();
    let Err(ReloadError::Invalid(errors)) = reloader.reload(Trigger::Admin) else {
        panic!("a malformed rate must not load");
    };
    let shown = errors.to_string();
    let expected = format!("{}:4:52: routes[0].limit: malformed rate", path.display());
    assert!(shown.starts_with(&expected), "{shown}");
    assert_eq!(gateway.snapshot.load().config.sha256, before);
    assert_eq!(count_allowed(&gateway, 6), 5, "still 5/min");

    std::fs::remove_file(&path).unwrap();
    let Err(ReloadError::Invalid(errors)) = reloader.reload(Trigger::Admin) else {
        panic!("a missing file must not load");
    };
    assert!(errors.to_string().contains("cannot read the config"));
    assert_eq!(gateway.snapshot.load().config.sha256, before);
}

#[test]
fn settings_outside_the_snapshot_are_reported_as_restart_required() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.yaml");
    std::fs::write(&path, policy("5/min")).unwrap();
    let gateway = gateway(&path);
    let reloader = Reloader::new(gateway.clone());
    let moved = format!(
        "listen: 127.0.0.1:1234\nstore: {{ max_entries: 10 }}\nlog: {{ format: json }}\n{}",
        policy("7/min")
    );
    std::fs::write(&path, moved).unwrap();
    let applied = reloader.reload(Trigger::Admin).unwrap();
    assert_eq!(
        applied.restart_required,
        vec![
            "listen: 0.0.0.0:8080 → 127.0.0.1:1234",
            "store.max_entries: 1000000 → 10",
            "log.format: text → json",
        ]
    );
    // Everything else took effect.
    assert_eq!(count_allowed(&gateway, 8), 7);

    // Switching to Redis needs a restart; the URL's password is never shown.
    let redis = format!(
        "listen: 127.0.0.1:1234\nstore: {{ max_entries: 10, backend: redis, url: \"redis://:pw@r:6379\" }}\nlog: {{ format: json }}\n{}",
        policy("7/min")
    );
    std::fs::write(&path, redis).unwrap();
    let applied = reloader.reload(Trigger::Admin).unwrap();
    assert_eq!(
        applied.restart_required,
        vec!["store: memory → redis redis://***@r:6379 (timeout 50ms, on_error allow, prefix sluice, strict)"]
    );
}

#[test]
fn the_keys_file_is_part_of_the_config_and_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.yaml");
    let keys = dir.path().join("keys.yaml");
    let main = "upstream: { url: \"demo:\" }\nkeys_file: keys.yaml\nroutes: [ { name: hello, limit: 5/min } ]\n";
    std::fs::write(&path, main).unwrap();
    std::fs::write(&keys, "- { key: k1, plan: default }\n").unwrap();
    let gateway = gateway(&path);
    let reloader = Reloader::new(gateway.clone());
    {
        let config = &gateway.snapshot.load().config;
        assert_eq!(config.inputs.len(), 2);
        assert_eq!(config.inputs[1].path, keys);
        let both = format!("{main}- {{ key: k1, plan: default }}\n");
        assert_eq!(config.sha256, <[u8; 32]>::from(Sha256::digest(both)));
    }
    assert!(allowed(&gateway));
    std::fs::write(&keys, "- { key: k2, plan: default }\n").unwrap();
    reloader.reload(Trigger::Admin).unwrap();
    let snapshot = gateway.snapshot.load();
    let caller = Caller {
        key: Some("k1".into()),
        ..Caller::default()
    };
    let parts = head(&snapshot.config.policy, &caller, "GET", "/hello").unwrap();
    assert!(
        snapshot
            .config
            .policy
            .identifier
            .identify(&parts, DEFAULT_IP, 0)
            .is_err(),
        "k1 left the keys file"
    );
}

#[test]
fn the_embedded_config_has_nothing_to_reload() {
    let config = config::load_str(config::EMBEDDED_DEFAULT, "<embedded>", None).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::at(NOW));
    let gateway = Arc::new(Gateway::new(config, Arc::new(MemoryStore::new(10)), clock));
    let reloader = Reloader::new(gateway);
    assert!(matches!(
        reloader.reload(Trigger::Signal),
        Err(ReloadError::NoFile)
    ));
}

#[tokio::test]
async fn the_watcher_follows_a_configmap_symlink_swap_and_ignores_touches() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let configmap = |name: &str, rate: &str| {
        let version = root.join(name);
        std::fs::create_dir(&version).unwrap();
        let text = format!("reload: {{ interval: 20ms }}\n{}", policy(rate));
        std::fs::write(version.join("sluice.yaml"), text).unwrap();
        // Kubernetes: write `..data_tmp` → new dir, then rename it over `..data`.
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
    };
    configmap("..v1", "5/min");
    std::os::unix::fs::symlink("..data/sluice.yaml", root.join("sluice.yaml")).unwrap();
    let gateway = gateway(&root.join("sluice.yaml"));
    let reloader = Arc::new(Reloader::new(gateway.clone()));
    let watcher = tokio::spawn(reloader.clone().watch());
    let limit = || {
        let snapshot = gateway.snapshot.load();
        let policy = &snapshot.config.policy;
        policy.profiles[0].by_route[0].as_ref().unwrap()[0]
            .quota
            .limit()
    };
    let loaded_at = gateway.snapshot.load().loaded_at;

    configmap("..v2", "9/min");
    for _ in 0..200 {
        if limit() == 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(limit(), 9, "the swap was picked up");

    // Rewriting the same content is no change: the snapshot stays.
    let swapped = gateway.snapshot.load_full();
    std::fs::write(
        root.join("..v2/sluice.yaml"),
        std::fs::read(root.join("..v2/sluice.yaml")).unwrap(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(Arc::ptr_eq(&swapped, &gateway.snapshot.load_full()));
    assert_eq!(
        swapped.loaded_at, loaded_at,
        "the manual clock stands still"
    );
    watcher.abort();
}
