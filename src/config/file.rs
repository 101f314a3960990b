//! The config file as written: serde types only, every struct `deny_unknown_fields`.
//!
//! Values stay close to the YAML (strings, options); `compile` turns them into runtime
//! types and reports every semantic problem with its place.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use std::fmt;

use schemars::JsonSchema;
use serde::{de, Deserialize};

use super::units::{ByteSize, HumanDuration, Rate};

/// The whole file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Proxy listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Admin listener (metrics, health).
    #[serde(default)]
    pub admin: Admin,
    /// Inbound TLS: when set, `listen` speaks HTTPS (HTTP/1.1 and HTTP/2 by ALPN).
    #[serde(default)]
    pub tls: Option<TlsFile>,
    /// Limits that protect the listener from misbehaving clients.
    #[serde(default)]
    pub limits: LimitsFile,
    /// Where allowed traffic goes.
    pub upstream: Upstream,
    /// How callers are identified, tried in order (each one a mapping of one key, the kind,
    /// as `config::yaml` reads every enum with a value).
    #[serde(default)]
    pub identify: Vec<IdentifySource>,
    /// What happens to callers that present no key.
    #[serde(default)]
    pub anonymous: Option<Fallback>,
    /// What happens to callers that present a key not in the registry.
    #[serde(default)]
    pub unknown_key: Option<Fallback>,
    /// Inline key registry.
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
    /// A separate YAML file holding a list of key entries.
    #[serde(default)]
    pub keys_file: Option<String>,
    /// Plans by name.
    #[serde(default)]
    pub plans: BTreeMap<String, PlanFile>,
    /// Routes, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// How request targets are put in canonical form before identity and matching.
    #[serde(default)]
    pub normalise: NormaliseFile,
    /// Defaults for every limit.
    #[serde(default)]
    pub defaults: Defaults,
    /// Shadow mode for the whole policy: every limit counts and reports, none rejects.
    #[serde(default)]
    pub shadow: Option<bool>,
    /// The penalty box for every plan that sets none of its own.
    #[serde(default)]
    pub penalty: Option<PenaltyFile>,
    /// Status codes, headers and bodies.
    #[serde(default)]
    pub responses: Responses,
    /// Counter storage.
    #[serde(default)]
    pub store: StoreFile,
    /// Log format and level.
    #[serde(default)]
    pub log: Log,
    /// What `/metrics` breaks down.
    #[serde(default)]
    pub metrics: MetricsFile,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(default)]
    pub shutdown_timeout: Option<HumanDuration>,
    /// Hot reload on file change.
    #[serde(default)]
    pub reload: Reload,
    /// Bounds of the idempotency record store (routes opt in with `idempotency`).
    #[serde(default)]
    pub idempotency: IdempotencyBounds,
}

/// A certificate chain and its private key, PEM files re-read when they change.
///
/// Relative paths are resolved against the config file's directory.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM file with the certificate chain, leaf first.
    pub cert: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// Limits against misbehaving clients, per listener or per connection.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Connections served at once (default 10000); past it, new connections wait in the
    /// kernel's listen backlog until one closes.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Time a client has to send a request's whole header block (default 30s); also bounds
    /// the TLS handshake and the wait for a connection's first request.
    #[serde(default)]
    pub header_read_timeout: Option<HumanDuration>,
    /// A connection with no traffic either way for this long is closed (default 60s).
    #[serde(default)]
    pub idle_timeout: Option<HumanDuration>,
    /// Largest request header block, request line included (default 64KiB); larger gets 431.
    #[serde(default)]
    pub max_header_bytes: Option<ByteSize>,
    /// Most header fields in one request (default 100); more gets 431.
    #[serde(default)]
    pub max_headers: Option<usize>,
    /// Connections the kernel queues for `accept` (default: the system's maximum,
    /// `net.core.somaxconn` on Linux).
    #[serde(default)]
    pub backlog: Option<u32>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

