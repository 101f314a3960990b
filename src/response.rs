//! What sluice says itself: rate-limit headers on every response, and the configured
//! reply for each outcome (limited, unauthorized, denied, upstream unavailable/timeout).
//!
//! Replies are compiled at load (status, content type, headers, body template); per
//! request only numbers and the few template variables are formatted. Owns no decision:
//! it renders the one it is given.

pub mod template;

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, Response, StatusCode};

use crate::body::Body;
use crate::config::file::{HeaderStyle, ResetStyle};
use crate::limiter::clock::{Nanos, MILLISECOND, SECOND};
use crate::limiter::{Decision, Outcome};
use crate::policy::Limit;
use template::{Template, Values, Var};

/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-11).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Default 429 body: RFC 9457 problem details with the draft's `quota-exceeded` type.
pub const DEFAULT_LIMITED: &str = r#"{"type":"https://iana.org/assignments/http-problem-types#quota-exceeded","title":"Too Many Requests","status":${status},"detail":"Rate limit exceeded; retry in ${retry_after} s.","violated-policies":${violated_policies},"request_id":"${request_id}"}"#;
/// Default 401 body.
pub const DEFAULT_UNAUTHORIZED: &str = r#"{"type":"about:blank","title":"Unauthorized","status":${status},"detail":"A valid API key is required.","request_id":"${request_id}"}"#;
/// Default 403 body.
pub const DEFAULT_DENIED: &str = r#"{"type":"about:blank","title":"Forbidden","status":${status},"detail":"Your plan (${plan}) does not include API access.","request_id":"${request_id}"}"#;
/// Default 502 body.
pub const DEFAULT_UPSTREAM_UNAVAILABLE: &str = r#"{"type":"about:blank","title":"Bad Gateway","status":${status},"detail":"The upstream service is unavailable.","request_id":"${request_id}"}"#;
/// Default 504 body.
pub const DEFAULT_UPSTREAM_TIMEOUT: &str = r#"{"type":"about:blank","title":"Gateway Timeout","status":${status},"detail":"The upstream service did not answer in time.","request_id":"${request_id}"}"#;
/// Default body when the limit store failed under `on_error: deny`.
pub const DEFAULT_UNAVAILABLE: &str = r#"{"type":"about:blank","title":"Service Unavailable","status":${status},"detail":"Rate limits cannot be checked right now; retry shortly.","request_id":"${request_id}"}"#;
/// Default 409 body: a request with the same idempotency key is in flight.
pub const DEFAULT_IDEMPOTENCY_CONFLICT: &str = r#"{"type":"about:blank","title":"Conflict","status":${status},"detail":"A request with this idempotency key is still in progress; retry later.","request_id":"${request_id}"}"#;
/// Default 422 body: the idempotency key was used with a different request.
pub const DEFAULT_IDEMPOTENCY_MISMATCH: &str = r#"{"type":"about:blank","title":"Unprocessable Content","status":${status},"detail":"This idempotency key was already used with a different request.","request_id":"${request_id}"}"#;

/// Default 400 body: a malformed request, or one whose framing or target sluice refuses to
/// guess at.
pub const DEFAULT_BAD_REQUEST: &str = r#"{"type":"about:blank","title":"Bad Request","status":${status},"detail":"The request is malformed, or its framing or target is ambiguous.","request_id":"${request_id}"}"#;
/// Default 405 body: `CONNECT` where no route takes it.
pub const DEFAULT_METHOD_NOT_ALLOWED: &str = r#"{"type":"about:blank","title":"Method Not Allowed","status":${status},"detail":"${method} is not allowed here.","request_id":"${request_id}"}"#;

/// Default 413 body.
pub const DEFAULT_PAYLOAD_TOO_LARGE: &str = r#"{"type":"about:blank","title":"Content Too Large","status":${status},"detail":"The request body is larger than this route accepts.","request_id":"${request_id}"}"#;

/// One outcome's compiled reply.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// `Content-Type` of the body.
    pub content_type: HeaderValue,
    /// Extra configured headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body template.
    pub body: Template,
}

