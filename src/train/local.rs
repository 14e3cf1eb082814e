//! A single-process trainer: the whole global batch on one device, no
//! network. It is the reference the distributed run must reproduce (same
//! data order, same per-sample noise and timesteps, same optimizer), and a
//! way to measure per-device speed without any communication.

use tch::{Device, Tensor};

use super::error::TrainError;
use super::optim;
use super::replica::{Outcome, TrainState};
use crate::config::TrainConfig;
use crate::data::{self, order, Dataset, Decoder};
use crate::diffusion::GaussianDiffusion;
use crate::train::step::{self, DecodedSample, ShardBatch, StepContext};

/// What one step did.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    pub step: u64,
    pub loss: f64,
    pub outcome: Outcome,
}

/// Trains on one device.
pub struct LocalTrainer {
    pub config: TrainConfig,
    pub diffusion: GaussianDiffusion,
    pub state: TrainState,
    /// EMA of the parameters, `[P]`.
    pub ema: Tensor,
    dataset: Box<dyn Dataset>,
    decoder: Decoder,
    scratch: Option<Tensor>,
}

impl LocalTrainer {
    pub fn new(config: TrainConfig, device: Device) -> Result<Self, TrainError> {
        config.validate()?;
        let diffusion = GaussianDiffusion::new(&config.diffusion)?;
        let dataset = open_dataset(&config)?;
        let decoder = dataset.decoder();
        let state = TrainState::init(&config, device)?;
        let ema = state.model.flat.copy();
        Ok(Self { config, diffusion, state, ema, dataset, decoder, scratch: None })
    }

    /// Runs the next step.
    pub fn step(&mut self) -> Result<StepReport, TrainError> {
        let step = self.state.step + 1;
        let (batch, ctx, first_position) = self.prepare(step)?;
        let (loss, mut grad) = step::loss_and_grad(&mut self.state.model, &self.diffusion, &batch, &ctx, first_position);
        let outcome = Outcome::decide_tensor(&grad, self.config.optim.grad_clip);
        self.state.apply(&self.config, step, &mut grad, &outcome);
        if outcome.apply {
            let scratch = self.scratch.get_or_insert_with(|| self.ema.empty_like());
            optim::ema_update(&mut self.ema, &self.state.model.flat, self.config.train.ema_decay, scratch);
        }
        Ok(StepReport { step, loss, outcome })
    }

    /// The tensors that 1-based step `step` trains on (`x0` flipped and
    /// scaled, `t`, `noise`), on the model's device: what a reference
    /// implementation needs to replay the run (tests/golden_trajectory.rs).
    pub fn batch(&self, step: u64) -> Result<ShardBatch, TrainError> {
        Ok(self.prepare(step)?.0)
    }

    /// Step `step`'s batch, its context and the stream position of its first sample.
    fn prepare(&self, step: u64) -> Result<(ShardBatch, StepContext, u64), TrainError> {
        let samples = read_batch(&*self.dataset, &self.decoder, &self.config, step)?;
        let ctx = step::step_context(&self.config, &self.decoder, step);
        let device = self.state.model.device();
        let batch = step::build_batch(&samples, &ctx, self.diffusion.num_timesteps() as u64, device);
        Ok((batch, ctx, samples[0].position))
    }
}

/// Opens the run's dataset at the model's resolution.
pub fn open_dataset(config: &TrainConfig) -> Result<Box<dyn Dataset>, TrainError> {
    let spec = config
        .data
        .spec
        .as_ref()
        .ok_or_else(|| crate::config::ConfigError::Invalid { field: "data.spec".into(), reason: "no dataset: pass --data SPEC".into() })?;
    let opts = data::OpenOptions { resolution: Some(config.model.image_size as usize) };
    Ok(data::open(spec, &opts)?)
}

/// Reads and decodes the global batch of `step`.
fn read_batch(dataset: &dyn Dataset, decoder: &Decoder, config: &TrainConfig, step: u64) -> Result<Vec<DecodedSample>, TrainError> {
    order::step_batch(config.train.seed, dataset.len(), config.train.batch_size, step)
        .into_iter()
        .map(|item| {
            let bytes = dataset.encoded(item.index)?;
            Ok(DecodedSample { position: item.position, pixels: decoder.decode(&bytes)? })
        })
        .collect()
}
