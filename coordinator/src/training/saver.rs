//! Checkpoint bookkeeping for the training loop: the run's policy decides
//! when (every N steps, every M minutes, at the end, when asked to stop);
//! the state thread captures, the background uploader saves, and training
//! never waits for an upload except at the end.

use std::time::Instant;

use ddpm::checkpoint::{self, CheckpointPolicy, Reason, UploadEvent, Uploader};
use ddpm::store::RunStore;

use crate::state::StateHandle;

pub struct Saver<'a> {
    state: &'a StateHandle,
    uploader: &'a Uploader,
    store: RunStore,
    dataset_len: usize,
    policy: CheckpointPolicy,
    last_save: Instant,
    last_saved_step: Option<u64>,
}

impl<'a> Saver<'a> {
    /// `resumed_from`: the step of the checkpoint this start resumed from (0: none).
    pub fn new(
        state: &'a StateHandle,
        uploader: &'a Uploader,
        store: RunStore,
        dataset_len: usize,
        config: &ddpm::config::TrainConfig,
        resumed_from: u64,
    ) -> Self {
        Self {
            state,
            uploader,
            store,
            dataset_len,
            policy: CheckpointPolicy::new(&config.checkpoint),
            last_save: Instant::now(),
            last_saved_step: (resumed_from > 0).then_some(resumed_from),
        }
    }

    /// Captures the state after `step` and hands it to the uploader (which
    /// never blocks training).
    async fn save(&mut self, step: u64, skipped: u64, reason: Reason) -> anyhow::Result<()> {
        let data = self.state.capture(skipped, self.dataset_len).await?;
        debug_assert_eq!(data.step, step);
        tracing::info!(step, %reason, "checkpoint captured; uploading in the background");
        self.uploader.submit(data, reason);
        self.last_save = Instant::now();
        self.last_saved_step = Some(step);
        Ok(())
    }

    /// After step `step` of training: saves if the policy says so.
    pub async fn after_step(&mut self, step: u64, skipped: u64) -> anyhow::Result<()> {
        if let Some(reason) = self.policy.should_save(step, Instant::now(), self.last_save) {
            self.save(step, skipped, reason).await?;
        }
        Ok(())
    }

    /// Stopped after `step`: saves unless that step is saved already.
    pub async fn on_stop(&mut self, step: u64, skipped: u64) -> anyhow::Result<()> {
        if let Some(reason) = self.policy.on_signal(step, self.last_saved_step) {
            self.save(step, skipped, reason).await?;
        }
        Ok(())
    }

    /// After the last step `step`: saves as the policy says.
    pub async fn at_end(&mut self, step: u64, skipped: u64) -> anyhow::Result<()> {
        if let Some(reason) = self.policy.at_end(step, self.last_saved_step) {
            self.save(step, skipped, reason).await?;
        }
        Ok(())
    }

    /// Waits for the uploads; where the last one went, or an error if it failed.
    pub async fn flush(&self) -> anyhow::Result<Option<String>> {
        match self.uploader.flush().await {
            Some(UploadEvent::Saved { step, .. }) => Ok(Some(self.store.location(&checkpoint::step_dir(step)))),
            Some(UploadEvent::Failed { step, error, .. }) => {
                anyhow::bail!("the checkpoint of step {step} could not be saved: {error}")
            }
            _ => Ok(None),
        }
    }
}
