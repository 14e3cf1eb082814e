//! `ddpm-coord`: the coordinator of a data-parallel DDPM training run.
//!
//! It owns the run: it reads the dataset and ships each worker its shard of
//! every global batch, all-reduces the workers' gradients, keeps the source
//! of truth for the parameters and the EMA, checkpoints to the run's store
//! (and resumes from it), and has the workers draw a sample grid at the end.
//! `main` only parses flags and calls [`run`]; tests start the same `run` on
//! `127.0.0.1:0`.

pub mod jobs;
pub mod membership;
pub mod reduce;
pub mod service;
pub mod state;
pub mod trainer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ddpm::checkpoint::{self, CheckpointData, Uploader, UploaderConfig};
use ddpm::config::{RunConfig, TrainConfig};
use ddpm::data::Dataset;
use ddpm::proto::coordinator_server::CoordinatorServer;
use ddpm::proto::jobs_server::JobsServer;
use ddpm::store::{RunStore, StoreOptions};
use ddpm::wire;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

use membership::Membership;
use reduce::Round;
use state::StateHandle;

/// What `ddpm-coord` was asked to do.
#[derive(Debug, Clone)]
pub struct CoordOptions {
    pub config: TrainConfig,
    /// Workers to wait for before step 1.
    pub workers: usize,
    /// Where the run's outputs go: a local directory or `s3://bucket/prefix`.
    pub run: String,
    /// How to reach an S3-compatible store (also for `s3://` datasets).
    pub store: StoreOptions,
    /// Refuse to start on a run that already has checkpoints (instead of
    /// resuming from the latest).
    pub fresh: bool,
    /// Keep serving jobs after the last step, until SIGTERM/Ctrl-C.
    pub serve: bool,
}

/// A worker's result for a job task: images and/or evaluation sums.
#[derive(Default)]
pub struct ResultPart {
    pub worker_id: u64,
    pub first: u64,
    pub count: u64,
    pub resolution: u32,
    /// The images, uint8 `[count, 3, R, R]` (empty for dataset tasks).
    pub data: Vec<u8>,
    /// Binary sums of an evaluation task (`ddpm::eval` forms; empty: absent).
    pub features: Vec<u8>,
    pub scores: Vec<u8>,
    pub bpd: Vec<u8>,
    /// Set when the worker could not do the task (then the rest is empty).
    pub error: String,
}

impl ResultPart {
    /// An empty part for the task `header` describes.
    pub fn new(header: &ddpm::proto::ResultHeader) -> Self {
        Self {
            worker_id: header.worker_id,
            first: header.first,
            count: header.count,
            resolution: header.resolution,
            ..Default::default()
        }
    }
}

/// Live numbers for GetStatus.
#[derive(Debug, Clone, Default)]
pub struct StatusInfo {
    pub step: u64,
    pub loss: f64,
    pub images_per_s: f64,
    pub skipped_steps: u64,
    pub phase: String,
}

/// State shared by the gRPC service and the trainer.
pub struct Coord {
    pub config: TrainConfig,
    pub run_config: RunConfig,
    pub run_config_json: String,
    pub state: StateHandle,
    pub members: Mutex<Membership>,
    /// Signalled whenever membership or a member's idleness changes.
    pub changed: Notify,
    /// The all-reduce in progress.
    pub round: Mutex<Option<Arc<Round>>>,
    pub status: Mutex<StatusInfo>,
    /// Sampling jobs waiting for results, by job id.
    pub results: Mutex<HashMap<u64, mpsc::UnboundedSender<ResultPart>>>,
    pub shutting_down: AtomicBool,
    /// Set by SIGTERM/Ctrl-C: finish the step, checkpoint, exit.
    pub stop_requested: AtomicBool,
    /// The run's storage (checkpoints, metrics, samples, summary).
    pub store: RunStore,
    /// Samples in the training dataset.
    pub dataset_len: usize,
    /// The training dataset (evaluation jobs also read it).
    pub dataset: Arc<dyn Dataset>,
    /// How to reach an S3-compatible store, for datasets jobs name.
    pub store_options: StoreOptions,
    /// Steps skipped before this start (from the resumed checkpoint).
    pub start_skipped: u64,
    /// Sampling jobs submitted over gRPC.
    pub jobs: jobs::JobQueue,
    /// Ids of jobs (and of the end-of-training grid).
    pub next_job_id: AtomicU64,
    /// Set once training (and its grid) is over: training workers then take
    /// job tasks too.
    pub training_over: AtomicBool,
}

impl Coord {
    /// Builds the coordinator's state: fresh from the run seed, or from
    /// `resume` (a checkpoint of this run).
    pub fn new(
        config: TrainConfig,
        dataset: Arc<dyn Dataset>,
        store: RunStore,
        store_options: StoreOptions,
        resume: Option<CheckpointData>,
    ) -> anyhow::Result<Self> {
        let start_skipped = resume.as_ref().map_or(0, |r| r.skipped_steps);
        let state = StateHandle::start(config.clone(), resume, dataset.len())?;
        let run_config = RunConfig {
            train: config.clone(),
            decoder: dataset.decoder(),
            param_count: state.layout.total as u64,
            layout_hash: state.layout.hash(),
        };
        let run_config_json = serde_json::to_string(&run_config)?;
        Ok(Self {
            config,
            run_config,
            run_config_json,
            state,
            members: Mutex::new(Membership::default()),
            changed: Notify::new(),
            round: Mutex::new(None),
            status: Mutex::new(StatusInfo { phase: "waiting".into(), ..Default::default() }),
            results: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            stop_requested: AtomicBool::new(false),
            store,
            dataset_len: dataset.len(),
            dataset,
            store_options,
            start_skipped,
            jobs: jobs::JobQueue::default(),
            next_job_id: AtomicU64::new(1),
            training_over: AtomicBool::new(false),
        })
    }

