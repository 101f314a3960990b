//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the operator endpoints under
//! `/admin/` (in `ops`). Loopback by default, separate from the proxy port so operators'
//! endpoints are never reachable by API callers.

mod ops;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::body::Body;
use crate::proxy::Gateway;
use crate::reload::Reloader;
use crate::telemetry;

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    metrics: PrometheusHandle,
    reloader: Arc<Reloader>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        // As on every other connection: a scrape's last small write must not wait for the
        // scraper's delayed ACK.
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let metrics = metrics.clone();
        let reloader = reloader.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (gateway, metrics, reloader) =
                    (gateway.clone(), metrics.clone(), reloader.clone());
                async move { Ok::<_, Infallible>(respond(request, &gateway, &metrics, &reloader).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(
    request: Request<Incoming>,
    gateway: &Gateway,
    metrics: &PrometheusHandle,
    reloader: &Arc<Reloader>,
) -> Response<Body> {
    if request.uri().path().starts_with("/admin/") {
        return ops::respond(request, gateway, reloader).await;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match request.uri().path() {
        "/metrics" => {
            metrics::gauge!(telemetry::STORE_ENTRIES).set(gateway.store.tracked_entries() as f64);
            crate::idempotency::report(&*gateway.idempotency.store);
            let mut text = metrics.render();
            telemetry::durations::render(&mut text);
            let mut response = Response::new(Body::full(text));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => text(
            StatusCode::OK,
            &format!(
                "ready: store={} ({})\n",
                gateway.store.name(),
                gateway.store.status()
            ),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /readyz, /admin/config, /admin/usage or /admin/reload\n",
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
