//! Forwarding allowed requests: the pooled upstream clients, header rewriting on the way
//! in and out, the response-header timeout, and the built-in demo upstream.
//!
//! Plain `http://` HTTP/1.1 upstreams are served by sluice's own client ([`h1`]), which
//! does each exchange inside the request's task; TLS, HTTP/2 and upgrades use hyper's.
//!
//! Bodies are streamed both ways. Failures are classified for the caller (which answers
//! 502 or 504 in the configured envelope); nothing here renders a reply.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, Uri};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::{Body, RequestBody, TooLarge};
use crate::config::{HostHeader, UpstreamSettings, UpstreamTarget};

mod failure;
pub(crate) mod h1;

pub use failure::{client_aborted, report, Failure};

/// A response body streamed by sluice's own HTTP/1.1 client.
pub use h1::ResponseBody as DirectBody;

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused or reset, or the upstream broke the protocol.
    #[error("{source}")]
    Unavailable {
        /// Metric label.
        kind: Failure,
        /// What failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No connection within `upstream.connect_timeout`.
    #[error("upstream connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// No response head within `upstream.timeout`.
    #[error("upstream sent no response head within {0:?}")]
    Timeout(Duration),
    /// The client's body passed the route's `max_body` while it was being sent.
    #[error("{0}")]
    BodyTooLarge(TooLarge),
    /// The client's body failed while it was being sent (the client closed or reset its
    /// connection, or broke the body's framing): the client's failure, not the upstream's.
    #[error("{0}")]
    ClientBody(Box<dyn std::error::Error + Send + Sync>),
}

impl UpstreamError {
    /// Which upstream failure this is; `None` for the client's own.
    pub fn kind(&self) -> Option<Failure> {
        match self {
            UpstreamError::Unavailable { kind, .. } => Some(*kind),
            UpstreamError::ConnectTimeout(_) => Some(Failure::ConnectTimeout),
            UpstreamError::Timeout(_) => Some(Failure::Timeout),
            UpstreamError::BodyTooLarge(_) | UpstreamError::ClientBody(_) => None,
        }
    }
}

/// The upstream, with its connection pools.
#[derive(Clone, Debug)]
pub struct Upstream {
    settings: UpstreamSettings,
    client: Client<HttpsConnector<HttpConnector>, RequestBody>,
    /// For a plain `http://` HTTP/1.1 upstream: every request but upgrades.
    direct: Option<Arc<h1::Client>>,
}

