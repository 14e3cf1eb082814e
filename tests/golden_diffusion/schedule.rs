//! Schedules, tables, `q_sample` and the posterior.

use ddpm::diffusion::{BetaSchedule, DiffusionConfig, GaussianDiffusion, ModelMeanType, VarianceType};
use tch::{Kind, Tensor};

use crate::{check, check_vec, check_x0, device, paper, Fixture};

/// Every table of `d` against the numpy reference under `prefix`.
fn tables_match(fx: &Fixture, prefix: &str, d: &GaussianDiffusion) {
    let ours: [(&str, &[f64]); 14] = [
        ("betas", &d.betas),
        ("alphas_cumprod", &d.alphas_cumprod),
        ("alphas_cumprod_prev", &d.alphas_cumprod_prev),
        ("sqrt_alphas_cumprod", &d.sqrt_alphas_cumprod),
        ("sqrt_one_minus_alphas_cumprod", &d.sqrt_one_minus_alphas_cumprod),
        ("log_one_minus_alphas_cumprod", &d.log_one_minus_alphas_cumprod),
        ("sqrt_recip_alphas_cumprod", &d.sqrt_recip_alphas_cumprod),
        ("sqrt_recipm1_alphas_cumprod", &d.sqrt_recipm1_alphas_cumprod),
        ("posterior_variance", &d.posterior_variance),
        ("posterior_log_variance_clipped", &d.posterior_log_variance_clipped),
        ("posterior_mean_coef1", &d.posterior_mean_coef1),
        ("posterior_mean_coef2", &d.posterior_mean_coef2),
        ("model_variance", &d.model_variance),
        ("model_log_variance", &d.model_log_variance),
    ];
    for (name, table) in ours {
        // Both sides are float64; only the order of a few operations may differ.
        check_vec(&format!("{prefix}/{name}"), table, &fx.vec(&format!("{prefix}/{name}")), 0.0, 1e-12);
    }
}

#[test]
fn tables_match_the_official_code_in_float64() {
    let fx = Fixture::load();
    tables_match(&fx, "sched/linear/np_fixedlarge", &paper(ModelMeanType::Eps, VarianceType::FixedLarge));
    tables_match(&fx, "sched/linear/np_fixedsmall", &paper(ModelMeanType::Eps, VarianceType::FixedSmall));
    let cosine = DiffusionConfig { beta_schedule: BetaSchedule::Cosine { s: 0.008 }, ..DiffusionConfig::default() };
    tables_match(&fx, "sched/cosine/np_fixedlarge", &GaussianDiffusion::new(&cosine).expect("cosine"));
}

#[test]
fn schedules_match_diffusers_in_float32() {
    let fx = Fixture::load();
    let cosine = DiffusionConfig { beta_schedule: BetaSchedule::Cosine { s: 0.008 }, ..DiffusionConfig::default() };
    let cosine = GaussianDiffusion::new(&cosine).expect("cosine");
    let linear = paper(ModelMeanType::Eps, VarianceType::FixedLarge);
    for (name, d) in [("linear", &linear), ("cosine", &cosine)] {
        let f32_of = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Float).to_device(device());
        // torch.linspace in float32 is within an ulp or so of the float64 values;
        // diffusers' betas_for_alpha_bar is float64 cast to float32.
        let betas = format!("sched/{name}/diffusers/betas");
        check(&betas, &f32_of(&d.betas), &fx.get(&betas), 0.0, 2.5e-7);
        // torch.cumprod in float32 accumulates 1000 roundings: 3.6e-7 relative for
        // linear. The cosine schedule ends on beta = 0.999, where 1 - beta in float32
        // keeps only ~4 digits: 1.3e-5 relative at the last steps.
        let ac = format!("sched/{name}/diffusers/alphas_cumprod");
        let rtol = if name == "linear" { 1e-6 } else { 5e-5 };
        check(&ac, &f32_of(&d.alphas_cumprod), &fx.get(&ac), 0.0, rtol);
    }
}

