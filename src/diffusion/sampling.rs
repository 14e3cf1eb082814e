//! One step of the reverse process: ancestral (the paper's Algorithm 2) and
//! DDIM (Song et al. 2021, eq. (12)) (docs/ddpm.md section 5).

use tch::Tensor;

use super::config::DiffusionError;
use super::gaussian::{full_t, GaussianDiffusion};

impl GaussianDiffusion {
    /// One ancestral step (Algorithm 2, line 4): `x_{t-1} = mu_theta(x_t, t) + sigma_t z`
    /// with `z = noise` where t > 0 and no noise where t == 0 (the paper's t = 1).
    /// Returns `(x_{t-1}, pred_x0)`, both `[B, C, H, W]`; `noise` is `[B, C, H, W]`.
    ///
    /// This is diffusers' `DDPMScheduler.step` for the same noise (`fixed_large` /
    /// `fixed_small`, `clip_sample` = `clip_denoised`), with float64 tables: stock
    /// diffusers forms `1 - abar` in float32 and is off by up to ~3e-4 at t = 1, 2
    /// (`tests/golden_diffusion/steps.rs`).
    pub fn p_sample(&self, model_output: &Tensor, xt: &Tensor, t: &Tensor, noise: &Tensor, clip_denoised: bool) -> (Tensor, Tensor) {
        let p = self.p_mean_variance(model_output, xt, t, clip_denoised);
        let mut mask_shape = vec![1i64; xt.dim()];
        mask_shape[0] = t.size()[0];
        // [B, 1, 1, 1]: 0 where t == 0, else 1.
        let nonzero = t.ne(0).to_kind(xt.kind()).to_device(xt.device()).view(mask_shape.as_slice());
        let sample = p.mean + nonzero * (p.log_variance * 0.5).exp() * noise;
        (sample, p.pred_x0)
    }

    /// The decreasing DDIM timesteps for `steps` sampling steps, diffusers'
    /// `DDIMScheduler` "leading" spacing with `steps_offset = 0`:
    /// `[(steps-1) r, ..., 2r, r, 0]` with `r = T / steps` (integer division).
    /// The last entry is always 0; `T - 1` is visited only when `steps == T`.
    pub fn ddim_timesteps(&self, steps: usize) -> Result<Vec<i64>, DiffusionError> {
        let n = self.betas.len();
        if steps == 0 || steps > n {
            return Err(DiffusionError::DdimSteps { steps, num_timesteps: n });
        }
        let ratio = (n / steps) as i64;
        Ok((0..steps as i64).rev().map(|i| i * ratio).collect())
    }

    /// One DDIM step from `t` to `t_prev` (Song et al. 2021, eq. (12)):
    /// `x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma noise`,
    /// `sigma = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev))`.
    /// `t_prev = None` is the final step, to x0 (`abar_prev = 1`). All samples of
    /// the batch are at the same `t`. Returns `(x_prev, pred_x0)`.
    ///
    /// As in diffusers' `DDIMScheduler.step` (defaults `use_clipped_model_output =
    /// False`, `set_alpha_to_one = True`), `x0_hat` is clipped when `clip_denoised`
    /// but `eps_hat` is the model's, derived from the unclipped `x0` for x0- and
    /// mu-models. `noise` is used only when `eta > 0`.
    ///
    /// Panics if `t` is not in `0..T`, `t_prev` is not in `0..t`, or `eta` is not in [0, 1].
    #[allow(clippy::too_many_arguments)]
    pub fn ddim_step(
        &self,
        model_output: &Tensor,
        xt: &Tensor,
        t: i64,
        t_prev: Option<i64>,
        eta: f64,
        noise: &Tensor,
        clip_denoised: bool,
    ) -> (Tensor, Tensor) {
        assert!((0..self.num_timesteps()).contains(&t), "DDIM step t = {t} outside 0..{}", self.num_timesteps());
        if let Some(p) = t_prev {
            assert!((0..t).contains(&p), "DDIM step t_prev = {p} must be in 0..t = {t}");
        }
        assert!((0.0..=1.0).contains(&eta), "DDIM eta = {eta} must be in [0, 1]");
        let ab_t = self.alphas_cumprod[t as usize];
        let ab_prev = t_prev.map_or(1.0, |p| self.alphas_cumprod[p as usize]);
        let (x0, eps) = self.x0_and_eps(model_output, xt, &full_t(t, xt));
        let x0 = if clip_denoised { x0.clamp(-1.0, 1.0) } else { x0 };
        let sigma = eta * ((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)).sqrt();
        // The radicand is >= 0 for eta <= 1; max(0) only absorbs rounding at eta = 1.
        let mut x_prev = &x0 * ab_prev.sqrt() + eps * (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
        if eta > 0.0 {
            x_prev += noise * sigma;
        }
        (x_prev, x0)
    }
}
