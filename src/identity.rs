//! Who is calling: an API key (header, bearer or query), a registered key's plan and
//! organisation, a verified JWT (`jwt`), or the client IP as the fallback.
//!
//! Owns key sources, the key registry and client-IP resolution. Produces an `Identity`
//! that carries only hashes and indexes, so nothing per request is a `String` and no key
//! reaches a log in clear. Does not know about routes or limits.

pub mod jwt;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use http::header::{HeaderName, AUTHORIZATION};
use http::request::Parts;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use siphasher::sip::SipHasher13;

use crate::limiter::clock::Nanos;
use crate::policy::ProfileId;

/// Where an API key is read from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// A request header.
    Header(HeaderName),
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// A query parameter.
    Query(String),
    /// A JWT: verified, never looked up in the registry.
    Jwt(Arc<jwt::Jwt>),
}

/// How a caller was identified; keys of different kinds never share a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A key from the registry.
    Key,
    /// A key the registry does not know, limited under the unknown-key plan.
    UnknownKey,
    /// No key: the client IP.
    Ip,
    /// A verified JWT's subject.
    Jwt,
}

/// The caller, as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// How it was identified.
    pub kind: Kind,
    /// Keyed hash of the key (or IP): the counter subject for `per: key` limits.
    pub subject: u64,
    /// Keyed hash of the organisation, for `per: org` limits.
    pub org: Option<u64>,
    /// Plan plus per-key overrides.
    pub profile: ProfileId,
}

/// Why no identity could be established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unidentified {
    /// No key was presented and anonymous callers are rejected.
    NoKey,
    /// The key is not registered and unknown keys are rejected.
    UnknownKey,
    /// A JWT was presented and failed verification: never an identity.
    InvalidToken(jwt::TokenError),
    /// A key given more than once (two headers, two query parameters), or different keys
    /// in different places: which one the upstream reads is its own choice, so none is
    /// picked here.
    Ambiguous,
}

/// A credential given more than once in the place a source reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ambiguous;

/// What to do with callers the registry does not cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// 401.
    Reject,
    /// Count each presented key under this profile.
    PerKey(ProfileId),
    /// Count by client IP under this profile.
    PerIp(ProfileId),
}

/// One registered key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// Plan plus overrides.
    pub profile: ProfileId,
    /// Hash of the organisation.
    pub org: Option<u64>,
}

/// Registered keys, by clear text or by SHA-256.
#[derive(Debug, Default)]
pub struct Registry {
    clear: HashMap<Box<str>, KeyInfo>,
    hashed: HashMap<[u8; 32], KeyInfo>,
    /// Organisation names by hash, for `explain` and `/admin/usage` (never on the request path).
    orgs: HashMap<u64, Box<str>>,
}

impl Registry {
    /// Adds a key listed in clear.
    pub fn insert_clear(&mut self, key: &str, info: KeyInfo) -> bool {
        self.clear.insert(key.into(), info).is_none()
    }

    /// Adds a key listed by its SHA-256.
    pub fn insert_hashed(&mut self, digest: [u8; 32], info: KeyInfo) -> bool {
        self.hashed.insert(digest, info).is_none()
    }

    /// Looks a presented key up; hashes it only when hashed entries exist.
    pub fn get(&self, key: &str) -> Option<&KeyInfo> {
        if let Some(info) = self.clear.get(key) {
            return Some(info);
        }
        if self.hashed.is_empty() {
            return None;
        }
        self.hashed
            .get(&<[u8; 32]>::from(Sha256::digest(key.as_bytes())))
    }

    /// The hash `per: org` limits count an organisation by; remembers its name.
    pub fn org(&mut self, name: &str) -> u64 {
        let hash = subject_hash(b'o', name.as_bytes());
        self.orgs.entry(hash).or_insert_with(|| name.into());
        hash
    }

    /// The name of an organisation hash made by [`Registry::org`].
    pub fn org_name(&self, hash: u64) -> Option<&str> {
        self.orgs.get(&hash).map(|name| &**name)
    }

    /// The profile of every registered key, for reports on the policy (never on the
    /// request path).
    pub fn profiles(&self) -> impl Iterator<Item = ProfileId> + '_ {
        self.clear
            .values()
            .chain(self.hashed.values())
            .map(|info| info.profile)
    }

    /// Number of registered keys.
    pub fn len(&self) -> usize {
        self.clear.len() + self.hashed.len()
    }

    /// Whether no key is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Finds the caller of a request.
