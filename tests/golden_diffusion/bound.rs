//! The bound (docs/ddpm.md section 4) against the float64 numpy port of the official code.

use ddpm::diffusion::losses::{approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl};
use ddpm::diffusion::{BetaSchedule, DiffusionConfig, GaussianDiffusion, LossType, ModelMeanType};
use tch::{Kind, Tensor};

use crate::{check, check_vec, check_x0, mean_type, paper, var_type, Fixture};

#[test]
fn kl_cdf_and_decoder_likelihood() {
    let fx = Fixture::load();
    let g = |n: &str| fx.get(&format!("fn/{n}"));
    let kl = normal_kl(&g("kl/m1"), &g("kl/lv1"), &g("kl/m2"), &g("kl/lv2"));
    check("normal_kl (float32)", &kl, &g("kl/out"), 1e-6, 2e-6);
    check("approx_standard_normal_cdf (float32)", &approx_standard_normal_cdf(&g("cdf/x")), &g("cdf/out"), 1e-7, 0.0);
    let dll = |case: &str, kind: Kind| {
        let a = |n: &str| g(&format!("{case}/{n}")).to_kind(kind);
        discretized_gaussian_log_likelihood(&a("x"), &a("means"), &a("log_scales"))
    };
    // float32 subtracts two CDF values to get a bin's mass: where the bin is narrow
    // against the scale and 3-4 sigmas out (mass ~1e-5) that keeps ~3 digits, so
    // up to ~1.5e-3 nats; the floored pixels give log(1e-12) on both sides. The
    // float64 run below is the exactness check.
    check("discretized log-likelihood (float32)", &dll("dll", Kind::Float), &g("dll/out"), 3e-3, 1e-5);
    check("discretized log-likelihood (float64)", &dll("dll", Kind::Double), &g("dll/out"), 1e-10, 1e-10);
    // 4-5.5 sigmas off, bins down to ~1e-10: float64 resolves them to ~1e-6 relative
    // (float32 cannot, hence vb_terms_bpd's float64 decoder).
    check("discretized log-likelihood far tails (float64)", &dll("dll_hard", Kind::Double), &g("dll_hard/out"), 2e-6, 1e-9);
    let f32_err = (dll("dll_hard", Kind::Float).to_kind(Kind::Double) - g("dll_hard/out")).abs().max();
    println!("far tails in float32 would be off by up to {:.2} nats", f32_err.double_value(&[]));
}

/// The stand-in model of `diffusion_fixtures.guess_model`, computed in float64
/// from the reference's tables: `x0_guess = x0 + amp sin(3 x_t + t/10)` given as
/// eps, x0 or mu.
struct GuessModel {
    x0: Tensor,
    amp: f64,
    mean: ModelMeanType,
    sqrt_ac: Vec<f64>,
    sqrt_1m_ac: Vec<f64>,
    coef1: Vec<f64>,
    coef2: Vec<f64>,
}

impl GuessModel {
    fn new(fx: &Fixture, prefix: &str, x0: &Tensor, amp: f64, mean: ModelMeanType) -> Self {
        let v = |n: &str| fx.vec(&format!("{prefix}/{n}"));
        Self {
            x0: x0.to_kind(Kind::Double),
            amp,
            mean,
            sqrt_ac: v("sqrt_alphas_cumprod"),
            sqrt_1m_ac: v("sqrt_one_minus_alphas_cumprod"),
            coef1: v("posterior_mean_coef1"),
            coef2: v("posterior_mean_coef2"),
        }
    }

    fn output(&self, xt: &Tensor, t: &Tensor) -> Tensor {
        let steps = Vec::<i64>::try_from(t).expect("int64 t");
        assert!(steps.iter().all(|&s| s == steps[0]), "calc_bpd_loop passes one t per call");
        let s = steps[0] as usize;
        let xt = xt.to_kind(Kind::Double);
        let guess = &self.x0 + (&xt * 3.0 + 0.1 * s as f64).sin() * self.amp;
        let out = match self.mean {
            ModelMeanType::X0 => guess,
            ModelMeanType::Eps => (xt - guess * self.sqrt_ac[s]) / self.sqrt_1m_ac[s],
            ModelMeanType::Mu => guess * self.coef1[s] + xt * self.coef2[s],
        };
        out.to_kind(Kind::Float)
    }
}

