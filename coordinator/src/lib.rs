//! `ddpm-coord`: the coordinator of a data-parallel DDPM training run.
//!
//! It owns the run: it reads the dataset and ships each worker its shard of
//! every global batch, all-reduces the workers' gradients, keeps the source
//! of truth for the parameters and the EMA, checkpoints to the run's store
//! (and resumes from it), and runs sampling and evaluation jobs. `main`
//! only parses flags and calls [`run`]; tests start the same `run` on
//! `127.0.0.1:0`.
//!
//! The coordinator is a set of components, each owning its state behind
//! methods (ARCHITECTURE.md at the repository root maps them):
//! [`roster::Roster`] (membership and liveness), [`round_slot::RoundSlot`]
//! and [`round::Round`] (the step's all-reduce), [`state::StateHandle`]
//! (parameters, Adam, EMA on their own thread), [`lifecycle::Lifecycle`]
//! and [`run_status::RunStatus`] (phase and live numbers), the job
//! components of [`jobs`], and the [`training::Trainer`] loop that drives
//! them. [`run`] builds them and hands each service and loop the ones it
//! uses.
//!
//! Over 450 lines and still one concept: `run()` wiring the components
//! together, in the order they depend on each other.

pub mod changes;
pub mod jobs;
pub mod lifecycle;
pub mod limits;
pub mod liveness;
pub mod roster;
pub mod round;
pub mod round_slot;
pub mod run_status;
pub mod service;
pub mod state;
pub mod telemetry;
pub mod training;
pub mod work;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ddpm::checkpoint::{self, CheckpointData, Uploader, UploaderConfig};
use ddpm::config::{RunConfig, TrainConfig};
use ddpm::data::Dataset;
use ddpm::proto::coordinator_server::CoordinatorServer;
use ddpm::proto::jobs_server::JobsServer;
use ddpm::store::lease::{Identity, RunLease};
use ddpm::store::{RunStore, StoreOptions};
use ddpm::wire;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use jobs::{JobContext, JobQueue, PinnedWeights, ResultRouter};
use lifecycle::{Lifecycle, Phase};
use roster::Roster;
use round_slot::RoundSlot;
use run_status::RunStatus;
use state::StateHandle;
use telemetry::{RunHistory, Telemetry};
use training::{Summary, Trainer};

/// What `ddpm-coord` was asked to do.
#[derive(Debug, Clone)]
pub struct CoordOptions {
    pub config: TrainConfig,
    /// How many workers to wait for before the first step, and how long.
    pub start: training::start::StartPolicy,
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
    pub access: service::access::Access,
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

/// Opens the run's store, resumes from its latest complete checkpoint (or
/// refuses to, with `fresh`), and trains on `listener` until the run ends.
/// When `shutdown` resolves the current step finishes, a checkpoint is saved
/// and the run returns early (`Summary::stopped`). Returns the run's summary.
pub async fn run(
    listener: TcpListener,
    opts: CoordOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Summary> {
    let config = opts.config.clone();
    config.validate()?;
    config.check_world_size(opts.start.workers)?;
    opts.limits.check(opts.start.workers)?;
    let store = RunStore::open(&opts.run, &opts.store)?;
    store.check().await?;
    let dataset = open_dataset(&config, &opts.store).await?;
    let resume = resume_point(&store, opts.fresh).await?;
    // A finished run started again changes nothing: without --serve it
    // ends here, before taking the lease; with it, it only serves jobs.
    let finished = training::finished_run(&store, &config, resume.as_ref()).await;
    if let Some(done) = &finished {
        if !opts.serve {
            tracing::info!(run = %store.url(), steps = done.steps, "the run is already finished (summary.json): nothing to do; raise --steps to train on, or use another --run");
            service::finished::answer_for(listener, opts.tls.as_ref(), opts.start.workers, opts.finished_linger, shutdown).await?;
            return Ok(done.clone());
        }
    }
    let addr: SocketAddr = listener.local_addr()?;
    let lease = Arc::new(RunLease::acquire(&store, &Identity::this_process(&addr.to_string()), opts.lease_ttl).await?);
    tracing::info!(epoch = lease.epoch(), "run lease taken: this coordinator alone writes to the run");
    // Every write from here on (checkpoints, metrics, job outputs, the
    // summary) is refused once the lease is lost or goes stale.
    let store = store.fenced_by(lease.fence());
    let start_skipped = resume.as_ref().map_or(0, |r| r.skipped_steps);
    // A start-up failure from here on hands the lease back, so that the
    // next start need not wait for it to expire.
    macro_rules! or_release {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => {
                    lease.release().await;
                    return Err(e.into());
                }
            }
        };
    }
    let state = or_release!(StateHandle::start(config.clone(), resume, dataset.len()));
    let run_config = RunConfig {
        train: config.clone(),
        decoder: dataset.decoder(),
        param_count: state.layout.total as u64,
        layout_hash: state.layout.hash(),
    };
    tracing::info!(%addr, params = state.layout.total, run = %store.url(), "coordinator listening");

