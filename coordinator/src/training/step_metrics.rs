//! The record of one training step, produced by the loop and consumed by
//! the metrics log (one JSON line), the status RPC and the progress line.
//! Another consumer (an exporter) takes the same record.

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
}