/// Admin listener settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Loopback by default: metrics and config are not for the world.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Environment variable holding a bearer token that `/admin/*` requests must send.
    #[serde(default)]
    pub token_env: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token_env: None,
        }
    }
}

/// Hot reload settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reload {
    /// Reload when the config or keys file changes (default true).
    #[serde(default)]
    pub watch: Option<bool>,
    /// How often the files are checked for changes (default 1s).
    #[serde(default)]
    pub interval: Option<HumanDuration>,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// The upstream API.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `http://host:port[/base]`, or `demo:` for the built-in demo upstream.
    pub url: String,
    /// TCP connect timeout (default 2s).
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
    /// Time until the upstream's response headers arrive (default 30s).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// How long a pooled idle connection is kept (default 90s).
    #[serde(default)]
    pub idle_timeout: Option<HumanDuration>,
    /// `Host` sent upstream: `preserve` (default), `upstream`, or a literal host.
    #[serde(default)]
    pub host: Option<String>,
    /// Speak HTTP/2 to the upstream (ALPN over https, prior knowledge over http).
    #[serde(default)]
    pub http2: Option<bool>,
    /// Reuse connections to the upstream (default true). `false`: every request goes on a
    /// new connection and asks the upstream to close it (`Connection: close`).
    #[serde(default)]
    pub keepalive: Option<bool>,
    /// Most idle connections kept open for reuse (default 1024).
    #[serde(default)]
    pub max_idle_connections: Option<usize>,
    /// Deprecated and ignored: io_uring write batching was removed. Accepted (with a
    /// warning) so that a config written for an older sluice still loads.
    #[serde(default)]
    #[schemars(extend("deprecated" = true))]
    pub batch_writes: Option<bool>,
    /// How an `https://` upstream is trusted and what sluice presents to it.
    #[serde(default)]
    pub tls: Option<UpstreamTlsFile>,
}

/// TLS to an `https://` upstream. Relative paths resolve against the config's directory.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    /// PEM file of extra CA certificates to trust, besides the system's roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Trust only `ca_file`, not the system's roots.
    #[serde(default)]
    pub ca_only: Option<bool>,
    /// Client certificate chain (PEM) presented to the upstream; needs `key`.
    #[serde(default)]
    pub cert: Option<String>,
    /// Private key (PEM) of `cert`.
    #[serde(default)]
    pub key: Option<String>,
    /// Name sent as SNI and verified in the upstream's certificate (default: the URL's host).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Request normalisation: every step on by default. Turning one off lets the spellings it
/// would have merged reach the upstream as different paths, each with its own count.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NormaliseFile {
    /// Decode escapes of unreserved characters (`%6C` → `l`), upper-case the other escapes,
    /// escape raw bytes a path may not hold (default true).
    #[serde(default)]
    pub percent_encoding: Option<bool>,
    /// Resolve `.` and `..` segments; a `..` above the root is a 400 (default true).
    #[serde(default)]
    pub dot_segments: Option<bool>,
    /// Read `//` as `/` (default true).
    #[serde(default)]
    pub merge_slashes: Option<bool>,
    /// `%2F`, `%5C` and `\` in a path: `reject` (400, the default), `decode` (read as `/`)
    /// or `keep` (forwarded encoded).
    #[serde(default)]
    pub encoded_slashes: Option<EncodedSlashes>,
    /// A `Host` that disagrees with an absolute-form target's authority (or HTTP/2's
    /// `:authority`): `replace` it with the authority (the default) or `reject` (400).
    #[serde(default)]
    pub conflicting_host: Option<ConflictingHost>,
}

/// What `%2F`, `%5C` and `\` in a path get.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlashes {
    /// 400.
    Reject,
    /// Read as the `/` they spell.
    Decode,
    /// Forwarded encoded, part of their segment.
    Keep,
}

/// What a `Host` that disagrees with the target's authority gets.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConflictingHost {
    /// Replaced by the authority.
    Replace,
    /// 400.
    Reject,
}