    // The components, each owning its state.
    let roster = Arc::new(Roster::with_limit(opts.limits.members(opts.start.workers)));
    let rounds = Arc::new(RoundSlot::default());
    let lifecycle = Arc::new(Lifecycle::default());
    let checkpoints = match checkpoint::list(&store).await {
        Ok(list) => list.iter().filter(|c| c.complete).map(|c| c.step).collect(),
        Err(e) => {
            tracing::warn!("cannot list the run's checkpoints for the status: {e}");
            vec![state.start_step].into_iter().filter(|&s| s > 0).collect()
        }
    };
    let status = Arc::new(RunStatus::starting_at(state.start_step, checkpoints));
    // Job ids go on from the run's earlier starts: outputs never collide.
    let last_job = or_release!(jobs::outputs::last_job_id(&store).await);
    let queue = Arc::new(JobQueue::numbered_after(last_job).with_limit(opts.limits.max_queued_jobs));
    let pinned = Arc::new(PinnedWeights::default());
    let results = Arc::new(ResultRouter::default());

    let telemetry = Telemetry::new(telemetry::Sources {
        status: status.clone(),
        roster: roster.clone(),
        queue: queue.clone(),
        lifecycle: lifecycle.clone(),
        total_steps: config.train.steps,
        workers_expected: opts.start.workers,
        min_workers: opts.start.min_workers,
        reduction: config.dist.backend,
    });
    let history = Arc::new(RunHistory::default());
    // The earlier starts' rows, for the dashboard, without holding up training.
    let history_load = {
        let (history, store, upto) = (history.clone(), store.clone(), state.start_step);
        tokio::spawn(async move { history.load(&store, upto).await })
    };
    let metrics_port = match &opts.metrics_listen {
        Some(addr) => Some(or_release!(telemetry::start_port(addr, &telemetry, history.clone(), store.clone()).await)),
        None => None,
    };