#[test]
fn calc_bpd_loop_matches_numpy_at_t20() {
    let fx = Fixture::load();
    let b = &fx.meta["bound"];
    let (n, amp) = (b["num_timesteps"].as_u64().expect("T") as usize, b["amp"].as_f64().expect("amp"));
    let cases = b["cases"].as_object().expect("cases");
    assert_eq!(cases.len(), 6);
    for (case, c) in cases {
        let sched = c["schedule"].as_array().expect("schedule");
        let beta_schedule = match sched[0].as_str().expect("kind") {
            "linear" => BetaSchedule::Linear { start: sched[1].as_f64().expect("start"), end: sched[2].as_f64().expect("end") },
            _ => BetaSchedule::Cosine { s: sched[1].as_f64().expect("s") },
        };
        let mean = mean_type(c["mean_type"].as_str().expect("mean"));
        let config = DiffusionConfig {
            num_timesteps: n,
            beta_schedule,
            model_mean_type: mean,
            model_var_type: var_type(c["var_type"].as_str().expect("var")),
            ..DiffusionConfig::default()
        };
        let d = GaussianDiffusion::new(&config).expect("valid");
        let p = format!("bound/{case}");
        check_vec(&format!("{p} model_log_variance"), &d.model_log_variance, &fx.vec(&format!("{p}/np/model_log_variance")), 0.0, 1e-12);
        let (x0, noise) = (fx.get(&format!("{p}/x0")), fx.get(&format!("{p}/noise")));
        let guess = GuessModel::new(&fx, &format!("{p}/np"), &x0, amp, mean);
        let r = d.calc_bpd_loop(&mut |xt, t| guess.output(xt, t), &x0, &mut |t| noise.get(t), c["clip"].as_bool().expect("clip"));
        // Terms are 1e-3..5 bits/dim here; float32 keeps ~1e-6 of each.
        check(&format!("{p} terms_bpd"), &r.terms_bpd, &fx.get(&format!("{p}/terms")), 2e-6, 2e-5);
        check(&format!("{p} x0_mse"), &r.x0_mse, &fx.get(&format!("{p}/mse")), 1e-7, 2e-5);
        check(&format!("{p} prior_bpd"), &r.prior_bpd, &fx.get(&format!("{p}/prior")), 1e-8, 1e-5);
        check(&format!("{p} total_bpd"), &r.total_bpd, &fx.get(&format!("{p}/total")), 1e-5, 1e-5);
    }
}

#[test]
fn bound_terms_losses_and_prior_at_t1000() {
    let fx = Fixture::load();
    let cases = fx.meta["bound1000"]["cases"].as_object().expect("cases");
    assert_eq!(cases.len(), 4);
    for (case, c) in cases {
        let (mean, var) = (mean_type(c["mean_type"].as_str().expect("mean")), var_type(c["var_type"].as_str().expect("var")));
        let d = paper(mean, var);
        let p = format!("bound1000/{case}");
        let g = |n: &str| fx.get(&format!("{p}/{n}"));
        let (x0, xt, out, t, noise) = (g("x0"), g("xt"), g("out"), g("t"), g("noise"));
        check(&format!("{p} q_sample"), &d.q_sample(&x0, &t, &noise), &xt, 1e-6, 1e-6);
        for clip in [true, false] {
            let q = |n: &str| g(&format!("clip_{}/{n}", if clip { "True" } else { "False" }));
            let (terms, pred_x0) = d.vb_terms_bpd(&out, &x0, &xt, &t, clip);
            // t = [0, 1, 2, 500, 998, 999]: the decoder NLL (~1.45 bits/dim), then KLs down to 1e-11.
            check(&format!("{p} clip={clip} vb terms"), &terms, &q("terms"), 1e-6, 1e-5);
            check_x0(&format!("{p} clip={clip} pred_x0"), &pred_x0, &q("pred_x0"), &d, &t, 1e-6, 1e-6);
            let pmv = d.p_mean_variance(&out, &xt, &t, clip);
            check(&format!("{p} clip={clip} p mean"), &pmv.mean, &q("mean"), 1e-6, 1e-6);
            let lv = pmv.log_variance.select(1, 0).select(1, 0).select(1, 0);
            check(&format!("{p} clip={clip} p log-variance"), &lv, &q("logvar"), 0.0, 1e-6);
        }
        check(&format!("{p} prior"), &d.prior_bpd(&x0), &g("prior"), 1e-9, 1e-4);
        for (loss, name) in [(LossType::Mse, "loss_mse"), (LossType::Kl, "loss_kl")] {
            let config = DiffusionConfig { model_mean_type: mean, model_var_type: var, loss_type: loss, ..DiffusionConfig::default() };
            let d = GaussianDiffusion::new(&config).expect("valid");
            check(&format!("{p} {name}"), &d.training_losses(&out, &x0, &xt, &t, &noise), &g(name), 1e-6, 1e-5);
        }
    }
    // The paper's L_T: about 1e-5 bits/dim.
    let prior = fx.vec("bound1000/eps_large/prior");
    assert!(prior.iter().all(|&v| v > 5e-6 && v < 2e-5), "{prior:?}");
}
