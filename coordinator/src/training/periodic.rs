//! Evaluation every `eval.every_steps` steps (config `[eval]`): submits the
//! job on the EMA weights of that step, pauses training until it ends when
//! no eval worker could run it, and appends each finished one to the
//! metrics log as `{"step", "eval": {job_id, state, weights_step, fid,
//! inception_score, grid}}`.

use std::time::Duration;

use ddpm::config::TrainConfig;

use super::metrics_log::MetricsLog;
use crate::jobs::queue::JobQueue;
use crate::jobs::spec::{periodic_spec, JobSpec};
use crate::lifecycle::{Lifecycle, Phase};
use crate::roster::Roster;

pub struct PeriodicEvals {
    spec: Option<JobSpec>,
    every: u64,
    /// (step, job id) of the evaluations not yet logged.
    pending: Vec<(u64, u64)>,
}

impl PeriodicEvals {
    /// From `[eval]`; a reference statistics file that cannot be read is an
    /// error now, not at the first evaluation.
    pub async fn new(config: &TrainConfig) -> anyhow::Result<Self> {
        let e = &config.eval;
        if e.every_steps == 0 {
            return Ok(Self { spec: None, every: 0, pending: Vec::new() });
        }
        let spec = periodic_spec(config).map_err(|err| anyhow::anyhow!("config [eval]: {err}"))?;
        if !e.reference_stats.is_empty() {
            let path = std::path::PathBuf::from(&e.reference_stats);
            tokio::task::spawn_blocking(move || ddpm::eval::read_stats_npz(&path))
                .await?
                .map_err(|err| anyhow::anyhow!("config [eval] reference_stats: {err}"))?;
        }
        Ok(Self { spec: Some(spec), every: e.every_steps, pending: Vec::new() })
    }

    pub fn pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// After step `step`: logs the evaluations that ended, and submits this
    /// step's if one is due (waiting for it when only the training workers
    /// can run it).
    pub async fn after_step(
        &mut self,
        queue: &JobQueue,
        roster: &Roster,
        lifecycle: &Lifecycle,
        step: u64,
        metrics: &mut MetricsLog,
    ) -> anyhow::Result<()> {
        self.log_finished(queue, metrics)?;
        let Some(spec) = &self.spec else { return Ok(()) };
        if !step.is_multiple_of(self.every) || lifecycle.stop_requested() {
            return Ok(());
        }
        let status = queue.submit(spec.clone());
        let id = status.job_id;
        tracing::info!(job = id, kind = %status.kind, spec = %status.spec_json, "periodic evaluation submitted");
        self.pending.push((step, id));
        if roster.has_eval_worker() {
            return Ok(());
        }
        // No eval worker: the training workers run it between two steps.
        tracing::info!(step, job = id, "pausing training for the periodic evaluation (no eval worker)");
        lifecycle.set_phase(Phase::Evaluating);
        lifecycle.lend_trainers(true);
        while !queue.ended(id) {
            if lifecycle.stop_requested() {
                queue.cancel(id, "the run was asked to stop");
                break;
            }
            queue.changed_within(Duration::from_millis(200)).await;
        }
        lifecycle.lend_trainers(false);
        lifecycle.set_phase(Phase::Training);
        self.log_finished(queue, metrics)?;
        metrics.flush().await;
        Ok(())
    }

    /// Appends the evaluations that have ended to the log.
    pub fn log_finished(&mut self, queue: &JobQueue, metrics: &mut MetricsLog) -> anyhow::Result<()> {
        let mut still = Vec::new();
        for (step, id) in std::mem::take(&mut self.pending) {
            if !queue.ended(id) {
                still.push((step, id));
                continue;
            }
            let Some(status) = queue.status(id) else { continue };
            let row = result_row(&status);
            tracing::info!(step, job = id, result = %row, "periodic evaluation");
            metrics.push(step, &serde_json::json!({ "step": step, "eval": row }))?;
        }
        self.pending = still;
        Ok(())
    }

    /// Waits for the evaluations still running (unless a stop is requested)
    /// and logs them.
    pub async fn finish(&mut self, queue: &JobQueue, lifecycle: &Lifecycle, metrics: &mut MetricsLog) -> anyhow::Result<()> {
        while self.pending() && !lifecycle.stop_requested() {
            self.log_finished(queue, metrics)?;
            queue.changed_within(Duration::from_millis(200)).await;
        }
        self.log_finished(queue, metrics)?;
        metrics.flush_all().await;
        Ok(())
    }
}

/// The metrics-log row of a finished job: its state, weights step, metrics
/// and grid.
pub fn result_row(status: &ddpm::proto::JobStatus) -> serde_json::Value {
    let mut row = serde_json::json!({
        "job_id": status.job_id,
        "state": status.state,
        "weights_step": status.weights_step,
    });
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(&status.metrics_json) {
        for key in ["fid", "inception_score"] {
            if let Some(v) = m.get(key) {
                row[key] = v.clone();
            }
        }
    }
    if let Some(grid) = status.outputs.iter().find(|o| o.ends_with("/grid.png")) {
        row["grid"] = grid.clone().into();
    }
    if !status.error.is_empty() {
        row["error"] = status.error.clone().into();
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_row_names_the_metrics_and_the_grid() {
        let status = ddpm::proto::JobStatus {
            job_id: 4,
            state: "done".into(),
            weights_step: 10,
            metrics_json: r#"{"fid": {"value": 12.5}, "bpd": {}}"#.into(),
            outputs: vec!["file:///r/jobs/000004/grid.png".into()],
            ..Default::default()
        };
        let row = result_row(&status);
        assert_eq!(row["fid"]["value"], 12.5);
        assert!(row.get("bpd").is_none());
        assert_eq!(row["grid"], "file:///r/jobs/000004/grid.png");
    }
}
