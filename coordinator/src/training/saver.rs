//! Checkpoint bookkeeping for the training loop: the run's policy decides
//! when (every N steps, every M minutes, at the end, when asked to stop);
//! the shadow captures the state of that exact step when its update is
//! applied (the loop goes on meanwhile), the background uploader saves,
//! and training never waits for an upload except at the end. With the
//! shadow off and `[checkpoint] writers = "replicas"`, a periodic
//! checkpoint is written by the replicas instead, a shard each
//! (`shard_writers.rs`), and only its manifest by the uploader.

use std::future::Future;
use std::time::{Duration, Instant};

use ddpm::checkpoint::{self, CheckpointData, CheckpointPolicy, Reason, UploadEvent, Uploader};
use ddpm::store::RunStore;
use tokio::sync::oneshot;

use super::shard_writers::{Polled, ShardWriters};
use crate::shadow::Shadow;

/// A capture asked of the shadow and not yet handed to the uploader.
struct Capturing {
    step: u64,
    reason: Reason,
    data: oneshot::Receiver<CheckpointData>,
}

pub struct Saver<'a> {
    shadow: &'a Shadow,
    uploader: &'a Uploader,
    store: RunStore,
    policy: CheckpointPolicy,
    last_save: Instant,
    last_saved_step: Option<u64>,
    capturing: Option<Capturing>,
    /// The replicas' sharded checkpoints, when they write them; the wait
    /// for their reports.
    shards: Option<(ShardWriters, Duration)>,
    /// A replicas' checkpoint that failed its checks during a step: saved
    /// the whole way at the next step boundary.
    failed_shards: Option<Reason>,
}

impl<'a> Saver<'a> {
    /// `resumed_from`: the step of the checkpoint this start resumed from (0: none).
    pub fn new(shadow: &'a Shadow, uploader: &'a Uploader, store: RunStore, config: &ddpm::config::TrainConfig, resumed_from: u64) -> Self {
        Self {
            shadow,
            uploader,
            store,
            policy: CheckpointPolicy::new(&config.checkpoint),
            last_save: Instant::now(),
            last_saved_step: (resumed_from > 0).then_some(resumed_from),
            capturing: None,
            shards: None,
            failed_shards: None,
        }
    }

    /// Periodic checkpoints written by the replicas through `writers`,
    /// each waited for at most `timeout`.
    pub fn with_shards(mut self, writers: ShardWriters, timeout: Duration) -> Self {
        self.shards = Some((writers, timeout));
        self
    }

    /// Before the loop hands out step `step + 1` to `members`, idle at
    /// `step`: their shards of a checkpoint of `step`, if one is wanted.
    pub fn send_shards(&mut self, step: u64, members: &[u64], step_time: Option<Duration>) {
        if let Some((w, _)) = self.shards.as_mut() {
            w.send(step, members, step_time);
        }
    }

    /// Moves the replicas' checkpoint in flight on (`wait`: until it is
    /// over): a complete one to the uploader, a failed one saved the whole
    /// way at `step` (the run's step, which the replicas hold), one that
    /// the loop will not hand out any more (`wait`) the whole way at its
    /// own. True if it started a whole save of `step`.
    async fn settle_shards(&mut self, step: u64, wait: bool) -> anyhow::Result<bool> {
        if let Some(reason) = self.failed_shards.take() {
            self.save_whole(step, reason).await?;
            return Ok(true);
        }
        let whole = loop {
            let Some((w, timeout)) = self.shards.as_mut() else { return Ok(false) };
            if wait {
                if let Some(unsent) = w.take_unsent() {
                    break unsent;
                }
            }
            match w.poll(*timeout) {
                Polled::Done(commit, reason) => {
                    self.uploader.submit_sharded(*commit, reason);
                    return Ok(false);
                }
                Polled::Failed { reason } => break (step, reason),
                Polled::Pending if wait && w.busy() => tokio::time::sleep(Duration::from_millis(20)).await,
                Polled::Pending => return Ok(false),
            }
        };
        self.save_whole(whole.0, whole.1).await?;
        Ok(whole.0 == step)
    }

    /// Runs `step` (a training step's future) and meanwhile commits the
    /// replicas' checkpoint the moment its last shard is reported, not at
    /// the next step boundary: a coordinator killed (or a step frozen) in
    /// between costs nothing. A set that fails its checks is saved the
    /// whole way at the boundary, where the replicas hold the run's step.
    pub async fn commit_during<T>(&mut self, step: impl Future<Output = T>) -> T {
        tokio::pin!(step);
        loop {
            let Some(book) = self.shards.as_ref().map(|(w, _)| w.book()) else { return step.await };
            let completed = book.completed();
            tokio::pin!(completed);
            completed.as_mut().enable();
            self.commit_reported();
            tokio::select! {
                out = &mut step => return out,
                _ = completed => {}
            }
        }
    }

