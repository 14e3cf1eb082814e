//! What `ddpm-coord` was asked to do: the flags `main` parsed, as
//! [`run`](crate::run) and the tasks it starts read them.

use std::time::Duration;

use ddpm::config::TrainConfig;
use ddpm::store::StoreOptions;
use ddpm::wire;

use crate::limits;
use crate::service::access::Access;
use crate::training::start::StartPolicy;

/// What `ddpm-coord` was asked to do.
#[derive(Debug, Clone)]
pub struct CoordOptions {
    pub config: TrainConfig,
    /// How many workers to wait for before the first step, and how long.
    pub start: StartPolicy,
    /// Where the run's outputs go: a local directory or `s3://bucket/prefix`.
    pub run: String,
    /// How to reach an S3-compatible store (also for `s3://` datasets).
    pub store: StoreOptions,
    /// Refuse to start on a run that already has checkpoints (instead of
    /// resuming from the latest).
    pub fresh: bool,
    /// Keep serving jobs after the last step, until SIGTERM/Ctrl-C.
    pub serve: bool,
    /// Time to live of the run lease (renewed every third of it).
    pub lease_ttl: Duration,
    /// The run's tokens (none: an open run, on loopback or `--insecure`).
    pub access: Access,
    /// Places job requests may read besides the run and its dataset
    /// (directories or `s3://bucket/prefix`).
    pub job_roots: Vec<String>,
    /// TLS on the port (none: plain text).
    pub tls: Option<wire::tls::ServerTls>,
    /// How much any peer can make the coordinator hold.
    pub limits: limits::Limits,
    /// Where to serve `/metrics` and the dashboard (none: nowhere).
    pub metrics_listen: Option<String>,
    /// On a finished run, how long to tell connecting workers it is over.
    pub finished_linger: Duration,
}

impl CoordOptions {
    /// Refuses options the run could not start with: an invalid config, a
    /// batch that does not split over the workers, caps below the run.
    pub fn check(&self) -> anyhow::Result<()> {
        self.config.validate()?;
        self.config.check_world_size(self.start.workers)?;
        self.limits.check(self.start.workers)
    }
}
