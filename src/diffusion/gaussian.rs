//! The Gaussian diffusion: float64 tables, the forward process, the posterior
//! and the reverse-process mean and variance (docs/ddpm.md sections 1-3).

use tch::{Kind, Tensor};

use super::config::{DiffusionConfig, DiffusionError, ModelMeanType, VarianceType};
use super::schedule::{cumprod, make_betas};

/// The diffusion process of one [`DiffusionConfig`], with every table the
/// formulas need, indexed by the 0-based timestep t in `0..T` (t = 0 is the
/// paper's t = 1). Tables are float64 and cast to the input's kind at use.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianDiffusion {
    /// The validated configuration the tables were built from.
    pub config: DiffusionConfig,
    /// `beta_t`.
    pub betas: Vec<f64>,
    /// `abar_t = prod_{s<=t} (1 - beta_s)`.
    pub alphas_cumprod: Vec<f64>,
    /// `abar_{t-1}`, with `abar_{-1} = 1` at t = 0.
    pub alphas_cumprod_prev: Vec<f64>,
    /// `sqrt(abar_t)`.
    pub sqrt_alphas_cumprod: Vec<f64>,
    /// `sqrt(1 - abar_t)`.
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    /// `log(1 - abar_t)`.
    pub log_one_minus_alphas_cumprod: Vec<f64>,
    /// `sqrt(1 / abar_t)`.
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    /// `sqrt(1 / abar_t - 1)`.
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    /// `beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t` (eq. (7)); 0 at t = 0.
    pub posterior_variance: Vec<f64>,
    /// `log(beta_tilde_t)`, with t = 1's value at t = 0 where `beta_tilde` is 0 (code).
    pub posterior_log_variance_clipped: Vec<f64>,
    /// The `x0` coefficient of `mu_tilde` (eq. (7)): `sqrt(abar_{t-1}) beta_t / (1 - abar_t)`.
    pub posterior_mean_coef1: Vec<f64>,
    /// The `x_t` coefficient of `mu_tilde` (eq. (7)): `sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)`.
    pub posterior_mean_coef2: Vec<f64>,
    /// `sigma_t^2` of the reverse process: `beta_t` (fixedlarge) or `beta_tilde_t` (fixedsmall).
    pub model_variance: Vec<f64>,
    /// `log(sigma_t^2)`; at t = 0 both variance types use `log(beta_tilde_1)` (code).
    pub model_log_variance: Vec<f64>,
}

/// The reverse-process Gaussian `p(x_{t-1} | x_t)` at one step, all `[B, C, H, W]`
/// (variance and log-variance are per-sample values expanded over the pixels).
#[derive(Debug)]
pub struct PMeanVariance {
    /// `mu_theta(x_t, t)`.
    pub mean: Tensor,
    /// `sigma_t^2`.
    pub variance: Tensor,
    /// `log(sigma_t^2)`, the value the bound and the sampler use.
    pub log_variance: Tensor,
    /// The model's estimate of `x0`, clipped to [-1, 1] when asked.
    pub pred_x0: Tensor,
}

/// Gathers `table[t[i]]` for each sample and shapes it `[B, 1, ..., 1]` to
/// broadcast against `shape_like` (`[B, C, H, W]`), in `shape_like`'s kind and device.
///
/// `t` is int64 `[B]` with values in `0..table.len()`. That is not checked here,
/// since reading `t` back would synchronize a GPU on every call: on the CPU
/// libtorch's index check panics, on CUDA it is a device-side assert. Callers
/// draw or iterate t on the host and check it there.
pub fn extract(table: &[f64], t: &Tensor, shape_like: &Tensor) -> Tensor {
    let mut shape = vec![1i64; shape_like.dim().max(1)];
    shape[0] = t.size()[0];
    Tensor::from_slice(table)
        .to_device(t.device())
        .index_select(0, t) // [B], float64
        .to_kind(shape_like.kind())
        .to_device(shape_like.device())
        .view(shape.as_slice())
}

