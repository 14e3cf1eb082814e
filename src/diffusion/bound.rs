//! Training losses and the variational bound in bits/dim (docs/ddpm.md section 4; the
//! official code's `training_losses`, `_vb_terms_bpd`, `_prior_bpd`, `calc_bpd_loop`).

use std::f64::consts::LN_2;

use tch::{Kind, Tensor};

use super::config::{LossType, ModelMeanType};
use super::gaussian::{full_t, GaussianDiffusion};
use super::losses::{discretized_gaussian_log_likelihood, mean_flat, normal_kl};

/// The full bound of [`GaussianDiffusion::calc_bpd_loop`], per sample, in bits/dim.
#[derive(Debug)]
pub struct BpdResult {
    /// `L_T + sum_t L_{t-1} + L_0`: `[B]`.
    pub total_bpd: Tensor,
    /// `L_T = KL(q(x_T | x0) || N(0, I))`: `[B]`.
    pub prior_bpd: Tensor,
    /// Column t is [`vb_terms_bpd`](GaussianDiffusion::vb_terms_bpd) at t: the paper's
    /// `L_0` (decoder NLL) for t = 0 and its KL term `L_t` for t > 0: `[B, T]`.
    pub terms_bpd: Tensor,
    /// Column t is the mean squared error against x0 of `pred_x0` estimated from
    /// `x_t` (0-based t: after t + 1 forward steps): `[B, T]`. The paper's
    /// distortion (RMSE on the [0, 255] scale) is `127.5 * sqrt(x0_mse)`.
    pub x0_mse: Tensor,
}

impl GaussianDiffusion {
    /// The per-sample training loss `[B]` for the model's output at `(x_t, t)`,
    /// where `x_t = q_sample(x0, t, noise)`:
    /// - `Mse` (`L_simple`, eq. (14)): mean over pixels of `(target - output)^2`, the
    ///   target being `noise`, `x0` or `mu_tilde(x_t, x0)` per the model mean type;
    /// - `Kl`: the bound term of [`vb_terms_bpd`](Self::vb_terms_bpd) in bits/dim,
    ///   without clipping (as the official code trains it).
    pub fn training_losses(&self, model_output: &Tensor, x0: &Tensor, xt: &Tensor, t: &Tensor, noise: &Tensor) -> Tensor {
        match self.config.loss_type {
            LossType::Mse => {
                let target = match self.config.model_mean_type {
                    ModelMeanType::Eps => noise.shallow_clone(),
                    ModelMeanType::X0 => x0.shallow_clone(),
                    ModelMeanType::Mu => self.q_posterior_mean_variance(x0, xt, t).0,
                };
                mean_flat(&(target - model_output).square())
            }
            LossType::Kl => self.vb_terms_bpd(model_output, x0, xt, t, false).0,
        }
    }

    /// One term of the bound per sample, in bits/dim `[B]`, and `pred_x0` `[B, C, H, W]`
    /// (eq. (5)): for t > 0 `KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))`, the paper's
    /// `L_t` (its t is ours + 1); for t == 0 the decoder NLL `-log p(x0 | x_t)`, the
    /// paper's `L_0`.
    /// The decoder term is computed in float64 (see inside), the KL in the inputs' kind.
    pub fn vb_terms_bpd(&self, model_output: &Tensor, x0: &Tensor, xt: &Tensor, t: &Tensor, clip_denoised: bool) -> (Tensor, Tensor) {
        let (true_mean, _, true_log_var) = self.q_posterior_mean_variance(x0, xt, t);
        let p = self.p_mean_variance(model_output, xt, t, clip_denoised);
        let kl = mean_flat(&normal_kl(&true_mean, &true_log_var, &p.mean, &p.log_variance)) / LN_2;
        // The decoder in float64 whatever the input: in float32, bins holding less
        // than ~1e-6 of the mass (pixels 5+ sigma from the mean) round to 0 and hit
        // the 1e-12 floor, as in the official float32 code. Only t = 0 needs it.
        let f64 = |x: &Tensor| x.to_kind(Kind::Double);
        let log_scales = f64(&p.log_variance) * 0.5;
        let log_px = discretized_gaussian_log_likelihood(&f64(x0), &f64(&p.mean), &log_scales);
        let nll = (-mean_flat(&log_px) / LN_2).to_kind(kl.kind());
        let first = t.eq(0).to_device(kl.device());
        (nll.where_self(&first, &kl), p.pred_x0)
    }

    /// `L_T = KL(q(x_T | x0) || N(0, I))` per sample, in bits/dim `[B]`.
    pub fn prior_bpd(&self, x0: &Tensor) -> Tensor {
        let t = full_t(self.num_timesteps() - 1, x0);
        let (mean, _, log_var) = self.q_mean_variance(x0, &t);
        let zeros = mean.zeros_like();
        mean_flat(&normal_kl(&mean, &log_var, &zeros, &zeros)) / LN_2
    }

    /// The whole bound per sample (the official `calc_bpd_loop`): for every t from
    /// T-1 down to 0, `x_t = q_sample(x0, t, noise(t))`, `output = model(x_t, t)`
    /// and the term of [`vb_terms_bpd`](Self::vb_terms_bpd); plus the prior term.
    /// `model` gets `x_t` `[B, C, H, W]` and int64 `t` `[B]` (all equal) and returns
    /// its output; `noise(t)` returns `[B, C, H, W]` standard normal noise.
    /// Runs without gradient tracking.
    pub fn calc_bpd_loop(
        &self,
        model: &mut dyn FnMut(&Tensor, &Tensor) -> Tensor,
        x0: &Tensor,
        noise: &mut dyn FnMut(i64) -> Tensor,
        clip_denoised: bool,
    ) -> BpdResult {
        tch::no_grad(|| {
            let n = self.num_timesteps();
            let mut terms = Vec::with_capacity(n as usize);
            let mut mses = Vec::with_capacity(n as usize);
            for t in (0..n).rev() {
                let t_b = full_t(t, x0);
                let xt = self.q_sample(x0, &t_b, &noise(t));
                let output = model(&xt, &t_b);
                let (term, pred_x0) = self.vb_terms_bpd(&output, x0, &xt, &t_b, clip_denoised);
                terms.push(term);
                mses.push(mean_flat(&(pred_x0 - x0).square()));
            }
            // Collected from t = T-1 down; columns go by t.
            terms.reverse();
            mses.reverse();
            let terms_bpd = Tensor::stack(&terms, 1); // [B, T]
            let prior_bpd = self.prior_bpd(x0);
            let total_bpd = terms_bpd.sum_dim_intlist(1, false, None) + &prior_bpd;
            BpdResult { total_bpd, prior_bpd, terms_bpd, x0_mse: Tensor::stack(&mses, 1) }
        })
    }
}
