//! Loading the config: `load(path)` parses the YAML, compiles it into runtime types and
//! reports every problem as `file:line:column: message`.
//!
//! Owns the runtime `Config` and its error type. The serde types are in `file`, the
//! semantic checks in `compile`, the warnings about valid configs in `lint`, the units
//! (`100/min`, `2s`) in `units`, and the YAML tree that knows where each value is in `yaml`.

pub mod compile;
pub mod file;
pub mod lint;
pub mod schema;
pub mod units;
pub(crate) mod yaml;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Uri};
use sha2::{Digest, Sha256};

use crate::policy::Policy;
use crate::response::Responses;
use yaml::Located;

/// The default config, embedded so `sluice run` works with no file at all.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/sluice.yaml");

/// Which file a problem is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The config file.
    Main,
    /// The file named by `keys_file`.
    Keys,
}

/// Where allowed traffic goes.
#[derive(Clone, Debug)]
pub enum UpstreamTarget {
    /// An `http://` or `https://` upstream; the path of the URI is a prefix for every request.
    Http(Uri),
    /// The built-in demo upstream, answering every allowed request itself.
    Demo,
}

/// What `Host` the upstream sees.
#[derive(Clone, Debug)]
pub enum HostHeader {
    /// The client's `Host`.
    Preserve,
    /// The upstream URL's authority.
    Upstream,
    /// A fixed value.
    Literal(HeaderValue),
}

/// Upstream connection settings.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// Where to send requests.
    pub target: UpstreamTarget,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time until the response headers arrive.
    pub timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// `Host` header policy.
    pub host: HostHeader,
    /// HTTP/2 to the upstream (ALPN over https, prior knowledge over http).
    pub http2: bool,
    /// Most idle connections kept for reuse; 0 (`keepalive: false`) reuses none and asks
    /// the upstream to close each connection after its response.
    pub max_idle: usize,
    /// For an `https://` upstream: roots, client certificate (ALPN is set by the client).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// SNI and verified name, when not the URL's host.
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
}

/// Inbound TLS: the certificate files and what was read from them at load.
#[derive(Clone)]
pub struct TlsSettings {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// The certificate as loaded, so a file that breaks after the check cannot stop a start.
    pub loaded: Arc<rustls::sign::CertifiedKey>,
    /// SHA-256 of the files as loaded.
    pub digest: [u8; 32],
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Limits that protect the listener from misbehaving clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; past it, accepting pauses.
    pub max_connections: usize,
    /// Time to send a request's whole header block (and to finish the TLS handshake and
    /// send the first request).
    pub header_read_timeout: Duration,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request header block, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// The listen backlog.
    pub backlog: u32,
}

/// Store settings.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// Cap on tracked counters.
    pub max_entries: usize,
    /// How often idle counters are swept.
    pub sweep_interval: Duration,
    /// Set when the backend is Redis.
    pub redis: Option<RedisSettings>,
}

/// The Redis store's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://…` URL (may hold a password: never log it, use `redacted_url`).
    pub url: String,
    /// Bound on every call.
    pub timeout: Duration,
    /// What requests get while Redis fails.
    pub on_error: crate::limiter::store::OnError,
    /// Key prefix and Redis Cluster hash tag.
    pub prefix: String,
    /// `mode: sync`: how often leases are reconciled with Redis. `None`: strict mode.
    pub sync_interval: Option<Duration>,
    /// `url` is a seed node of a Redis Cluster.
    pub cluster: bool,
}

impl RedisSettings {
    /// The URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &self.url[..scheme + 3], &self.url[at..])
            }
            _ => self.url.clone(),
        }
    }
}

/// Log settings.
#[derive(Clone, Debug)]
pub struct LogSettings {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Tracing filter directive.
    pub level: String,
}

