//! One replica's training state (parameters, Adam, the step counter) and
//! the decision every replica applies to a reduced gradient.

use tch::{Device, Tensor};

use super::flat::FlatModel;
use super::fused;
use super::optim::{self, Adam};
use crate::config::TrainConfig;
use crate::unet::UNetError;

/// The decision the coordinator makes for a reduced gradient; every replica
/// applies the same one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// False when the gradient was not finite: the update is skipped.
    pub apply: bool,
    /// The global norm before clipping (float64, computed once).
    pub grad_norm: f64,
    /// The clipping factor.
    pub clip_scale: f32,
}

impl Outcome {
    /// The decision for a gradient on any device, its norm reduced there in
    /// float64 (the single-process trainer; no copy to the host).
    pub fn decide_tensor(grad: &Tensor, max_norm: f64) -> Self {
        // On the CPU one pass, without a float64 copy of the gradient.
        let sq = fused::sum_squares_cpu(grad).unwrap_or_else(|| {
            let sq = grad.to_kind(tch::Kind::Double).square().sum(tch::Kind::Double);
            f64::try_from(sq).unwrap_or(f64::NAN)
        });
        Self::from_norm(sq.sqrt(), max_norm)
    }

    /// The decision for a gradient of global norm `grad_norm`: skip if it is
    /// not finite, else clip to `max_norm`.
    pub fn from_norm(grad_norm: f64, max_norm: f64) -> Self {
        if grad_norm.is_finite() {
            Self { apply: true, grad_norm, clip_scale: optim::clip_scale(grad_norm, max_norm) }
        } else {
            Self { apply: false, grad_norm, clip_scale: 1.0 }
        }
    }
}

/// A training replica's state: parameters, Adam, and the step counter.
pub struct TrainState {
    /// Optimizer steps done (including skipped ones).
    pub step: u64,
    pub model: FlatModel,
    pub adam: Adam,
}

impl TrainState {
    /// The initial state of a run: the paper's initialisation drawn from
    /// torch's generator seeded with the run seed (on the CPU, so that it
    /// does not depend on the device), moved to `device`.
    pub fn init(config: &TrainConfig, device: Device) -> Result<Self, UNetError> {
        tch::manual_seed(config.train.seed as i64);
        let cpu = FlatModel::new(&config.model, Device::Cpu)?;
        let model = if device == Device::Cpu {
            cpu
        } else {
            let mut m = FlatModel::new(&config.model, device)?;
            m.load_flat(&cpu.flat);
            m
        };
        let adam = Adam::new(&config.optim, &model.flat);
        Ok(Self { step: 0, model, adam })
    }

    /// Applies step `step`'s reduced gradient (on any device) as `outcome`
    /// says: Adam at the warmed-up learning rate, or nothing if skipped.
    ///
    /// `grad` is scaled in place by the clipping factor.
    pub fn apply(&mut self, config: &TrainConfig, step: u64, grad: &mut Tensor, outcome: &Outcome) {
        if outcome.apply {
            if grad.device() != self.model.device() {
                *grad = grad.to_device(self.model.device());
            }
            optim::apply_clip(grad, outcome.clip_scale);
            self.adam.update(&mut self.model.flat, grad, config.lr_at(step));
        }
        self.step = step;
    }
}
