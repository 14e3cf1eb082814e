//! The pieces of the variational bound (docs/ddpm.md section 4): Gaussian KL, the
//! discretized Gaussian decoder, and the per-sample mean over pixels.
//!
//! Each function computes in its inputs' kind, as the official code computes in
//! float32; pass float64 tensors where more precision is wanted (in float32 a
//! decoder bin probability below about 1e-5 keeps only a few significant digits,
//! as in the official code; `vb_terms_bpd` therefore runs the decoder in float64).

use tch::Tensor;

/// The probability floor of the decoder, applied before each log (code).
pub const PROB_FLOOR: f64 = 1e-12;
/// Half the width of a pixel's bin on the [-1, 1] scale: 1/255 (data are `x/127.5 - 1`).
pub const BIN_HALF_WIDTH: f64 = 1.0 / 255.0;
/// Pixels below `-EDGE` or above `EDGE` are the end bins, open towards -inf and +inf (code).
pub const EDGE: f64 = 0.999;

/// KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) per element, in nats:
/// `0.5 * (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 * exp(-logvar2))`.
/// Arguments broadcast against each other.
pub fn normal_kl(mean1: &Tensor, logvar1: &Tensor, mean2: &Tensor, logvar2: &Tensor) -> Tensor {
    let sq = (mean1 - mean2).square();
    ((logvar2 - logvar1 - 1.0) + (logvar1 - logvar2).exp() + sq * (-logvar2).exp()) * 0.5
}

/// The tanh approximation of the standard normal CDF used by the official code:
/// `0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`.
pub fn approx_standard_normal_cdf(x: &Tensor) -> Tensor {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    (((x + x.pow_tensor_scalar(3) * 0.044715) * k).tanh() + 1.0) * 0.5
}

/// `log p(x)` per element, in nats, of a Gaussian with `means` and `log_scales`
/// (log standard deviations) discretized to the 256 pixel bins of [-1, 1]:
/// bin `[x - 1/255, x + 1/255]`, the end bins open to -inf and +inf, each
/// probability floored at 1e-12 (the official `discretized_gaussian_log_likelihood`).
///
/// `x`: data on the grid `k/127.5 - 1`, `[B, C, H, W]`; `means`, `log_scales` broadcast to it.
pub fn discretized_gaussian_log_likelihood(x: &Tensor, means: &Tensor, log_scales: &Tensor) -> Tensor {
    let centered = x - means;
    let inv_stdv = (-log_scales).exp();
    let cdf_plus = approx_standard_normal_cdf(&(&inv_stdv * (&centered + BIN_HALF_WIDTH)));
    let cdf_min = approx_standard_normal_cdf(&(&inv_stdv * (&centered - BIN_HALF_WIDTH)));
    let log_cdf_plus = cdf_plus.clamp_min(PROB_FLOOR).log();
    let log_one_minus_cdf_min = (-&cdf_min + 1.0).clamp_min(PROB_FLOOR).log();
    let log_cdf_delta = (cdf_plus - cdf_min).clamp_min(PROB_FLOOR).log();
    let upper = log_one_minus_cdf_min.where_self(&x.gt(EDGE), &log_cdf_delta);
    log_cdf_plus.where_self(&x.lt(-EDGE), &upper)
}

/// The mean over every dimension but the first: `[B, ...] -> [B]`.
pub fn mean_flat(x: &Tensor) -> Tensor {
    let dims: Vec<i64> = (1..x.dim() as i64).collect();
    if dims.is_empty() {
        return x.shallow_clone();
    }
    x.mean_dim(dims.as_slice(), false, None)
}
