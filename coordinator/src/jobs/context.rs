//! What a running job works with: the components it reads and drives,
//! handed to the scheduler when the coordinator starts.

use std::sync::Arc;

use ddpm::config::TrainConfig;
use ddpm::data::Dataset;
use ddpm::store::{RunStore, StoreOptions};
use ddpm::wire::WorkerRole;

use super::pinned::{Pinned, PinnedWeights};
use super::queue::JobQueue;
use super::references::ReferenceCache;
use super::results::ResultRouter;
use super::spec_sample::{SampleJobSpec, WeightsChoice};
use crate::components::Components;
use crate::lifecycle::Lifecycle;
use crate::roster::Roster;
use crate::state::{SnapshotKind, StateHandle};

/// Built once per run by [`JobContext::new`] and shared by the jobs.
pub struct JobContext {
    config: TrainConfig,
    roster: Arc<Roster>,
    lifecycle: Arc<Lifecycle>,
    queue: Arc<JobQueue>,
    pinned: Arc<PinnedWeights>,
    results: Arc<ResultRouter>,
    references: ReferenceCache,
    state: StateHandle,
    store: RunStore,
    /// The training dataset (evaluation jobs also read it).
    dataset: Arc<dyn Dataset>,
    /// How to reach an S3-compatible store, for datasets jobs name.
    store_options: StoreOptions,
}

impl JobContext {
    /// The jobs' view of a run of `config` on `parts`; `store_options`
    /// reach the datasets jobs name.
    pub fn new(config: TrainConfig, store_options: StoreOptions, parts: &Components) -> Self {
        Self {
            config,
            roster: parts.roster.clone(),
            lifecycle: parts.lifecycle.clone(),
            queue: parts.queue.clone(),
            pinned: parts.pinned.clone(),
            results: parts.results.clone(),
            references: ReferenceCache::default(),
            state: parts.state.clone(),
            store: parts.store.clone(),
            dataset: parts.dataset.clone(),
            store_options,
        }
    }

    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    pub fn queue(&self) -> &JobQueue {
        &self.queue
    }

    pub fn pinned(&self) -> &PinnedWeights {
        &self.pinned
    }

    pub fn results(&self) -> &ResultRouter {
        &self.results
    }

    /// Reference statistics computed for evaluation jobs, kept for the next.
    pub fn references(&self) -> &ReferenceCache {
        &self.references
    }

    /// The run's store (job outputs go there).
    pub fn store(&self) -> &RunStore {
        &self.store
    }

    /// Whether a worker of `role` may take job tasks now: eval workers at
    /// any time, training workers once training is over (or while it
    /// pauses for a periodic evaluation); never in the middle of a step.
    pub fn may_take_tasks(&self, role: WorkerRole) -> bool {
        role == WorkerRole::Eval || self.lifecycle.trainers_take_jobs()
    }

    /// The model's image side.
    pub fn resolution(&self) -> usize {
        self.config.model.image_size as usize
    }

    /// Copies the weights `spec` asks for: the live EMA or raw parameters,
    /// or those of a checkpoint.
    async fn weights(&self, spec: &SampleJobSpec) -> anyhow::Result<Pinned> {
        if spec.checkpoint_step == 0 {
            let kind = match spec.weights {
                WeightsChoice::Raw => SnapshotKind::Params,
                WeightsChoice::Ema => SnapshotKind::Ema,
            };
            let mut snap = self.state.snapshot(kind).await?;
            let (_, weights) = snap.tensors.pop().ok_or_else(|| anyhow::anyhow!("empty snapshot"))?;
            return Ok(Pinned { step: snap.step, weights: Arc::new(weights) });
        }
        let data = ddpm::checkpoint::read(&self.store, spec.checkpoint_step)
            .await
            .map_err(|e| anyhow::anyhow!("reading the checkpoint of step {}: {e}", spec.checkpoint_step))?;
        anyhow::ensure!(
            data.layout.total == self.state.layout.total,
            "the checkpoint of step {} holds {} parameters, this run's model {}",
            spec.checkpoint_step,
            data.layout.total,
            self.state.layout.total
        );
        let weights = match spec.weights {
            WeightsChoice::Raw => data.params,
            WeightsChoice::Ema => data.ema,
        };
        Ok(Pinned { step: data.step, weights: Arc::new(weights) })
    }

    /// Pins job `id`'s weights for its tasks; returns their step.
    pub async fn pin(&self, id: u64, spec: &SampleJobSpec) -> anyhow::Result<u64> {
        let pinned = self.weights(spec).await?;
        let step = pinned.step;
        self.pinned.pin(id, pinned);
        self.queue.set_weights_step(id, step);
        Ok(step)
    }

    /// A dataset a job reads: the run's (empty spec) or another; and its name.
    pub async fn open_dataset(&self, spec: &str) -> anyhow::Result<(Arc<dyn Dataset>, String)> {
        if spec.is_empty() {
            let name = self.config.data.spec.as_ref().map_or_else(|| "the run's dataset".to_string(), |s| s.to_string());
            return Ok((self.dataset.clone(), name));
        }
        let parsed: ddpm::data::DatasetSpec = spec.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let local = ddpm::data::fetch_remote(&parsed, &self.store_options).await?;
        let resolution = self.resolution();
        let ds = tokio::task::spawn_blocking(move || ddpm::data::open(&local, &ddpm::data::OpenOptions { resolution: Some(resolution) }))
            .await??;
        Ok((ds.into(), spec.to_string()))
    }
}
