//! The sample grid at the end of training (`[sample] at_end`): an urgent
//! job through the same scheduler as users' sample jobs, on the EMA weights
//! after the last step, written to the run's `samples/step_N.png`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::members::wait_idle;
use super::trainer::Trainer;
use crate::jobs::queue::JobState;
use crate::jobs::spec::{GridJobSpec, JobSpec};

/// Draws the grid after step `step` with the training workers `members`
/// (and any eval worker); returns its location.
pub async fn draw(trainer: &Trainer, step: u64, members: &BTreeSet<u64>) -> anyhow::Result<String> {
    let cfg = &trainer.config;
    let step_timeout = Duration::from_secs_f64(cfg.dist.step_timeout_s);
    let ids = wait_idle(&trainer.roster, members, step, step_timeout).await;
    anyhow::ensure!(!ids.is_empty(), "no worker is left to draw the sample grid");
    // Training is over: the training workers take job tasks from now on.
    trainer.lifecycle.end_training();
    let id = trainer.queue.submit_urgent(JobSpec::Grid(GridJobSpec::from_config(cfg, step))).job_id;
    let deadline = Duration::from_secs_f64(cfg.dist.step_timeout_s.max(600.0) * 4.0);
    let started = Instant::now();
    while !trainer.queue.ended(id) {
        if started.elapsed() > deadline {
            trainer.queue.cancel(id, "the run's sample grid timed out");
            anyhow::bail!("sampling did not finish within {:.0} s", deadline.as_secs_f64());
        }
        trainer.queue.changed_within(Duration::from_millis(500)).await;
    }
    let status = trainer.queue.status(id).ok_or_else(|| anyhow::anyhow!("the sample grid's job {id} vanished"))?;
    match trainer.queue.state_of(id) {
        Some(JobState::Done) => {
            status.outputs.into_iter().next().ok_or_else(|| anyhow::anyhow!("the sample grid's job {id} wrote nothing"))
        }
        _ => anyhow::bail!("the sample grid could not be drawn: {}", status.error),
    }
}
