//! `/metrics` stays small and readable: only the series a policy can produce are exported
//! (at zero from the start), their number stays within the budget README.md documents,
//! the order of series holds from scrape to scrape, and the text passes `promtool`.

mod support;

use std::fmt::Write as _;

use support::{config_file, promtool_check_metrics, Sluice};

/// The README's budget for a policy with no shadow limits, penalty box, idempotency keys or
/// `on_error: deny`, with `routes` routes and `plans` plans callers can reach, and `sets`
/// label sets on the request-path histograms.
fn plain_budget(routes: usize, plans: usize, sets: usize) -> usize {
    65 + (routes + 1) * (1 + 3 * plans) + 60 * sets
}

/// The README's budget for any policy.
fn budget(routes: usize, plans: usize, sets: usize) -> usize {
    65 + (routes + 1) * (2 + 10 * plans) + 60 * sets
}

/// Sample lines (no comments, no blank lines).
fn samples(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Sample lines of `metric` (histograms: with their `_bucket`, `_sum` and `_count`).
fn of<'a>(text: &'a str, metric: &str) -> Vec<&'a str> {
    samples(text)
        .into_iter()
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            name == metric
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(metric))
        })
        .collect()
}

/// The shipped default config, on ephemeral ports.
fn default_config() -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sluice.yaml"))
        .unwrap();
    text.replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:0")
        .replace("listen: 127.0.0.1:9090", "listen: 127.0.0.1:0")
}

#[tokio::test]
async fn the_default_config_exports_what_it_can_produce_in_a_stable_order() {
    let (_dir, path) = config_file(&default_config());
    let sluice = Sluice::start(&path, &[]);
    let (_, first) = sluice.admin("GET", "/metrics", None).await;

    // Four routes; callers reach pro, free (denied) and anonymous, never `default`.
    let total = samples(&first).len();
    assert!(total <= plain_budget(4, 3, 1), "{total} series:\n{first}");
    let requests = of(&first, "sluice_requests_total");
    // 27 by route and plan, and `bad_request` (unmatched, no plan).
    assert_eq!(requests.len(), 28 + 1, "{requests:#?}");
    assert!(requests.iter().all(|s| s.ends_with(" 0")), "{requests:#?}");
    for absent in [
        "plan=\"default\"",
        "decision=\"shadow_limited\"",
        "decision=\"penalised\"",
        "decision=\"replayed\"",
    ] {
        assert!(!first.contains(absent), "{absent} in:\n{first}");
    }
    assert!(first
        .contains("sluice_requests_total{route=\"health\",plan=\"pro\",decision=\"exempt\"} 0\n"));
    assert!(!first.contains("route=\"health\",plan=\"pro\",decision=\"limited\""));
    assert!(first
        .contains("sluice_requests_total{route=\"hello\",plan=\"free\",decision=\"denied\"} 0\n"));
    assert!(!first.contains("plan=\"free\",decision=\"allowed\""));
    // The replica count belongs to the Redis store.
    assert!(!first.contains("sluice_store_replicas"), "{first}");
    assert_eq!(of(&first, "sluice_request_duration_seconds").len(), 20);
    promtool_check_metrics(&first);

    // Traffic moves values, never the order of series.
    let mut conn = sluice.connect().await;
    for key in ["demo-key", "demo-free", "nobody"] {
        conn.get("/v1/hello", key).await.unwrap();
    }
    let (_, second) = sluice.admin("GET", "/metrics", None).await;
    let series = |text: &str| -> Vec<String> {
        samples(text)
            .iter()
            .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
            .collect()
    };
    assert_eq!(series(&first), series(&second));
    let families: Vec<&str> = second
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let mut by_name = families.clone();
    by_name.sort();
    assert_eq!(families, by_name, "families are sorted by name");
    assert!(second.contains(
        "sluice_requests_total{route=\"hello\",plan=\"none\",decision=\"unauthorized\"} 1\n"
    ));
}

/// 50 routes and 10 plans, every plan with a key and a plan-wide limit, the routes with
/// limits of their own.
fn large_config(histogram_labels: &str) -> String {
    let mut yaml = String::from(
        "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\nupstream: { url: \"demo:\" }\n",
    );
    let _ = writeln!(yaml, "metrics: {{ histogram_labels: {histogram_labels} }}");
    yaml.push_str("keys:\n");
    for p in 0..10 {
        let _ = writeln!(yaml, "  - {{ key: key-{p}, plan: plan-{p} }}");
    }
    yaml.push_str("plans:\n");
    for p in 0..10 {
        let _ = writeln!(
            yaml,
            "  plan-{p}: {{ limits: {{ all: {}/min }} }}",
            1000 * (p + 1)
        );
    }
    yaml.push_str("routes:\n");
    for r in 0..50 {
        let _ = writeln!(
            yaml,
            "  - {{ name: r{r}, match: {{ path: /r{r}/** }}, limit: {}/s }}",
            r + 1
        );
    }
    yaml
}

#[tokio::test]
async fn fifty_routes_and_ten_plans_stay_within_the_budget() {
    let (_dir, path) = config_file(&large_config("[]"));
    let sluice = Sluice::start(&path, &[]);
    let (_, text) = sluice.admin("GET", "/metrics", None).await;
    let total = samples(&text).len();
    assert!(total <= plain_budget(50, 10, 1), "{total} series");
    assert!(total <= budget(50, 10, 1), "{total} series");
    // unauthorized, then allowed and limited under each plan, for 50 routes and unmatched;
    // and bad_request once.
    assert_eq!(of(&text, "sluice_requests_total").len(), 51 * 21 + 1);
    assert_eq!(of(&text, "sluice_near_limit_total").len(), 51 * 10);
    promtool_check_metrics(&text);
}

#[tokio::test]
async fn histograms_carry_the_labels_asked_for() {
    let (_dir, path) = config_file(&large_config("[route]"));
    let sluice = Sluice::start(&path, &[]);
    let mut conn = sluice.connect().await;
    assert_eq!(conn.get("/r7/x", "key-3").await.unwrap().status, 200);
    let (_, text) = sluice.admin("GET", "/metrics", None).await;
    assert!(samples(&text).len() <= plain_budget(50, 10, 51));
    let requests = of(&text, "sluice_request_duration_seconds");
    assert_eq!(requests.len(), 20 * 51, "a set per route and unmatched");
    assert!(text.contains("sluice_request_duration_seconds_count{route=\"r7\"} 1\n"));
    assert!(text.contains("sluice_upstream_duration_seconds_count{route=\"r7\"} 1\n"));
    assert!(text.contains("sluice_limiter_duration_seconds_count{route=\"r7\"} 1\n"));
    assert!(
        !text.contains("plan=\"plan-3\",le="),
        "no plan label unless asked"
    );
    promtool_check_metrics(&text);

    let (_dir, path) = config_file(&large_config("[route, plan]"));
    let sluice = Sluice::start(&path, &[]);
    let mut conn = sluice.connect().await;
    assert_eq!(conn.get("/r7/x", "key-3").await.unwrap().status, 200);
    let (_, text) = sluice.admin("GET", "/metrics", None).await;
    assert!(
        text.contains("sluice_request_duration_seconds_count{route=\"r7\",plan=\"plan-3\"} 1\n")
    );
    // Every route (and unmatched) under each plan with keys, and under `none`.
    assert_eq!(
        of(&text, "sluice_request_duration_seconds").len(),
        20 * 51 * 11
    );
    assert!(samples(&text).len() <= budget(50, 10, 51 * 11));
    promtool_check_metrics(&text);
}
