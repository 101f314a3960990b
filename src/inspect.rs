//! Looking at the compiled config from outside the request path: `sluice check` and
//! `/admin/config` (`summary`), and, for a caller without a live request, `sluice explain`
//! and `/admin/usage`.
//!
//! A `Caller` (an API key, a client IP) is turned into the request head a real client
//! would send, and that head goes through the same `Identifier` and route matching as
//! live traffic, so what these tools report is what the gateway does. Owns no policy and
//! counts nothing.

pub mod explain;
pub mod summary;
pub mod usage;

use std::net::{IpAddr, Ipv4Addr};

use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{HeaderValue, Method, Uri};

use crate::identity::jwt::TokenLocation;
use crate::identity::{KeySource, Unidentified};
use crate::policy::Policy;

/// Client address assumed when none is given.
pub const DEFAULT_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Who to look up. Every field is optional: no key is an anonymous caller.
///
/// A new identity kind becomes one more field here and one more case in `head`.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// An API key, presented through the first configured key source that can carry it.
    pub key: Option<String>,
    /// A JWT, presented where the first configured `jwt` source looks for it. It is verified
    /// like a live request's: a token that fails is reported as a 401, never as a caller.
    pub jwt: Option<String>,
    /// The client address (default 127.0.0.1).
    pub ip: Option<IpAddr>,
}

impl Caller {
    /// The client address.
    pub fn client_ip(&self) -> IpAddr {
        self.ip.unwrap_or(DEFAULT_IP)
    }
}

/// Why a caller could not be looked up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InspectError {
    /// Not an HTTP method.
    #[error("\"{0}\" is not an HTTP method")]
    Method(String),
    /// Not a path or URL.
    #[error("\"{0}\" is not a request path (expected /PATH[?QUERY] or http://HOST/PATH)")]
    Path(String),
    /// The config reads no API keys.
    #[error("this config reads no API keys (`identify` has no `api_key` source)")]
    NoKeySource,
    /// The config reads no JWTs.
    #[error("this config reads no JWTs (`identify` has no `jwt` source)")]
    NoJwtSource,
    /// No key source can carry this key.
    #[error("the key contains characters no configured key source can carry")]
    Unpresentable,
}

/// The request head a client would send for `caller`.
pub fn head(
    policy: &Policy,
    caller: &Caller,
    method: &str,
    path: &str,
) -> Result<Parts, InspectError> {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| InspectError::Method(method.into()))?;
    let uri: Uri = path
        .parse()
        .ok()
        .filter(|u: &Uri| u.path().starts_with('/'))
        .ok_or_else(|| InspectError::Path(path.into()))?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    // A client always sends a Host (HTTP/1.1 requires one): given a bare path, one that no
    // host pattern names, so only routes for any host match, as before host names counted.
    if uri.authority().is_none() {
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_static("explain.invalid"),
        );
    }
    parts.uri = uri;
    if let Some(key) = &caller.key {
        present_key(policy, &mut parts, key)?;
    }
    if let Some(token) = &caller.jwt {
        present_token(policy, &mut parts, token)?;
    }
    Ok(parts)
}

/// Puts `token` where the first `jwt` source looks for it.
fn present_token(policy: &Policy, parts: &mut Parts, token: &str) -> Result<(), InspectError> {
    let jwt = policy
        .identifier
        .sources
        .iter()
        .find_map(|source| match source {
            KeySource::Jwt(jwt) => Some(jwt),
            _ => None,
        })
        .ok_or(InspectError::NoJwtSource)?;
    let (name, value) = match &jwt.location {
        TokenLocation::Bearer => (AUTHORIZATION, format!("Bearer {token}")),
        TokenLocation::Header(name) => (name.clone(), token.to_string()),
    };
    let value = HeaderValue::from_str(&value).map_err(|_| InspectError::Unpresentable)?;
    parts.headers.insert(name, value);
    Ok(())
}

/// Puts `key` where the first key source able to carry it looks.
fn present_key(policy: &Policy, parts: &mut Parts, key: &str) -> Result<(), InspectError> {
    let sources = &policy.identifier.sources;
    if sources.is_empty() {
        return Err(InspectError::NoKeySource);
    }
    for source in sources {
        match source {
            KeySource::Header(name) => {
                if let Ok(value) = HeaderValue::from_str(key) {
                    parts.headers.insert(name.clone(), value);
                    return Ok(());
                }
            }
            KeySource::Bearer => {
                if let Ok(value) = HeaderValue::from_str(&format!("Bearer {key}")) {
                    parts.headers.insert(AUTHORIZATION, value);
                    return Ok(());
                }
            }
            // A JWT is not a key: `--key` never stands for a token.
            KeySource::Jwt(_) => {}
            KeySource::Query(name) => {
                // Encoded as a form would send it: the key source decodes it back.
                let key: String = form_urlencoded::byte_serialize(key.as_bytes()).collect();
                let path = parts.uri.path();
                let query = match parts.uri.query() {
                    Some(q) => format!("{q}&{name}={key}"),
                    None => format!("{name}={key}"),
                };
                let mut uri = http::uri::Builder::new();
                if let Some(scheme) = parts.uri.scheme() {
                    uri = uri.scheme(scheme.clone());
                }
                if let Some(authority) = parts.uri.authority() {
                    uri = uri.authority(authority.clone());
                }
                if let Ok(uri) = uri.path_and_query(format!("{path}?{query}")).build() {
                    parts.uri = uri;
                    return Ok(());
                }
            }
        }
    }
    Err(InspectError::Unpresentable)
}

/// Why an unidentified caller is answered 401, in words.
pub fn unidentified(why: Unidentified) -> &'static str {
    match why {
        Unidentified::NoKey => "no key, and callers without one are rejected",
        Unidentified::UnknownKey => "the key is not registered, and unknown keys are rejected",
        Unidentified::InvalidToken(_) => "the JWT failed verification",
        Unidentified::Ambiguous => "a key is given more than once, or two different keys are",
    }
}

#[cfg(test)]
mod tests;
