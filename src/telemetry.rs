//! Metric names, pre-registered metric handles, the `/metrics` text, and log setup.
//!
//! Labels are bounded: route, plan and decision, never a key. The request series a
//! compiled policy can produce are registered once per config ([`series`]), so recording
//! a request is an index and an atomic add.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub mod durations;
mod exposition;
pub mod series;

pub use exposition::render;
pub use series::{HistogramLabels, PolicyMetrics};

/// Requests by route, plan and decision.
pub const REQUESTS: &str = "sluice_requests_total";
/// Allowed requests after which the caller has used 80% or more of a limit.
pub const NEAR_LIMIT: &str = "sluice_near_limit_total";
/// Time from request head to response head, in seconds.
pub const REQUEST_DURATION: &str = "sluice_request_duration_seconds";
/// Time the upstream took to send response headers, in seconds.
pub const UPSTREAM_DURATION: &str = "sluice_upstream_duration_seconds";
/// Time the limiter took for one decision, in seconds.
pub const LIMITER_DURATION: &str = "sluice_limiter_duration_seconds";
/// Upstream failures by kind (`crate::upstream::Failure`: connect, connect_timeout,
/// timeout, reset, protocol, reset_body).
pub const UPSTREAM_ERRORS: &str = "sluice_upstream_errors_total";
/// Requests whose client broke off its body while sluice forwarded it (not an upstream
/// failure).
pub const CLIENT_ABORTS: &str = "sluice_client_aborts_total";
/// Connections sluice's HTTP/1.1 client opened to the upstream.
pub const UPSTREAM_CONNECTIONS: &str = "sluice_upstream_connections_opened_total";
/// Requests sent again on a new connection after their pooled one closed under them.
pub const UPSTREAM_RETRIES: &str = "sluice_upstream_retries_total";
/// Counters tracked by the store.
pub const STORE_ENTRIES: &str = "sluice_store_entries";
/// Decisions counted on the shared overflow counter because the store was full.
pub const STORE_OVERFLOW: &str = "sluice_store_overflow_total";
/// Blocks started by the penalty box.
pub const PENALTIES: &str = "sluice_penalties_total";
/// Identities blocked by the penalty box (refreshed on every sweep).
pub const PENALTY_BLOCKED: &str = "sluice_penalty_blocked_identities";
/// Concurrency slots held by requests in flight.
pub const IN_FLIGHT: &str = "sluice_concurrency_in_flight";
/// Requests waiting for their slot under a `delay` (smoothing) right now.
pub const DELAYED: &str = "sluice_delayed_requests";
/// Time of one call to the Redis store, in seconds.
pub const STORE_DURATION: &str = "sluice_store_duration_seconds";
/// Failed Redis store calls by kind (`timeout`, `unavailable`).
pub const STORE_ERRORS: &str = "sluice_store_errors_total";
/// Requests let through unchecked because the store failed (`on_error: allow`).
pub const STORE_FAIL_OPEN: &str = "sluice_store_fail_open_total";
/// Requests answered 503 because the store failed (`on_error: deny`).
pub const STORE_FAIL_CLOSED: &str = "sluice_store_fail_closed_total";
/// Decisions taken on this replica's local share because Redis failed (`on_error: local`).
pub const STORE_LOCAL_DECISIONS: &str = "sluice_store_local_decisions_total";
/// 1 while the Redis store's circuit breaker is open (Redis not called), else 0.
pub const STORE_BREAKER_OPEN: &str = "sluice_store_breaker_open";
/// Live replicas sharing the Redis store, from their heartbeats.
pub const STORE_REPLICAS: &str = "sluice_store_replicas";
/// Rejections answered from the local memory of callers already over a limit (no Redis call).
pub const STORE_CACHED_REJECTIONS: &str = "sluice_store_cached_rejections_total";
/// Requests decided from this replica's leases without a Redis call (`mode: sync`).
pub const STORE_LEASED_DECISIONS: &str = "sluice_store_leased_decisions_total";
/// Requests whose concurrency slots were held in this replica's memory only, because Redis
/// failed (`on_error: allow` or `local`).
pub const STORE_LOCAL_SLOTS: &str = "sluice_store_local_slots_total";
/// Penalty-box violations counted in the local memory box because Redis failed.
pub const PENALTY_LOCAL: &str = "sluice_penalty_local_total";
/// Config reloads by result (`ok`, `error`).
pub const CONFIG_RELOADS: &str = "sluice_config_reloads_total";
/// Unix time of the last config load that took effect (startup counts).
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "sluice_config_last_reload_success_timestamp_seconds";
/// 1 if the last reload attempt took effect, 0 if it was rejected.
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "sluice_config_last_reload_successful";
/// Times the listener paused accepting because `limits.max_connections` were open.
pub const CONNECTIONS_SATURATED: &str = "sluice_connections_saturated_total";
/// Upgraded connections (WebSocket tunnels) open now.
pub const TUNNELS_OPEN: &str = "sluice_tunnels_open";
/// Idempotency-key outcomes: `replayed`, `conflict`, `mismatch`, `too_large`, `stored`,
/// `not_stored`, `error`.
pub const IDEMPOTENCY: &str = "sluice_idempotency_total";
/// Idempotency records held (stored responses and claims in flight); in Redis mode,
/// this replica's claims in flight.
pub const IDEMPOTENCY_ENTRIES: &str = "sluice_idempotency_entries";
/// Bytes of stored idempotent responses (0 in Redis mode: they live in Redis).
pub const IDEMPOTENCY_BYTES: &str = "sluice_idempotency_bytes";
/// Every `outcome` label of [`IDEMPOTENCY`].
pub const IDEMPOTENCY_OUTCOMES: [&str; 7] = [
    "replayed",
    "conflict",
    "mismatch",
    "too_large",
    "stored",
    "not_stored",
    "error",
];
/// Constant 1 with the version as a label.
pub const BUILD_INFO: &str = "sluice_build_info";

