//! Operator endpoints: `GET /admin/config` (the running config, compiled), `GET
//! /admin/usage?key=K&ip=ADDR` and `POST /admin/reload`, all JSON, all behind the optional
//! bearer token.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::body::Body;
use crate::inspect::usage::{usage, UsageError};
use crate::inspect::Caller;
use crate::proxy::Gateway;
use crate::reload::{ReloadError, Reloader, Trigger};

/// Answers one `/admin/...` request.
pub async fn respond(
    request: Request<Incoming>,
    gateway: &Gateway,
    reloader: &Arc<Reloader>,
) -> Response<Body> {
    let snapshot = gateway.snapshot.load_full();
    if let Some(expected) = &snapshot.config.admin_token {
        if !authorized(&request, expected) {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "a valid admin bearer token is required".into(),
            );
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    let method = request.method();
    let readonly = method == Method::GET || method == Method::HEAD;
    match request.uri().path() {
        "/admin/config" if readonly => config(&snapshot),
        "/admin/usage" if readonly => {
            let caller = match caller(request.uri().query().unwrap_or("")) {
                Ok(caller) => caller,
                Err(message) => return error(StatusCode::BAD_REQUEST, message),
            };
            let now = gateway.clock.now();
            match usage(&snapshot.config, &*gateway.store, now, &caller).await {
                Ok(usage) => json_response(StatusCode::OK, &usage),
                Err(e @ UsageError::Inspect(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
                Err(e @ UsageError::Unidentified(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
                Err(e @ UsageError::Store(_)) => {
                    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                }
            }
        }
        "/admin/reload" if method == Method::POST => {
            match reloader.reload_async(Trigger::Admin).await {
                Ok(applied) => json_response(
                    StatusCode::OK,
                    &json!({
                        "result": "ok",
                        "sha256": hex::encode(applied.sha256),
                        "restart_required": applied.restart_required,
                    }),
                ),
                Err(ReloadError::Invalid(errors)) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({
                        "result": "error",
                        "errors": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    }),
                ),
                Err(e @ ReloadError::NoFile) => error(StatusCode::CONFLICT, e.to_string()),
            }
        }
        "/admin/config" | "/admin/usage" | "/admin/reload" => {
            error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed here; /admin/reload takes POST, the others GET"))
        }
        other => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {other}; try /admin/config, /admin/usage?key=KEY or POST /admin/reload"),
        ),
    }
}

/// `Authorization: Bearer T` whose SHA-256 is `expected`. Comparing digests leaks nothing
/// about the token through timing.
fn authorized(request: &Request<Incoming>, expected: &[u8; 32]) -> bool {
    let Some(value) = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && <[u8; 32]>::from(Sha256::digest(token.trim().as_bytes())) == *expected
}

/// The running config: where it came from, when it was loaded, the compiled policy and
/// its warnings, as `sluice check --json` prints them (no secret in any of it).
fn config(snapshot: &crate::proxy::Snapshot) -> Response<Body> {
    let loaded = UNIX_EPOCH + Duration::from_nanos(snapshot.loaded_at);
    let mut document = crate::inspect::summary::Document::of(&snapshot.config);
    document.loaded_at = Some(humantime::format_rfc3339_millis(loaded).to_string());
    document.loaded_at_unix_ms = Some(snapshot.loaded_at / 1_000_000);
    json_response(StatusCode::OK, &document)
}

/// The caller named by a usage query: `key=K`, `jwt=TOKEN` and/or `ip=ADDR`.
fn caller(query: &str) -> Result<Caller, String> {
    let mut caller = Caller::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| format!("{name}: bad percent-encoding"))?;
        match name {
            "key" => caller.key = Some(value),
            "jwt" => caller.jwt = Some(value),
            "ip" => {
                caller.ip = Some(
                    value
                        .parse::<IpAddr>()
                        .map_err(|_| format!("ip: \"{value}\" is not an IP address"))?,
                )
            }
            other => {
                return Err(format!(
                    "unknown parameter \"{other}\"; expected key=KEY, jwt=TOKEN and/or ip=ADDR"
                ))
            }
        }
    }
    if caller.key.is_none() && caller.jwt.is_none() && caller.ip.is_none() {
        return Err("name a caller: ?key=KEY, ?jwt=TOKEN or ?ip=ADDR".into());
    }
    Ok(caller)
}

/// `%XX` decoding (no `+` → space: keys may contain `+`).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn error(status: StatusCode, message: String) -> Response<Body> {
    json_response(status, &json!({ "error": message }))
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).expect("plain data serializes");
    body.push(b'\n');
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_queries_decode_and_name_their_problems() {
        let c = caller("key=a%2Bb%26c&ip=10.0.0.1").unwrap();
        assert_eq!(c.key.as_deref(), Some("a+b&c"));
        assert_eq!(c.ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(caller("key=a+b").unwrap().key.as_deref(), Some("a+b"));
        assert_eq!(
            caller("").unwrap_err(),
            "name a caller: ?key=KEY, ?jwt=TOKEN or ?ip=ADDR"
        );
        assert_eq!(
            caller("ip=nope").unwrap_err(),
            "ip: \"nope\" is not an IP address"
        );
        assert_eq!(
            caller("user=x").unwrap_err(),
            "unknown parameter \"user\"; expected key=KEY, jwt=TOKEN and/or ip=ADDR"
        );
        assert_eq!(caller("key=%zz").unwrap_err(), "key: bad percent-encoding");
    }
}
