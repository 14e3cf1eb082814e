//! The diffusion process (docs/ddpm.md sections 1-5): the schedule, the forward
//! process `q`, the posterior, the reverse-process mean and variance, sampling
//! steps, the training losses and the variational bound in bits/dim.
//!
//! # Conventions
//!
//! - **Timesteps are 0-based**, as in the official code and diffusers: t runs
//!   over `0..T`, and t = 0 is the paper's t = 1 (the step whose reverse
//!   transition is the decoder `p(x0 | x1)`), t = T-1 the paper's t = T. So
//!   `abar_prev` at t = 0 is 1, the posterior variance at t = 0 is 0 (its log is
//!   clipped to t = 1's value), and the ancestral step at t = 0 adds no noise.
//! - Tables are `Vec<f64>` computed in float64 (code), cast to the input
//!   tensor's kind and device when used ([`extract`]).
//! - Images `x0`, `x_t`, noise and model outputs are `[B, C, H, W]` (any float
//!   kind, any device); `t` is int64 `[B]` on the same device.
//! - The network is not part of this module: functions take its output, or a
//!   closure for the whole bound.
//!
//! # Files
//!
//! - `config.rs`: [`DiffusionConfig`] and [`DiffusionError`]
//! - `schedule.rs`: beta schedules
//! - `gaussian.rs`: [`GaussianDiffusion`], its tables, `q`, the posterior, `p_mean_variance`
//! - `sampling.rs`: the ancestral step and DDIM
//! - `sampler.rs`: [`SamplerKind`] and [`Sampler`], the choice of reverse process and its rules
//! - `losses.rs`: Gaussian KL and the discretized Gaussian decoder
//! - `bound.rs`: training losses and the bound in bits/dim

mod bound;
mod config;
mod gaussian;
pub mod losses;
mod sampler;
mod sampling;
mod schedule;

pub use bound::BpdResult;
pub use config::{BetaSchedule, DiffusionConfig, DiffusionError, LossType, ModelMeanType, VarianceType};
pub use gaussian::{extract, full_t, GaussianDiffusion, PMeanVariance};
pub use sampler::{Sampler, SamplerError, SamplerKind, DEFAULT_DDIM_STEPS};
pub use schedule::{make_betas, COSINE_MAX_BETA};

#[cfg(test)]
mod tests;