impl Upstream {
    /// A pooled client for `settings`: plain or TLS by the URL's scheme, HTTP/1.1 or (with
    /// `http2`) HTTP/2 only — by ALPN over TLS, with prior knowledge in the clear.
    pub fn new(settings: &UpstreamSettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.enforce_http(false);
        // An http:// upstream never uses the TLS config; it still needs one to build.
        let tls = settings.tls.as_deref().cloned().unwrap_or_else(|| {
            rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
        let mut https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        if let Some(name) = &settings.server_name {
            https = https.with_server_name_resolver(FixedServerNameResolver::new(name.clone()));
        }
        let connector = if settings.http2 {
            https.enable_http2().wrap_connector(connector)
        } else {
            https.enable_http1().wrap_connector(connector)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(settings.max_idle)
            .http2_only(settings.http2)
            .build(connector);
        let direct = match &settings.target {
            UpstreamTarget::Http(base)
                if base.scheme() == Some(&http::uri::Scheme::HTTP) && !settings.http2 =>
            {
                Some(Arc::new(
                    h1::Client::new(base, settings.connect_timeout, settings.idle_timeout)
                        .max_idle(settings.max_idle),
                ))
            }
            _ => None,
        };
        Self {
            settings: settings.clone(),
            client,
            direct,
        }
    }

    /// Sends the request upstream and returns its response head with the body streaming.
    pub async fn forward(
        &self,
        mut parts: Parts,
        body: RequestBody,
        forwarded: Forwarded,
    ) -> Result<Response<Body>, UpstreamError> {
        let base = match &self.settings.target {
            UpstreamTarget::Demo => return Ok(demo(&parts)),
            UpstreamTarget::Http(base) => base,
        };
        let upgrade = crate::tunnel::requested_here(&parts).cloned();
        let added = prepare_request(&mut parts, forwarded, &self.settings.host, base);
        if let (Some(direct), None) = (&self.direct, &upgrade) {
            let response = std::pin::pin!(direct.send(&parts, &added, body, self.settings.timeout))
                .await
                .map_err(|error| self.classify_direct(error))?;
            // The client kept no hop-by-hop header, and keeps the rest in the body.
            let (parts, body) = response.into_parts();
            return Ok(Response::from_parts(parts, Body::direct(body)));
        }
        added.apply(&mut parts.headers);
        parts.uri = join(base, &parts.uri);
        parts.version = if self.settings.http2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        if let Some(protocol) = upgrade {
            keep_upgrade(&mut parts.headers, protocol);
        }
        let request = Request::from_parts(parts, body);
        // Boxed: with a plain `http://` upstream this branch is cold, and its future would
        // otherwise grow every request's future (copied whole at each `.await`).
        let sent = Box::pin(tokio::time::timeout(
            self.settings.timeout,
            self.client.request(request),
        ));
        let response = match sent.await {
            Err(_) => return Err(UpstreamError::Timeout(self.settings.timeout)),
            Ok(Err(error)) => return Err(classify(error, self.settings.connect_timeout)),
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        let switched = (parts.status == http::StatusCode::SWITCHING_PROTOCOLS)
            .then(|| parts.headers.get(header::UPGRADE).cloned())
            .flatten();
        remove_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = switched {
            keep_upgrade(&mut parts.headers, protocol);
        }
        Ok(Response::from_parts(parts, Body::upstream(body)))
    }

    fn classify_direct(&self, error: h1::Error) -> UpstreamError {
        let kind = match error {
            h1::Error::ConnectTimeout => {
                return UpstreamError::ConnectTimeout(self.settings.connect_timeout)
            }
            h1::Error::Timeout(after) => return UpstreamError::Timeout(after),
            h1::Error::Body(error) => {
                return match error.downcast::<TooLarge>() {
                    Ok(too_large) => UpstreamError::BodyTooLarge(*too_large),
                    Err(error) => UpstreamError::ClientBody(error),
                }
            }
            h1::Error::Connect(_) => Failure::Connect,
            h1::Error::Protocol(_) => Failure::Protocol,
            h1::Error::Unsent(_) | h1::Error::Closed(_) | h1::Error::Io(_) => Failure::Reset,
        };
        UpstreamError::Unavailable {
            kind,
            source: Box::new(error),
        }
    }
}

/// What the upstream is told about the original request.
#[derive(Debug)]
pub struct Forwarded {
    /// The TCP peer.
    pub peer: IpAddr,
    /// Whether the peer is a trusted proxy (its forwarding headers are kept and extended).
    pub peer_trusted: bool,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The request id sluice made up, when the client sent none.
    pub request_id: Option<HeaderValue>,
}

/// Headers set on the request on its way upstream, replacing any of the same name it has.
/// Kept beside the request rather than inserted into its map: sluice's HTTP/1.1 client
/// writes them straight into the head (a map insert costs more than the line), hyper's
/// client gets them inserted ([`Added::apply`]).
#[derive(Debug, Default)]
pub struct Added {
    headers: smallvec::SmallVec<[(HeaderName, HeaderValue); 4]>,
    /// The request has a `Host` header (looked up once here, not again by the client).
    pub has_host: bool,
}

impl Added {
    /// Inserts the headers into `headers`.
    pub fn apply(self, headers: &mut HeaderMap) {
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
    }

    /// Whether a header named `name` is replaced by one of these.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        self.headers.iter().any(|(added, _)| added == name)
    }

    /// The headers, in the order they go out.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.headers.iter().map(|(name, value)| (name, value))
    }

    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.headers.push((name, value));
    }
}

fn classify(error: hyper_util::client::legacy::Error, connect_timeout: Duration) -> UpstreamError {
    let mut kind = if error.is_connect() {
        Failure::Connect
    } else {
        Failure::Reset
    };
    let mut client = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // The connector's own timeout: requests' are timed outside the client.
            if io.kind() == std::io::ErrorKind::TimedOut {
                return UpstreamError::ConnectTimeout(connect_timeout);
            }
        }
        if let Some(too_large) = e.downcast_ref::<TooLarge>() {
            return UpstreamError::BodyTooLarge(TooLarge {
                limit: too_large.limit,
            });
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            // The request body hyper was sending failed: the client's stream (unless it was
            // cut off at `max_body`, found further down the chain).
            client |= hyper.is_user();
            if hyper.is_parse() || hyper.is_parse_status() {
                kind = Failure::Protocol;
            }
        }
        source = e.source();
    }
    if client {
        return UpstreamError::ClientBody(error.into());
    }
    UpstreamError::Unavailable {
        kind,
        source: Box::new(error),
    }
}

