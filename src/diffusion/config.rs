//! The diffusion's configuration and its validation (docs/ddpm.md sections 1 and 3-4).

use serde::{Deserialize, Serialize};

/// How `beta_t` is laid out over the `T` steps.
///
/// In a TOML config: `beta_schedule = { kind = "linear", start = 1e-4, end = 0.02 }`
/// or `beta_schedule = { kind = "cosine", s = 0.008 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum BetaSchedule {
    /// `beta_t` rises linearly from `start` (t = 0) to `end` (t = T-1): the
    /// paper's schedule, 1e-4 to 0.02 for T = 1000 (docs/ddpm.md section 1).
    Linear {
        /// `beta` at the first step, in (0, 1).
        start: f64,
        /// `beta` at the last step, in (start, 1).
        end: f64,
    },
    /// Nichol & Dhariwal (2021) eq. (17): `abar(t) = f(t) / f(0)` with
    /// `f(t) = cos(((t/T + s) / (1 + s)) * pi/2)^2` and
    /// `beta_t = min(1 - abar(t+1) / abar(t), 0.999)`, computed in floating point.
    /// The same as diffusers' `squaredcos_cap_v2` when `s = 0.008`.
    Cosine {
        /// The small offset that keeps `beta` from being tiny near t = 0; 0.008 in the paper.
        s: f64,
    },
}

/// What the network outputs (docs/ddpm.md section 3; the paper's Table 2 ablation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelMeanType {
    /// The noise `eps` (the paper's choice, eq. (11)); the official code's `eps`.
    Eps,
    /// The clean image `x0`; the official code's `xstart`.
    X0,
    /// The reverse-process mean `mu` (= `x_{t-1}` prediction); the official code's `xprev`.
    Mu,
}

/// The fixed reverse-process variance `sigma_t^2` (docs/ddpm.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VarianceType {
    /// `sigma_t^2 = beta_t`, with the first step's log-variance taken from
    /// `beta_tilde_1` (code): the CIFAR-10 setting. Serialized as `"fixedlarge"`.
    FixedLarge,
    /// `sigma_t^2 = beta_tilde_t`, log clipped at the first step: the LSUN
    /// setting. Serialized as `"fixedsmall"`.
    FixedSmall,
}

/// The training objective (docs/ddpm.md section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossType {
    /// `L_simple`: mean over pixels of `(target - output)^2`, the target being
    /// `eps`, `x0` or `mu` as the model mean type says (eq. (14)).
    Mse,
    /// The variational bound term `L_{t-1}` (or `L_0` at t = 0) in bits/dim.
    Kl,
}

/// Everything that defines the diffusion process; one section of the training config.
///
/// The [`Default`] is the paper's CIFAR-10 setting: T = 1000, linear betas
/// 1e-4..0.02, eps-prediction, fixedlarge variance, `L_simple`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusionConfig {
    /// The number of diffusion steps `T` (at least 2).
    pub num_timesteps: usize,
    /// How `beta_t` is laid out over the steps.
    pub beta_schedule: BetaSchedule,
    /// What the network predicts.
    pub model_mean_type: ModelMeanType,
    /// The fixed reverse-process variance.
    pub model_var_type: VarianceType,
    /// The training objective.
    pub loss_type: LossType,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            num_timesteps: 1000,
            beta_schedule: BetaSchedule::Linear { start: 1e-4, end: 0.02 },
            model_mean_type: ModelMeanType::Eps,
            model_var_type: VarianceType::FixedLarge,
            loss_type: LossType::Mse,
        }
    }
}

/// Why a diffusion config or call cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DiffusionError {
    /// `num_timesteps` is 0 or 1.
    #[error(
        "diffusion.num_timesteps = {0}: need at least 2 steps (the clipped posterior log-variance \
         at t = 0 borrows step 1's value); the paper uses 1000"
    )]
    TooFewTimesteps(usize),
    /// A linear schedule endpoint is not strictly between 0 and 1.
    #[error(
        "diffusion.beta_schedule.{field} = {value}: betas are per-step noise variances and must be \
         in (0, 1); the paper uses start = 1e-4, end = 0.02"
    )]
    BetaOutOfRange {
        /// `"start"` or `"end"`.
        field: &'static str,
        /// The offending value.
        value: f64,
    },
    /// A linear schedule that does not rise.
    #[error(
        "diffusion.beta_schedule: start ({start}) must be less than end ({end}); betas rise over \
         the forward process (the paper uses 1e-4 to 0.02)"
    )]
    BetaStartNotBelowEnd {
        /// `beta` at t = 0.
        start: f64,
        /// `beta` at t = T-1.
        end: f64,
    },
    /// A cosine schedule offset that is negative or not finite.
    #[error(
        "diffusion.beta_schedule.s = {0}: the cosine schedule offset must be finite and >= 0 \
         (Nichol & Dhariwal use 0.008)"
    )]
    CosineOffset(f64),
    /// The schedule produced a beta that would make the tables singular.
    #[error(
        "diffusion.beta_schedule gives beta[{index}] = {value} for num_timesteps = {num_timesteps}: \
         every beta must be in (0, 1) and large enough to change 1 - beta in float64; \
         use a larger start or fewer steps"
    )]
    DegenerateBeta {
        /// The 0-based step.
        index: usize,
        /// The beta at that step.
        value: f64,
        /// `T`.
        num_timesteps: usize,
    },
    /// A DDIM step count outside `1..=T`.
    #[error("DDIM steps = {steps}: must be between 1 and num_timesteps = {num_timesteps}")]
    DdimSteps {
        /// The requested number of sampling steps.
        steps: usize,
        /// `T`.
        num_timesteps: usize,
    },
}

impl DiffusionConfig {
    /// Checks the fields that can be checked without building the tables;
    /// [`GaussianDiffusion::new`](super::GaussianDiffusion::new) also checks the betas it computes.
    pub fn validate(&self) -> Result<(), DiffusionError> {
        if self.num_timesteps < 2 {
            return Err(DiffusionError::TooFewTimesteps(self.num_timesteps));
        }
        match self.beta_schedule {
            BetaSchedule::Linear { start, end } => {
                for (field, value) in [("start", start), ("end", end)] {
                    // Written so that NaN fails too.
                    if !(value > 0.0 && value < 1.0) {
                        return Err(DiffusionError::BetaOutOfRange { field, value });
                    }
                }
                if start >= end {
                    return Err(DiffusionError::BetaStartNotBelowEnd { start, end });
                }
            }
            BetaSchedule::Cosine { s } => {
                if !(s.is_finite() && s >= 0.0) {
                    return Err(DiffusionError::CosineOffset(s));
                }
            }
        }
        Ok(())
    }
}
