//! The HTTP port of `--metrics-listen` (coordinator and worker): an axum
//! router on its own listener, beside the gRPC port, so that scrapes and
//! the dashboard never queue behind gradient streams and never pass the
//! gRPC port's token checks (the port is read-only).

use std::net::SocketAddr;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

/// Binds `addr` (port 0 picks one); the error says which flag to fix.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let listener =
        TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics (--metrics-listen): {e}"))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(
            %local,
            "the metrics port is read-only and has no authentication: anyone who reaches it sees the run's metrics (and, on the coordinator, its sample grids); keep it on a cluster-internal network"
        );
    }
    Ok(listener)
}

/// Serves `router` on `listener` until `stop` resolves. Errors are logged:
/// the metrics port going away must not end a training run.
pub fn spawn(
    listener: TcpListener,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stop).await {
            tracing::error!("the metrics port stopped: {e}");
        }
    })
}

/// The URL people and tests read from stdout.
pub fn announce(addr: SocketAddr) {
    println!("metrics on http://{addr}");
}

/// A scrape's response.
pub fn metrics_response(text: String) -> Response {
    ([(header::CONTENT_TYPE, super::prom::CONTENT_TYPE)], text).into_response()
}
