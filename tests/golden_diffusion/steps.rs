//! One ancestral step vs `DDPMScheduler.step` and one DDIM step vs
//! `DDIMScheduler.step`, with the same model output and the same noise.

use ddpm::diffusion::full_t;
use tch::Tensor;

use crate::{check, check_x0, device, mean_type, paper, var_type, Fixture};

// Against diffusers on float64 tables only our float32 arithmetic differs
// (pred_x0 is compared times sqrt(abar_t), see `check_x0`).
const ATOL64: f64 = 1e-6;
const RTOL64: f64 = 1e-6;
// Against stock diffusers its float32 tables add their error. It forms 1 - abar_t,
// 1 - abar_{t-1} and beta_t = 1 - abar_t / abar_{t-1} from float32 abar, which at
// small t (1 - abar ~ 1e-4) keeps ~3-4 digits: the posterior-mean coefficients
// are off by up to ~5e-4 relative and x_{t-1} by up to 3.2e-4 (t = 2, observed;
// ~1e-6 for t >= 500). The official code casts float64 tables, as we do.
const ATOL32: f64 = 1e-3;
const RTOL32: f64 = 1e-5;

fn ddpm_case(fx: &Fixture, case: &str) -> (ddpm::diffusion::GaussianDiffusion, bool) {
    let c = &fx.meta["ddpm"]["cases"][case];
    let d = paper(mean_type(c["prediction_type"].as_str().expect("str")), var_type(c["variance_type"].as_str().expect("str")));
    (d, c["clip"].as_bool().expect("bool"))
}

#[test]
fn ancestral_step_matches_ddpm_scheduler() {
    let fx = Fixture::load();
    let ts: Vec<i64> = serde_json::from_value(fx.meta["ddpm"]["ts"].clone()).expect("ts");
    let cases = fx.meta["ddpm"]["cases"].as_object().expect("cases");
    assert_eq!(cases.len(), 5);
    for case in cases.keys() {
        let (d, clip) = ddpm_case(&fx, case);
        for &t in &ts {
            let (xt, out) = (fx.get(&format!("ddpm/xt/{t}")), fx.get(&format!("ddpm/out/{t}")));
            let p = format!("ddpm/{case}/{t}");
            let tb = full_t(t, &xt);
            let (prev, x0) = d.p_sample(&out, &xt, &tb, &fx.get(&format!("{p}/noise")), clip);
            check(&format!("{p} x_prev vs f64"), &prev, &fx.get(&format!("{p}/prev64")), ATOL64, RTOL64);
            check_x0(&format!("{p} pred_x0 vs f64"), &x0, &fx.get(&format!("{p}/x0_64")), &d, &tb, ATOL64, RTOL64);
            check(&format!("{p} x_prev vs stock"), &prev, &fx.get(&format!("{p}/prev32")), ATOL32, RTOL32);
            check_x0(&format!("{p} pred_x0 vs stock"), &x0, &fx.get(&format!("{p}/x0_32")), &d, &tb, ATOL32, RTOL32);
        }
    }
}

/// One batch with a different t per sample, each row as diffusers stepped it alone.
#[test]
fn ancestral_step_with_mixed_timesteps_in_a_batch() {
    let fx = Fixture::load();
    for case in ["eps_large_clip", "x0_small_clip"] {
        let (d, clip) = ddpm_case(&fx, case);
        let ts = [999i64, 0, 500, 1, 2];
        let row = |name: &str, t: i64| fx.get(&name.replace("{t}", &t.to_string())).get(0);
        let stack = |name: &str| Tensor::stack(&ts.map(|t| row(name, t)), 0);
        let tb = Tensor::from_slice(&ts).to_device(device());
        let (prev, x0) = d.p_sample(&stack("ddpm/out/{t}"), &stack("ddpm/xt/{t}"), &tb, &stack(&format!("ddpm/{case}/{{t}}/noise")), clip);
        check(&format!("{case} mixed-t x_prev"), &prev, &stack(&format!("ddpm/{case}/{{t}}/prev64")), ATOL64, RTOL64);
        check_x0(&format!("{case} mixed-t pred_x0"), &x0, &stack(&format!("ddpm/{case}/{{t}}/x0_64")), &d, &tb, ATOL64, RTOL64);
    }
}

#[test]
fn ddim_step_matches_ddim_scheduler() {
    let fx = Fixture::load();
    let cases = fx.meta["ddim"]["cases"].as_object().expect("cases");
    assert_eq!(cases.len(), 6);
    for (case, c) in cases {
        let d = paper(mean_type(c["prediction_type"].as_str().expect("str")), var_type("fixedlarge"));
        let (eta, clip) = (c["eta"].as_f64().expect("eta"), c["clip"].as_bool().expect("clip"));
        let steps = c["steps"].as_u64().expect("steps") as usize;
        let sequence = d.ddim_timesteps(steps).expect("steps");
        let pairs: Vec<(i64, Option<i64>)> = serde_json::from_value(c["pairs"].clone()).expect("pairs");
        for (t, t_prev) in pairs {
            // The step after t in our sequence is diffusers' t - T / steps.
            let i = sequence.iter().position(|&s| s == t).expect("t in the sequence");
            assert_eq!(sequence.get(i + 1).copied(), t_prev, "{case}: step after {t}");
            let p = format!("ddim/{case}/{t}");
            let (xt, out, noise) = (fx.get(&format!("{p}/xt")), fx.get(&format!("{p}/out")), fx.get(&format!("{p}/noise")));
            let (prev, x0) = d.ddim_step(&out, &xt, t, t_prev, eta, &noise, clip);
            let tb = full_t(t, &xt);
            check(&format!("{p} x_prev vs f64"), &prev, &fx.get(&format!("{p}/prev64")), ATOL64, RTOL64);
            check_x0(&format!("{p} pred_x0 vs f64"), &x0, &fx.get(&format!("{p}/x0_64")), &d, &tb, ATOL64, RTOL64);
            check(&format!("{p} x_prev vs stock"), &prev, &fx.get(&format!("{p}/prev32")), ATOL32, RTOL32);
            check_x0(&format!("{p} pred_x0 vs stock"), &x0, &fx.get(&format!("{p}/x0_32")), &d, &tb, ATOL32, RTOL32);
        }
    }
}
