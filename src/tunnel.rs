//! Protocol upgrades (WebSocket): an HTTP/1.1 request asking to `Upgrade` walks identify →
//! match → check like any other, so the handshake is counted and may be rejected; when the
//! upstream answers `101 Switching Protocols`, the client's and the upstream's connections
//! are spliced byte for byte until either side closes.
//!
//! [`Hold`] keeps values alive for the life of a tunnel. An upgrade request carries one in
//! its extensions from the start of the request path; whatever must outlive the handshake
//! (a concurrency limit's slot, say) is put in with [`Hold::keep`] and is dropped only when
//! the tunnel closes — or with the request, when no tunnel opens. Requests that ask for no
//! upgrade carry no `Hold` (nothing is allocated for them).
//!
//! Upgrades need HTTP/1.1 on both sides: HTTP/2 clients and `upstream.http2` pass none.
//! The listener's `max_connections` permit stays with the client socket, so a tunnel counts
//! as an open connection for as long as it lasts. Owns no limit and no reply.

use std::any::Any;
use std::sync::{Arc, Mutex};

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::Body;
use crate::telemetry;
use crate::upstream::connection_lists;

/// Values that live as long as the request's tunnel (see the module doc).
#[derive(Clone, Default)]
pub struct Hold(Arc<Mutex<Vec<Arc<dyn Any + Send + Sync>>>>);

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

impl Hold {
    /// Keeps `value` until the tunnel closes (or the request ends without one).
    pub fn keep(&self, value: Arc<dyn Any + Send + Sync>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(value);
    }

    /// Puts a `Hold` in the extensions of a request that asks for an upgrade.
    pub fn attach(parts: &mut Parts) {
        if requested(parts).is_some() {
            parts.extensions.insert(Hold::default());
        }
    }
}

/// The `Upgrade` value of an HTTP/1.1 request that asks for one (`Connection: upgrade`).
pub fn requested(parts: &Parts) -> Option<&HeaderValue> {
    if parts.version != Version::HTTP_11 || !connection_lists(&parts.headers, "upgrade") {
        return None;
    }
    parts.headers.get(header::UPGRADE)
}

/// [`requested`], for a request the request path has been through: only upgrade requests
/// carry a [`Hold`], so every other request is told apart by one extension lookup.
pub fn requested_here(parts: &Parts) -> Option<&HeaderValue> {
    parts.extensions.get::<Hold>()?;
    requested(parts)
}

/// The client side of a tunnel that may open, taken from an upgrade request.
pub struct Tunnel {
    client: OnUpgrade,
    hold: Hold,
}

impl Tunnel {
    /// Takes the client's pending upgrade out of an upgrade request's extensions.
    pub fn take(parts: &mut Parts) -> Option<Tunnel> {
        requested_here(parts)?;
        let client = parts.extensions.remove::<OnUpgrade>()?;
        let hold = parts.extensions.get::<Hold>().cloned().unwrap_or_default();
        Some(Tunnel { client, hold })
    }

    /// If the upstream switched protocols, splices the two connections in the background
    /// once the 101 has reached the client. Otherwise the upgrade is abandoned.
    pub fn open(self, response: &mut Response<Body>) {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        let upstream = hyper::upgrade::on(&mut *response);
        let Tunnel { client, hold } = self;
        tokio::spawn(async move {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(error) => {
                    tracing::debug!(%error, "upgrade failed before the tunnel opened");
                    return;
                }
            };
            let _open = telemetry::TunnelOpen::new();
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((sent, received)) => tracing::debug!(sent, received, "tunnel closed"),
                Err(error) => tracing::debug!(%error, "tunnel closed with an error"),
            }
            drop(hold);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::builder().version(version).uri("/ws");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_http1_requests_with_connection_upgrade_ask_for_one() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ];
        assert_eq!(
            requested(&parts(Version::HTTP_11, &ws)).unwrap(),
            "websocket"
        );
        assert!(requested(&parts(Version::HTTP_2, &ws)).is_none());
        assert!(requested(&parts(Version::HTTP_11, &[("upgrade", "websocket")])).is_none());

        let mut plain = parts(Version::HTTP_11, &[]);
        Hold::attach(&mut plain);
        assert!(plain.extensions.get::<Hold>().is_none());
        let mut upgrade = parts(Version::HTTP_11, &ws);
        Hold::attach(&mut upgrade);
        assert!(upgrade.extensions.get::<Hold>().is_some());
    }

    #[test]
    fn a_held_value_lives_until_the_last_hold_goes() {
        let value: Arc<dyn Any + Send + Sync> = Arc::new(42u32);
        let weak = Arc::downgrade(&value);
        let hold = Hold::default();
        let tunnel_side = hold.clone();
        hold.keep(value);
        drop(hold); // the request ends
        assert!(weak.upgrade().is_some());
        drop(tunnel_side); // the tunnel closes
        assert!(weak.upgrade().is_none());
    }
}
