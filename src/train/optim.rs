//! Adam with global-norm clipping (DDPM.md section 7) and the EMA, on flat
//! parameter buffers.
//!
//! The update is written as separate elementwise kernels (mul, add, sqrt,
//! div), never fused ones (`addcdiv`, `add` with alpha): each of those is
//! correctly rounded in IEEE float32 on the CPU and on CUDA alike, so every
//! replica and the coordinator's CPU copy compute the same bits from the same
//! reduced gradient. The clipping factor comes from one float64 norm the
//! coordinator computes, for the same reason.

use tch::Tensor;

use crate::config::OptimConfig;

/// Adam's state: the moments and the number of updates applied.
pub struct Adam {
    pub config: OptimConfig,
    /// First moment, `[P]`.
    pub m: Tensor,
    /// Second moment, `[P]`.
    pub v: Tensor,
    /// Updates applied so far (the bias correction uses `step + 1` next).
    pub step: u64,
}

impl Adam {
    /// Fresh moments (zeros) shaped like `params`.
    pub fn new(config: &OptimConfig, params: &Tensor) -> Self {
        Self { config: config.clone(), m: params.zeros_like(), v: params.zeros_like(), step: 0 }
    }

    /// Restores moments and step.
    pub fn from_state(config: &OptimConfig, m: Tensor, v: Tensor, step: u64) -> Self {
        Self { config: config.clone(), m, v, step }
    }

    /// One Adam update of `params` with `grad` (already clipped) at
    /// learning rate `lr`, as PyTorch's `torch.optim.Adam` (eps outside the
    /// square root, bias-corrected):
    /// `m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    ///  p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
    pub fn update(&mut self, params: &mut Tensor, grad: &Tensor, lr: f64) {
        let c = &self.config;
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bias1;
        tch::no_grad(|| {
            let _ = self.m.g_mul_scalar_(c.beta1);
            let _ = self.m.g_add_(&grad.g_mul_scalar(1.0 - c.beta1));
            let _ = self.v.g_mul_scalar_(c.beta2);
            let _ = self.v.g_add_(&grad.square().g_mul_scalar_(1.0 - c.beta2));
            let mut denom = self.v.sqrt();
            let _ = denom.g_div_scalar_(bias2_sqrt);
            let _ = denom.g_add_scalar_(c.eps);
            let mut upd = self.m.g_div(&denom);
            let _ = upd.g_mul_scalar_(step_size);
            let _ = params.g_sub_(&upd);
        });
    }
}

/// `ema = ema - (1 - decay) (ema - params)`, as TensorFlow's
/// `ExponentialMovingAverage` in the official code.
pub fn ema_update(ema: &mut Tensor, params: &Tensor, decay: f64) {
    tch::no_grad(|| {
        let mut diff = ema.g_sub(params);
        let _ = diff.g_mul_scalar_(1.0 - decay);
        let _ = ema.g_sub_(&diff);
    });
}

/// The factor that clips a gradient of norm `norm` to `max_norm`
/// (TensorFlow's `clip_by_global_norm`: `max / max(norm, max)`); 1 when
/// clipping is off (`max_norm == 0`) or the norm is within bounds.
pub fn clip_scale(norm: f64, max_norm: f64) -> f32 {
    if max_norm <= 0.0 || norm <= max_norm {
        1.0
    } else {
        (max_norm / norm) as f32
    }
}

/// Scales `grad` by `scale` unless it is 1.
pub fn apply_clip(grad: &Tensor, scale: f32) -> Tensor {
    if scale == 1.0 {
        grad.shallow_clone()
    } else {
        grad.g_mul_scalar(scale as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn vec(t: &Tensor) -> Vec<f32> {
        crate::train::flat::to_vec_f32(t)
    }

    #[test]
    fn adam_matches_a_float64_reference() {
        // Three steps of Adam written out in f64; float32 agrees to rounding.
        let cfg = OptimConfig { lr: 0.1, warmup_steps: 0, grad_clip: 0.0, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
        let mut p = t(&[1.0, -2.0, 0.5]);
        let mut adam = Adam::new(&cfg, &p);
        let grads = [[0.1f64, -0.2, 0.0], [0.3, 0.1, -0.5], [-0.2, 0.0, 1.0]];
        let (mut rp, mut rm, mut rv) = ([1.0f64, -2.0, 0.5], [0.0f64; 3], [0.0f64; 3]);
        for (k, g) in grads.iter().enumerate() {
            let gt = t(&g.map(|x| x as f32));
            adam.update(&mut p, &gt, 0.1);
            let step = (k + 1) as i32;
            for i in 0..3 {
                rm[i] = 0.9 * rm[i] + 0.1 * g[i];
                rv[i] = 0.999 * rv[i] + 0.001 * g[i] * g[i];
                let denom = rv[i].sqrt() / (1.0 - 0.999f64.powi(step)).sqrt() + 1e-8;
                rp[i] -= 0.1 / (1.0 - 0.9f64.powi(step)) * rm[i] / denom;
            }
        }
        for (got, want) in vec(&p).iter().zip(rp) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(adam.step, 3);
    }

    #[test]
    fn adam_first_step_moves_each_parameter_by_lr() {
        let cfg = OptimConfig::default();
        let mut p = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let mut adam = Adam::new(&cfg, &p);
        adam.update(&mut p, &t(&[1e-3, -5.0, 2.0, 0.0]), 0.01);
        let got = vec(&p);
        for (g, w) in got.iter().zip([-0.01f32, 0.01, -0.01, 0.0]) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn clipping_follows_clip_by_global_norm() {
        let g = [3.0f32, 4.0];
        let o = crate::train::Outcome::decide_tensor(&t(&g), 1.0);
        assert!(o.apply && o.grad_norm == 5.0 && o.clip_scale == 0.2, "{o:?}");
        assert_eq!(clip_scale(5.0, 1.0), 0.2);
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
        assert_eq!(clip_scale(50.0, 0.0), 1.0);
        assert!(!crate::train::Outcome::decide_tensor(&t(&[1.0, f32::NAN]), 1.0).apply);
        assert!(!crate::train::Outcome::decide_tensor(&t(&[f32::INFINITY]), 1.0).apply);
        assert_eq!(vec(&apply_clip(&t(&g), 0.2)), vec![0.6, 0.8]);
    }

    #[test]
    fn ema_moves_toward_the_parameters() {
        let mut ema = t(&[0.0, 10.0]);
        ema_update(&mut ema, &t(&[1.0, 0.0]), 0.9);
        let v = vec(&ema);
        assert!((v[0] - 0.1).abs() < 1e-7 && (v[1] - 9.0).abs() < 1e-6, "{v:?}");
    }
}
