//! Seeing a run: the Prometheus metrics ([`metrics::Telemetry`]), the
//! metrics history the dashboard draws ([`history::RunHistory`]) and its
//! curves downsampled per pixel column ([`curves`]), the
//! dashboard's JSON ([`api`]) and the HTTP port serving them all
//! ([`http`]), and the gRPC health statuses ([`watch_health`]).

pub mod api;
pub mod curves;
pub mod history;
pub mod http;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use ddpm::observe::health::Health;
use ddpm::store::RunStore;

use crate::lifecycle::Lifecycle;
use history::RunHistory;
use metrics::Telemetry;

/// Binds `addr` and serves the HTTP port (metrics, dashboard) until the
/// coordinator shuts down; prints its URL and returns the address bound.
pub async fn start_port(
    addr: &str,
    telemetry: &Arc<Telemetry>,
    history: Arc<RunHistory>,
    store: RunStore,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, std::net::SocketAddr)> {
    let listener = ddpm::observe::http::bind(addr).await?;
    let bound = listener.local_addr()?;
    ddpm::observe::http::announce(bound);
    let api = api::Api::new(telemetry.sources().clone(), history, store);
    let lifecycle = telemetry.sources().lifecycle.clone();
    let stop = async move {
        while !lifecycle.is_shutting_down() {
            lifecycle.changed_within(Duration::from_millis(500)).await;
        }
    };
    Ok((ddpm::observe::http::spawn(listener, http::router(telemetry.registry(), api), stop), bound))
}

/// The services the coordinator's health service names.
pub const HEALTH_SERVICES: [&str; 2] = ["ddpm.v1.Coordinator", "ddpm.v1.Jobs"];

/// Keeps the health statuses in step with the run: SERVING from the start
/// (the port is up, the run lease is held), NOT_SERVING once the
/// coordinator shuts down, so a probe sees it leave before the port closes.
pub async fn watch_health(health: Health, lifecycle: Arc<Lifecycle>) {
    while !lifecycle.is_shutting_down() {
        lifecycle.changed_within(Duration::from_millis(500)).await;
    }
    health.set("", false).await;
    for s in HEALTH_SERVICES {
        health.set(s, false).await;
    }
}
