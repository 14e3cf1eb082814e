//! How a run ended, written to `RUN/summary.json`.

use std::collections::BTreeMap;

use ddpm::store::RunStore;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Steps done (the run's total unless it was stopped).
    pub steps: u64,
    /// The run was stopped (SIGTERM/Ctrl-C) before its last step.
    pub stopped: bool,
    /// The step this start resumed from (0 for a new run).
    pub resumed_from: u64,
    pub final_loss: f64,
    pub skipped_steps: u64,
    /// Checksum of the coordinator's parameters after the last step.
    pub coordinator_checksum: String,
    /// Each replica's reported checksum after the last step, by worker id.
    pub replica_checksums: BTreeMap<u64, String>,
    /// Every replica that reported equals the coordinator.
    pub replicas_agree: bool,
    pub checksum_mismatches: u64,
    /// The last checkpoint saved (a location in the run's store).
    pub checkpoint: Option<String>,
    /// The sample grid drawn at the end (a location in the run's store).
    pub grid: Option<String>,
    /// Images per second over this start.
    pub images_per_s: f64,
    pub elapsed_s: f64,
}

impl Summary {
    pub async fn write(&self, store: &RunStore) -> anyhow::Result<()> {
        store.put("summary.json", serde_json::to_vec_pretty(self)?.into()).await?;
        Ok(())
    }
}