/// The compiled config: everything the gateway runs on.
#[derive(Debug)]
pub struct Config {
    /// Proxy listener.
    pub listen: SocketAddr,
    /// Inbound TLS on `listen`, when configured.
    pub tls: Option<TlsSettings>,
    /// Limits against misbehaving clients.
    pub limits: ConnectionLimits,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Upstream settings.
    pub upstream: UpstreamSettings,
    /// How request targets are put in canonical form before identity and matching.
    pub target: crate::target::Normaliser,
    /// Routes, plans, keys and identification.
    pub policy: Policy,
    /// Status codes, headers and bodies.
    pub responses: Responses,
    /// Store settings.
    pub store: StoreSettings,
    /// Which routes take idempotency keys, and the record store's bounds.
    pub idempotency: crate::idempotency::Settings,
    /// Logging.
    pub log: LogSettings,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_timeout: Duration,
    /// Metric handles for every route × plan × decision, registered once.
    pub metrics: crate::telemetry::PolicyMetrics,
    /// Path the config came from (`None` for the embedded default).
    pub source: Option<PathBuf>,
    /// SHA-256 of the bearer token `/admin/*` requests must present, if one is configured.
    pub admin_token: Option<[u8; 32]>,
    /// Hot reload settings.
    pub reload: ReloadSettings,
    /// The files this config was read from, in order (config, then keys file).
    pub inputs: Vec<InputFile>,
    /// SHA-256 of the texts of `inputs`, concatenated in order.
    pub sha256: [u8; 32],
    /// What is valid but surely not meant (see `lint`), and settings accepted but no longer
    /// used, placed like errors: logged at startup and on reload, printed by `sluice check`.
    pub warnings: Vec<ConfigError>,
}

/// Hot reload settings.
#[derive(Clone, Debug)]
pub struct ReloadSettings {
    /// Whether file changes trigger a reload.
    pub watch: bool,
    /// How often the files are checked.
    pub interval: Duration,
}

/// One file a config was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    /// The path as resolved (a relative `keys_file` joined to the config's directory).
    pub path: PathBuf,
    /// SHA-256 of its text.
    pub sha256: [u8; 32],
}

/// One problem, placed in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// File name as given.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong, with the config path of the value.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                write!(f, "{}:{line}:{column}: {}", self.file, self.message)
            }
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found in a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn one(file: &str, message: String) -> Self {
        Self(vec![ConfigError {
            file: file.into(),
            line: None,
            column: None,
            message,
        }])
    }
}

/// Loads and compiles the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one(&name, format!("cannot read the config: {e}")))?;
    let mut config = load_str(&text, &name, path.parent())?;
    config.source = Some(path.to_path_buf());
    config.inputs[0].path = path.to_path_buf();
    Ok(config)
}

/// Compiles config text; `name` is used in messages, `dir` resolves a relative `keys_file`.
///
/// Every problem is reported in one pass: those of the YAML itself and of each value's type and
/// form in the config and its keys file together, then, when there are none, those between
/// values (an unknown plan, a duplicate route).
pub fn load_str(text: &str, name: &str, dir: Option<&Path>) -> Result<Config, ConfigErrors> {
    let main = yaml::parse(text).map_err(|e| ConfigErrors(vec![placed(name, e)]))?;
    let (file, mut errors) = read(&main, name, yaml::de::from_tree::<file::File>);
    let keys = read_keys(&main, name, dir, &mut errors);
    let mut file = match file {
        Some(file) if errors.is_empty() => file,
        _ => {
            errors.sort_by_key(|e| (e.file != name, e.line, e.column));
            return Err(ConfigErrors(errors));
        }
    };
    if let Some(dir) = dir {
        resolve_paths(&mut file, dir);
    }
    let (keys, keys_name, keys_text, keys_root) = match keys {
        Some(k) => (k.entries, k.name, k.text, Some(k.root)),
        None => (Vec::new(), String::new(), String::new(), None),
    };
    let mut inputs = vec![InputFile {
        path: PathBuf::from(name),
        sha256: Sha256::digest(text.as_bytes()).into(),
    }];
    let mut digest = Sha256::new();
    digest.update(text.as_bytes());
    if !keys_name.is_empty() {
        inputs.push(InputFile {
            path: PathBuf::from(&keys_name),
            sha256: Sha256::digest(keys_text.as_bytes()).into(),
        });
        digest.update(keys_text.as_bytes());
    }
    let deprecated = deprecated(&file);
    let declared: Vec<String> = file.plans.keys().cloned().collect();
    // Problems become `file:line:column: path: message`, sorted by place.
    let place = |problems: Vec<compile::Problem>| -> Vec<ConfigError> {
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|p| {
                let (file_name, root) = match p.source {
                    Source::Main => (name, Some(&main.root)),
                    Source::Keys => (keys_name.as_str(), keys_root.as_ref()),
                };
                let at = root.map(|root| {
                    if p.at_key {
                        root.find_key(&p.path)
                    } else {
                        root.find(&p.path)
                    }
                });
                let shown = if p.path.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", p.path)
                };
                ConfigError {
                    file: file_name.into(),
                    line: at.map(|l| l.line),
                    column: at.map(|l| l.column),
                    message: format!("{shown}{}", p.message),
                }
            })
            .collect();
        errors.sort_by_key(|e| (e.file != name, e.line, e.column));
        // A route limit is validated once per plan that uses it: report each problem once.
        errors.dedup();
        errors
    };
    let mut config = compile::compile_in(file, keys, dir).map_err(|p| ConfigErrors(place(p)))?;
    config.inputs = inputs;
    config.sha256 = digest.finalize().into();
    let mut warnings = deprecated;
    warnings.extend(lint::warnings(&config, &declared));
    if !warnings.is_empty() {
        config.warnings = place(warnings);
    }
    Ok(config)
}

