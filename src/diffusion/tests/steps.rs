//! `p_mean_variance`, the ancestral step and DDIM.

use tch::Tensor;

use super::{diffusion, max_diff, randn, ts};
use crate::diffusion::{DiffusionError, ModelMeanType, VarianceType};

#[test]
fn p_sample_adds_no_noise_at_t0_only() {
    let d = diffusion(1000, |_| {});
    let (xt, out) = (randn(1, 3), randn(2, 3) * 0.1);
    let noise = randn(3, 3) * 100.0;
    let t = ts(&[0, 1, 999]);
    let p = d.p_mean_variance(&out, &xt, &t, true);
    let (sample, pred_x0) = d.p_sample(&out, &xt, &t, &noise, true);
    assert_eq!(max_diff(&pred_x0, &p.pred_x0), 0.0);
    assert_eq!(max_diff(&sample.get(0), &p.mean.get(0)), 0.0, "t = 0: the mean, no noise");
    for (i, t) in [(1, 1usize), (2, 999)] {
        let expected = p.mean.get(i) + noise.get(i) * d.betas[t].sqrt();
        assert!(max_diff(&sample.get(i), &expected) < 1e-9, "t = {t}: sigma = sqrt(beta_t) (fixedlarge)");
    }
}

#[test]
fn pred_x0_is_clipped_to_minus_1_1_only_when_asked() {
    let d = diffusion(1000, |_| {});
    let t = ts(&[999, 500, 0]);
    let xt = randn(4, 3) * 3.0;
    let eps = randn(5, 3);
    let raw = d.predict_x0_from_eps(&xt, &t, &eps);
    assert!(raw.abs().max().double_value(&[]) > 10.0, "the test needs values outside [-1, 1]");
    let clipped = d.p_mean_variance(&eps, &xt, &t, true);
    assert_eq!(max_diff(&clipped.pred_x0, &raw.clamp(-1.0, 1.0)), 0.0);
    let free = d.p_mean_variance(&eps, &xt, &t, false);
    assert_eq!(max_diff(&free.pred_x0, &raw), 0.0);
    // The mean is the posterior mean of the clipped estimate.
    let expected = d.q_posterior_mean_variance(&clipped.pred_x0, &xt, &t).0;
    assert!(max_diff(&clipped.mean, &expected) < 1e-12);
    // Without clipping, mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) (eq. (11)).
    for (i, s) in [(0, 999usize), (1, 500), (2, 0)] {
        let (b, ab) = (d.betas[s], d.alphas_cumprod[s]);
        let mu = (xt.get(i) - eps.get(i) * (b / (1.0 - ab).sqrt())) / (1.0 - b).sqrt();
        assert!(max_diff(&free.mean.get(i), &mu) < 1e-9, "t = {s}");
    }
}

#[test]
fn eps_x0_and_mu_models_agree_when_consistent() {
    let t = ts(&[0, 1, 17, 499, 999]);
    let base = diffusion(1000, |_| {});
    let x0 = (randn(6, 5) * 0.5).clamp(-1.0, 1.0);
    let xt = base.q_sample(&x0, &t, &randn(7, 5));
    let eps = base.predict_eps_from_x0(&xt, &t, &x0);
    let mu = base.q_posterior_mean_variance(&x0, &xt, &t).0;
    for var in [VarianceType::FixedLarge, VarianceType::FixedSmall] {
        let get = |mean_type, output: &Tensor| {
            let d = diffusion(1000, |c| {
                c.model_mean_type = mean_type;
                c.model_var_type = var;
            });
            d.p_mean_variance(output, &xt, &t, true)
        };
        let (pe, px, pm) = (get(ModelMeanType::Eps, &eps), get(ModelMeanType::X0, &x0), get(ModelMeanType::Mu, &mu));
        assert!(max_diff(&pe.mean, &px.mean) < 1e-9 && max_diff(&pm.mean, &px.mean) < 1e-9);
        assert!(max_diff(&pe.pred_x0, &x0) < 1e-9 && max_diff(&pm.pred_x0, &x0) < 1e-9);
        assert_eq!(max_diff(&pe.log_variance, &pm.log_variance), 0.0);
    }
}

#[test]
fn ddim_timesteps_leading_spacing() {
    let d = diffusion(1000, |_| {});
    let s50 = d.ddim_timesteps(50).expect("50 steps");
    assert_eq!((s50.len(), s50[0], s50[1], s50[49]), (50, 980, 960, 0));
    assert_eq!(d.ddim_timesteps(3).expect("3"), vec![666, 333, 0]);
    assert_eq!(d.ddim_timesteps(1).expect("1"), vec![0]);
    let all = d.ddim_timesteps(1000).expect("1000");
    assert_eq!((all[0], all[999]), (999, 0));
    for bad in [0, 1001] {
        let err = d.ddim_timesteps(bad).expect_err("out of range");
        assert_eq!(err, DiffusionError::DdimSteps { steps: bad, num_timesteps: 1000 });
        assert!(err.to_string().contains("between 1 and num_timesteps = 1000"), "{err}");
    }
}

#[test]
fn ddim_final_step_returns_x0_estimate() {
    let d = diffusion(1000, |_| {});
    let (xt, eps) = (randn(8, 2) * 0.2, randn(9, 2));
    let (x_prev, x0) = d.ddim_step(&eps, &xt, 0, None, 0.0, &eps, true);
    assert!(max_diff(&x_prev, &x0) < 1e-12, "abar_prev = 1 at the end");
    let expected = d.predict_x0_from_eps(&xt, &ts(&[0, 0]), &eps).clamp(-1.0, 1.0);
    assert!(max_diff(&x0, &expected) < 1e-12);
}

#[test]
fn ddim_with_eta_1_on_consecutive_steps_is_the_ancestral_step() {
    // Song et al. 2021: eta = 1 with t_prev = t - 1 gives sigma^2 = beta_tilde_t and the
    // posterior mean, i.e. the fixedsmall ancestral step (without clipping).
    let d = diffusion(1000, |c| c.model_var_type = VarianceType::FixedSmall);
    let (xt, eps, z) = (randn(10, 2), randn(11, 2), randn(12, 2));
    for t in [1i64, 2, 500, 999] {
        let (ddim, _) = d.ddim_step(&eps, &xt, t, Some(t - 1), 1.0, &z, false);
        let (ancestral, _) = d.p_sample(&eps, &xt, &ts(&[t, t]), &z, false);
        assert!(max_diff(&ddim, &ancestral) < 1e-9, "t = {t}: {}", max_diff(&ddim, &ancestral));
    }
}

#[test]
fn ddim_derives_eps_from_unclipped_x0_for_x0_models() {
    let d = diffusion(100, |c| c.model_mean_type = ModelMeanType::X0);
    let (xt, x0_out) = (randn(13, 2), randn(14, 2) * 2.0);
    let (x_prev, x0) = d.ddim_step(&x0_out, &xt, 60, Some(40), 0.0, &xt, true);
    let t = ts(&[60, 60]);
    let eps = d.predict_eps_from_x0(&xt, &t, &x0_out);
    let expected = x0_out.clamp(-1.0, 1.0) * d.alphas_cumprod[40].sqrt() + eps * (1.0 - d.alphas_cumprod[40]).sqrt();
    assert!(max_diff(&x_prev, &expected) < 1e-12);
    assert_eq!(max_diff(&x0, &x0_out.clamp(-1.0, 1.0)), 0.0);
}