impl GaussianDiffusion {
    /// Validates `config` and computes every table in float64, as the official code does.
    pub fn new(config: &DiffusionConfig) -> Result<Self, DiffusionError> {
        let betas = make_betas(config)?;
        let n = betas.len();
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let ac = cumprod(&alphas);
        let ac_prev: Vec<f64> = std::iter::once(1.0).chain(ac[..n - 1].iter().copied()).collect();
        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        let posterior_variance = map(&|t| betas[t] * (1.0 - ac_prev[t]) / (1.0 - ac[t]));
        // beta_tilde_0 = 0, so its log borrows t = 1's value (code; docs/ddpm.md section 2).
        let posterior_log_variance_clipped = map(&|t| posterior_variance[t.max(1)].ln());
        let (model_variance, model_log_variance) = match config.model_var_type {
            VarianceType::FixedLarge => {
                // log(beta_tilde_1) at t = 0 "to get a better decoder log likelihood" (code).
                let log = map(&|t| {
                    if t == 0 {
                        posterior_variance[1].ln()
                    } else {
                        betas[t].ln()
                    }
                });
                (betas.clone(), log)
            }
            VarianceType::FixedSmall => (posterior_variance.clone(), posterior_log_variance_clipped.clone()),
        };
        Ok(Self {
            config: config.clone(),
            alphas_cumprod_prev: ac_prev.clone(),
            sqrt_alphas_cumprod: map(&|t| ac[t].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|t| (1.0 - ac[t]).sqrt()),
            log_one_minus_alphas_cumprod: map(&|t| (1.0 - ac[t]).ln()),
            sqrt_recip_alphas_cumprod: map(&|t| (1.0 / ac[t]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|t| (1.0 / ac[t] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|t| betas[t] * ac_prev[t].sqrt() / (1.0 - ac[t])),
            posterior_mean_coef2: map(&|t| (1.0 - ac_prev[t]) * alphas[t].sqrt() / (1.0 - ac[t])),
            posterior_variance,
            posterior_log_variance_clipped,
            model_variance,
            model_log_variance,
            alphas_cumprod: ac,
            betas,
        })
    }

    /// `T`, the number of diffusion steps.
    pub fn num_timesteps(&self) -> i64 {
        self.betas.len() as i64
    }

    /// Samples `x_t ~ q(x_t | x0)` with the given noise (eq. (4)):
    /// `sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`. `x0`, `noise`: `[B, C, H, W]`; t: `[B]`.
    pub fn q_sample(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> Tensor {
        extract(&self.sqrt_alphas_cumprod, t, x0) * x0 + extract(&self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
    }

    /// Mean, variance and log-variance of `q(x_t | x0)` (eq. (4)), each `[B, C, H, W]`.
    pub fn q_mean_variance(&self, x0: &Tensor, t: &Tensor) -> (Tensor, Tensor, Tensor) {
        let one_minus: Vec<f64> = self.alphas_cumprod.iter().map(|a| 1.0 - a).collect();
        let mean = extract(&self.sqrt_alphas_cumprod, t, x0) * x0;
        let var = extract(&one_minus, t, x0).expand_as(x0);
        let log_var = extract(&self.log_one_minus_alphas_cumprod, t, x0).expand_as(x0);
        (mean, var, log_var)
    }

    /// Mean `mu_tilde(x_t, x0)`, variance `beta_tilde_t` and clipped log-variance of the
    /// posterior `q(x_{t-1} | x_t, x0)` (eqs. (6)-(7)), each `[B, C, H, W]`.
    pub fn q_posterior_mean_variance(&self, x0: &Tensor, xt: &Tensor, t: &Tensor) -> (Tensor, Tensor, Tensor) {
        let mean = extract(&self.posterior_mean_coef1, t, xt) * x0 + extract(&self.posterior_mean_coef2, t, xt) * xt;
        let var = extract(&self.posterior_variance, t, xt).expand_as(xt);
        let log_var = extract(&self.posterior_log_variance_clipped, t, xt).expand_as(xt);
        (mean, var, log_var)
    }

    /// `x0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps`, eq. (4) solved for x0 (cf. eq. (15)).
    pub fn predict_x0_from_eps(&self, xt: &Tensor, t: &Tensor, eps: &Tensor) -> Tensor {
        extract(&self.sqrt_recip_alphas_cumprod, t, xt) * xt - extract(&self.sqrt_recipm1_alphas_cumprod, t, xt) * eps
    }

    /// `eps = (sqrt(1/abar_t) x_t - x0) / sqrt(1/abar_t - 1)`, eq. (4) solved for eps.
    pub fn predict_eps_from_x0(&self, xt: &Tensor, t: &Tensor, x0: &Tensor) -> Tensor {
        (extract(&self.sqrt_recip_alphas_cumprod, t, xt) * xt - x0) / extract(&self.sqrt_recipm1_alphas_cumprod, t, xt)
    }

    /// `x0 = (mu - coef2 x_t) / coef1`, eq. (7) solved for x0 (the official code's
    /// `_predict_xstart_from_xprev`).
    pub fn predict_x0_from_mu(&self, xt: &Tensor, t: &Tensor, mu: &Tensor) -> Tensor {
        let recip: Vec<f64> = self.posterior_mean_coef1.iter().map(|c| 1.0 / c).collect();
        let ratio: Vec<f64> = self.posterior_mean_coef2.iter().zip(&self.posterior_mean_coef1).map(|(c2, c1)| c2 / c1).collect();
        extract(&recip, t, xt) * mu - extract(&ratio, t, xt) * xt
    }

    /// The reverse-process Gaussian at `(x_t, t)` given the network's output, read
    /// as `eps`, `x0` or `mu` per the config (docs/ddpm.md section 3). With `clip_denoised`, the
    /// estimate of x0 is clipped to [-1, 1] before it forms the mean (the mean of
    /// a mu-model is its output and is never clipped).
    pub fn p_mean_variance(&self, model_output: &Tensor, xt: &Tensor, t: &Tensor, clip_denoised: bool) -> PMeanVariance {
        let clip = |x: Tensor| if clip_denoised { x.clamp(-1.0, 1.0) } else { x };
        let (mean, pred_x0) = match self.config.model_mean_type {
            ModelMeanType::Mu => (model_output.shallow_clone(), clip(self.predict_x0_from_mu(xt, t, model_output))),
            ModelMeanType::X0 | ModelMeanType::Eps => {
                let pred_x0 = match self.config.model_mean_type {
                    ModelMeanType::Eps => clip(self.predict_x0_from_eps(xt, t, model_output)),
                    _ => clip(model_output.shallow_clone()),
                };
                (self.q_posterior_mean_variance(&pred_x0, xt, t).0, pred_x0)
            }
        };
        PMeanVariance {
            mean,
            variance: extract(&self.model_variance, t, xt).expand_as(xt),
            log_variance: extract(&self.model_log_variance, t, xt).expand_as(xt),
            pred_x0,
        }
    }

    /// The model's `(x0, eps)` estimates from its output, before any clipping.
    pub fn x0_and_eps(&self, model_output: &Tensor, xt: &Tensor, t: &Tensor) -> (Tensor, Tensor) {
        match self.config.model_mean_type {
            ModelMeanType::Eps => (self.predict_x0_from_eps(xt, t, model_output), model_output.shallow_clone()),
            ModelMeanType::X0 => (model_output.shallow_clone(), self.predict_eps_from_x0(xt, t, model_output)),
            ModelMeanType::Mu => {
                let x0 = self.predict_x0_from_mu(xt, t, model_output);
                let eps = self.predict_eps_from_x0(xt, t, &x0);
                (x0, eps)
            }
        }
    }
}

/// An int64 `[B]` tensor filled with `t`, on `like`'s device.
pub fn full_t(t: i64, like: &Tensor) -> Tensor {
    Tensor::full([like.size()[0]], t, (Kind::Int64, like.device()))
}