/// What happened to a request, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded.
    Allowed = 0,
    /// Rejected by a limit.
    Limited = 1,
    /// The plan has no access.
    Denied = 2,
    /// No valid identity.
    Unauthorized = 3,
    /// The route is exempt from limits.
    Exempt = 4,
    /// The identity is in the penalty box.
    Penalised = 5,
    /// Forwarded, but a shadow limit would have rejected it.
    ShadowLimited = 6,
    /// The store failed and `on_error: deny` answered 503.
    Unavailable = 7,
    /// The body was over the route's `max_body` (413).
    TooLarge = 8,
    /// Answered with the stored response of an idempotency key.
    Replayed = 9,
    /// Refused under the idempotency rules (409, 422).
    Refused = 10,
    /// A malformed or ambiguously framed request (400), refused before anything else.
    BadRequest = 11,
}

impl Verdict {
    /// Every verdict, in discriminant order.
    pub const ALL: [Verdict; 12] = [
        Verdict::Allowed,
        Verdict::Limited,
        Verdict::Denied,
        Verdict::Unauthorized,
        Verdict::Exempt,
        Verdict::Penalised,
        Verdict::ShadowLimited,
        Verdict::Unavailable,
        Verdict::TooLarge,
        Verdict::Replayed,
        Verdict::Refused,
        Verdict::BadRequest,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Limited => "limited",
            Verdict::Denied => "denied",
            Verdict::Unauthorized => "unauthorized",
            Verdict::Exempt => "exempt",
            Verdict::TooLarge => "too_large",
            Verdict::Penalised => "penalised",
            Verdict::ShadowLimited => "shadow_limited",
            Verdict::Unavailable => "unavailable",
            Verdict::Replayed => "replayed",
            Verdict::Refused => "refused",
            Verdict::BadRequest => "bad_request",
        }
    }
}

