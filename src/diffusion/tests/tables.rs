//! The schedules and the off-by-one of the tables at t = 0 and t = T-1.

use tch::{Device, Kind, Tensor};

use super::{diffusion, ts};
use crate::diffusion::{extract, BetaSchedule, VarianceType, COSINE_MAX_BETA};

#[test]
fn linear_schedule_endpoints_are_exact() {
    let d = diffusion(1000, |_| {});
    assert_eq!(d.num_timesteps(), 1000);
    assert_eq!(d.betas[0], 1e-4);
    assert_eq!(d.betas[999], 0.02);
    assert!(d.betas.windows(2).all(|w| w[0] < w[1]));
    // abar_{T-1} for the paper's schedule is about 4.04e-5 (so L_T is ~1e-5 bits/dim).
    assert!((d.alphas_cumprod[999] - 4.0358e-5).abs() < 1e-8, "{}", d.alphas_cumprod[999]);
}

#[test]
fn cosine_schedule_is_floating_point_and_capped() {
    for n in [2, 20, 1000, 4000] {
        let d = diffusion(n, |c| c.beta_schedule = BetaSchedule::Cosine { s: 0.008 });
        assert!(d.betas.iter().all(|&b| b > 0.0 && b <= COSINE_MAX_BETA), "T = {n}: {:?}", &d.betas[..2]);
        assert!(d.betas.windows(2).all(|w| w[0] < w[1]), "T = {n}: betas rise");
        // The last beta hits the cap: abar(1) = cos(pi/2)^2 is ~0.
        assert_eq!(d.betas[n - 1], COSINE_MAX_BETA);
    }
    let d = diffusion(1000, |c| c.beta_schedule = BetaSchedule::Cosine { s: 0.008 });
    // Values of diffusers' squaredcos_cap_v2 (float64 before its cast).
    assert!((d.betas[0] - 4.12842e-5).abs() < 1e-10, "{}", d.betas[0]);
    // abar follows f(t)/f(0) closely before the cap.
    let f = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    assert!((d.alphas_cumprod[499] - f(0.5) / f(0.0)).abs() < 1e-12);
}

#[test]
fn first_step_t0_is_the_papers_t1() {
    let d = diffusion(1000, |_| {});
    assert_eq!(d.alphas_cumprod_prev[0], 1.0);
    assert_eq!(d.alphas_cumprod_prev[1], d.alphas_cumprod[0]);
    assert_eq!(d.alphas_cumprod[0], 1.0 - 1e-4);
    // beta_tilde_0 = 0, its log borrows t = 1's value.
    assert_eq!(d.posterior_variance[0], 0.0);
    assert!(d.posterior_variance[1] > 0.0);
    assert_eq!(d.posterior_log_variance_clipped[0], d.posterior_variance[1].ln());
    assert_eq!(d.posterior_log_variance_clipped[1], d.posterior_variance[1].ln());
    // At t = 0 the posterior mean is x0 itself.
    assert!((d.posterior_mean_coef1[0] - 1.0).abs() < 1e-12, "1 - (1 - beta_0) rounds");
    assert_eq!(d.posterior_mean_coef2[0], 0.0);
    // fixedlarge: variance beta_t, but the log-variance at t = 0 is log(beta_tilde_1) (code).
    assert_eq!(d.config.model_var_type, VarianceType::FixedLarge);
    assert_eq!(d.model_variance[0], 1e-4);
    assert_eq!(d.model_log_variance[0], d.posterior_variance[1].ln());
    assert_eq!(d.model_log_variance[1], d.betas[1].ln());
    let small = diffusion(1000, |c| c.model_var_type = VarianceType::FixedSmall);
    assert_eq!(small.model_variance, small.posterior_variance);
    assert_eq!(small.model_log_variance, small.posterior_log_variance_clipped);
}

#[test]
fn last_step_t_is_t_minus_1() {
    let d = diffusion(1000, |_| {});
    let x0 = Tensor::ones([2, 3, 4, 4], (Kind::Float, Device::Cpu));
    let got = extract(&d.sqrt_alphas_cumprod, &ts(&[999, 0]), &x0);
    assert_eq!(got.size(), [2, 1, 1, 1]);
    assert_eq!(got.kind(), Kind::Float);
    assert_eq!(got.double_value(&[0, 0, 0, 0]), d.alphas_cumprod[999].sqrt() as f32 as f64);
    assert_eq!(got.double_value(&[1, 0, 0, 0]), d.alphas_cumprod[0].sqrt() as f32 as f64);
    let beyond = std::panic::catch_unwind(|| extract(&d.betas, &ts(&[1000]), &x0));
    assert!(beyond.is_err(), "t = T is out of range");
}

#[test]
fn extract_follows_the_input_kind() {
    let d = diffusion(10, |_| {});
    let x = Tensor::zeros([3, 2], (Kind::Double, Device::Cpu));
    let got = extract(&d.betas, &ts(&[9, 0, 4]), &x);
    assert_eq!((got.size(), got.kind()), (vec![3, 1], Kind::Double));
    assert_eq!(Vec::<f64>::try_from(got.flatten(0, -1)).expect("f64"), vec![d.betas[9], d.betas[0], d.betas[4]]);
}

#[test]
fn posterior_matches_eq_7_with_bayes() {
    // mu_tilde and beta_tilde from the product of q(x_t | x_{t-1}) and q(x_{t-1} | x0).
    let d = diffusion(50, |_| {});
    for t in 1..50 {
        let (a, ab, ab_prev, b) = (1.0 - d.betas[t], d.alphas_cumprod[t], d.alphas_cumprod[t - 1], d.betas[t]);
        let precision = a / b + 1.0 / (1.0 - ab_prev);
        assert!((1.0 / precision - d.posterior_variance[t]).abs() < 1e-15);
        let c1 = ab_prev.sqrt() / (1.0 - ab_prev) / precision;
        let c2 = a.sqrt() / b / precision;
        assert!((c1 - d.posterior_mean_coef1[t]).abs() < 1e-12 && (c2 - d.posterior_mean_coef2[t]).abs() < 1e-12);
        assert!((d.sqrt_recipm1_alphas_cumprod[t] - (1.0 / ab - 1.0).sqrt()).abs() < 1e-12);
    }
}