/// One way to find out who is calling.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum IdentifySource {
    /// An API key.
    ApiKey(ApiKeySource),
    /// A signed JSON Web Token: its subject is the caller, its claims may name plan and org.
    Jwt(Box<JwtSource>),
    /// The client IP: callers without a key are limited by IP under the anonymous plan.
    Ip(IpSource),
}

/// A JWT source: which algorithms, which key, which claims.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtSource {
    /// Accepted algorithms, all of one family: `HS256`/`HS384`/`HS512`, `RS256`... `PS512`,
    /// `ES256`/`ES384`, or `EdDSA`.
    pub algorithms: Vec<String>,
    /// HMAC: environment variable holding the shared secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// HMAC: file holding the shared secret (trailing newline ignored).
    #[serde(default)]
    pub secret_file: Option<String>,
    /// RSA/EC/EdDSA: PEM file of the public key.
    #[serde(default)]
    pub public_key_file: Option<String>,
    /// RSA/EC/EdDSA: JWKS file (`{"keys": [...]}`); the token's `kid` picks the key.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// Header carrying the token (default `Authorization`, as `Bearer <token>`).
    #[serde(default)]
    pub header: Option<String>,
    /// Required `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud` (the token's `aud` must contain it).
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (default 30s).
    #[serde(default)]
    pub leeway: Option<HumanDuration>,
    /// Claim naming the caller (default `sub`).
    #[serde(default)]
    pub subject_claim: Option<String>,
    /// Claim naming the caller's plan; absent or unknown plan names mean `plan`.
    #[serde(default)]
    pub plan_claim: Option<String>,
    /// Claim naming the caller's organisation, for `per: org` limits.
    #[serde(default)]
    pub org_claim: Option<String>,
    /// Plan of tokens whose plan claim is absent or names no plan (default `default`).
    #[serde(default)]
    pub plan: Option<String>,
}

/// Where an API key is read from: exactly one of the fields.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySource {
    /// A request header.
    #[serde(default)]
    pub header: Option<String>,
    /// `Authorization: Bearer <key>`.
    #[serde(default)]
    pub bearer: bool,
    /// A query parameter.
    #[serde(default)]
    pub query: Option<String>,
}

/// Client IP settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpSource {
    /// Peers whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// What to do with a caller the registry does not know: `reject` or `{ plan: NAME, per }`.
#[derive(Debug)]
pub enum Fallback {
    /// Answer 401.
    Reject,
    /// Limit such callers under a plan.
    Plan(FallbackPlan),
}