/// Label used for requests that match no route, or whose plan is not known yet.
pub const UNMATCHED: &str = "unmatched";
/// Plan label of unidentified callers.
pub const NO_PLAN: &str = "none";

/// A label value as the text format writes it between quotes.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Counts an upstream failure.
pub fn upstream_error(kind: &'static str) {
    metrics::counter!(UPSTREAM_ERRORS, "kind" => kind).increment(1);
}

/// Counts a client that broke off its request body while it was forwarded.
pub fn client_aborted() {
    metrics::counter!(CLIENT_ABORTS).increment(1);
}

/// A new connection to an `http://` upstream.
pub fn upstream_connected() {
    metrics::counter!(UPSTREAM_CONNECTIONS).increment(1);
}

/// A request resent after its pooled connection closed.
pub fn upstream_retried() {
    metrics::counter!(UPSTREAM_RETRIES).increment(1);
}

/// Counts a block started by the penalty box.
pub fn penalty_started() {
    metrics::counter!(PENALTIES).increment(1);
    metrics::gauge!(PENALTY_BLOCKED).increment(1.0);
}

/// Sets the number of identities in the penalty box.
pub fn penalty_blocked(blocked: usize) {
    metrics::gauge!(PENALTY_BLOCKED).set(blocked as f64);
}

/// Counts a decision taken on the overflow counter.
pub fn store_overflow() {
    metrics::counter!(STORE_OVERFLOW).increment(1);
}

/// Counts a pause of the accept loop at `max_connections`.
pub fn connections_saturated() {
    metrics::counter!(CONNECTIONS_SATURATED).increment(1);
}

/// Counts an open tunnel in `sluice_tunnels_open` for as long as it lives.
pub struct TunnelOpen(());

impl TunnelOpen {
    /// One more open tunnel.
    pub fn new() -> Self {
        metrics::gauge!(TUNNELS_OPEN).increment(1.0);
        TunnelOpen(())
    }
}

