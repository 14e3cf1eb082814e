//! The coordinator's components for one run, each owning its state behind
//! methods: built once by [`Components::start`] and handed to the
//! services and loops, which keep the ones they use (ARCHITECTURE.md maps
//! who uses which).

use std::sync::Arc;

use ddpm::checkpoint::{self, CheckpointData};
use ddpm::config::TrainConfig;
use ddpm::data::Dataset;
use ddpm::store::RunStore;

use crate::jobs::outputs::last_job_id;
use crate::jobs::pinned::PinnedWeights;
use crate::jobs::queue::JobQueue;
use crate::jobs::results::ResultRouter;
use crate::lifecycle::Lifecycle;
use crate::limits::Limits;
use crate::nccl_ids::NcclIds;
use crate::peer_syncs::PeerSyncs;
use crate::roster::Roster;
use crate::round_slot::RoundSlot;
use crate::run_status::RunStatus;
use crate::shadow::Shadow;
use crate::shard_book::ShardBook;
use crate::state::StateHandle;
use crate::telemetry::history::RunHistory;
use crate::telemetry::metrics::{Sources, Telemetry};
use crate::training::start::StartPolicy;

/// Handles on the run's components (cheap to clone: each is shared).
#[derive(Clone)]
pub struct Components {
    /// The run's store, fenced by its lease.
    pub store: RunStore,
    pub dataset: Arc<dyn Dataset>,
    /// The coordinator's copy of parameters, Adam and the EMA (on their
    /// own thread), fed off the step's path.
    pub shadow: Arc<Shadow>,
    /// Membership and liveness.
    pub roster: Arc<Roster>,
    /// The step's all-reduce, while one is open.
    pub rounds: Arc<RoundSlot>,
    /// The NCCL backend's communicator epochs and their unique ids.
    pub nccl_ids: Arc<NcclIds>,
    /// The sharded checkpoint whose shards the replicas are writing.
    pub shards: Arc<ShardBook>,
    /// Joiners waiting for their state from a peer replica.
    pub peer_syncs: Arc<PeerSyncs>,
    pub lifecycle: Arc<Lifecycle>,
    /// The live numbers of the run.
    pub status: Arc<RunStatus>,
    pub queue: Arc<JobQueue>,
    pub pinned: Arc<PinnedWeights>,
    pub results: Arc<ResultRouter>,
    /// The metrics (each step is recorded there and in `status`).
    pub telemetry: Arc<Telemetry>,
    /// What the dashboard draws: the metrics log's rows.
    pub history: Arc<RunHistory>,
}

impl Components {
    /// Starts the state thread on `resume` (none: a new run) and builds the
    /// other components around it for a run that starts as `start` says
    /// (its `workers` and `min_workers`), under `limits`.
    pub async fn start(
        config: &TrainConfig,
        store: RunStore,
        dataset: Arc<dyn Dataset>,
        resume: Option<CheckpointData>,
        limits: &Limits,
        start: &StartPolicy,
    ) -> anyhow::Result<Self> {
        let workers = start.workers;
        let skipped = resume.as_ref().map_or(0, |r| r.skipped_steps);
        let state = StateHandle::start(config.clone(), resume, dataset.len())?;
        let roster = Arc::new(Roster::with_limit(limits.members(workers)));
        let lifecycle = Arc::new(Lifecycle::default());
        let status = Arc::new(RunStatus::starting_at(state.start_step, saved_steps(&store, state.start_step).await));
        // Job ids go on from the run's earlier starts: outputs never collide.
        let last_job = last_job_id(&store).await?;
        let queue = Arc::new(JobQueue::numbered_after(last_job).with_limit(limits.max_queued_jobs));
        let telemetry = Telemetry::new(Sources {
            status: status.clone(),
            roster: roster.clone(),
            queue: queue.clone(),
            lifecycle: lifecycle.clone(),
            total_steps: config.train.steps,
            workers_expected: workers,
            min_workers: start.min_workers,
            reduction: config.dist.backend,
        });
        Ok(Self {
            store,
            shadow: Shadow::start(state, config.dist.shadow, skipped, dataset.len()),
            dataset,
            roster,
            rounds: Arc::default(),
            nccl_ids: Arc::default(),
            shards: Arc::default(),
            peer_syncs: Arc::default(),
            lifecycle,
            status,
            queue,
            pinned: Arc::default(),
            results: Arc::default(),
            telemetry,
            history: Arc::default(),
        })
    }
}

/// The steps of the run's complete checkpoints, for the status; when they
/// cannot be listed, the step the state resumed from (if any).
async fn saved_steps(store: &RunStore, start_step: u64) -> Vec<u64> {
    match checkpoint::list(store).await {
        Ok(list) => list.iter().filter(|c| c.complete).map(|c| c.step).collect(),
        Err(e) => {
            tracing::warn!("cannot list the run's checkpoints for the status: {e}");
            vec![start_step].into_iter().filter(|&s| s > 0).collect()
        }
    }
}
