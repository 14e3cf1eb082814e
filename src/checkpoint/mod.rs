//! Checkpoints: everything needed to continue a run as if it had never
//! stopped, written to the run's store ([`crate::store::RunStore`]) data
//! first and manifest last.
//!
//! Storage is separate from policy: this module says what a checkpoint is
//! (`format.rs`), how to write, list, verify, read and prune them
//! (`ops.rs`), when to take one (`policy.rs`), and how to upload one in the
//! background with retries (`uploader.rs`). The settings (when to save,
//! what to keep, upload retries) are the `[checkpoint]` section of the
//! training config, [`CheckpointConfig`] in `crate::config`. The
//! coordinator decides when to call which.
//!
//! Resume is exact because the state is complete: parameters, Adam's moments
//! and update count, the EMA, the step counter, the skipped-step count, the
//! data-stream position and the RNG state (seed + step: every random choice
//! is a pure function of `(seed, step, sample position)`), and the resolved
//! config.

mod capture;
mod encode;
pub mod format;
mod ops;
pub mod policy;
pub mod uploader;

use crate::config::TrainConfig;
use crate::data::OrderState;
use crate::store::StoreError;
use crate::train::flat::Layout;

/// `[checkpoint]` lives with the rest of the config; re-exported here for
/// the callers that name it `ddpm::checkpoint::CheckpointConfig`.
pub use crate::config::CheckpointConfig;
pub use encode::{decode, encode, Encoded, EncodedFile};
pub use format::{step_dir, Manifest, ManifestError, StateFile, FORMAT_VERSION};
pub use ops::{
    latest_complete, list, load_latest, prune, read, verify, write, write_encoded, CheckpointInfo, Loaded, PruneReport, Skipped,
    WriteReport,
};
pub use policy::{CheckpointPolicy, Reason};
pub use uploader::{UploadEvent, Uploader, UploaderConfig};

/// A checkpoint's contents in host memory: what the coordinator hands to
/// [`write`] or the [`Uploader`], and what [`read`] gives back.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointData {
    /// Optimizer steps done (including skipped ones): the next step is `step + 1`.
    pub step: u64,
    /// Adam updates applied (`train::optim::Adam::step`).
    pub adam_step: u64,
    /// Steps skipped for a non-finite gradient so far.
    pub skipped_steps: u64,
    /// The data stream: seed, dataset length, global batch and the next
    /// step (`order.step == step`).
    pub order: OrderState,
    /// The resolved config of the run.
    pub config: TrainConfig,
    /// Names, shapes and offsets of the flat buffers (`train::flat::Layout`).
    pub layout: Layout,
    /// `[P]` parameters.
    pub params: Vec<f32>,
    /// `[P]` Adam first moment.
    pub adam_m: Vec<f32>,
    /// `[P]` Adam second moment.
    pub adam_v: Vec<f32>,
    /// `[P]` EMA of the parameters.
    pub ema: Vec<f32>,
}

impl CheckpointData {
    /// Checks that the parts agree with each other (sizes, step, seed).
    pub fn validate(&self) -> Result<(), CheckpointError> {
        let bad = |reason: String| Err(CheckpointError::Invalid { reason });
        let p = self.layout.total;
        for (name, v) in [("params", &self.params), ("adam_m", &self.adam_m), ("adam_v", &self.adam_v), ("ema", &self.ema)] {
            if v.len() != p {
                return bad(format!("{name} has {} values but the layout has {p} parameters", v.len()));
            }
        }
        if self.order.step != self.step {
            return bad(format!("the data stream is at step {} but the checkpoint is of step {}", self.order.step, self.step));
        }
        if self.order.seed != self.config.train.seed {
            return bad(format!("the data stream's seed {} is not the config's {}", self.order.seed, self.config.train.seed));
        }
        if self.adam_step > self.step {
            return bad(format!("adam_step {} exceeds step {}", self.adam_step, self.step));
        }
        Ok(())
    }

    /// Checks that a run with `config`, parameter layout `layout` and a
    /// dataset of `dataset_len` samples can resume from this checkpoint
    /// exactly: same model (layout), same data stream, same seed.
    pub fn check_resume(&self, config: &TrainConfig, layout: &Layout, dataset_len: usize) -> Result<(), CheckpointError> {
        let bad = |reason: String| Err(CheckpointError::Incompatible { step: self.step, reason });
        if layout.hash() != self.layout.hash() {
            return bad(format!(
                "its model has a different parameter layout ({} parameters, this run's {}): use the same [model] config",
                self.layout.total, layout.total
            ));
        }
        if config.train.seed != self.order.seed {
            return bad(format!("it was trained with seed {} and this run has {}", self.order.seed, config.train.seed));
        }
        self.order.check_resume(dataset_len, config.train.batch_size).or_else(|e| bad(e.to_string()))
    }
}

/// What went wrong with a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data handed over to be written is inconsistent (a caller bug).
    #[error("invalid checkpoint data: {reason}")]
    Invalid { reason: String },
    /// No checkpoint of that step.
    #[error("no checkpoint of step {step} in {url}: `ddpm checkpoints list --run {url}` shows the ones there are")]
    NotFound { url: String, step: u64 },
    /// The run has no complete checkpoint at all.
    #[error("no complete checkpoint in {url}")]
    NoCheckpoint { url: String },
    /// The checkpoint is incomplete or damaged (no manifest, missing file,
    /// wrong size or checksum): it does not count as a checkpoint.
    #[error("checkpoint of step {step} is incomplete or damaged: {problem}")]
    Torn { step: u64, problem: String },
    /// A file matches its checksum but its contents are not what the format says.
    #[error("checkpoint of step {step}: {file}: {reason}")]
    Format { step: u64, file: String, reason: String },
    /// The checkpoint cannot continue this run.
    #[error("cannot resume from the checkpoint of step {step}: {reason}")]
    Incompatible { step: u64, reason: String },
}
