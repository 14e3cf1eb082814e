//! A checkpoint's contents in host memory, and the checks that they agree
//! with each other and with the run that resumes from them.

use super::error::CheckpointError;
use crate::config::TrainConfig;
use crate::data::OrderState;
use crate::train::flat::Layout;

/// A checkpoint's contents in host memory: what the coordinator hands to
/// [`write`](super::write) or the [`Uploader`](super::Uploader), and what
/// [`read`](super::read) gives back.
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
