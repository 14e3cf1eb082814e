//! The training loop of the coordinator, one step at a time:
//!
//! 1. gather the members that can compute the step (ready, idle, in sync);
//! 2. split the step's global batch into shards and hand them out;
//! 3. wait for the all-reduce to finish (or fail, and redo the step);
//! 4. queue the update on the coordinator's own copy; check checksums; log
//!    the step's record; checkpoint as the policy says; periodic
//!    evaluations.
//!
//! At the end: final checksums, the last checkpoint, the sample grid (a job
//! through the scheduler), the evaluations still running, `summary.json`.
//!
//! Files: `trainer.rs` (what the loop drives), `steps.rs` (the loop and
//! what it carries from step to step), `attempt.rs` (one attempt at a
//! step), `finish.rs` (the end of the run), and the parts with state of
//! their own: `start.rs`, `adopt.rs` (a start going on from the live
//! replicas' step), `lost.rs` (what a restart resumes from when the
//! state of the last steps is lost), `members.rs`, `stragglers.rs`, `checksums.rs`,
//! `saver.rs`, `metrics_log.rs`, `progress.rs`, `periodic.rs`,
//! `end_grid.rs`, `summary.rs`.

mod adopt;
mod attempt;
mod checksums;
mod end_grid;
mod finish;
pub mod lost;
mod members;
mod metrics_log;
mod periodic;
mod progress;
mod saver;
mod shard_writers;
pub mod start;
mod steps;
mod stragglers;
pub mod summary;
pub mod trainer;
mod uploads;

use std::time::Instant;

use ddpm::checkpoint::{CheckpointData, Uploader};
use ddpm::config::TrainConfig;
use ddpm::store::RunStore;

use summary::Summary;
use trainer::Trainer;

/// The summary of the run in `store` if it is finished: it completed all
/// of `config`'s steps without error, and its latest checkpoint (`resume`)
/// is of the last step. Restarting such a run must change nothing.
pub async fn finished_run(store: &RunStore, config: &TrainConfig, resume: Option<&CheckpointData>) -> Option<Summary> {
    let total = config.train.steps;
    if resume.map(|r| r.step) != Some(total) {
        return None;
    }
    Summary::read(store).await.filter(|s| s.steps == total && !s.stopped && s.error.is_none())
}

impl Trainer {
    /// Trains from the state's step to the config's last (or until a stop
    /// is requested), then finishes the run. Returns its summary, which is
    /// in the store in every case: a failed run's says why (`error`), and
    /// the run's error is returned after it is written.
    pub async fn train(&self, uploader: &Uploader) -> anyhow::Result<Summary> {
        let started = Instant::now();
        // The error itself is returned (not its text), so that callers can
        // tell its kind (a start timeout has its own exit code).
        // With the shadow off, what reads the state is served by replicas
        // throughout: between steps, in a pause for an evaluation, at the end.
        let trained = tokio::select! {
            trained = self.train_steps(uploader) => trained,
            never = self.serve_uploads() => match never {},
        };
        let (summary, failure) = match trained {
            Ok(summary) => (summary, None),
            Err(e) => {
                let elapsed = started.elapsed().as_secs_f64();
                let status = self.status.get();
                (Summary::failed(&status, status.resumed_from, &self.store, elapsed, format!("{e:#}")), Some(e))
            }
        };
        let written = summary.write(&self.store).await;
        match (&summary.error, written) {
            (Some(error), written) => {
                if let Err(e) = written {
                    tracing::error!("summary.json could not be written either: {e:#}");
                }
                Err(failure.unwrap_or_else(|| anyhow::anyhow!("{error}")))
            }
            (None, Err(e)) => Err(e.context("the run finished but summary.json could not be written")),
            (None, Ok(())) => Ok(summary),
        }
    }

    /// The coordinator's copy broke (`e` ended the loop): saves the last
    /// step it holds whole, and returns the error a restart resumes from.
    async fn salvage(&self, run: &mut steps::RunState<'_>, e: anyhow::Error) -> anyhow::Error {
        let why = self.shadow.broken().map_or_else(|| format!("{e:#}"), |b| b.to_string());
        match run.saver.salvage(self.status.get().last_checkpoint).await {
            Ok(saved) => lost::ShadowLost { why, saved, run_step: run.step }.into(),
            Err(s) => e.context(format!("the coordinator's copy of the state could not be saved either: {s:#}")),
        }
    }

    /// [`Trainer::train`] up to its summary; a final checkpoint that could
    /// not be saved is the summary's `error`.
    async fn train_steps(&self, uploader: &Uploader) -> anyhow::Result<Summary> {
        let (workers, min_workers) = (self.start.workers, self.start.min_workers);
        tracing::info!(workers, min_workers, "waiting for {workers} workers to join");
        if !self.config.dist.backend.replicas_keep_ema() {
            // The star's workers keep no EMA: their state is not whole (adopt.rs).
            self.roster.close_held();
        }
        // A stop while waiting is noticed by the loop's first gather.
        let first_min = start::await_start(&self.roster, &self.lifecycle, self.shadow.start_step(), &self.start).await?.unwrap_or(workers);
        self.adopt_replicas().await?;
        let mut run = self.open_run(uploader).await?;
        let all_done = match self.steps(&mut run, first_min).await {
            Ok(done) => done,
            // Its last whole step is worth saving before the run ends.
            Err(e) if self.shadow.broken().is_some() => return Err(self.salvage(&mut run, e).await),
            Err(e) => return Err(e),
        };
        run.evals.log_finished(&self.queue, &mut run.metrics)?;
        run.metrics.flush_all().await;
        if all_done {
            self.finish(run).await
        } else {
            self.stopped(run).await
        }
    }
}
