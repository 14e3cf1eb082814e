//! How a run ended, written to `RUN/summary.json`: always, also when the
//! run failed (then `error` says why and the numbers are those of the last
//! completed step).

use std::collections::BTreeMap;

use ddpm::store::RunStore;

use crate::run_status::StatusInfo;
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Steps done (the run's total unless it was stopped).
    pub steps: u64,
    /// The run was stopped (SIGTERM/Ctrl-C) before its last step.
    pub stopped: bool,
    /// The step this start resumed from (0 for a new run).
    pub resumed_from: u64,
    /// NaN (written as null) when no step was done.
    #[serde(deserialize_with = "null_as_nan")]
    pub final_loss: f64,
    pub skipped_steps: u64,
    /// Checksum of the coordinator's parameters after the last step.
    pub coordinator_checksum: String,
    /// Each replica's reported checksum after the last step, by worker id.
    pub replica_checksums: BTreeMap<u64, String>,
    /// Every replica that reported equals the coordinator.
    pub replicas_agree: bool,
    pub checksum_mismatches: u64,
    /// Replica checksums compared with the coordinator's during the run
    /// (a replica and a step each; `[dist] checksum_every`).
    #[serde(default)]
    pub checksums_compared: u64,
    /// Gradient and state bytes the coordinator received over this start
    /// (the steps' path and its copy's feed or the replicas' uploads).
    #[serde(default)]
    pub received_bytes: u64,
    /// The last checkpoint saved (a location in the run's store).
    pub checkpoint: Option<String>,
    /// The sample grid drawn at the end (a location in the run's store).
    pub grid: Option<String>,
    /// Images per second over this start.
    pub images_per_s: f64,
    pub elapsed_s: f64,
    /// Why the run failed (absent when it did not): e.g. the final
    /// checkpoint could not be saved. The process exits 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// JSON has no NaN: serde_json writes it as null, read back as NaN.
fn null_as_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Summary {
    /// The summary in the store, if there is a readable one.
    pub async fn read(store: &RunStore) -> Option<Self> {
        serde_json::from_slice(&store.get("summary.json").await.ok()?).ok()
    }

    /// The summary of a run that failed with `error` after the steps `status` shows.
    pub fn failed(status: &StatusInfo, resumed_from: u64, store: &RunStore, elapsed_s: f64, error: String) -> Self {
        let checkpoint = (status.last_checkpoint > 0).then(|| store.location(&ddpm::checkpoint::step_dir(status.last_checkpoint)));
        Self {
            steps: status.step,
            stopped: false,
            resumed_from,
            final_loss: if status.step > resumed_from { status.loss } else { f64::NAN },
            skipped_steps: status.skipped_steps,
            coordinator_checksum: String::new(),
            replica_checksums: BTreeMap::new(),
            replicas_agree: false,
            checksum_mismatches: 0,
            checksums_compared: 0,
            received_bytes: 0,
            checkpoint,
            grid: None,
            images_per_s: 0.0,
            elapsed_s,
            error: Some(error),
        }
    }

    pub async fn write(&self, store: &RunStore) -> anyhow::Result<()> {
        store.put("summary.json", serde_json::to_vec_pretty(self)?.into()).await?;
        Ok(())
    }
}