/// `base` + the request's path and query.
fn join(base: &Uri, request: &Uri) -> Uri {
    let prefix = base.path().trim_end_matches('/');
    let tail = request.path_and_query().map_or("/", |pq| pq.as_str());
    let path_and_query = if prefix.is_empty() {
        tail.to_string()
    } else {
        format!("{prefix}{tail}")
    };
    let mut parts = base.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

fn prepare_request(
    parts: &mut Parts,
    forwarded: Forwarded,
    host: &HostHeader,
    base: &Uri,
) -> Added {
    let headers = &mut parts.headers;
    let mut original_host = crate::headers::get(headers, &header::HOST).cloned();
    // An HTTP/2 client names the host in the request's authority, not in `Host`.
    if original_host.is_none() {
        let authority = parts.uri.authority();
        original_host = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let Some(value) = &original_host {
            headers.insert(header::HOST, value.clone());
        }
    }
    remove_hop_by_hop(headers);
    let mut added = Added {
        has_host: original_host.is_some(),
        ..Added::default()
    };
    let peer = peer_header_value(forwarded.peer);
    let trusted = forwarded.peer_trusted;
    match trusted.then(|| headers.get(&X_FORWARDED_FOR)).flatten() {
        Some(existing) => {
            let mut chain = existing.as_bytes().to_vec();
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(peer.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&chain) {
                added.set(X_FORWARDED_FOR, v);
            }
        }
        // From an untrusted peer, whatever it claims is dropped: the upstream sees who connected.
        None => added.set(X_FORWARDED_FOR, peer),
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        added.set(X_FORWARDED_PROTO, HeaderValue::from_static(forwarded.proto));
    }
    if let Some(original) = original_host {
        if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            added.set(X_FORWARDED_HOST, original);
        }
    }
    if let Some(id) = forwarded.request_id {
        added.set(crate::proxy::X_REQUEST_ID, id);
    }
    match host {
        HostHeader::Preserve => {}
        HostHeader::Upstream => {
            if let Some(authority) = base.authority() {
                if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                    headers.insert(header::HOST, v);
                    added.has_host = true;
                }
            }
        }
        HostHeader::Literal(value) => {
            headers.insert(header::HOST, value.clone());
            added.has_host = true;
        }
    }
    added
}

/// An address as a header value. The last one is kept per thread: a connection's requests
/// all come from one peer, and a clone shares its bytes where a new value is formatted
/// and allocated.
fn peer_header_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((cached, value)) if *cached == ip => value.clone(),
            _ => {
                let value = ip_header_value(ip);
                *last = Some((ip, value.clone()));
                value
            }
        }
    })
}

/// An address as a header value; IPv4 (nearly every peer) without going through
/// `core::fmt`, which cost 3% of a proxied request.
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).expect("an IP is a valid header value");
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(octet).as_bytes();
        text[len..len + digits.len()].copy_from_slice(digits);
        len += digits.len();
    }
    HeaderValue::from_bytes(&text[..len]).expect("digits and dots are a valid header value")
}

/// `Connection: upgrade` and `Upgrade`: the hop-by-hop pair an upgrade must carry across.
fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Whether a header describes one connection, not the message (RFC 9110 §7.6.1), by its
/// name as it arrived (any case).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|hop| hop.eq_ignore_ascii_case(name))
}

