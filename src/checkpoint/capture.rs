//! Between a live training state (tensors on a device) and a checkpoint
//! (host vectors): what the coordinator's state thread calls to save and to
//! resume. Runs on the thread that owns the tensors.

use tch::{Device, Tensor};

use super::data::CheckpointData;
use super::error::CheckpointError;
use crate::config::TrainConfig;
use crate::data::OrderState;
use crate::train::flat::to_vec_f32;
use crate::train::optim::Adam;
use crate::train::TrainState;

impl CheckpointData {
    /// Host copies of `state` (parameters, Adam's moments and count, the
    /// step) and of `ema` (`[P]`), with the data-stream position of a run
    /// over `dataset_len` samples and `skipped_steps` skipped so far.
    pub fn capture(config: &TrainConfig, state: &TrainState, ema: &Tensor, skipped_steps: u64, dataset_len: usize) -> Self {
        CheckpointData {
            step: state.step,
            adam_step: state.adam.step,
            skipped_steps,
            order: OrderState { seed: config.train.seed, dataset_len, batch_size: config.train.batch_size, step: state.step },
            config: config.clone(),
            layout: state.model.layout.clone(),
            params: to_vec_f32(&state.model.flat),
            adam_m: to_vec_f32(&state.adam.m),
            adam_v: to_vec_f32(&state.adam.v),
            ema: to_vec_f32(ema),
        }
    }

    /// The training state and the EMA (`[P]`) on `device`, for a run with
    /// `config` (its `[model]` must give the checkpoint's parameter layout;
    /// its optimizer settings are used from here on). Check
    /// [`CheckpointData::check_resume`] first for the data stream.
    pub fn restore(&self, config: &TrainConfig, device: Device) -> Result<(TrainState, Tensor), CheckpointError> {
        let incompatible = |reason: String| CheckpointError::Incompatible { step: self.step, reason };
        let mut state = TrainState::init(config, device).map_err(|e| incompatible(format!("cannot build the model: {e}")))?;
        if state.model.layout.hash() != self.layout.hash() {
            return Err(incompatible(format!(
                "its parameter layout ({} parameters) is not this config's model ({}): use the checkpoint's [model]",
                self.layout.total, state.model.layout.total
            )));
        }
        let on_device = |v: &[f32]| Tensor::from_slice(v).to_device(device);
        state.model.load_flat(&on_device(&self.params));
        state.adam = Adam::from_state(&config.optim, on_device(&self.adam_m), on_device(&self.adam_v), self.adam_step);
        state.step = self.step;
        Ok((state, on_device(&self.ema)))
    }
}
