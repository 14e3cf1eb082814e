//! The gRPC health service (`grpc.health.v1.Health`) the coordinator and
//! the worker serve for Kubernetes probes (`grpc:` probes, or
//! `grpc_health_probe`). The overall status (service "") and each named
//! service are SERVING or NOT_SERVING as the process's state says; an
//! unknown service name gets NOT_FOUND, as the protocol says.

use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

/// The statuses a process reports.
#[derive(Clone, Debug)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// Every name in `services` (and "") starts as `serving`.
    pub async fn new(services: &[&str], serving: bool) -> Self {
        let health = Self { reporter: HealthReporter::new() };
        health.set("", serving).await;
        for s in services {
            health.set(s, serving).await;
        }
        health
    }

    /// The gRPC service to add to a server (it needs no token: kubelet has none).
    pub fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }

    /// Sets `service`'s status ("" is the overall one).
    pub async fn set(&self, service: &str, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.reporter.set_service_status(service, status).await;
    }
}