    let (uploader, mut events) = Uploader::start(store.clone(), UploaderConfig::from_config(&config.checkpoint));
    // The uploader logs every event itself; the status and the metrics
    // show where checkpointing stands.
    let drain = {
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                telemetry.upload_event(&e);
            }
        })
    };

    let coordinator = service::CoordService {
        run_config_json: or_release!(serde_json::to_string(&run_config)),
        run_config,
        state: state.clone(),
        roster: roster.clone(),
        rounds: rounds.clone(),
        pinned: pinned.clone(),
        results: results.clone(),
        status: status.clone(),
        lifecycle: lifecycle.clone(),
        run_url: store.url().to_string(),
        workers_expected: opts.start.workers,
    };
    let roots = jobs::roots::JobRoots::new(&opts.run, config.data.spec.as_ref(), &opts.job_roots);
    let jobs_service = jobs::service::JobsService::new(queue.clone(), store.clone(), config.diffusion.num_timesteps, dataset.len(), roots);
    let server_stop = Arc::new(Notify::new());
    let health = ddpm::observe::health::Health::new(&telemetry::HEALTH_SERVICES, true).await;
    let health_watch = tokio::spawn(telemetry::watch_health(health.clone(), lifecycle.clone()));
    let server = tokio::spawn(serve(
        listener,
        coordinator,
        jobs_service,
        health,
        Gates { access: opts.access.clone(), tls: opts.tls.clone(), limits: opts.limits.clone() },
        server_stop.clone(),
    ));
    let heartbeat_timeout = Duration::from_secs_f64(config.dist.heartbeat_timeout_s);
    let reaper = tokio::spawn(liveness::reap_silent_members(roster.clone(), rounds.clone(), heartbeat_timeout));
    let job_context = JobContext {
        config: config.clone(),
        roster: roster.clone(),
        lifecycle: lifecycle.clone(),
        queue: queue.clone(),
        pinned,
        results,
        references: Default::default(),
        state: state.clone(),
        store: store.clone(),
        dataset: dataset.clone(),
        store_options: opts.store.clone(),
    };
    let scheduler = tokio::spawn(jobs::scheduler::run(Arc::new(job_context)));
    let keeper = {
        let (lease, lifecycle) = (lease.clone(), lifecycle.clone());
        tokio::spawn(async move { lease.keep(|_| lifecycle.request_stop()).await })
    };
    let signal = {
        let lifecycle = lifecycle.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::warn!("stop requested: finishing the current step, then checkpointing");
            lifecycle.request_stop();
        })
    };

    let trainer = Trainer {
        config,
        start: opts.start.clone(),
        run: opts.run.clone(),
        store,
        dataset,
        state,
        start_skipped,
        roster: roster.clone(),
        rounds,
        lifecycle: lifecycle.clone(),
        status,
        queue: queue.clone(),
        telemetry,
        history,
    };
    let result = match finished {
        Some(done) => {
            lifecycle.set_phase(Phase::Done);
            Ok(done)
        }
        None => trainer.train(&uploader).await,
    };
    lifecycle.end_training();
    if result.is_ok() {
        serve_jobs(&lifecycle, &queue, opts.serve).await;
    }
    scheduler.abort();
    signal.abort();
    let finished = matches!(&result, Ok(s) if !s.stopped);
    lifecycle.begin_shutdown(finished);
    roster.shutdown_all(if finished { "the run is over" } else { "the coordinator stops; the run goes on when it starts again" }, finished);
    uploader.close().await;
    drain.abort();
    // Give workers a moment to pick up the shutdown before the server goes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reaper.abort();
    server_stop.notify_one();
    // Graceful, but bounded: a hung worker's open calls (its Attach stream)
    // would hold the server forever.
    let mut server = server;
    if tokio::time::timeout(Duration::from_secs(2), &mut server).await.is_err() {
        tracing::warn!("calls still open 2 s after the run ended (a hung worker?); closing them");
        server.abort();
    }
    keeper.abort();
    health_watch.abort();
    history_load.abort();
    if let Some(mut port) = metrics_port {
        // Stopped with the lifecycle's shutdown; bounded like the gRPC server.
        if tokio::time::timeout(Duration::from_secs(2), &mut port).await.is_err() {
            tracing::warn!("the metrics port still had requests open 2 s after the run ended; closing it");
            port.abort();
        }
    }
    if let Some(why) = lease.lost() {
        anyhow::bail!("this coordinator lost the run lease ({why}) and stopped; the run belongs to the coordinator that took it");
    }
    lease.release().await;
    result
}

/// What stands between the port and the services: tokens, TLS, caps.
struct Gates {
    access: service::access::Access,
    tls: Option<wire::tls::ServerTls>,
    limits: limits::Limits,
}

/// The gRPC server with limits and windows set for bulk transfer.
async fn serve(
    listener: TcpListener,
    coordinator: service::CoordService,
    jobs_service: jobs::service::JobsService,
    health: ddpm::observe::health::Health,
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
        .serve_with_incoming_shutdown(
            service::incoming::capped(listener, gates.limits.max_connections),
            async move { stop.notified().await },
        )
        .await
}