#[derive(Debug)]
pub struct Identifier {
    /// Key sources, tried in order.
    pub sources: Vec<KeySource>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Registered keys.
    pub registry: Registry,
    /// Callers with no key.
    pub anonymous: Fallback,
    /// Callers with an unregistered key.
    pub unknown_key: Fallback,
}

impl Identifier {
    /// Identifies the caller of `parts` coming from `client_ip`; `now` (the request's one
    /// clock reading) checks a JWT's time window. Every source is read: one credential may
    /// be found by several (the same bearer token by a key and a JWT source), and the
    /// first source that found it says what it is; two different credentials, or one given
    /// twice where a source reads, are [`Unidentified::Ambiguous`].
    pub fn identify(
        &self,
        parts: &Parts,
        client_ip: IpAddr,
        now: Nanos,
    ) -> Result<Identity, Unidentified> {
        match self
            .credential(parts)
            .map_err(|Ambiguous| Unidentified::Ambiguous)?
        {
            Some((KeySource::Jwt(jwt), token)) => {
                jwt.verify(&token, now).map_err(Unidentified::InvalidToken)
            }
            Some((_, key)) => self.by_key(&key, client_ip),
            None => self.fallback(self.anonymous, None, client_ip, Unidentified::NoKey),
        }
    }

    /// The one credential the request presents, with the first source that found it.
    fn credential<'a>(
        &self,
        parts: &'a Parts,
    ) -> Result<Option<(&KeySource, Cow<'a, str>)>, Ambiguous> {
        let mut found: Option<(&KeySource, Cow<'a, str>)> = None;
        for source in &self.sources {
            let Some(credential) = source.credential(parts)? else {
                continue;
            };
            match &found {
                None => found = Some((source, credential)),
                Some((_, first)) if *first == credential => {}
                Some(_) => return Err(Ambiguous),
            }
        }
        Ok(found)
    }

    fn by_key(&self, key: &str, client_ip: IpAddr) -> Result<Identity, Unidentified> {
        match self.registry.get(key) {
            Some(info) => Ok(Identity {
                kind: Kind::Key,
                subject: subject_hash(b'k', key.as_bytes()),
                org: info.org,
                profile: info.profile,
            }),
            None => self.fallback(
                self.unknown_key,
                Some(key),
                client_ip,
                Unidentified::UnknownKey,
            ),
        }
    }

    fn fallback(
        &self,
        fallback: Fallback,
        key: Option<&str>,
        client_ip: IpAddr,
        why: Unidentified,
    ) -> Result<Identity, Unidentified> {
        match (fallback, key) {
            (Fallback::Reject, _) => Err(why),
            (Fallback::PerKey(profile), Some(key)) => Ok(Identity {
                kind: Kind::UnknownKey,
                subject: subject_hash(b'u', key.as_bytes()),
                org: None,
                profile,
            }),
            (Fallback::PerKey(profile) | Fallback::PerIp(profile), _) => Ok(Identity {
                kind: Kind::Ip,
                subject: ip_hash(client_ip),
                org: None,
                profile,
            }),
        }
    }

    /// The API key the request presents (a JWT is not a key), if it presents one only.
    pub fn presented_key<'a>(&self, parts: &'a Parts) -> Option<Cow<'a, str>> {
        match self.credential(parts) {
            Ok(Some((KeySource::Jwt(_), _))) | Ok(None) | Err(Ambiguous) => None,
            Ok(Some((_, key))) => Some(key),
        }
    }

    /// The client address: the peer, or for a trusted peer the rightmost untrusted
    /// address of `X-Forwarded-For`.
    pub fn client_ip(&self, peer: IpAddr, parts: &Parts) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        for value in parts
            .headers
            .get_all(crate::upstream::X_FORWARDED_FOR)
            .iter()
            .rev()
        {
            let Ok(value) = value.to_str() else {
                return client;
            };
            for hop in value.rsplit(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) => {
                        client = ip;
                        if !self.is_trusted(ip) {
                            return ip;
                        }
                    }
                    Err(_) => return client,
                }
            }
        }
        client
    }

    /// Whether `ip` is a configured trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