    /// Commits the replicas' checkpoint if every shard is reported.
    fn commit_reported(&mut self) {
        let Some((w, timeout)) = self.shards.as_mut().filter(|(w, _)| w.reported()) else { return };
        match w.poll(*timeout) {
            Polled::Done(commit, reason) => {
                self.uploader.submit_sharded(*commit, reason);
            }
            Polled::Failed { reason } => self.failed_shards = Some(reason),
            Polled::Pending => {}
        }
    }

    /// Asks the shadow for the state after `step`; it reaches the uploader
    /// (which never blocks training) once the shadow applied that step.
    async fn save(&mut self, step: u64, reason: Reason) -> anyhow::Result<()> {
        // One replicas' checkpoint at a time.
        if self.settle_shards(step, true).await? {
            return Ok(());
        }
        if let Some((w, _)) = self.shards.as_mut().filter(|(w, _)| w.takes(reason)) {
            w.want(step, reason);
            self.last_save = Instant::now();
            self.last_saved_step = Some(step);
            return Ok(());
        }
        self.save_whole(step, reason).await
    }

    /// Asks the shadow (or, with it off, one replica) for the whole state.
    async fn save_whole(&mut self, step: u64, reason: Reason) -> anyhow::Result<()> {
        // One capture at a time: an earlier one still waiting is taken first.
        self.hand_over(true).await?;
        let data = self.shadow.request_capture(step).await?;
        tracing::info!(step, %reason, "checkpoint of step {step} asked of the coordinator's copy of the state");
        self.capturing = Some(Capturing { step, reason, data });
        self.last_save = Instant::now();
        self.last_saved_step = Some(step);
        Ok(())
    }

    /// Hands a finished capture to the uploader (`wait`: waits for it).
    async fn hand_over(&mut self, wait: bool) -> anyhow::Result<()> {
        let Some(mut c) = self.capturing.take() else { return Ok(()) };
        let data = if wait {
            c.data.await.ok()
        } else {
            match c.data.try_recv() {
                Ok(data) => Some(data),
                Err(oneshot::error::TryRecvError::Empty) => {
                    self.capturing = Some(c);
                    return Ok(());
                }
                Err(oneshot::error::TryRecvError::Closed) => None,
            }
        };
        let Some(data) = data else {
            let why = self.shadow.broken().map_or_else(|| "the state thread stopped".to_string(), |e| e.to_string());
            anyhow::bail!("the checkpoint of step {} could not be captured: {why}", c.step)
        };
        if data.step != c.step {
            // The shadow off: no replica could send step c.step's state any more.
            tracing::warn!(asked = c.step, step = data.step, "the checkpoint asked at step {} is of step {}", c.step, data.step);
        }
        tracing::info!(step = data.step, reason = %c.reason, "checkpoint captured; uploading in the background");
        self.uploader.submit(data, c.reason);
        Ok(())
    }

    /// After step `step` of training: hands over a capture that is ready,
    /// and saves if the policy says so.
    pub async fn after_step(&mut self, step: u64) -> anyhow::Result<()> {
        self.hand_over(false).await?;
        self.settle_shards(step, false).await?;
        if let Some(reason) = self.policy.should_save(step, Instant::now(), self.last_save) {
            self.save(step, reason).await?;
        }
        Ok(())
    }

    /// Stopped after `step`: saves unless that step is saved already.
    pub async fn on_stop(&mut self, step: u64) -> anyhow::Result<()> {
        self.settle_shards(step, true).await?;
        if let Some(reason) = self.policy.on_signal(step, self.last_saved_step) {
            self.save(step, reason).await?;
        }
        self.hand_over(true).await
    }

    /// After the last step `step`: saves as the policy says.
    pub async fn at_end(&mut self, step: u64) -> anyhow::Result<()> {
        self.settle_shards(step, true).await?;
        if let Some(reason) = self.policy.at_end(step, self.last_saved_step) {
            self.save(step, reason).await?;
        }
        self.hand_over(true).await
    }

    /// The shadow broke: saves the last step it holds whole unless the
    /// newest checkpoint in the store (`saved`) is of it, and waits for
    /// the upload; returns that step.
    pub async fn salvage(&mut self, saved: u64) -> anyhow::Result<u64> {
        // A capture asked of a later step can never complete now.
        self.capturing = None;
        if let Some((w, _)) = self.shards.as_mut() {
            w.abandon();
        }
        let data = self.shadow.capture_applied().await?;
        let step = data.step;
        if step > saved {
            tracing::warn!(step, "saving the coordinator's copy of the state at step {step}, the last it holds whole");
            self.uploader.submit(data, Reason::Salvage);
            self.flush().await?;
        }
        Ok(step)
    }

    /// Waits for the uploads; where the last one went, or an error if it failed.
    pub async fn flush(&mut self) -> anyhow::Result<Option<String>> {
        self.hand_over(true).await?;
        match self.uploader.flush().await {
            Some(UploadEvent::Saved { step, .. }) => Ok(Some(self.store.location(&checkpoint::step_dir(step)))),
            Some(UploadEvent::Failed { step, error, .. }) => {
                anyhow::bail!("the checkpoint of step {step} could not be saved: {error}")
            }
            _ => Ok(None),
        }
    }
}
