//! The coordinator's HTTP port (`--metrics-listen`): `/metrics` for
//! Prometheus, the dashboard (`/`, its script and style, embedded in the
//! binary: nothing is fetched from elsewhere, clusters are often offline),
//! its JSON (`/api/status`, `/api/curves?columns=N`, `/api/metrics?after=N`), the run's sample
//! grids (`/files/samples/...`, `/files/jobs/N/grid.png`) and `/healthz`.
//! Read-only: nothing here changes the run.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ddpm::observe::{http as obs_http, prom};
use ddpm::store::StoreError;
use prometheus_client::registry::Registry;

use super::api::{self, Api};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// Step rows one `/api/metrics` answer holds at most (the page asks again
/// after the last one it got).
pub const MAX_ROWS_PER_ANSWER: usize = 20_000;

/// Pixel columns `/api/curves` draws at most (a wide, high-density screen).
pub const MAX_COLUMNS: usize = 4096;

struct Port {
    registry: Registry,
    api: Api,
}

/// The router of the port.
pub fn router(registry: Registry, api: Api) -> Router {
    Router::new()
        .route("/", get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/dashboard.js", get(|| async { page("text/javascript; charset=utf-8", DASHBOARD_JS) }))
        .route("/dashboard.css", get(|| async { page("text/css; charset=utf-8", DASHBOARD_CSS) }))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/curves", get(curves))
        .route("/api/metrics", get(rows))
        .route("/files/{*key}", get(file))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, "not found: this port serves /, /metrics, /api/status, /api/curves, /api/metrics and /healthz\n")
        })
        .with_state(Arc::new(Port { registry, api }))
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn metrics(State(port): State<Arc<Port>>) -> Response {
    obs_http::metrics_response(prom::encode(&port.registry))
}

async fn status(State(port): State<Arc<Port>>) -> Json<api::StatusView> {
    Json(port.api.status().await)
}

async fn rows(State(port): State<Arc<Port>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let number = |name: &str| q.get(name).map(|v| v.parse::<u64>().map_err(|_| format!("{name}={v:?} is not a whole number")));
    let after = match number("after").transpose() {
        Ok(a) => a.unwrap_or(0),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let limit = match number("limit").transpose() {
        Ok(l) => l.map_or(MAX_ROWS_PER_ANSWER, |l| (l as usize).min(MAX_ROWS_PER_ANSWER)),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    Json(port.api.metrics(after, limit)).into_response()
}

async fn curves(State(port): State<Arc<Port>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let columns = match q.get("columns").map(|v| v.parse::<usize>()) {
        None => 800,
        Some(Ok(c)) if (1..=MAX_COLUMNS).contains(&c) => c,
        Some(_) => return (StatusCode::BAD_REQUEST, format!("columns must be a whole number from 1 to {MAX_COLUMNS}\n")).into_response(),
    };
    Json(port.api.curves(columns)).into_response()
}

async fn file(State(port): State<Arc<Port>>, Path(key): Path<String>) -> Response {
    if !api::servable(&key) {
        return (StatusCode::NOT_FOUND, "not found: /files/ serves the run's sample grids only\n").into_response();
    }
    match port.api.store.get(&key).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "max-age=3600")], bytes).into_response(),
        Err(StoreError::NotFound { .. }) => (StatusCode::NOT_FOUND, format!("{key} is not in the run's store\n")).into_response(),
        Err(e) => {
            tracing::warn!("the dashboard could not read {key}: {e}");
            (StatusCode::BAD_GATEWAY, format!("the run's store could not be read: {e}\n")).into_response()
        }
    }
}