    pub fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst)
    }

    /// Where `key` of the run's store is, for people.
    pub fn location(&self, key: &str) -> String {
        format!("{}/{key}", self.store.url().trim_end_matches('/'))
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn set_phase(&self, phase: &str) {
        self.status.lock().unwrap().phase = phase.to_string();
    }
}

/// The gRPC server with limits and windows set for bulk transfer.
pub fn grpc_service(coord: Arc<Coord>) -> CoordinatorServer<service::CoordService> {
    CoordinatorServer::new(service::CoordService::new(coord))
        .max_decoding_message_size(wire::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(wire::MAX_MESSAGE_BYTES)
}

/// Opens the run's store, resumes from its latest complete checkpoint (or
/// refuses to, with `fresh`), and trains on `listener` until the run ends.
/// When `shutdown` resolves the current step finishes, a checkpoint is saved
/// and the run returns early (`Summary::stopped`). Returns the run's summary.
pub async fn run(
    listener: TcpListener,
    opts: CoordOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<trainer::Summary> {
    let config = opts.config.clone();
    config.validate()?;
    config.check_world_size(opts.workers)?;
    let store = RunStore::open(&opts.run, &opts.store)?;
    store.check().await?;

    let spec = config.data.spec.clone().ok_or_else(|| anyhow::anyhow!("no dataset: pass --data SPEC"))?;
    let local_spec = ddpm::data::fetch_remote(&spec, &opts.store).await?;
    let dataset: Arc<dyn Dataset> = {
        let resolution = config.model.image_size as usize;
        tokio::task::spawn_blocking(move || {
            ddpm::data::open(&local_spec, &ddpm::data::OpenOptions { resolution: Some(resolution) })
        })
        .await??
        .into()
    };
    tracing::info!(data = %spec, samples = dataset.len(), "dataset opened");

    let resume = resume_point(&store, opts.fresh).await?;
    let coord = Arc::new(Coord::new(config, dataset.clone(), store.clone(), opts.store.clone(), resume)?);
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, params = coord.state.layout.total, run = %store.url(), "coordinator listening");

    let (uploader, mut events) = Uploader::start(store, UploaderConfig::from_config(&coord.config.checkpoint));
    // The uploader logs every event itself; draining keeps its channel empty.
    let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });

    let server_stop = Arc::new(Notify::new());
    let server = {
        let stop = server_stop.clone();
        let svc = grpc_service(coord.clone());
        let jobs_svc = JobsServer::new(jobs::JobsService::new(coord.clone()));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .initial_stream_window_size(Some(8 << 20))
                .initial_connection_window_size(Some(32 << 20))
                .max_frame_size(Some(wire::MAX_FRAME_BYTES))
                .tcp_nodelay(true)
                .add_service(svc)
                .add_service(jobs_svc)
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
                    stop.notified().await
                })
                .await
        })
    };
    let reaper = tokio::spawn(trainer::reap_silent_members(coord.clone()));
    let scheduler = tokio::spawn(jobs::run_scheduler(coord.clone()));
    let signal = {
        let coord = coord.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::warn!("stop requested: finishing the current step, then checkpointing");
            coord.stop_requested.store(true, Ordering::SeqCst);
            coord.changed.notify_waiters();
        })
    };

    let result = trainer::train(coord.clone(), dataset, &opts, &uploader).await;
    coord.training_over.store(true, Ordering::SeqCst);
    coord.changed.notify_waiters();
    if result.is_ok() {
        serve_jobs(&coord, opts.serve).await;
    }
    scheduler.abort();
    signal.abort();
    coord.shutting_down.store(true, Ordering::SeqCst);
    trainer::shutdown_workers(&coord, "the run is over");
    uploader.close().await;
    drain.abort();
    // Give workers a moment to pick up the shutdown before the server goes.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    reaper.abort();
    server_stop.notify_one();
    let _ = server.await;
    result
}

/// After training: with `serve`, runs jobs until SIGTERM/Ctrl-C; without,
/// finishes the jobs already submitted (unless a stop was requested).
async fn serve_jobs(coord: &Coord, serve: bool) {
    if serve && !coord.stop_requested() {
        coord.set_phase("serving");
        tracing::info!("training is over; serving sampling jobs until SIGTERM or Ctrl-C");
        println!("serving jobs");
    } else if !coord.jobs.all_final() && !coord.stop_requested() {
        tracing::info!("training is over; finishing the submitted jobs before exiting");
    }
    loop {
        let idle = !serve && coord.jobs.all_final();
        if idle || coord.stop_requested() {
            return;
        }
        let notified = coord.changed.notified();
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
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