impl KeySource {
    /// The credential this source finds in `parts`: a non-empty key (trimmed; a query
    /// parameter decoded first), or for a JWT source a token-shaped value. A header or
    /// parameter given more than once is [`Ambiguous`], whatever the values.
    pub fn credential<'a>(&self, parts: &'a Parts) -> Result<Option<Cow<'a, str>>, Ambiguous> {
        let key = match self {
            KeySource::Header(name) => single_header(parts, name)?.and_then(|v| v.to_str().ok()),
            KeySource::Bearer => single_header(parts, &AUTHORIZATION)?
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token),
            KeySource::Query(name) => {
                return Ok(query_param(parts.uri.query().unwrap_or(""), name)?.and_then(trimmed))
            }
            KeySource::Jwt(jwt) => {
                let header = match &jwt.location {
                    jwt::TokenLocation::Bearer => &AUTHORIZATION,
                    jwt::TokenLocation::Header(name) => name,
                };
                single_header(parts, header)?;
                return Ok(jwt.token(parts).map(Cow::Borrowed));
            }
        };
        Ok(key.and_then(|key| trimmed(Cow::Borrowed(key))))
    }
}

/// The value of `name` if the request has one; two or more are [`Ambiguous`].
fn single_header<'a>(
    parts: &'a Parts,
    name: &HeaderName,
) -> Result<Option<&'a http::HeaderValue>, Ambiguous> {
    crate::headers::single(&parts.headers, name).map_err(|()| Ambiguous)
}

/// A key with surrounding whitespace trimmed (the only change a key sees); `None` if empty.
fn trimmed(key: Cow<'_, str>) -> Option<Cow<'_, str>> {
    let trimmed = match key {
        Cow::Borrowed(key) => Cow::Borrowed(key.trim()),
        Cow::Owned(key) if key.trim().len() == key.len() => Cow::Owned(key),
        Cow::Owned(key) => Cow::Owned(key.trim().to_owned()),
    };
    (!trimmed.is_empty()).then_some(trimmed)
}

/// The value of the query parameter `name`, decoded as `application/x-www-form-urlencoded`
/// (`+` is a space, escapes decoded, in the name too), as the upstream's framework reads
/// it. A name given twice, however spelled, is [`Ambiguous`]. Borrowed unless decoded.
fn query_param<'a>(query: &'a str, name: &str) -> Result<Option<Cow<'a, str>>, Ambiguous> {
    let mut found = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == name {
            if found.is_some() {
                return Err(Ambiguous);
            }
            found = Some(value);
        }
    }
    Ok(found)
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

static HASHER: OnceLock<SipHasher13> = OnceLock::new();

/// Process-wide secret for subject hashes, so nobody can aim keys at one bucket of the
/// memory store's map. Kept across reloads, so counters survive them.
fn hasher() -> &'static SipHasher13 {
    HASHER.get_or_init(|| {
        let (k0, k1) = (rand::random(), rand::random());
        SipHasher13::new_with_keys(k0, k1)
    })
}

/// Makes the subject hash secret a function of `seed`, so replicas sharing a store count
/// a caller under the same counter. Effective only before the first subject is hashed
/// (the first config load); returns whether the secret is the shared one.
pub fn share_subject_secret(seed: &[u8]) -> bool {
    let digest = Sha256::digest([b"sluice subjects\0".as_slice(), seed].concat());
    let k0 = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    let k1 = u64::from_le_bytes(digest[8..16].try_into().expect("8 bytes"));
    let shared = SipHasher13::new_with_keys(k0, k1);
    HASHER.get_or_init(|| shared).keys() == shared.keys()
}

/// Keyed hash of a subject; `tag` keeps kinds apart (a key never equals an IP or an org).
pub fn subject_hash(tag: u8, bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = *hasher();
    h.write_u8(tag);
    h.write(bytes);
    h.finish()
}

/// Subject hash of a client IP.
pub fn ip_hash(ip: IpAddr) -> u64 {
    match canonical(ip) {
        IpAddr::V4(v4) => subject_hash(b'4', &v4.octets()),
        IpAddr::V6(v6) => subject_hash(b'6', &v6.octets()),
    }
}

/// A short, non-reversible tag for logs: the first 8 hex digits of the key's SHA-256.
pub fn redact(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("sha256:{}", hex::encode(&digest[..4]))
}

#[cfg(test)]
mod tests;
