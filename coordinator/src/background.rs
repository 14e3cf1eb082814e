//! The coordinator's tasks beside the training loop: the gRPC server and
//! its health watch, the metrics port, the checkpoint uploader and the
//! drain of its events, the reaper of silent members, the job scheduler,
//! the lease keeper and the stop signal. [`Background::start`] starts them
//! once the components exist; [`Background::stop`] is the end of a run:
//! it stops them in the order the workers and the store need.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ddpm::checkpoint::{UploadEvent, Uploader, UploaderConfig};
use ddpm::config::RunConfig;
use ddpm::observe::health::Health;
use ddpm::store::lease::RunLease;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::components::Components;
use crate::jobs::context::JobContext;
use crate::jobs::roots::JobRoots;
use crate::jobs::scheduler;
use crate::jobs::service::JobsService;
use crate::liveness;
use crate::options::CoordOptions;
use crate::server::{self, Gates};
use crate::service::CoordService;
use crate::telemetry::{self, metrics::Telemetry};

/// The running tasks, and the uploader the training loop hands its
/// checkpoints to.
pub struct Background {
    uploader: Uploader,
    drain: JoinHandle<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    server_stop: Arc<Notify>,
    health_watch: JoinHandle<()>,
    metrics_port: Option<(JoinHandle<()>, SocketAddr)>,
    history_load: JoinHandle<()>,
    reaper: JoinHandle<()>,
    scheduler: JoinHandle<()>,
    keeper: JoinHandle<()>,
    signal: JoinHandle<()>,
}

impl Background {
    /// Starts the tasks of a run whose workers receive `run_config`, serving
    /// on `listener`; `shutdown` resolving asks the run to stop (after the
    /// current step), and so does losing `lease`.
    pub async fn start(
        listener: TcpListener,
        opts: &CoordOptions,
        parts: &Components,
        run_config: RunConfig,
        lease: Arc<RunLease>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Self> {
        // The earlier starts' rows, for the dashboard, without holding up training.
        let history_load = {
            let (history, store, upto) = (parts.history.clone(), parts.store.clone(), parts.shadow.start_step());
            tokio::spawn(async move { history.load(&store, upto).await })
        };
        let metrics_port = match &opts.metrics_listen {
            Some(addr) => Some(telemetry::start_port(addr, &parts.telemetry, parts.history.clone(), parts.store.clone()).await?),
            None => None,
        };
        let (uploader, events) = Uploader::start(parts.store.clone(), UploaderConfig::from_config(&opts.config.checkpoint));
        let drain = tokio::spawn(drain(events, parts.telemetry.clone()));
        let coordinator = CoordService::new(run_config, opts.start.workers, parts)?;
        let roots = JobRoots::new(&opts.run, opts.config.data.spec.as_ref(), &opts.job_roots);
        let steps = opts.config.diffusion.num_timesteps;
        let jobs_service = JobsService::new(parts.queue.clone(), parts.store.clone(), steps, parts.dataset.len(), roots);
        let health = Health::new(&telemetry::HEALTH_SERVICES, true).await;
        let health_watch = tokio::spawn(telemetry::watch_health(health.clone(), parts.lifecycle.clone()));
        let server_stop = Arc::new(Notify::new());
        let gates = Gates::of(opts);
        let server = tokio::spawn(server::serve(listener, coordinator, jobs_service, health, gates, server_stop.clone()));
        let heartbeat_timeout = Duration::from_secs_f64(opts.config.dist.heartbeat_timeout_s);
        let reaper = tokio::spawn(liveness::reap_silent_members(parts.roster.clone(), parts.rounds.clone(), heartbeat_timeout));
        let jobs = JobContext::new(opts.config.clone(), opts.store.clone(), parts);
        let scheduler = tokio::spawn(scheduler::run(Arc::new(jobs)));
        let keeper = {
            let lifecycle = parts.lifecycle.clone();
            tokio::spawn(async move { lease.keep(|_| lifecycle.request_stop()).await })
        };
        let signal = {
            let lifecycle = parts.lifecycle.clone();
            tokio::spawn(async move {
                shutdown.await;
                tracing::warn!("stop requested: finishing the current step, then checkpointing");
                lifecycle.request_stop();
            })
        };
        Ok(Self { uploader, drain, server, server_stop, health_watch, metrics_port, history_load, reaper, scheduler, keeper, signal })
    }

    /// Where the training loop's checkpoints go.
    pub fn uploader(&self) -> &Uploader {
        &self.uploader
    }

    /// The metrics port's address, as bound (none: no metrics port).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_port.as_ref().map(|(_, addr)| *addr)
    }

    /// The end of a run, after training and the jobs it serves: no more
    /// jobs or stop requests, the workers told (`finished`: the run is
    /// over; else it goes on when the coordinator starts again), the
    /// uploads finished, then the ports closed, each within a bound.
    pub async fn stop(self, parts: &Components, finished: bool) {
        self.scheduler.abort();
        self.signal.abort();
        parts.lifecycle.begin_shutdown(finished);
        let why = if finished { "the run is over" } else { "the coordinator stops; the run goes on when it starts again" };
        parts.roster.shutdown_all(why, finished);
        parts.nccl_ids.close();
        self.uploader.close().await;
        self.drain.abort();
        // Give workers a moment to pick up the shutdown before the server goes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.reaper.abort();
        self.server_stop.notify_one();
        // Graceful, but bounded: a hung worker's open calls (its Attach
        // stream) would hold the server forever.
        close_within(self.server, "calls still open 2 s after the run ended (a hung worker?); closing them").await;
        self.keeper.abort();
        self.health_watch.abort();
        self.history_load.abort();
        if let Some((port, _)) = self.metrics_port {
            // Stopped with the lifecycle's shutdown; bounded like the gRPC server.
            close_within(port, "the metrics port still had requests open 2 s after the run ended; closing it").await;
        }
    }
}

/// The uploader logs every event itself; the status and the metrics show
/// where checkpointing stands.
async fn drain(mut events: mpsc::UnboundedReceiver<UploadEvent>, telemetry: Arc<Telemetry>) {
    while let Some(e) = events.recv().await {
        telemetry.upload_event(&e);
    }
}

/// Waits up to 2 s for `task` to end, then aborts it with a warning.
async fn close_within<T>(mut task: JoinHandle<T>, warning: &str) {
    if tokio::time::timeout(Duration::from_secs(2), &mut task).await.is_err() {
        tracing::warn!("{warning}");
        task.abort();
    }
}
