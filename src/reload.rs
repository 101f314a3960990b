//! Hot reload: watch the config and keys files, reload on SIGHUP and `POST /admin/reload`;
//! compile the whole new config first, then swap it in atomically, or keep the old one.
//!
//! Requests hold the snapshot they started with, so a swap never disturbs a request in
//! flight, and counters live in the store outside the snapshot, keyed by limit identity
//! (name, scope, algorithm — not the rate), so a changed rate keeps its count. Settings
//! that live outside the snapshot (listeners, TLS files, connection limits, store,
//! logging) are reported as needing a restart and otherwise ignored; sockets are never
//! rebound. The TLS certificate *files* are watched on their own (`tls`), so a rotated
//! certificate needs no reload at all.
//!
//! Watching is by polling: every `reload.interval` the watched files are read through
//! their paths and hashed. Reading the path follows whatever it points at *now*, so an
//! editor that writes a new file and renames it over the old one, and a Kubernetes
//! ConfigMap whose `..data` symlink is swapped to a new directory, are both seen, on any
//! filesystem, with no inotify watch to lose or re-arm. Comparing content (not mtimes)
//! means a `touch` reloads nothing. A change must read the same twice, `DEBOUNCE` apart,
//! before it is loaded, so a file caught half-written is not reported as broken.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::{self, Config, ConfigErrors};
use crate::limiter::clock::{Nanos, SECOND};
use crate::proxy::{Gateway, Snapshot};
use crate::telemetry;

/// Quiet time a changed file must stay unchanged before it is loaded.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// What asked for a reload (a log field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file changed.
    Watch,
    /// SIGHUP.
    Signal,
    /// `POST /admin/reload`.
    Admin,
}

impl Trigger {
    /// Label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Watch => "file change",
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "admin endpoint",
        }
    }
}

/// A reload that took effect.
#[derive(Clone, Debug)]
pub struct Applied {
    /// SHA-256 of the new config's file texts.
    pub sha256: [u8; 32],
    /// Changed settings that only a restart applies, as `name: old → new`.
    pub restart_required: Vec<String>,
}

/// Why a reload did not take effect; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// `sluice run` without `-c`: nothing on disk to read.
    #[error("running on the embedded default config: there is no file to reload")]
    NoFile,
    /// The new config has problems.
    #[error("invalid config, keeping the running one:\n{0}")]
    Invalid(ConfigErrors),
}

/// Contents of the watched files as last loaded or tried: `None` = unreadable.
type Seen = Vec<(PathBuf, Option<[u8; 32]>)>;

/// Reloads the gateway's config from its file.
pub struct Reloader {
    gateway: Arc<Gateway>,
    path: Option<PathBuf>,
    /// Held for a whole reload, so reloads from the watcher, a signal and the admin
    /// endpoint run one at a time. Never held across an `.await`.
    seen: Mutex<Seen>,
}

impl Reloader {
    /// A reloader for `gateway`, whose running config came from `path` (if any).
    pub fn new(gateway: Arc<Gateway>) -> Self {
        let snapshot = gateway.snapshot.load();
        let path = snapshot.config.source.clone();
        let seen = inputs_seen(&snapshot.config);
        let loaded_at = snapshot.loaded_at;
        drop(snapshot);
        for result in ["ok", "error"] {
            metrics::counter!(telemetry::CONFIG_RELOADS, "result" => result).increment(0);
        }
        metrics::gauge!(telemetry::CONFIG_LAST_RELOAD_SUCCESS).set(seconds(loaded_at));
        metrics::gauge!(telemetry::CONFIG_LAST_RELOAD_SUCCESSFUL).set(1.0);
        Self {
            gateway,
            path,
            seen: Mutex::new(seen),
        }
    }