/// diffusers' variances (its `_get_variance`) vs ours, and the documented differences at t = 0.
#[test]
fn step_variances_vs_diffusers_and_the_t0_differences() {
    let fx = Fixture::load();
    let large = paper(ModelMeanType::Eps, VarianceType::FixedLarge);
    let small = paper(ModelMeanType::Eps, VarianceType::FixedSmall);
    let d_small = fx.vec("sched/linear/diffusers/variance_fixed_small");
    let d_large = fx.vec("sched/linear/diffusers/variance_fixed_large");
    // For t > 0 (the only steps that add noise) they agree to diffusers' float32:
    // it recomputes beta_t as 1 - abar_t / abar_{t-1} in float32, which costs up
    // to ~5e-4 relative where beta_t is 1e-4 (the official code uses betas as given).
    check_vec("fixed_small variance t>0", &small.model_variance[1..], &d_small[1..], 0.0, 1e-3);
    check_vec("fixed_large variance t>0", &large.model_variance[1..], &d_large[1..], 0.0, 1e-3);
    let ln = |v: &[f64]| v.iter().map(|x| x.ln()).collect::<Vec<_>>();
    check_vec("fixed_large log-variance t>0", &large.model_log_variance[1..], &ln(&d_large[1..]), 5e-4, 0.0);

    // At t = 0 diffusers adds no noise, and has no bound; its variances there are
    // beta_tilde_0 = 0 clamped to 1e-20 (fixed_small) and beta_0 (fixed_large).
    // The official code (and ours) uses log(beta_tilde_1) for both in the bound's
    // decoder term: a different number, on purpose.
    assert!((d_small[0] - 1e-20).abs() < 1e-26, "{}", d_small[0]);
    assert_eq!(small.posterior_variance[0], 0.0);
    assert!((d_large[0] - large.betas[0]).abs() / large.betas[0] < 5e-4);
    let beta_tilde_1 = large.posterior_variance[1];
    assert_eq!(large.model_log_variance[0], beta_tilde_1.ln());
    assert_eq!(small.model_log_variance[0], beta_tilde_1.ln());
    assert!((d_large[0].ln() - beta_tilde_1.ln()).abs() > 0.5, "the t = 0 log-variances really differ");
}

#[test]
fn q_sample_and_posterior() {
    let fx = Fixture::load();
    let d = paper(ModelMeanType::Eps, VarianceType::FixedLarge);
    let (x0, noise, t) = (fx.get("q/x0"), fx.get("q/noise"), fx.get("q/t"));
    let xt = d.q_sample(&x0, &t, &noise);
    println!("computing on {:?}", device());
    assert_eq!((xt.kind(), xt.device()), (Kind::Float, device()));
    // diffusers' float32 1 - abar_0 = 1e-4 is off by 3e-4 relative: 4e-6 on x_t at t = 0.
    check("q_sample vs diffusers add_noise", &xt, &fx.get("q/xt_diffusers"), 1e-5, 1e-6);
    check("q_sample vs numpy", &xt, &fx.get("q/xt_np"), 1e-6, 1e-6);

    let (mean, var, logvar) = d.q_mean_variance(&x0, &t);
    check("q mean", &mean, &fx.get("q/q_mean_np"), 1e-7, 1e-6);
    check("q var", &var.select(1, 0).select(1, 0).select(1, 0), &fx.get("q/q_var_np"), 0.0, 1e-6);
    check("q logvar", &logvar.select(1, 0).select(1, 0).select(1, 0), &fx.get("q/q_logvar_np"), 0.0, 1e-6);

    // Posterior of (x0, x_t) with x_t = diffusers' add_noise output.
    let xt = fx.get("q/xt_diffusers");
    let (mean, var, logvar) = d.q_posterior_mean_variance(&x0, &xt, &t);
    assert_eq!(var.size(), x0.size());
    check("posterior mean", &mean, &fx.get("q/post_mean_np"), 1e-6, 1e-6);
    check("posterior var", &var.select(1, 0).select(1, 0).select(1, 0), &fx.get("q/post_var_np"), 0.0, 1e-6);
    let lv = logvar.select(1, 0).select(1, 0).select(1, 0);
    check("posterior clipped logvar", &lv, &fx.get("q/post_logvar_np"), 0.0, 1e-6);
    let x0_hat = d.predict_x0_from_eps(&xt, &t, &noise);
    check_x0("pred x0 from eps", &x0_hat, &fx.get("q/pred_x0_np"), &d, &t, 1e-6, 1e-6);
}

#[test]
fn ddim_timesteps_match_diffusers() {
    let fx = Fixture::load();
    let d = paper(ModelMeanType::Eps, VarianceType::FixedLarge);
    let lists = fx.meta["ddim"]["timesteps"].as_object().expect("timesteps");
    assert!(lists.len() >= 10);
    for (steps, expected) in lists {
        let expected: Vec<i64> = serde_json::from_value(expected.clone()).expect("list");
        let steps: usize = steps.parse().expect("step count");
        assert_eq!(d.ddim_timesteps(steps).expect("valid"), expected, "{steps} steps");
    }
}