/// The outcomes sluice answers itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A limit rejected the request.
    Limited,
    /// The identity is in the penalty box.
    Penalised,
    /// No valid identity.
    Unauthorized,
    /// A key given more than once, or two different keys.
    AmbiguousKey,
    /// A malformed or ambiguously framed request, or a request target refused before
    /// anything else ([`crate::target`]).
    BadRequest,
    /// `CONNECT`, which no route takes.
    MethodNotAllowed,
    /// The plan has no access.
    Denied,
    /// The upstream refused, reset or failed.
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The request body is over the route's `max_body`.
    PayloadTooLarge,
    /// The limit store failed and `on_error` is `deny`.
    Unavailable,
    /// A request with the same idempotency key is still in flight.
    IdempotencyConflict,
    /// The idempotency key was used with a different request.
    IdempotencyMismatch,
}

impl From<crate::target::Refused> for Rejection {
    fn from(refused: crate::target::Refused) -> Self {
        match refused {
            crate::target::Refused::Connect => Rejection::MethodNotAllowed,
            crate::target::Refused::Invalid(_) => Rejection::BadRequest,
        }
    }
}

impl From<crate::identity::Unidentified> for Rejection {
    fn from(why: crate::identity::Unidentified) -> Self {
        match why {
            crate::identity::Unidentified::Ambiguous => Rejection::AmbiguousKey,
            _ => Rejection::Unauthorized,
        }
    }
}

/// All replies and the header style.
#[derive(Debug)]
pub struct Responses {
    /// Which rate-limit headers are sent.
    pub style: HeaderStyle,
    /// Unit of `X-RateLimit-Reset`.
    pub reset: ResetStyle,
    /// 429.
    pub limited: Reply,
    /// 429 from the penalty box (by default the same as `limited`).
    pub penalised: Reply,
    /// 401.
    pub unauthorized: Reply,
    /// The unauthorized envelope with status 400, for a key given more than once.
    pub ambiguous_key: Reply,
    /// 400: a malformed or ambiguously framed request, or a refused target.
    pub bad_request: Reply,
    /// 405 for `CONNECT`, with `Allow`.
    pub method_not_allowed: Reply,
    /// 403.
    pub denied: Reply,
    /// 502.
    pub upstream_unavailable: Reply,
    /// 504.
    pub upstream_timeout: Reply,
    /// 413.
    pub payload_too_large: Reply,
    /// 503: the store failed under `on_error: deny`.
    pub unavailable: Reply,
    /// 409.
    pub idempotency_conflict: Reply,
    /// 422.
    pub idempotency_mismatch: Reply,
}

/// What a reply is about; fills the template variables.
pub struct Context<'a> {
    /// The decision, when limits were checked.
    pub decision: Option<&'a Decision>,
    /// The limits the decision is about, in check order.
    pub limits: &'a [Limit],
    /// Route name.
    pub route: &'a str,
    /// Plan name.
    pub plan: &'a str,
    /// Request id.
    pub request_id: &'a str,
    /// The request's one clock reading.
    pub now: Nanos,
    /// Request method.
    pub method: &'a Method,
    /// Request path.
    pub path: &'a str,
}

impl Responses {
    /// The reply for an outcome.
    pub fn reply(&self, rejection: Rejection) -> &Reply {
        match rejection {
            Rejection::Limited => &self.limited,
            Rejection::Penalised => &self.penalised,
            Rejection::Unauthorized => &self.unauthorized,
            Rejection::AmbiguousKey => &self.ambiguous_key,
            Rejection::BadRequest => &self.bad_request,
            Rejection::MethodNotAllowed => &self.method_not_allowed,
            Rejection::Denied => &self.denied,
            Rejection::UpstreamUnavailable => &self.upstream_unavailable,
            Rejection::UpstreamTimeout => &self.upstream_timeout,
            Rejection::PayloadTooLarge => &self.payload_too_large,
            Rejection::Unavailable => &self.unavailable,
            Rejection::IdempotencyConflict => &self.idempotency_conflict,
            Rejection::IdempotencyMismatch => &self.idempotency_mismatch,
        }
    }