/// A keys file as read.
struct KeysFile {
    entries: Vec<file::KeyEntry>,
    /// Its path, for messages.
    name: String,
    text: String,
    root: yaml::Node,
}

/// Reads the keys file `main` names, adding its problems to `errors`. `keys_file` is read
/// from the tree, so that the keys file is checked even when the rest of `main` has errors.
fn read_keys(
    main: &yaml::Document,
    name: &str,
    dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> Option<KeysFile> {
    let path = main.root.get("keys_file")?;
    let path = yaml::de::from_tree::<Option<String>>(path).0.flatten()?;
    let full = dir.map_or_else(|| PathBuf::from(&path), |d| d.join(&path));
    let keys_name = full.display().to_string();
    let text = match std::fs::read_to_string(&full) {
        Ok(text) => text,
        Err(e) => {
            errors.push(placed(
                name,
                Located {
                    at: main.root.find("keys_file"),
                    message: format!("keys_file: cannot read \"{keys_name}\": {e}"),
                },
            ));
            return None;
        }
    };
    let document = match yaml::parse(&text) {
        Ok(document) => document,
        Err(e) => {
            errors.push(placed(&keys_name, e));
            return None;
        }
    };
    let (entries, problems) = read(&document, &keys_name, yaml::de::from_items);
    errors.extend(problems);
    Some(KeysFile {
        entries: entries.unwrap_or_default(),
        name: keys_name,
        text,
        root: document.root,
    })
}

/// Deserializes a parsed file with `de`: the value, and every problem of its YAML and of its
/// values.
fn read<T>(
    document: &yaml::Document,
    name: &str,
    de: fn(&yaml::Node) -> (Option<T>, Vec<Located>),
) -> (Option<T>, Vec<ConfigError>) {
    let (value, problems) = de(&document.root);
    let errors = (document.duplicates.iter().cloned())
        .chain(problems)
        .map(|e| placed(name, e))
        .collect();
    (value, errors)
}

/// A problem of the YAML or of a value's type, in `file`.
fn placed(file: &str, problem: Located) -> ConfigError {
    ConfigError {
        file: file.into(),
        line: Some(problem.at.line),
        column: Some(problem.at.column),
        message: problem.message,
    }
}

/// Settings a config may still carry from an older sluice, which are accepted and ignored
/// (with a warning) rather than refused: refusing would stop a running fleet's next
/// restart over a setting that changed nothing but speed.
fn deprecated(file: &file::File) -> Vec<compile::Problem> {
    let mut found = Vec::new();
    if file.upstream.batch_writes.is_some() {
        found.push(compile::Problem {
            source: Source::Main,
            path: "upstream.batch_writes".into(),
            at_key: false,
            message: "no longer used and ignored (the io_uring write batching was removed); delete the line".into(),
        });
    }
    found
}

/// Joins the relative file paths of a config to the config's directory.
fn resolve_paths(file: &mut file::File, dir: &Path) {
    let join = |path: &mut String| {
        if Path::new(path.as_str()).is_relative() {
            *path = dir.join(path.as_str()).display().to_string();
        }
    };
    if let Some(tls) = &mut file.tls {
        join(&mut tls.cert);
        join(&mut tls.key);
    }
    if let Some(tls) = &mut file.upstream.tls {
        for path in [&mut tls.ca_file, &mut tls.cert, &mut tls.key]
            .into_iter()
            .flatten()
        {
            join(path);
        }
    }
}

#[cfg(test)]
mod tests;
