//! Beta schedules and the float64 tables derived from them (docs/ddpm.md sections 1-2).

use super::config::{BetaSchedule, DiffusionConfig, DiffusionError};

/// The largest beta the cosine schedule may produce (Nichol & Dhariwal 2021, sec. 3.2).
pub const COSINE_MAX_BETA: f64 = 0.999;

/// `beta_t` for t = 0..T-1 in float64, checked to be usable.
///
/// Linear matches `np.linspace(start, end, T)` of the official code bit for bit;
/// cosine matches diffusers' `betas_for_alpha_bar` (before its cast to float32).
pub fn make_betas(config: &DiffusionConfig) -> Result<Vec<f64>, DiffusionError> {
    config.validate()?;
    let n = config.num_timesteps;
    let betas: Vec<f64> = match config.beta_schedule {
        BetaSchedule::Linear { start, end } => {
            // numpy's linspace: arange(n) * step + start, and the last point set to `end`.
            let step = (end - start) / (n - 1) as f64;
            (0..n).map(|i| if i == n - 1 { end } else { i as f64 * step + start }).collect()
        }
        BetaSchedule::Cosine { s } => {
            // f(t) of eq. (17); i and n are converted to f64 before dividing (an
            // integer i / n would make every beta 0).
            let f = |t: f64| ((t + s) / (1.0 + s) * std::f64::consts::PI / 2.0).cos().powi(2);
            (0..n)
                .map(|i| {
                    let t1 = i as f64 / n as f64;
                    let t2 = (i + 1) as f64 / n as f64;
                    (1.0 - f(t2) / f(t1)).min(COSINE_MAX_BETA)
                })
                .collect()
        }
    };
    for (index, &value) in betas.iter().enumerate() {
        // 1 - beta must differ from 1, or 1 - abar_0 = 0 and the posterior divides by zero.
        if !(value > 0.0 && value < 1.0) || 1.0 - value == 1.0 {
            return Err(DiffusionError::DegenerateBeta { index, value, num_timesteps: n });
        }
    }
    Ok(betas)
}

/// `prod_{s<=t} a_s` for each t (float64, in order, like `np.cumprod`).
pub(crate) fn cumprod(a: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    a.iter()
        .map(|&x| {
            acc *= x;
            acc
        })
        .collect()
}
