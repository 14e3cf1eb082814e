//! The end of a run's training, once the step loop is over: after its last
//! step, the final checksums, the last checkpoint, the sample grid and the
//! evaluations still running; after a stop, the state saved. Either way
//! the run's [`Summary`].

use std::collections::BTreeMap;
use std::time::Duration;

use super::end_grid;
use super::members;
use super::steps::RunState;
use super::summary::Summary;
use super::trainer::Trainer;
use crate::lifecycle::Phase;

/// The replicas' checksums after the last step, against the coordinator's.
#[derive(Default)]
struct Replicas {
    coordinator: String,
    /// By worker id.
    each: BTreeMap<u64, String>,
    /// Every replica that reported equals the coordinator (and one did).
    agree: bool,
}

/// The last checkpoint's location, or the error of its upload (which the
/// summary reports and the run exits with).
fn settled(flushed: anyhow::Result<Option<String>>) -> (Option<String>, Option<String>) {
    match flushed {
        Ok(at) => (at, None),
        Err(e) => (None, Some(format!("{e:#}"))),
    }
}

impl Trainer {
    /// The summary of a run stopped after `run.step` (SIGTERM, Ctrl-C, a
    /// lost lease): its state saved and the upload waited for.
    pub(super) async fn stopped(&self, mut run: RunState<'_>) -> anyhow::Result<Summary> {
        let step = run.step;
        run.saver.on_stop(step).await?;
        let (checkpoint, error) = settled(run.saver.flush().await);
        let checkpoint = checkpoint.or_else(|| self.saved_location());
        tracing::warn!(step, "stopped after step {step}; run the same command again to resume");
        Ok(self.summary(&run, true, Replicas::default(), checkpoint, None, error))
    }

    /// The end of a run that did all its steps; its summary. A final
    /// checkpoint that could not be saved is the summary's `error`.
    pub(super) async fn finish(&self, mut run: RunState<'_>) -> anyhow::Result<Summary> {
        let total = self.config.train.steps;
        let replicas = self.final_checksums(&mut run).await?;
        run.saver.at_end(total).await?;
        let (checkpoint, error) = settled(run.saver.flush().await);
        let checkpoint = checkpoint.or_else(|| self.saved_location());
        if let Some(c) = &checkpoint {
            tracing::info!(checkpoint = %c, "final checkpoint saved (raw and EMA weights in the diffusers layout)");
        }
        let grid = if self.config.sample.at_end && !run.active.is_empty() {
            self.lifecycle.set_phase(Phase::Sampling);
            Some(end_grid::draw(self, total, &run.active).await?)
        } else {
            None
        };
        if run.evals.pending() {
            // The training workers are free now: they finish the evaluations.
            self.lifecycle.set_phase(Phase::Evaluating);
            self.lifecycle.end_training();
            run.evals.finish(&self.queue, &self.lifecycle, &mut run.metrics).await?;
        }
        self.lifecycle.set_phase(Phase::Done);
        Ok(self.summary(&run, false, replicas, checkpoint, grid, error))
    }

    /// Waits for the last step's members to report after it, then compares
    /// every replica's checksum with the coordinator's.
    async fn final_checksums(&self, run: &mut RunState<'_>) -> anyhow::Result<Replicas> {
        let total = self.config.train.steps;
        let step_timeout = Duration::from_secs_f64(self.config.dist.step_timeout_s);
        let final_ids = members::wait_idle(&self.roster, &run.active, total, step_timeout).await;
        run.await_shadow_sums().await;
        run.checksums.verify(&self.roster, total);
        run.checksums.verify_agreement(&self.roster, total);
        let coord_sum = self.shadow.checksum_at(total).await?;
        let each: BTreeMap<u64, String> =
            final_ids.iter().filter_map(|id| self.roster.checksum(*id, total).map(|c| (*id, format!("{c:016x}")))).collect();
        let coordinator = format!("{coord_sum:016x}");
        let agree = !each.is_empty() && each.values().all(|c| *c == coordinator);
        if agree {
            tracing::info!(replicas = each.len(), checksum = %coordinator, "every replica's parameters equal the coordinator's");
        } else {
            tracing::error!(replica_checksums = ?each, coordinator = %coordinator, "replicas disagree with the coordinator");
        }
        Ok(Replicas { coordinator, each, agree })
    }

    /// The summary of this start, which ended after `run.step`.
    fn summary(
        &self,
        run: &RunState<'_>,
        stopped: bool,
        replicas: Replicas,
        checkpoint: Option<String>,
        grid: Option<String>,
        error: Option<String>,
    ) -> Summary {
        let elapsed_s = run.started.elapsed().as_secs_f64();
        let images = (run.step - run.resumed_from) * self.config.train.batch_size as u64;
        Summary {
            steps: run.step,
            stopped,
            resumed_from: run.resumed_from,
            final_loss: run.last_loss,
            skipped_steps: run.skipped,
            coordinator_checksum: replicas.coordinator,
            replica_checksums: replicas.each,
            replicas_agree: replicas.agree,
            checksum_mismatches: run.checksums.mismatches(),
            checksums_compared: run.checksums.compared(),
            received_bytes: self.telemetry.received_bytes(),
            checkpoint,
            grid,
            images_per_s: images as f64 / elapsed_s,
            elapsed_s,
            error,
        }
    }
}
