//! The gRPC server of the coordinator: its two services behind their
//! gates (tokens, TLS, caps), with limits and windows set for bulk
//! transfer, and the health service outside the gates.

use std::sync::Arc;
use std::time::Duration;

use ddpm::observe::health::Health;
use ddpm::proto::coordinator_server::CoordinatorServer;
use ddpm::proto::jobs_server::JobsServer;
use ddpm::wire;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::jobs::service::JobsService;
use crate::limits::{self, Limits};
use crate::options::CoordOptions;
use crate::service::access::Access;
use crate::service::incoming;
use crate::service::CoordService;

/// What stands between the port and the services: tokens, TLS, caps.
pub struct Gates {
    access: Access,
    tls: Option<wire::tls::ServerTls>,
    limits: Limits,
}

impl Gates {
    /// The gates the options ask for.
    pub fn of(opts: &CoordOptions) -> Self {
        Self { access: opts.access.clone(), tls: opts.tls.clone(), limits: opts.limits.clone() }
    }
}

/// The gRPC server with limits and windows set for bulk transfer.
pub async fn serve(
    listener: TcpListener,
    coordinator: CoordService,
    jobs_service: JobsService,
    health: Health,
    gates: Gates,
    stop: Arc<Notify>,
) -> Result<(), tonic::transport::Error> {
    let coordinator = CoordinatorServer::new(coordinator)
        .max_decoding_message_size(wire::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(wire::MAX_MESSAGE_BYTES);
    let coordinator = tonic::service::interceptor::InterceptedService::new(coordinator, gates.access.coordinator_gate());
    let jobs = JobsServer::new(jobs_service).max_decoding_message_size(limits::MAX_JOB_REQUEST_BYTES);
    let jobs = tonic::service::interceptor::InterceptedService::new(jobs, gates.access.jobs_gate());
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &gates.tls {
        builder = builder.tls_config(tls.config())?;
    }
    builder
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(Some(wire::MAX_FRAME_BYTES))
        .max_concurrent_streams(Some(limits::MAX_STREAMS_PER_CONNECTION))
        // A peer that vanished without closing (a cut cable, a frozen VM)
        // frees its connection when the pings go unanswered.
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(coordinator)
        .add_service(jobs)
        // Probes carry no token: the health service is outside the gates.
        .add_service(health.service())
        .serve_with_incoming_shutdown(incoming::capped(listener, gates.limits.max_connections), async move { stop.notified().await })
        .await
}