    /// The rate-limit headers for `decision` (or for no quota at all, on responses where
    /// no limit was checked, such as 401 and 403).
    pub fn limit_headers(
        &self,
        decision: Option<&Decision>,
        limits: &[Limit],
        now: Nanos,
    ) -> LimitHeaders {
        let mut headers = LimitHeaders::default();
        if self.style == HeaderStyle::None {
            return headers;
        }
        let headline = decision.and_then(|d| d.headline.map(|i| (&d.outcomes[i], limits.get(i))));
        let (outcome, limit) = match headline {
            Some((outcome, limit)) => (*outcome, limit),
            // Nothing checked (exempt, fail-open) or only shadow limits: no headers.
            None if decision.is_some_and(|d| d.allowed) => return headers,
            None => (
                Outcome {
                    allowed: false,
                    limit: 0,
                    remaining: 0,
                    reset: now,
                    retry_after: 0,
                },
                None,
            ),
        };
        if matches!(self.style, HeaderStyle::XRatelimit | HeaderStyle::Both) {
            headers.x_ratelimit = Some([
                outcome.limit.into(),
                outcome.remaining.into(),
                self.reset_value(outcome.reset, now),
            ]);
        }
        // The IETF fields name a policy; with no limit checked there is none to name.
        if let (Some(limit), HeaderStyle::Ietf | HeaderStyle::Both) = (limit, self.style) {
            let name = &limit.name;
            let window = limit.quota.period().div_ceil(SECOND);
            let mut policy = String::with_capacity(32);
            let mut current = String::with_capacity(32);
            write_sf_string(&mut policy, name);
            let _ = write!(policy, ";q={};w={window}", outcome.limit);
            write_sf_string(&mut current, name);
            let _ = write!(
                current,
                ";r={};t={}",
                outcome.remaining,
                ceil_div(outcome.reset.saturating_sub(now), SECOND)
            );
            if let (Ok(policy), Ok(current)) = (
                HeaderValue::try_from(policy),
                HeaderValue::try_from(current),
            ) {
                headers.ietf = Some([policy, current]);
            }
        }
        headers
    }

    fn reset_value(&self, reset: Nanos, now: Nanos) -> u64 {
        Self::reset_in(self.reset, reset, now)
    }

    /// Builds sluice's own response for `rejection`: status, content type, configured
    /// headers and rendered body, with its rate-limit headers beside it.
    pub fn render(&self, rejection: Rejection, cx: &Context<'_>) -> (Response<Body>, LimitHeaders) {
        let reply = self.reply(rejection);
        let rendering = Rendering {
            cx,
            status: reply.status,
            reset: self.reset,
        };
        let body = reply.body.render(&rendering);
        let mut response = Response::new(Body::full(Bytes::from(body)));
        *response.status_mut() = reply.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, reply.content_type.clone());
        let mut limit_headers = self.limit_headers(cx.decision, cx.limits, cx.now);
        if let Some(decision) = cx.decision.filter(|d| !d.allowed) {
            limit_headers.retry_after = Some(retry_after_seconds(decision.retry_after()));
        }
        if reply.headers.is_empty() {
            return (response, limit_headers);
        }
        // Configured headers win over the rate-limit ones of the same name.
        headers.reserve(6 + reply.headers.len());
        limit_headers.apply(headers);
        for (name, value) in &reply.headers {
            headers.insert(name.clone(), value.clone());
        }
        (response, LimitHeaders::default())
    }
}

/// The rate-limit headers of one response, kept out of its header map until it is sent:
/// sluice's HTTP/1.1 server writes them straight into the head ([`LimitHeaders::encode`],
/// no map inserts, numbers formatted in place), anything else inserts them
/// ([`LimitHeaders::apply`]). Either way they replace a header of the same name.
#[derive(Debug, Default)]
pub struct LimitHeaders {
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    x_ratelimit: Option<[u64; 3]>,
    /// `RateLimit-Policy` and `RateLimit`.
    ietf: Option<[HeaderValue; 2]>,
    /// `Retry-After` (rejections by a limit).
    retry_after: Option<u64>,
}

const X_RATELIMIT: [HeaderName; 3] = [X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET];
const IETF: [HeaderName; 2] = [RATELIMIT_POLICY, RATELIMIT];

