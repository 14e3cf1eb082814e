//! What `ddpm-worker` was asked to do: the flags `main` parsed, as the
//! reconnect loop (`lib.rs`) and each membership (`session.rs`) read them.

use std::sync::Arc;
use std::time::Duration;

use ddpm::wire::WorkerRole;
use tch::Device;

use crate::telemetry;

/// What `ddpm-worker` was asked to do.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// `host:port` of the coordinator.
    pub coord: String,
    pub device: Device,
    /// Name shown in the coordinator's logs and status.
    pub name: String,
    /// How long to keep trying to reach the coordinator.
    pub connect_timeout: Duration,
    /// Training steps (and job tasks after training), or job tasks only,
    /// also while the run trains.
    pub role: WorkerRole,
    /// The run's worker token (none: an open run).
    pub token: Option<String>,
    /// TLS to the coordinator (plain text by default).
    pub tls: ddpm::wire::tls::ClientTls,
    /// What it counts, for its metrics port and health.
    pub stats: Arc<telemetry::WorkerStats>,
    /// Its ring listener, for `[dist] backend = "ring"` (none: `--peer-listen off`).
    pub peers: Option<Arc<ddpm::ring::PeerListener>>,
}
