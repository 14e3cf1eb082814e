//! Seeing a run: the Prometheus metrics ([`metrics::Telemetry`]), the
//! metrics history the dashboard draws ([`history::RunHistory`]), the
//! dashboard's JSON ([`api`]) and the HTTP port serving them all
//! ([`http`]), and the gRPC health statuses ([`watch_health`]).

pub mod api;
pub mod history;
pub mod http;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use ddpm::observe::health::Health;

pub use history::RunHistory;
pub use metrics::{Sources, Telemetry};

use crate::lifecycle::Lifecycle;

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
