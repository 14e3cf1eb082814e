//! One `L_simple` training step on one device (docs/ddpm.md section 4,
//! Algorithm 1), reading top to bottom:
//!
//! 1. the shard's decoded images, flipped and scaled to [-1, 1];
//! 2. per sample, `t` and `eps` drawn from `(seed, step, position)`;
//! 3. `x_t = q_sample(x0, t, eps)`, the U-Net's prediction (under bfloat16
//!    autocast with `[train] precision = "bf16"`), the loss in float32;
//! 4. backward, and the mean gradient over the shard as one flat tensor.

use tch::{Device, Kind, Tensor};

use crate::config::{Precision, TrainConfig};
use crate::data::{self, Decoder};
use crate::diffusion::GaussianDiffusion;
use crate::rng::{self, Purpose};
use crate::train::autocast;
use crate::train::flat::FlatModel;

/// One decoded training sample: its stream position and `[C, H, W]` pixels.
pub struct DecodedSample {
    pub position: u64,
    pub pixels: Vec<u8>,
}

/// What the step needs to know about the run.
#[derive(Debug, Clone, Copy)]
pub struct StepContext {
    pub seed: u64,
    pub step: u64,
    pub random_flip: bool,
    pub channels: usize,
    pub resolution: usize,
    /// What the forward and backward passes compute in (`[train] precision`).
    pub precision: Precision,
}

/// The step context of 1-based `step` of a run with `config`, whose samples
/// `decoder` decodes.
pub fn step_context(config: &TrainConfig, decoder: &Decoder, step: u64) -> StepContext {
    StepContext {
        seed: config.train.seed,
        step,
        random_flip: config.data.random_flip,
        channels: 3,
        resolution: decoder.resolution(),
        precision: config.train.precision,
    }
}

/// A shard ready for the device: `x0` `[n, C, H, W]`, `t` `[n]`, `noise` like `x0`.
pub struct ShardBatch {
    pub x0: Tensor,
    pub t: Tensor,
    pub noise: Tensor,
}

/// Builds the shard's tensors. Every random choice is keyed by the sample's
/// stream position, so the batch is the same whichever worker builds it.
pub fn build_batch(samples: &[DecodedSample], ctx: &StepContext, num_timesteps: u64, device: Device) -> ShardBatch {
    let (c, r) = (ctx.channels, ctx.resolution);
    let per = c * r * r;
    let n = samples.len();
    let mut x0 = vec![0f32; n * per];
    let mut noise = vec![0f32; n * per];
    let mut t = Vec::with_capacity(n);
    for (i, s) in samples.iter().enumerate() {
        let draw = rng::sample_draw(ctx.seed, ctx.step, s.position, num_timesteps, ctx.random_flip);
        data::to_model_input(&s.pixels, c, r, draw.flip, &mut x0[i * per..(i + 1) * per]);
        rng::sample_noise(ctx.seed, ctx.step, s.position, &mut noise[i * per..(i + 1) * per]);
        t.push(draw.t);
    }
    let shape = [n as i64, c as i64, r as i64, r as i64];
    ShardBatch {
        x0: Tensor::from_slice(&x0).view(shape).to_device(device),
        t: Tensor::from_slice(&t).to_device(device),
        noise: Tensor::from_slice(&noise).view(shape).to_device(device),
    }
}

/// Forward and backward of the mean loss over the shard. Returns the mean
/// loss and the mean gradient `[P]` on the model's device.
///
/// Dropout masks come from torch's generator, seeded per (step, first
/// sample of the shard) so that a rerun of the same step draws the same masks.
pub fn loss_and_grad(
    model: &mut FlatModel,
    diffusion: &GaussianDiffusion,
    batch: &ShardBatch,
    ctx: &StepContext,
    first_position: u64,
) -> (f64, Tensor) {
    tch::manual_seed((rng::key(ctx.seed, Purpose::Dropout, ctx.step, first_position) >> 1) as i64);
    model.zero_grad();
    let x_t = diffusion.q_sample(&batch.x0, &batch.t, &batch.noise); // eq. (4)

    // Only the network runs under autocast (bf16); its output comes back to
    // float32 so that the loss and its first gradient are float32, and
    // backward (outside the region, as torch.autocast's recipe has it)
    // follows the forward's types down to the float32 parameters.
    let out = autocast::run(model.device(), ctx.precision, || model.unet.forward_t(&x_t, &batch.t, true).to_kind(Kind::Float));
    let losses = diffusion.training_losses(&out, &batch.x0, &x_t, &batch.t, &batch.noise); // [n]
    let loss = losses.mean(Kind::Float);
    loss.backward();
    let value = f64::try_from(&loss).unwrap_or(f64::NAN);
    (value, model.flat_grad())
}
