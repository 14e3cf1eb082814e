//! What the training loop drives: the run's config and the components it
//! uses. Its fields are the loop's own (visible to the files of
//! `training/` only); the rest of the coordinator builds it with
//! [`Trainer::new`] and calls [`Trainer::train`](super::Trainer::train).

use std::sync::Arc;

use ddpm::config::TrainConfig;
use ddpm::data::Dataset;
use ddpm::store::RunStore;

use super::start::StartPolicy;
use crate::components::Components;
use crate::jobs::queue::JobQueue;
use crate::lifecycle::Lifecycle;
use crate::nccl_ids::NcclIds;
use crate::peer_syncs::PeerSyncs;
use crate::roster::Roster;
use crate::round_slot::RoundSlot;
use crate::run_status::RunStatus;
use crate::shadow::Shadow;
use crate::shard_book::ShardBook;
use crate::telemetry::history::RunHistory;
use crate::telemetry::metrics::Telemetry;

pub struct Trainer {
    pub(super) config: TrainConfig,
    /// How many workers to wait for before the first step, and how long.
    pub(super) start: StartPolicy,
    /// The run's location as given (`--run`), for the metrics log.
    pub(super) run: String,
    pub(super) store: RunStore,
    pub(super) dataset: Arc<dyn Dataset>,
    /// The coordinator's copy of the state, fed off the step's path.
    pub(super) shadow: Arc<Shadow>,
    /// Steps skipped before this start (from the resumed checkpoint).
    pub(super) start_skipped: u64,
    pub(super) roster: Arc<Roster>,
    pub(super) rounds: Arc<RoundSlot>,
    /// The NCCL backend's communicator epochs.
    pub(super) nccl_ids: Arc<NcclIds>,
    /// The replicas' reports of a sharded checkpoint's shards.
    pub(super) shards: Arc<ShardBook>,
    /// Joiners waiting for their state from a peer replica.
    pub(super) peer_syncs: Arc<PeerSyncs>,
    pub(super) lifecycle: Arc<Lifecycle>,
    pub(super) status: Arc<RunStatus>,
    pub(super) queue: Arc<JobQueue>,
    /// The metrics (each step is recorded there and in `status`).
    pub(super) telemetry: Arc<Telemetry>,
    /// What the dashboard draws: the metrics log's rows.
    pub(super) history: Arc<RunHistory>,
}

impl Trainer {
    /// The loop of a run of `config` located at `run` (as given), on
    /// `parts`, starting as `start` says; `start_skipped` is the skipped
    /// steps the resumed checkpoint counted.
    pub fn new(parts: &Components, config: TrainConfig, start: StartPolicy, run: String, start_skipped: u64) -> Self {
        Self {
            config,
            start,
            run,
            store: parts.store.clone(),
            dataset: parts.dataset.clone(),
            shadow: parts.shadow.clone(),
            start_skipped,
            roster: parts.roster.clone(),
            rounds: parts.rounds.clone(),
            nccl_ids: parts.nccl_ids.clone(),
            shards: parts.shards.clone(),
            peer_syncs: parts.peer_syncs.clone(),
            lifecycle: parts.lifecycle.clone(),
            status: parts.status.clone(),
            queue: parts.queue.clone(),
            telemetry: parts.telemetry.clone(),
            history: parts.history.clone(),
        }
    }

    /// The newest checkpoint in the store, as a location (none yet: `None`).
    pub(super) fn saved_location(&self) -> Option<String> {
        let step = self.status.get().last_checkpoint;
        (step > 0).then(|| self.store.location(&ddpm::checkpoint::step_dir(step)))
    }
}