impl Default for TunnelOpen {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TunnelOpen {
    fn drop(&mut self) {
        metrics::gauge!(TUNNELS_OPEN).decrement(1.0);
    }
}

/// Times one Redis store call.
pub fn store_duration(elapsed: std::time::Duration) {
    metrics::histogram!(STORE_DURATION).record(elapsed.as_secs_f64());
}

/// Counts a failed store call.
pub fn store_error(kind: &'static str) {
    metrics::counter!(STORE_ERRORS, "kind" => kind).increment(1);
}

/// Counts a request let through because the store failed.
pub fn store_fail_open() {
    metrics::counter!(STORE_FAIL_OPEN).increment(1);
}

/// Counts a request answered 503 because the store failed.
pub fn store_fail_closed() {
    metrics::counter!(STORE_FAIL_CLOSED).increment(1);
}

/// Counts a decision taken on the local share.
pub fn store_local_decision() {
    metrics::counter!(STORE_LOCAL_DECISIONS).increment(1);
}

/// Sets the breaker gauge.
pub fn store_breaker(open: bool) {
    metrics::gauge!(STORE_BREAKER_OPEN).set(if open { 1.0 } else { 0.0 });
}

/// Sets the live replica gauge: only the Redis store calls this, so the series exists only
/// where replicas share a store.
pub fn store_replicas(live: u32) {
    metrics::gauge!(STORE_REPLICAS).set(f64::from(live));
}

/// Counts a rejection answered from the local over-limit memory.
pub fn store_cached_rejection() {
    metrics::counter!(STORE_CACHED_REJECTIONS).increment(1);
}

/// Counts a request decided from local leases.
pub fn store_leased_decision() {
    metrics::counter!(STORE_LEASED_DECISIONS).increment(1);
}

/// Counts a request whose concurrency slots were held locally because Redis failed.
pub fn store_local_slots() {
    metrics::counter!(STORE_LOCAL_SLOTS).increment(1);
}

/// Counts a penalty-box violation counted locally because Redis failed.
pub fn penalty_local() {
    metrics::counter!(PENALTY_LOCAL).increment(1);
}

/// Folds the observations histograms recorded since the last run into their buckets, every
/// second, for as long as it runs. `install_recorder` leaves this to its caller: without it
/// every observation is kept until the next scrape, and a sluice nobody scrapes grows by
/// some 60 bytes a request (measured: 15 MB to 75 MB over 900,000 requests).
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// Bucket bounds of every `_seconds` histogram, in seconds.
pub const BUCKETS: [f64; 17] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// Installs the Prometheus recorder; call once, before any config is compiled.
pub fn install_metrics() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .expect("bucket list is not empty")
        .install_recorder()
        .expect("the metrics recorder is installed once");
    describe();
    // Registered up front so dashboards and alerts see zeros instead of absent series.
    for kind in crate::upstream::Failure::ALL {
        metrics::counter!(UPSTREAM_ERRORS, "kind" => kind.as_str()).absolute(0);
    }
    metrics::counter!(CLIENT_ABORTS).absolute(0);
    metrics::counter!(UPSTREAM_CONNECTIONS).absolute(0);
    metrics::counter!(UPSTREAM_RETRIES).absolute(0);
    metrics::counter!(STORE_OVERFLOW).absolute(0);
    metrics::counter!(CONNECTIONS_SATURATED).absolute(0);
    metrics::gauge!(TUNNELS_OPEN).set(0.0);
    metrics::counter!(PENALTIES).absolute(0);
    metrics::gauge!(IN_FLIGHT).set(0.0);
    metrics::gauge!(DELAYED).set(0.0);
    metrics::gauge!(PENALTY_BLOCKED).set(0.0);
    metrics::gauge!(STORE_ENTRIES).set(0.0);
    for kind in ["timeout", "unavailable"] {
        metrics::counter!(STORE_ERRORS, "kind" => kind).absolute(0);
    }
    for counter in [
        STORE_FAIL_OPEN,
        STORE_FAIL_CLOSED,
        STORE_LOCAL_DECISIONS,
        STORE_CACHED_REJECTIONS,
        STORE_LEASED_DECISIONS,
        STORE_LOCAL_SLOTS,
        PENALTY_LOCAL,
    ] {
        metrics::counter!(counter).absolute(0);
    }
    metrics::gauge!(STORE_BREAKER_OPEN).set(0.0);
    for outcome in IDEMPOTENCY_OUTCOMES {
        metrics::counter!(IDEMPOTENCY, "outcome" => outcome).absolute(0);
    }
    metrics::gauge!(IDEMPOTENCY_ENTRIES).set(0.0);
    metrics::gauge!(IDEMPOTENCY_BYTES).set(0.0);
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    handle
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS, "Requests by route, plan and decision.");
    describe_counter!(
        NEAR_LIMIT,
        "Allowed requests that left the caller at 80% or more of a limit."
    );
    describe_counter!(UPSTREAM_ERRORS, "Upstream failures by kind.");
    describe_counter!(
        CLIENT_ABORTS,
        "Requests whose client broke off its body while it was forwarded (not an upstream failure)."
    );
    describe_counter!(
        UPSTREAM_CONNECTIONS,
        "Connections opened to an http:// upstream (low when keep-alive reuse works)."
    );
    describe_counter!(
        UPSTREAM_RETRIES,
        "Requests resent on a new connection after their pooled one closed as they were sent."
    );
    describe_gauge!(STORE_ENTRIES, "Counters tracked by the store.");
    describe_counter!(
        STORE_OVERFLOW,
        "Decisions taken on the shared overflow counter because the store was full."
    );
    describe_counter!(
        CONNECTIONS_SATURATED,
        "Times the listener paused accepting because max_connections were open."
    );
    describe_gauge!(
        TUNNELS_OPEN,
        "Upgraded connections (WebSocket tunnels) open now."
    );
    describe_counter!(PENALTIES, "Blocks started by the penalty box.");
    describe_gauge!(
        DELAYED,
        "Requests waiting for their slot under a delay (smoothing)."
    );
    describe_gauge!(IN_FLIGHT, "Concurrency slots held by requests in flight.");
    describe_gauge!(
        PENALTY_BLOCKED,
        "Identities blocked by the penalty box (refreshed every sweep)."
    );
    describe_histogram!(
        STORE_DURATION,
        Unit::Seconds,
        "Time of one call to the Redis store."
    );
    describe_counter!(STORE_ERRORS, "Failed Redis store calls by kind.");
    describe_counter!(
        STORE_FAIL_OPEN,
        "Requests let through unchecked because the store failed (on_error: allow)."
    );
    describe_counter!(
        STORE_FAIL_CLOSED,
        "Requests answered 503 because the store failed (on_error: deny)."
    );
    describe_counter!(
        STORE_LOCAL_DECISIONS,
        "Decisions taken on this replica's share because Redis failed (on_error: local)."
    );
    describe_gauge!(
        STORE_BREAKER_OPEN,
        "1 while the Redis store's circuit breaker is open, else 0."
    );
    describe_gauge!(
        STORE_REPLICAS,
        "Live replicas sharing the Redis store, from their heartbeats."
    );
    describe_counter!(
        STORE_CACHED_REJECTIONS,
        "Rejections answered from memory of callers already over a limit (no Redis call)."
    );
    describe_counter!(IDEMPOTENCY, "Idempotency-key outcomes.");
    describe_gauge!(
        IDEMPOTENCY_ENTRIES,
        "Idempotency records held (stored and in flight)."
    );
    describe_gauge!(
        IDEMPOTENCY_BYTES,
        Unit::Bytes,
        "Bytes of stored idempotent responses."
    );
    describe_counter!(
        STORE_LEASED_DECISIONS,
        "Requests decided from this replica's leases without a Redis call (mode: sync)."
    );
    describe_counter!(
        STORE_LOCAL_SLOTS,
        "Requests whose concurrency slots were held in this replica's memory only because Redis failed."
    );
    describe_counter!(
        PENALTY_LOCAL,
        "Penalty-box violations counted in this replica's memory because Redis failed."
    );
    describe_counter!(CONFIG_RELOADS, "Config reloads by result.");
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        Unit::Seconds,
        "Unix time of the last config load that took effect."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESSFUL,
        "1 if the last config reload took effect, 0 if it was rejected."
    );
    describe_gauge!(BUILD_INFO, "Build information.");
}

/// Sets up `tracing`: `RUST_LOG` wins over the configured level.
pub fn init_logs(json: bool, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A gate for a log line that could otherwise repeat on every request (a shadow rejection,
/// a failing dependency): it opens at most once a second and reports how many lines it held
/// back since.
pub struct LogGate {
    next: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl LogGate {
    /// A gate open for the first line.
    pub const fn new() -> Self {
        Self {
            next: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged at `now`.
    pub fn admit(&self, now: crate::limiter::clock::Nanos) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let next = self.next.load(Relaxed);
        if now < next
            || self
                .next
                .compare_exchange(next, now + crate::limiter::clock::SECOND, Relaxed, Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed))
    }
}

impl Default for LogGate {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod log_gate_tests {
    use super::LogGate;
    use crate::limiter::clock::SECOND;

    #[test]
    fn opens_once_a_second_and_counts_what_it_held_back() {
        let gate = LogGate::new();
        assert_eq!(gate.admit(10 * SECOND), Some(0));
        assert_eq!(gate.admit(10 * SECOND + 1), None);
        assert_eq!(gate.admit(11 * SECOND - 1), None);
        assert_eq!(gate.admit(11 * SECOND), Some(2));
    }
}