const HOP_BY_HOP: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// [`is_hop_by_hop`] for a map key: keys are lowercase and the standard ones compare as one
/// number, so only the two names outside the standard set are compared by their text (a
/// comparison with a list of `HeaderName`s costs more). A test checks both agree.
fn is_hop_by_hop_key(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ]
    .contains(name)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// Removes the headers that describe one connection, not the message (RFC 9110 §7.6.1).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names, removing only those present: most messages carry none, and
    // most of the rest (every response from an nginx upstream) just `Connection`. Without
    // allocating: this runs for every request and every response.
    let mut doomed: smallvec::SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|name| is_hop_by_hop_key(name))
        .cloned()
        .collect();
    // The names `Connection` lists too, read once, and only when the pass found one
    // (`keep-alive` and `close` name nothing else, or a hop-by-hop header already gone).
    // Never `Host`: it is meant for every recipient (RFC 9110 §7.6.1 forbids listing such
    // fields), and the upstream request's `Host` was settled before this runs.
    let listed = doomed
        .contains(&header::CONNECTION)
        .then(|| crate::headers::get_all(headers, &header::CONNECTION));
    for value in listed.into_iter().flatten() {
        for token in crate::http1::tokens(value.as_bytes()) {
            if token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"host")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                if headers.contains_key(&name) && !doomed.contains(&name) {
                    doomed.push(name);
                }
            }
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Whether a `Connection` header lists `token` (case-insensitive, as every token there).
pub fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    crate::headers::get_all(headers, &header::CONNECTION)
        .flat_map(|v| crate::http1::tokens(v.as_bytes()))
        .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The demo upstream: a small JSON echo, so a newcomer sees traffic without an API.
fn demo(parts: &Parts) -> Response<Body> {
    let mut body = String::from("{\"demo\":true,\"method\":\"");
    crate::response::template::escape_json_into(parts.method.as_str(), &mut body);
    body.push_str("\",\"path\":\"");
    crate::response::template::escape_json_into(parts.uri.path(), &mut body);
    body.push_str("\"}\n");
    let mut response = Response::new(Body::full(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_the_base_path_and_the_query() {
        let base: Uri = "http://127.0.0.1:3000/api".parse().unwrap();
        let req: Uri = "/v1/x?a=1".parse().unwrap();
        assert_eq!(
            join(&base, &req).to_string(),
            "http://127.0.0.1:3000/api/v1/x?a=1"
        );
        let root: Uri = "http://127.0.0.1:3000".parse().unwrap();
        assert_eq!(
            join(&root, &req).to_string(),
            "http://127.0.0.1:3000/v1/x?a=1"
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.0.100",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(ip), ip.to_string().as_str());
        }
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_named_in_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        // Every name the raw check knows, as map keys.
        let mut h = HeaderMap::new();
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(name));
            h.insert(
                HeaderName::from_bytes(name).unwrap(),
                HeaderValue::from_static("x"),
            );
        }
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn the_peer_value_follows_the_peer() {
        for ip in ["10.0.0.1", "10.0.0.1", "::1", "10.0.0.2", "10.0.0.1"] {
            let value = peer_header_value(ip.parse().unwrap());
            assert_eq!(value, ip);
        }
    }

    fn request_with(headers: HeaderMap) -> Parts {
        let mut parts = Request::new(()).into_parts().0;
        parts.headers = headers;
        parts
    }

    #[test]
    fn forwarded_headers_from_untrusted_and_trusted_peers() {
        let base: Uri = "http://10.0.0.1:3000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        h.insert(header::HOST, HeaderValue::from_static("api.example.com"));
        let untrusted = Forwarded {
            peer: "1.2.3.4".parse().unwrap(),
            peer_trusted: false,
            proto: "http",
            request_id: Some(HeaderValue::from_static("id-1")),
        };
        let mut parts = request_with(h);
        let added = prepare_request(&mut parts, untrusted, &HostHeader::Preserve, &base);
        assert!(added.replaces(&X_FORWARDED_FOR) && added.replaces(&crate::proxy::X_REQUEST_ID));
        added.apply(&mut parts.headers);
        let h = parts.headers;
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1, "replaced");
        assert_eq!(h[&crate::proxy::X_REQUEST_ID], "id-1");
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "api.example.com");
        assert_eq!(h[header::HOST], "api.example.com");

        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        let trusted = Forwarded {
            peer: "10.1.1.1".parse().unwrap(),
            peer_trusted: true,
            proto: "https",
            request_id: None,
        };
        let mut parts = request_with(h);
        let added = prepare_request(&mut parts, trusted, &HostHeader::Upstream, &base);
        assert!(
            !added.replaces(&X_FORWARDED_PROTO),
            "kept from a trusted proxy"
        );
        added.apply(&mut parts.headers);
        let h = parts.headers;
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert!(!h.contains_key(&crate::proxy::X_REQUEST_ID));
        assert_eq!(h[&X_FORWARDED_FOR], "6.6.6.6, 10.1.1.1");
        assert_eq!(h[header::HOST], "10.0.0.1:3000");
    }
}