impl<'de> Deserialize<'de> for Fallback {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Fallback;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`reject` or `{ plan: NAME, per: key | ip }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Fallback, E> {
                match v {
                    "reject" => Ok(Fallback::Reject),
                    other => Err(E::custom(format!(
                        "unknown action \"{other}\": expected `reject` or `{{ plan: NAME, per: key | ip }}`"
                    ))),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Fallback, A::Error> {
                FallbackPlan::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Fallback::Plan)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Limit such callers under a plan.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FallbackPlan {
    /// The plan.
    pub plan: String,
    /// Count per presented key or per client IP (default: key for unknown keys).
    #[serde(default)]
    pub per: Option<FallbackPer>,
}

/// What an unknown caller is counted by.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FallbackPer {
    /// Each presented key.
    Key,
    /// The client IP.
    Ip,
}

/// One registered key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The key in clear.
    #[serde(default)]
    pub key: Option<String>,
    /// Hex SHA-256 of the key, so the file leaks no key.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Plan name (default: `default`).
    #[serde(default)]
    pub plan: Option<String>,
    /// Organisation, for `per: org` limits.
    #[serde(default)]
    pub org: Option<String>,
    /// Overrides by limit name, like a plan's.
    #[serde(default)]
    pub limits: BTreeMap<String, LimitValue>,
}

/// A plan.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// `deny` answers 403 to every request of the plan.
    #[serde(default)]
    pub access: Option<Access>,
    /// `all` = plan-wide limit over every request; any other name overrides that route limit.
    #[serde(default)]
    pub limits: BTreeMap<String, LimitValue>,
    /// This plan's penalty box (replaces the top-level one).
    #[serde(default)]
    pub penalty: Option<PenaltyFile>,
}

/// Penalty box: `violations` rejections within `within` block the caller for `block_for`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PenaltyFile {
    /// Rejections that earn a block.
    pub violations: u32,
    /// The period they must fall in, counted from the first.
    pub within: HumanDuration,
    /// How long the block lasts.
    pub block_for: HumanDuration,
}

/// Whether a plan may use the API.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// The default.
    Allow,
    /// 403 for every request.
    Deny,
}

/// A limit as written: `none`, a bare rate (`300/min`), a full limit, or a list of them.
///
/// A bare rate in a plan or key override keeps the route limit's other settings.
#[derive(Debug)]
pub enum LimitValue {
    /// `none`: exempt.
    None,
    /// `120/min`.
    Rate(Rate),
    /// `{ rate: 120/min, algorithm: ..., per: ... }`.
    Full(LimitFile),
    /// Several limits at once (routes only).
    Many(Vec<LimitValue>),
}

impl<'de> Deserialize<'de> for LimitValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = LimitValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate like `100/min`, `none`, `{ rate: ..., algorithm: ..., per: ... }` or a list of those")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LimitValue, E> {
                if v == "none" {
                    return Ok(LimitValue::None);
                }
                Rate::parse(v).map(LimitValue::Rate).map_err(E::custom)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<LimitValue, A::Error> {
                LimitFile::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(LimitValue::Full)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<LimitValue, A::Error> {
                let mut all = Vec::new();
                while let Some(one) = seq.next_element()? {
                    all.push(one);
                }
                Ok(LimitValue::Many(all))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Unique name: metric label, override key and the limit's default name.
    pub name: String,
    /// What requests it takes.
    #[serde(default, rename = "match")]
    pub matcher: MatchFile,
    /// One limit, a list, or `none` (exempt).
    #[serde(default)]
    pub limit: Option<LimitValue>,
    /// Units one request takes (default 1).
    #[serde(default)]
    pub cost: Option<u32>,
    /// Largest request body (`10MiB`); a larger one is answered 413 and not forwarded.
    #[serde(default)]
    pub max_body: Option<ByteSize>,
    /// Replay the first response to a retried `Idempotency-Key` instead of forwarding it.
    #[serde(default)]
    pub idempotency: Option<RouteIdempotency>,
}

/// A route's idempotency keys: a retry with the same key gets the stored response.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteIdempotency {
    /// The request header holding the key (default `Idempotency-Key`).
    #[serde(default)]
    pub header: Option<String>,
    /// How long a response is kept, from the first request's arrival (default 24h).
    #[serde(default)]
    pub ttl: Option<HumanDuration>,
    /// Largest request body hashed and response body stored (default 1MiB).
    #[serde(default)]
    pub max_body: Option<ByteSize>,
}

/// Memory bounds of the idempotency record store.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyBounds {
    /// Records (stored responses and in-flight claims) held at most (default 100000).
    #[serde(default)]
    pub max_entries: Option<usize>,
    /// Bytes of stored responses held at most (default 256MiB).
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
}

/// A route's match.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    /// One method or a list (default: any).
    #[serde(default)]
    pub method: Option<OneOrMany>,
    /// Path pattern (default `/**`).
    #[serde(default)]
    pub path: Option<String>,
    /// Host pattern.
    #[serde(default)]
    pub host: Option<String>,
}

/// `GET` or `[GET, HEAD]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// As a list.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let slice: &[String] = match self {
            OneOrMany::One(one) => std::slice::from_ref(one),
            OneOrMany::Many(many) => many,
        };
        slice.iter().map(String::as_str)
    }
}

/// A limit spelled out.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitFile {
    /// Name in headers and overrides (default: the route's name, `#2`, `#3`... for more).
    #[serde(default)]
    pub name: Option<String>,
    /// The rate.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// Counting algorithm (default from `defaults`).
    #[serde(default)]
    pub algorithm: Option<AlgorithmName>,
    /// What is counted (default from `defaults`).
    #[serde(default)]
    pub per: Option<Scope>,
    /// Token bucket capacity (default: the rate's count).
    #[serde(default)]
    pub burst: Option<u32>,
    /// At most this many requests in flight at once (instead of a `rate`).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Token bucket: a request that does not fit may wait this long for its slot.
    #[serde(default)]
    pub delay: Option<HumanDuration>,
    /// Token bucket with `delay`: at most this many requests of one subject waiting.
    #[serde(default)]
    pub max_delayed: Option<u32>,
    /// Count and report, never reject.
    #[serde(default)]
    pub shadow: Option<bool>,
}

/// Algorithm names.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmName {
    /// Epoch-aligned windows.
    FixedWindow,
    /// Weighted two-window counter.
    SlidingWindow,
    /// GCRA.
    TokenBucket,
    /// At most N requests in flight (set with `concurrency: N`).
    Concurrency,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Each identity (key, or IP for anonymous callers).
    Key,
    /// Each organisation (the identity when it has none).
    Org,
    /// Each client IP.
    Ip,
    /// Everyone together.
    Global,
}

/// Defaults for limits.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Default algorithm.
    #[serde(default = "default_algorithm")]
    pub algorithm: AlgorithmName,
    /// Default scope.
    #[serde(default = "default_per")]
    pub per: Scope,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            algorithm: default_algorithm(),
            per: default_per(),
        }
    }
}

fn default_algorithm() -> AlgorithmName {
    AlgorithmName::SlidingWindow
}

fn default_per() -> Scope {
    Scope::Key
}

/// Response settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Responses {
    /// Which rate-limit headers to send.
    #[serde(default)]
    pub headers: Option<HeaderStyle>,
    /// Unit of `X-RateLimit-Reset`.
    #[serde(default)]
    pub reset: Option<ResetStyle>,
    /// Rejected by a limit (429).
    #[serde(default)]
    pub limited: Option<ResponseFile>,
    /// Blocked by the penalty box (default: as `limited`).
    #[serde(default)]
    pub penalised: Option<ResponseFile>,
    /// No identity or a rejected key (401).
    #[serde(default)]
    pub unauthorized: Option<ResponseFile>,
    /// A key given more than once, or two different keys (default: as `unauthorized`,
    /// status 400).
    #[serde(default)]
    pub ambiguous_key: Option<ResponseFile>,
    /// A malformed or ambiguously framed request, or a request target sluice refuses to
    /// guess at: an encoded slash, an invalid escape, a `..` above the root, a bad `Host`
    /// (400).
    #[serde(default)]
    pub bad_request: Option<ResponseFile>,
    /// `CONNECT` when no route lists it (405).
    #[serde(default)]
    pub method_not_allowed: Option<ResponseFile>,
    /// Plan without access (403).
    #[serde(default)]
    pub denied: Option<ResponseFile>,
    /// Upstream refused or reset (502).
    #[serde(default)]
    pub upstream_unavailable: Option<ResponseFile>,
    /// Upstream too slow (504).
    #[serde(default)]
    pub upstream_timeout: Option<ResponseFile>,
    /// Request body over the route's `max_body` (413).
    #[serde(default)]
    pub payload_too_large: Option<ResponseFile>,
    /// The limit store failed and `store.on_error` is `deny` (503).
    #[serde(default)]
    pub unavailable: Option<ResponseFile>,
    /// A request with the same idempotency key is still in flight (409).
    #[serde(default)]
    pub idempotency_conflict: Option<ResponseFile>,
    /// The idempotency key was used with a different request (422).
    #[serde(default)]
    pub idempotency_mismatch: Option<ResponseFile>,
}

/// Rate-limit header styles.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HeaderStyle {
    /// `X-RateLimit-*`.
    #[serde(alias = "x_ratelimit")]
    XRatelimit,
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11).
    Ietf,
    /// Both.
    Both,
    /// Neither.
    None,
}

/// Units of `X-RateLimit-Reset`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResetStyle {
    /// Unix seconds.
    UnixSeconds,
    /// Unix milliseconds.
    UnixMillis,
    /// Seconds from now.
    DeltaSeconds,
}

/// One outcome's response.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseFile {
    /// Status code.
    #[serde(default)]
    pub status: Option<u16>,
    /// Body template with `${variable}` placeholders.
    #[serde(default)]
    pub body: Option<String>,
    /// `Content-Type` of the body (default `application/json`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Store settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// `memory` (default) or `redis`.
    #[serde(default = "default_backend")]
    pub backend: Backend,
    /// Cap on tracked counters (memory store; with redis, the local fallback and caches).
    #[serde(default)]
    pub max_entries: Option<usize>,
    /// How often idle counters are swept (default 10s).
    #[serde(default)]
    pub sweep_interval: Option<HumanDuration>,
    /// Redis URL, `redis://[:PASSWORD@]HOST[:PORT][/DB]` (redis only).
    #[serde(default)]
    pub url: Option<String>,
    /// Bound on every Redis call (redis only, default 50ms).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// What a request gets when Redis fails (redis only, default `allow`).
    #[serde(default)]
    pub on_error: Option<OnError>,
    /// Key prefix, also the Redis Cluster hash tag (redis only, default `sluice`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// `strict` (default): one Redis call per request; `sync`: decide from local leases,
    /// reconciled with Redis every `sync_interval` (redis only).
    #[serde(default)]
    pub mode: Option<StoreMode>,
    /// How often `mode: sync` reconciles its leases with Redis (default 5ms).
    #[serde(default)]
    pub sync_interval: Option<HumanDuration>,
    /// `true`: `url` is one node of a Redis Cluster, from which sluice discovers the others
    /// (redis only, default `false`).
    #[serde(default)]
    pub cluster: Option<bool>,
}

impl Default for StoreFile {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            max_entries: None,
            sweep_interval: None,
            url: None,
            timeout: None,
            on_error: None,
            prefix: None,
            mode: None,
            sync_interval: None,
            cluster: None,
        }
    }
}

fn default_backend() -> Backend {
    Backend::Memory
}

/// Store backends.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Embedded, per process.
    Memory,
    /// Shared by every replica through Redis.
    Redis,
}

/// How the Redis store decides.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreMode {
    /// One script call per request: exact.
    Strict,
    /// Requests spend leases taken from Redis; leases are reconciled every `sync_interval`.
    Sync,
}

/// What a request gets when the Redis store fails or times out.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Let it through (fail open), counted in `sluice_store_fail_open_total`.
    Allow,
    /// Answer 503 with `responses.unavailable`.
    Deny,
    /// Enforce this replica's share of each limit locally.
    Local,
}

/// `/metrics` settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// Labels on the request, upstream and limiter duration histograms: none (the default),
    /// `[route]`, `[plan]` or `[route, plan]`. Each label set costs 20 series per histogram.
    #[serde(default)]
    pub histogram_labels: Vec<HistogramLabel>,
}

/// A label the duration histograms may carry.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HistogramLabel {
    /// The matched route (`unmatched` when none).
    Route,
    /// The caller's plan (`none` when unidentified).
    Plan,
}

/// Logging.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: Option<LogFormat>,
    /// A tracing filter such as `info` or `sluice=debug` (overridden by `RUST_LOG`).
    #[serde(default)]
    pub level: Option<String>,
}

/// Log formats.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
