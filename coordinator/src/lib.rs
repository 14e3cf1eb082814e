//! `ddpm-coord`: the coordinator of a data-parallel DDPM training run.
//!
//! It owns the run: it reads the dataset and ships each worker its shard of
//! every global batch, all-reduces the workers' gradients, keeps the source
//! of truth for the parameters and the EMA, saves weights and has a worker
//! draw a sample grid at the end. `main` only parses flags and calls [`run`];
//! tests start the same `run` on `127.0.0.1:0`.

pub mod membership;
pub mod reduce;
pub mod service;
pub mod state;
pub mod trainer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ddpm::config::{RunConfig, TrainConfig};
use ddpm::data::Dataset;
use ddpm::proto::coordinator_server::CoordinatorServer;
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
    /// Where the run's outputs go.
    pub run_dir: PathBuf,
}

/// Images from a worker for a sampling job.
pub struct ResultPart {
    pub worker_id: u64,
    pub first: u64,
    pub count: u64,
    pub resolution: u32,
    pub data: Vec<u8>,
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
}

impl Coord {
    pub fn new(config: TrainConfig, dataset: &dyn Dataset) -> anyhow::Result<Self> {
        let state = StateHandle::start(config.clone())?;
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
        })
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

/// Runs a training run on `listener` until it ends or `shutdown` resolves.
/// Returns the run's summary.
pub async fn run(
    listener: TcpListener,
    opts: CoordOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<trainer::Summary> {
    let config = opts.config.clone();
    config.validate()?;
    config.check_world_size(opts.workers)?;
    let dataset: Arc<dyn Dataset> = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || ddpm::train::local::open_dataset(&config)).await??.into()
    };
    tracing::info!(data = ?config.data.spec.as_ref().map(|s| s.to_string()), samples = dataset.len(), "dataset opened");
    let coord = Arc::new(Coord::new(config, &*dataset)?);
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, params = coord.state.layout.total, "coordinator listening");

    let server_stop = Arc::new(Notify::new());
    let server = {
        let stop = server_stop.clone();
        let svc = grpc_service(coord.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .initial_stream_window_size(Some(8 << 20))
                .initial_connection_window_size(Some(32 << 20))
                .tcp_nodelay(true)
                .add_service(svc)
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
                    stop.notified().await
                })
                .await
        })
    };
    let reaper = tokio::spawn(trainer::reap_silent_members(coord.clone()));

    let result = tokio::select! {
        r = trainer::train(coord.clone(), dataset, &opts) => r,
        _ = shutdown => {
            tracing::warn!("shutdown requested: stopping the run");
            Err(anyhow::anyhow!("the run was stopped before it finished"))
        }
    };
    coord.shutting_down.store(true, Ordering::SeqCst);
    trainer::shutdown_workers(&coord, "the run is over");
    // Give workers a moment to pick up the shutdown before the server goes.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    reaper.abort();
    server_stop.notify_one();
    let _ = server.await;
    result
}
