//! sluice: a rate-limiting reverse proxy.
//!
//! A request walks one way through these modules:
//!
//! - [`server`]: accepts connections, terminates TLS, speaks HTTP, guards against hostile
//!   clients, drains on shutdown.
//! - [`proxy`]: the request path: canonical target → identify → match → check → forward
//!   or reject.
//! - [`target`]: the one canonical spelling of a request's target, matched and forwarded.
//! - [`idempotency`]: routes that take `Idempotency-Key`: replay a retry, never resend it.
//! - [`identity`]: who is calling (API key, key registry, JWT, client IP).
//! - [`policy`]: which limits apply (routes, plans, per-key profiles), compiled at load.
//! - [`limiter`]: one decision for all limits of a request; algorithms and [`limiter::store`],
//!   the penalty box ([`limiter::penalty`]) and concurrency slots ([`limiter::concurrency`]).
//! - [`response`]: rate-limit headers and the configured replies.
//! - [`upstream`]: forwarding to the upstream API, streaming both ways.
//! - [`tunnel`]: protocol upgrades (WebSocket) spliced after a checked handshake.
//!
//! Around it: [`config`] loads and compiles the YAML, [`reload`] swaps in a new config
//! while running, [`telemetry`] names the metrics, [`admin`] serves `/metrics`, health and
//! the operator endpoints, [`inspect`] answers `sluice explain` and `/admin/usage`,
//! [`tls`] loads and reloads certificates, [`http1`] holds what sluice's own HTTP/1.1 server
//! and client share; `fuzz` (hidden from the docs) is what the fuzz targets call.

#![forbid(unsafe_code)]
#![warn(clippy::large_futures)]

pub mod admin;
pub mod body;
pub mod config;
#[doc(hidden)]
pub mod fuzz;
pub mod headers;
pub mod http1;
pub mod idempotency;
pub mod identity;
pub mod inspect;
pub mod limiter;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod response;
pub mod server;
pub mod target;
pub mod telemetry;
pub mod tls;
pub mod tunnel;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use idempotency::redis::RedisRecords;
use idempotency::RecordStore;
use limiter::clock::{Clock, SystemClock};
use limiter::penalty::Penalties;
use limiter::store::memory::MemoryStore;
use limiter::store::redis::{RedisSlots, RedisStore};
use limiter::store::Store;
use metrics_exporter_prometheus::PrometheusHandle;

/// Runs the gateway on `config` until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    config: config::Config,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let tcp = server::bind(config.listen, config.limits.backlog)?;
    let admin_listener = server::bind(config.admin_listen, server::system_backlog())?;
    let (routes, keys) = (
        config.policy.routes.len(),
        config.policy.identifier.registry.len(),
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    // In Redis mode the penalty box, the idempotency records and the concurrency slots live
    // in the same Redis, so a block holds, a record replays and a slot counts on every replica.
    type Shared = (Arc<dyn Penalties>, Arc<dyn RecordStore>, Arc<RedisSlots>);
    let (store, shared): (Arc<dyn Store>, Option<Shared>) = match &config.store.redis {
        None => (Arc::new(MemoryStore::new(config.store.max_entries)), None),
        Some(redis) => {
            let store = RedisStore::start(redis, config.store.max_entries, clock.clone())
                .map_err(std::io::Error::other)?;
            tracing::info!(url = %redis.redacted_url(), on_error = redis.on_error.as_str(), "redis store");
            // This replica, until the first heartbeat counts the others.
            telemetry::store_replicas(1);
            let penalties = store.penalties(config.store.max_entries, clock.clone());
            let slots = store.slots();
            let store = Arc::new(store);
            let records = RedisRecords::new(store.clone(), config.idempotency.max_bytes);
            (
                store,
                Some((Arc::new(penalties), Arc::new(records), Arc::new(slots))),
            )
        }
    };
    let sweep_every = config.store.sweep_interval;
    let drain = config.shutdown_timeout;
    let certificate = config.tls.as_ref().map(tls::Certificate::new);
    let listener = server::Listener {
        tcp,
        tls: certificate.as_ref().map(tls::Certificate::acceptor),
        limits: config.limits.clone(),
    };
    let config_tls = certificate.is_some();
    let cert_watcher = certificate.map(|c| tokio::spawn(c.watch(config.reload.interval)));
    let mut gateway = proxy::Gateway::new(config, store.clone(), clock.clone());
    if let Some((penalties, records, slots)) = shared {
        gateway = gateway
            .with_penalties(penalties)
            .with_records(records)
            .with_slots(slots);
    }
    let gateway = Arc::new(gateway);
    let swept = gateway.clone();
    let reloader = Arc::new(reload::Reloader::new(gateway.clone()));
    // Installed before the "running" line, so a SIGHUP from then on reloads, never kills.
    #[cfg(unix)]
    let hangups = tokio::spawn(reload::on_hangup(reloader.clone())?);
    let watcher = tokio::spawn(reloader.clone().watch());
    tracing::info!(
        listen = %listener.tcp.local_addr()?,
        tls = config_tls,
        admin = %admin_listener.local_addr()?,
        routes,
        keys,
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "sluice is running"
    );

    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(sweep_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = clock.now();
            store.sweep(now);
            swept.penalties.sweep(now);
            swept.in_flight.sweep();
            swept.idempotency.store.sweep(now);
            idempotency::report(&*swept.idempotency.store);
        }
    });
    let upkeep = tokio::spawn(telemetry::upkeep(metrics.clone()));
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        gateway.clone(),
        metrics,
        reloader,
    ));
    let slots = gateway.shared_slots.clone();
    server::serve(listener, gateway, shutdown, drain).await;
    // Spawned releases would die with the runtime: give the slots back before exiting, so
    // the other replicas need not wait for the leases to expire.
    if let Some(slots) = slots {
        slots.release_all().await;
    }
    sweeper.abort();
    upkeep.abort();
    admin.abort();
    watcher.abort();
    if let Some(cert_watcher) = cert_watcher {
        cert_watcher.abort();
    }
    #[cfg(unix)]
    hangups.abort();
    Ok(())
}
