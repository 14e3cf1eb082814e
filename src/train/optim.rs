//! Adam with global-norm clipping (docs/ddpm.md section 7) and the EMA, on flat
//! parameter buffers.
//!
//! The update is a fixed sequence of float32 operations (mul, add, sqrt,
//! div; multiplications by scalars already rounded to f32), never fused
//! ones (`addcdiv`, `add` with alpha) or divisions by a scalar (which CUDA
//! computes as a multiplication by the reciprocal), each correctly rounded
//! in IEEE float32, so every replica and the coordinator's CPU copy compute
//! the same bits from the same reduced gradient. On the CPU it runs as one
//! loop (`fused.rs`): faster, and torch's own CPU `sqrt` (MKL's vsSqrt) is
//! not always correctly rounded while CUDA's `sqrtf` is. On other devices
//! it runs as separate tensor kernels. The clipping factor comes from one
//! float64 norm the coordinator computes, for the same reason.

use tch::Tensor;

use crate::config::OptimConfig;
use crate::train::fused::{self, AdamScalars};

/// Adam's state: the moments and the number of updates applied.
pub struct Adam {
    pub config: OptimConfig,
    /// First moment, `[P]`.
    pub m: Tensor,
    /// Second moment, `[P]`.
    pub v: Tensor,
    /// Updates applied so far (the bias correction uses `step + 1` next).
    pub step: u64,
    /// Two `[P]` work buffers, allocated once: a 143 MB temporary per op
    /// would cost a page-faulting allocation each time on the CPU.
    scratch: Option<(Tensor, Tensor)>,
}

impl Adam {
    /// Fresh moments (zeros) shaped like `params`.
    pub fn new(config: &OptimConfig, params: &Tensor) -> Self {
        Self::from_state(config, params.zeros_like(), params.zeros_like(), 0)
    }

    /// Restores moments and step.
    pub fn from_state(config: &OptimConfig, m: Tensor, v: Tensor, step: u64) -> Self {
        Self { config: config.clone(), m, v, step, scratch: None }
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
        // Scalars are rounded to f32 here, once, so that every device
        // multiplies by the same float (CUDA turns a division by a scalar
        // into a multiplication by its reciprocal; we do that everywhere).
        let k = AdamScalars {
            beta1: c.beta1 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            inv_bias2_sqrt: (1.0 / bias2_sqrt) as f32,
            eps: c.eps as f32,
            step_size: step_size as f32,
        };
        // On the CPU one pass over memory (fused.rs, the same bits);
        // elsewhere the separate kernels.
        if fused::adam_cpu(params, &self.m, &self.v, grad, &k) {
            return;
        }
        let f = |x: f32| x as f64;
        let (a, b) = self.scratch.get_or_insert_with(|| (params.empty_like(), params.empty_like()));
        tch::no_grad(|| {
            let _ = self.m.g_mul_scalar_(f(k.beta1));
            let _ = grad.mul_scalar_out(a, f(k.one_minus_beta1));
            let _ = self.m.g_add_(a);
            let _ = self.v.g_mul_scalar_(f(k.beta2));
            let _ = grad.mul_out(a, grad);
            let _ = a.g_mul_scalar_(f(k.one_minus_beta2));
            let _ = self.v.g_add_(a);
            let _ = self.v.sqrt_out(a); // denominator
            let _ = a.g_mul_scalar_(f(k.inv_bias2_sqrt));
            let _ = a.g_add_scalar_(f(k.eps));
            let _ = self.m.div_out(b, a); // the update
            let _ = b.g_mul_scalar_(f(k.step_size));
            let _ = params.g_sub_(b);
        });
    }
}

/// `ema = ema - (1 - decay) (ema - params)`, as TensorFlow's
/// `ExponentialMovingAverage` in the official code; `scratch` is a `[P]`
/// work buffer.
pub fn ema_update(ema: &mut Tensor, params: &Tensor, decay: f64, scratch: &mut Tensor) {
    let c = (1.0 - decay) as f32;
    if fused::ema_cpu(ema, params, c) {
        return;
    }
    tch::no_grad(|| {
        let _ = ema.sub_out(scratch, params);
        let _ = scratch.g_mul_scalar_(c as f64);
        let _ = ema.g_sub_(scratch);
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

/// Scales `grad` by `scale` in place unless it is 1.
pub fn apply_clip(grad: &mut Tensor, scale: f32) {
    if scale != 1.0 {
        tch::no_grad(|| {
            let _ = grad.g_mul_scalar_(scale as f64);
        });
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
        let mut gt = t(&g);
        apply_clip(&mut gt, 0.2);
        assert_eq!(vec(&gt), vec![0.6, 0.8]);
    }

    #[test]
    fn ema_moves_toward_the_parameters() {
        let mut ema = t(&[0.0, 10.0]);
        let mut scratch = ema.empty_like();
        ema_update(&mut ema, &t(&[1.0, 0.0]), 0.9, &mut scratch);
        let v = vec(&ema);
        assert!((v[0] - 0.1).abs() < 1e-7 && (v[1] - 9.0).abs() < 1e-6, "{v:?}");
    }
}
