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
//! methods (docs/architecture.md maps them):
//! [`roster::Roster`] (membership and liveness), [`round_slot::RoundSlot`]
//! and [`round::Round`] (the step's all-reduce), [`state::StateHandle`]
//! (parameters, Adam, EMA on their own thread), [`lifecycle::Lifecycle`]
//! and [`run_status::RunStatus`] (phase and live numbers), the job
//! components of [`jobs`], and the [`training::trainer::Trainer`] loop that drives
//! them. [`run`] builds them ([`components::Components`]), starts the
//! tasks beside the loop ([`background::Background`]), trains, and stops
//! them again.

pub mod background;
pub mod changes;
pub mod components;
pub mod jobs;
pub mod lifecycle;
pub mod limits;
pub mod liveness;
pub mod nccl_ids;
pub mod options;
pub mod peer_syncs;
pub mod restart;
pub mod roster;
pub mod round;
pub mod round_slot;
pub mod run_status;
pub mod server;
pub mod service;
pub mod shadow;
pub mod shard_book;
pub mod state;
pub mod step_record;
pub mod telemetry;
pub mod training;
pub mod work;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ddpm::checkpoint::{self, CheckpointData};
use ddpm::config::{RunConfig, TrainConfig};
use ddpm::data::Dataset;
use ddpm::store::lease::{Identity, RunLease};
use ddpm::store::{RunStore, StoreOptions};
use tokio::net::TcpListener;

use background::Background;
use components::Components;
use jobs::queue::JobQueue;
use lifecycle::{Lifecycle, Phase};
use options::CoordOptions;
use restart::{Restarts, StopSignal};
use training::summary::Summary;
use training::trainer::Trainer;

/// Opens the run's store, resumes from its latest complete checkpoint (or
/// refuses to, with `fresh`), and trains on `listener` until the run ends.
/// When `shutdown` resolves the current step finishes, a checkpoint is saved
/// and the run returns early (`Summary::stopped`). A start that loses every
/// worker holding the run's last steps is followed by another, in this
/// process and on the same addresses, while each gets further
/// ([`restart`]). Returns the run's summary.
pub async fn run(
    listener: TcpListener,
    mut opts: CoordOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Summary> {
    opts.check()?;
    let store = RunStore::open(&opts.run, &opts.store)?;
    store.check().await?;
    let dataset = open_dataset(&opts.config, &opts.store).await?;
    let stop = StopSignal::watch(shutdown);
    let mut restarts = Restarts::default();
    let mut listener = listener;
    loop {
        let addr = listener.local_addr()?;
        match run_once(listener, &mut opts, &store, dataset.clone(), stop.future()).await {
            Err(e) if restarts.again(&e, stop.requested()) => {
                // The run has a past now: it resumes, whatever --fresh said.
                opts.fresh = false;
                listener = restart::rebind(addr).await?;
            }
            ended => return ended,
        }
    }
}

/// One start of the run on `listener`: takes the lease, builds the
/// components, trains, stops them. Pins `opts.metrics_listen` to the
/// address it bound, so that a later start serves the same port.
async fn run_once(
    listener: TcpListener,
    opts: &mut CoordOptions,
    store: &RunStore,
    dataset: Arc<dyn Dataset>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Summary> {
    let resume = resume_point(store, opts.fresh).await?;
    // A finished run started again changes nothing: without --serve it
    // ends here, before taking the lease; with it, it only serves jobs.
    let finished = training::finished_run(store, &opts.config, resume.as_ref()).await;
    if let Some(done) = finished.as_ref().filter(|_| !opts.serve) {
        tracing::info!(run = %store.url(), steps = done.steps, "the run is already finished (summary.json): nothing to do; raise --steps to train on, or use another --run");
        let linger = opts.finished_linger;
        service::finished::answer_for(listener, opts.tls.as_ref(), opts.start.workers, linger, shutdown).await?;
        return Ok(done.clone());
    }
    let addr: SocketAddr = listener.local_addr()?;
    let lease = Arc::new(RunLease::acquire(store, &Identity::this_process(&addr.to_string()), opts.lease_ttl).await?);
    tracing::info!(epoch = lease.epoch(), "run lease taken: this coordinator alone writes to the run");
    // Every write from here on (checkpoints, metrics, job outputs, the
    // summary) is refused once the lease is lost or goes stale.
    let store = store.clone().fenced_by(lease.fence());
    let start_skipped = resume.as_ref().map_or(0, |r| r.skipped_steps);
    // A start-up failure from here on hands the lease back, so that the
    // next start need not wait for it to expire.
    let (parts, background) = match start(listener, opts, store, dataset, resume, lease.clone(), shutdown).await {
        Ok(started) => started,
        Err(e) => {
            lease.release().await;
            return Err(e);
        }
    };
    opts.metrics_listen = background.metrics_addr().map(|a| a.to_string()).or(opts.metrics_listen.take());
    let result = match finished {
        Some(done) => {
            parts.lifecycle.set_phase(Phase::Done);
            Ok(done)
        }
        None => {
            let trainer = Trainer::new(&parts, opts.config.clone(), opts.start.clone(), opts.run.clone(), start_skipped);
            trainer.train(background.uploader()).await
        }
    };
    parts.lifecycle.end_training();
    if result.is_ok() {
        serve_jobs(&parts.lifecycle, &parts.queue, opts.serve).await;
    }
    background.stop(&parts, matches!(&result, Ok(s) if !s.stopped)).await;
    if let Some(why) = lease.lost() {
        anyhow::bail!("this coordinator lost the run lease ({why}) and stopped; the run belongs to the coordinator that took it");
    }
    lease.release().await;
    result
}

/// Builds the run's components on `store` (resumed from `resume`) and
/// starts the tasks beside the training loop, serving on `listener`.
async fn start(
    listener: TcpListener,
    opts: &CoordOptions,
    store: RunStore,
    dataset: Arc<dyn Dataset>,
    resume: Option<CheckpointData>,
    lease: Arc<RunLease>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(Components, Background)> {
    let addr = listener.local_addr()?;
    let parts = Components::start(&opts.config, store, dataset, resume, &opts.limits, &opts.start).await?;
    let layout = parts.shadow.layout();
    let run_config = RunConfig {
        train: opts.config.clone(),
        decoder: parts.dataset.decoder(),
        param_count: layout.total as u64,
        layout_hash: layout.hash(),
        run_id: ddpm::store::run_id::ensure(&parts.store).await?,
    };
    tracing::info!(%addr, params = layout.total, run = %parts.store.url(), "coordinator listening");
    let background = Background::start(listener, opts, &parts, run_config, lease, shutdown).await?;
    Ok((parts, background))
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