    /// Loads the config file again and swaps it in if it is valid. Blocking (reads files);
    /// call through `spawn_blocking` from async code.
    pub fn reload(&self, trigger: Trigger) -> Result<Applied, ReloadError> {
        let Some(path) = &self.path else {
            tracing::warn!(
                trigger = trigger.as_str(),
                "reload asked for, but {}",
                ReloadError::NoFile
            );
            return Err(ReloadError::NoFile);
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Hashed before loading: a change landing during the load is seen on the next tick.
        let before = read_seen(&seen);
        match config::load(path) {
            Ok(config) => {
                for warning in &config.warnings {
                    tracing::warn!(trigger = trigger.as_str(), "{warning}");
                }
                *seen = inputs_seen(&config);
                Ok(self.swap(config, trigger))
            }
            Err(errors) => {
                *seen = before;
                metrics::counter!(telemetry::CONFIG_RELOADS, "result" => "error").increment(1);
                metrics::gauge!(telemetry::CONFIG_LAST_RELOAD_SUCCESSFUL).set(0.0);
                for error in &errors.0 {
                    tracing::error!(trigger = trigger.as_str(), "{error}");
                }
                tracing::error!(
                    trigger = trigger.as_str(),
                    problems = errors.0.len(),
                    "config reload failed; keeping the running config"
                );
                Err(ReloadError::Invalid(errors))
            }
        }
    }

    fn swap(&self, config: Config, trigger: Trigger) -> Applied {
        let old = self.gateway.snapshot.load();
        let restart_required = restart_required(&old.config, &config);
        for setting in &restart_required {
            tracing::warn!(setting = %setting, "restart required: this setting cannot change while running; keeping the old value");
        }
        drop(old);
        let sha256 = config.sha256;
        let now = self.gateway.clock.now();
        let mut snapshot = Snapshot::new(config);
        snapshot.loaded_at = now;
        self.gateway.snapshot.store(Arc::new(snapshot));
        metrics::counter!(telemetry::CONFIG_RELOADS, "result" => "ok").increment(1);
        metrics::gauge!(telemetry::CONFIG_LAST_RELOAD_SUCCESS).set(seconds(now));
        metrics::gauge!(telemetry::CONFIG_LAST_RELOAD_SUCCESSFUL).set(1.0);
        tracing::info!(
            trigger = trigger.as_str(),
            sha256 = %hex::encode(sha256),
            "config reloaded"
        );
        Applied {
            sha256,
            restart_required,
        }
    }

    /// `reload` off the async threads.
    pub async fn reload_async(self: &Arc<Self>, trigger: Trigger) -> Result<Applied, ReloadError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reload(trigger))
            .await
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
    }

    /// Polls the watched files and reloads when their content changes. Runs until dropped;
    /// `reload.watch` and `reload.interval` are read from the running config on every tick.
    pub async fn watch(self: Arc<Self>) {
        if self.path.is_none() {
            return;
        }
        loop {
            let settings = self.gateway.snapshot.load().config.reload.clone();
            tokio::time::sleep(settings.interval).await;
            if !settings.watch {
                continue;
            }
            if self.settled_change().await {
                let _ = self.reload_async(Trigger::Watch).await;
            }
        }
    }

    /// Whether the watched files differ from what was last loaded and have stopped changing.
    async fn settled_change(self: &Arc<Self>) -> bool {
        let this = self.clone();
        let read = move || {
            let seen = this.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let now = read_seen(&seen);
            (seen, now)
        };
        let Ok((seen, mut current)) = tokio::task::spawn_blocking(read.clone()).await else {
            return false;
        };
        if current == seen {
            return false;
        }
        // A writer may still be at it: wait until two reads agree (bounded, then go anyway).
        for _ in 0..10 {
            tokio::time::sleep(DEBOUNCE).await;
            let Ok((_, again)) = tokio::task::spawn_blocking(read.clone()).await else {
                return false;
            };
            if again == current {
                break;
            }
            current = again;
        }
        true
    }
}

/// Reloads on every SIGHUP. The handler is installed before this returns, so a SIGHUP
/// sent once the gateway says it is running never takes the default action (exit).
#[cfg(unix)]
pub fn on_hangup(
    reloader: Arc<Reloader>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(async move {
        while hangups.recv().await.is_some() {
            let _ = reloader.reload_async(Trigger::Signal).await;
        }
    })
}

/// The settings a running gateway cannot change, as `name: old → new` for each that differs.
pub fn restart_required(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let mut compare = |name: &str, a: String, b: String| {
        if a != b {
            changed.push(format!("{name}: {a} → {b}"));
        }
    };
    compare("listen", old.listen.to_string(), new.listen.to_string());
    compare(
        "admin.listen",
        old.admin_listen.to_string(),
        new.admin_listen.to_string(),
    );
    compare(
        "store.max_entries",
        old.store.max_entries.to_string(),
        new.store.max_entries.to_string(),
    );
    compare(
        "store.sweep_interval",
        format!("{:?}", old.store.sweep_interval),
        format!("{:?}", new.store.sweep_interval),
    );
    let tls = |c: &Config| {
        c.tls.as_ref().map_or("none".to_string(), |t| {
            format!("{{ cert: {}, key: {} }}", t.cert.display(), t.key.display())
        })
    };
    compare("tls", tls(old), tls(new));
    compare(
        "limits",
        format!("{:?}", old.limits),
        format!("{:?}", new.limits),
    );
    let redis = |config: &Config| {
        config
            .store
            .redis
            .as_ref()
            .map_or("memory".to_string(), |r| {
                format!(
                    "redis{} {} (timeout {:?}, on_error {}, prefix {}, {})",
                    if r.cluster { " cluster" } else { "" },
                    r.redacted_url(),
                    r.timeout,
                    r.on_error.as_str(),
                    r.prefix,
                    r.sync_interval
                        .map_or("strict".to_string(), |i| format!("sync every {i:?}"))
                )
            })
    };
    compare("store", redis(old), redis(new));
    compare(
        "idempotency.max_entries",
        old.idempotency.max_entries.to_string(),
        new.idempotency.max_entries.to_string(),
    );
    compare(
        "idempotency.max_bytes",
        old.idempotency.max_bytes.to_string(),
        new.idempotency.max_bytes.to_string(),
    );
    compare("log.format", log_format(old).into(), log_format(new).into());
    compare("log.level", old.log.level.clone(), new.log.level.clone());
    compare(
        "shutdown_timeout",
        format!("{:?}", old.shutdown_timeout),
        format!("{:?}", new.shutdown_timeout),
    );
    changed
}

fn log_format(config: &Config) -> &'static str {
    if config.log.json {
        "json"
    } else {
        "text"
    }
}

fn inputs_seen(config: &Config) -> Seen {
    if config.source.is_none() {
        return Vec::new();
    }
    config
        .inputs
        .iter()
        .map(|input| (input.path.clone(), Some(input.sha256)))
        .collect()
}

fn read_seen(seen: &Seen) -> Seen {
    seen.iter()
        .map(|(path, _)| (path.clone(), digest(path)))
        .collect()
}

/// SHA-256 of a file's content, through symlinks; `None` when it cannot be read.
fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path)
        .ok()
        .map(|bytes| Sha256::digest(bytes).into())
}

fn seconds(nanos: Nanos) -> f64 {
    nanos as f64 / SECOND as f64
}

#[cfg(test)]
mod tests;
