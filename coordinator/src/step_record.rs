//! The record of one training step, produced by the loop and consumed by
//! the metrics log (one JSON line), the status RPC, the metrics and the
//! progress line; and the time left it implies. It lives below all of
//! them (the training loop, `run_status.rs`, `telemetry/`), so that each
//! imports it from here and none imports another for it.

use serde::Serialize;

/// One step, as `metrics.jsonl` holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    /// Shard-size-weighted mean `L_simple` over the global batch.
    pub loss: f64,
    /// Global norm of the reduced gradient before clipping.
    pub grad_norm: f64,
    /// False when the update was skipped (a non-finite gradient).
    pub applied: bool,
    pub lr: f64,
    /// Members of the step.
    pub workers: usize,
    /// Wall time of the step at the coordinator.
    pub step_s: f64,
    /// The slowest member's compute time.
    pub compute_s: f64,
    /// Time the step waited for the all-reduce.
    pub allreduce_s: f64,
    pub images_per_s: f64,
    /// The step of the newest checkpoint in the store (0: none yet).
    pub last_checkpoint: u64,
    /// Steps done since that checkpoint: what a crash now would redo.
    pub unsaved_steps: u64,
    /// Gradient and state bytes this coordinator process received up to
    /// this step (the steps' path, its copy's feed, replicas' uploads):
    /// the difference between two rows is what those steps cost it.
    pub coordinator_received_bytes: u64,
}

/// Seconds left for `remaining` steps when `done` steps took `elapsed_s`
/// (`None` before the first: nothing to go by).
pub fn eta_s(elapsed_s: f64, done: u64, remaining: u64) -> Option<f64> {
    (done > 0).then(|| elapsed_s / done as f64 * remaining as f64)
}