/// Refuses to serve an open run (no tokens) on an address other hosts can
/// reach, unless the operator said `--insecure` (then warns). `listen` is
/// the `--listen` value.
/// `protected`: the run has tokens; `mutual_tls`: clients need a
/// certificate from `--tls-client-ca` (either keeps strangers out).
pub fn check_exposure(listen: &str, protected: bool, mutual_tls: bool, insecure: bool) -> anyhow::Result<()> {
    use std::net::ToSocketAddrs;
    if protected || mutual_tls {
        return Ok(());
    }
    let loopback = listen.to_socket_addrs().map(|mut a| a.all(|a| a.ip().is_loopback())).unwrap_or(false);
    if loopback {
        return Ok(());
    }
    if insecure {
        tracing::warn!(
            listen,
            "--insecure: serving an open run on a non-loopback address; anyone who reaches it can join training, read the weights and submit jobs"
        );
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {listen} without credentials: anyone who reaches it could join training, read the weights and submit jobs. \
         Set the run's tokens ({} and {}, or --worker-token-file and --user-token-file; e.g. `openssl rand -hex 32`), \
         listen on 127.0.0.1, require client certificates (--tls-client-ca), or pass --insecure",
        ddpm::wire::auth::WORKER_TOKEN_ENV,
        ddpm::wire::auth::USER_TOKEN_ENV
    )
}

/// The run's dataset at the model's resolution (downloaded first when it
/// lives in object storage).
async fn open_dataset(config: &TrainConfig, store: &StoreOptions) -> anyhow::Result<Arc<dyn Dataset>> {
    let spec = config.data.spec.clone().ok_or_else(|| anyhow::anyhow!("no dataset: pass --data SPEC"))?;
    let local_spec = ddpm::data::fetch_remote(&spec, store).await?;
    let resolution = config.model.image_size as usize;
    let dataset: Arc<dyn Dataset> =
        tokio::task::spawn_blocking(move || ddpm::data::open(&local_spec, &ddpm::data::OpenOptions { resolution: Some(resolution) }))
            .await??
            .into();
    tracing::info!(data = %spec, samples = dataset.len(), "dataset opened");
    Ok(dataset)
}

/// After training: with `serve`, runs jobs until SIGTERM/Ctrl-C; without,
/// finishes the jobs already submitted (unless a stop was requested).
async fn serve_jobs(lifecycle: &Lifecycle, queue: &JobQueue, serve: bool) {
    if serve && !lifecycle.stop_requested() {
        lifecycle.set_phase(Phase::Serving);
        tracing::info!("training is over; serving sampling jobs until SIGTERM or Ctrl-C");
        println!("serving jobs");
    } else if !queue.all_final() && !lifecycle.stop_requested() {
        tracing::info!("training is over; finishing the submitted jobs before exiting");
    }
    loop {
        let idle = !serve && queue.all_final();
        if idle || lifecycle.stop_requested() {
            return;
        }
        tokio::select! {
            _ = lifecycle.changed_within(Duration::from_millis(200)) => {}
            _ = queue.changed_within(Duration::from_millis(200)) => {}
        }
    }
}

/// The checkpoint to resume from: the latest complete one (torn newer ones
/// are skipped with a warning), none for a new run; with `fresh`, an error
/// if the run already has one.
async fn resume_point(store: &RunStore, fresh: bool) -> anyhow::Result<Option<CheckpointData>> {
    if fresh {
        if let Some(latest) = checkpoint::latest_complete(store).await? {
            anyhow::bail!(
                "--fresh: the run {} already has checkpoints (latest: step {}); use another --run, delete them, or drop --fresh to resume",
                store.url(),
                latest.step
            );
        }
        return Ok(None);
    }
    match checkpoint::load_latest(store).await? {
        Some(loaded) => {
            for s in &loaded.skipped {
                tracing::warn!(step = s.step, problem = %s.problem, "skipping a torn checkpoint");
            }
            tracing::info!(step = loaded.data.step, "resuming from the latest complete checkpoint");
            Ok(Some(loaded.data))
        }
        None => Ok(None),
    }
}