impl LimitHeaders {
    /// Inserts the headers into `headers`.
    pub fn apply(self, headers: &mut HeaderMap) {
        if let Some(retry_after) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
        }
        for (name, n) in X_RATELIMIT
            .into_iter()
            .zip(self.x_ratelimit.into_iter().flatten())
        {
            headers.insert(name, HeaderValue::from(n));
        }
        for (name, value) in IETF.into_iter().zip(self.ietf.into_iter().flatten()) {
            headers.insert(name, value);
        }
    }

    /// Whether one of these headers is named `name` (in any case).
    pub fn owns(&self, name: &[u8]) -> bool {
        let is = |header: &HeaderName| name.eq_ignore_ascii_case(header.as_str().as_bytes());
        (self.retry_after.is_some() && is(&RETRY_AFTER))
            || (self.x_ratelimit.is_some() && X_RATELIMIT.iter().any(is))
            || (self.ietf.is_some() && IETF.iter().any(is))
    }

    /// Writes the headers as HTTP/1.1 header lines.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut number = |name: &HeaderName, n: u64| {
            crate::http1::line(out, name.as_str(), itoa::Buffer::new().format(n).as_bytes());
        };
        if let Some(retry_after) = self.retry_after {
            number(&RETRY_AFTER, retry_after);
        }
        for (name, n) in X_RATELIMIT
            .iter()
            .zip(self.x_ratelimit.into_iter().flatten())
        {
            number(name, n);
        }
        for (name, value) in IETF.iter().zip(self.ietf.iter().flatten()) {
            crate::http1::line(out, name.as_str(), value.as_bytes());
        }
    }
}

/// `Retry-After` in whole seconds: rounded up, never 0.
pub fn retry_after_seconds(wait: Nanos) -> u64 {
    ceil_div(wait, SECOND).max(1)
}

fn ceil_div(n: u64, d: u64) -> u64 {
    n.div_ceil(d)
}

/// A structured-field string (RFC 8941 §3.3.3): quotes and backslashes escaped.
fn write_sf_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

struct Rendering<'a, 'b> {
    cx: &'a Context<'b>,
    status: StatusCode,
    reset: ResetStyle,
}

impl Values for Rendering<'_, '_> {
    fn write(&self, var: Var, out: &mut String) {
        let cx = self.cx;
        let headline = cx.decision.and_then(Decision::headline);
        let retry = cx.decision.map_or(0, Decision::retry_after);
        // Numbers without `core::fmt`: a rejection's body is written for every rejection.
        let mut number = |n: u64| {
            out.push_str(itoa::Buffer::new().format(n));
            Ok(())
        };
        let _ = match var {
            Var::RetryAfter => number(retry_after_seconds(retry)),
            Var::RetryAfterMs => number(ceil_div(retry, MILLISECOND).max(1)),
            Var::Limit => number(headline.map_or(0, |o| o.limit).into()),
            Var::Remaining => number(headline.map_or(0, |o| o.remaining).into()),
            Var::Reset => number(Responses::reset_in(
                self.reset,
                headline.map_or(cx.now, |o| o.reset),
                cx.now,
            )),
            Var::Route => {
                out.push_str(cx.route);
                Ok(())
            }
            Var::Plan => {
                out.push_str(cx.plan);
                Ok(())
            }
            Var::RequestId => {
                out.push_str(cx.request_id);
                Ok(())
            }
            Var::Timestamp => write!(
                out,
                "{}",
                humantime::format_rfc3339_seconds(system_time(cx.now))
            ),
            Var::TimestampMicros => {
                let text = humantime::format_rfc3339_micros(system_time(cx.now)).to_string();
                write!(out, "{}+00:00", text.trim_end_matches('Z'))
            }
            Var::UnixTime => number(cx.now / SECOND),
            Var::Status => number(self.status.as_u16().into()),
            Var::Method => {
                out.push_str(cx.method.as_str());
                Ok(())
            }
            Var::Path => {
                out.push_str(cx.path);
                Ok(())
            }
            Var::ViolatedPolicies => {
                out.push('[');
                if let Some(decision) = cx.decision {
                    // A violation with no limit behind it (the penalty box) names none.
                    let names = decision.violated().filter_map(|i| cx.limits.get(i));
                    for (n, limit) in names.enumerate() {
                        if n > 0 {
                            out.push(',');
                        }
                        out.push('"');
                        template::escape_json_into(&limit.name, out);
                        out.push('"');
                    }
                }
                out.push(']');
                Ok(())
            }
        };
    }
}

impl Responses {
    fn reset_in(style: ResetStyle, reset: Nanos, now: Nanos) -> u64 {
        match style {
            ResetStyle::UnixSeconds => ceil_div(reset, SECOND),
            ResetStyle::UnixMillis => ceil_div(reset, MILLISECOND),
            ResetStyle::DeltaSeconds => ceil_div(reset.saturating_sub(now), SECOND),
        }
    }
}

fn system_time(now: Nanos) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_nanos(now)
}

#[cfg(test)]
mod tests;
