//! Golden tests of `ddpm::diffusion` against diffusers 0.42.1 and a float64
//! numpy port of the official code, on fixtures made by
//! `tests/golden/gen_diffusion.py` (run by `tests/run.sh`).
//!
//! Two references for diffusers' schedulers: `*32` is diffusers as shipped
//! (float32 tables), `*64` the same scheduler code on float64 tables and inputs.
//! The Rust side runs in float32 with float64 tables, so against `*64` only its
//! own float32 rounding shows (tight tolerances) and against `*32` diffusers'
//! float32 tables add theirs (looser, documented where they are set).
//! Run with `--nocapture` to see the largest differences.
//!
//! Everything runs on the first CUDA device when there is one (the inputs are
//! moved there), else on the CPU; comparisons happen on the CPU in float64.

#[path = "golden_diffusion/bound.rs"]
mod bound;
mod common;
#[path = "golden_diffusion/schedule.rs"]
mod schedule;
#[path = "golden_diffusion/steps.rs"]
mod steps;

use std::collections::HashMap;

use ddpm::diffusion::{extract, DiffusionConfig, GaussianDiffusion, ModelMeanType, VarianceType};
use tch::{Device, Kind, Tensor};

/// Where the tests compute: CUDA when available, so that a GPU machine checks the
/// device paths (tables gathered on the input's device, masks, the float64 decoder).
pub fn device() -> Device {
    Device::cuda_if_available()
}

/// The tensors of `diffusion.safetensors` and the contents of `meta.json`.
pub struct Fixture {
    tensors: HashMap<String, Tensor>,
    pub meta: serde_json::Value,
}

impl Fixture {
    pub fn load() -> Self {
        let dir = common::golden_dir("diffusion");
        let tensors =
            Tensor::read_safetensors(dir.join("diffusion.safetensors")).expect("read diffusion.safetensors").into_iter().collect();
        let meta = std::fs::read_to_string(dir.join("meta.json")).expect("read meta.json");
        Self { tensors, meta: serde_json::from_str(&meta).expect("parse meta.json") }
    }

    /// The tensor `name`, as stored (float32, float64 or int64), on [`device`].
    pub fn get(&self, name: &str) -> Tensor {
        self.tensors.get(name).unwrap_or_else(|| panic!("fixture has no tensor {name}")).to_device(device())
    }

    /// The tensor `name` as float64 values.
    pub fn vec(&self, name: &str) -> Vec<f64> {
        Vec::<f64>::try_from(self.get(name).to_kind(Kind::Double).flatten(0, -1)).expect("float64 values")
    }
}

/// Asserts `|actual - expected| <= atol + rtol |expected|` everywhere (compared
/// in float64), prints the largest absolute and relative differences and
/// returns the largest absolute one.
pub fn check(label: &str, actual: &Tensor, expected: &Tensor, atol: f64, rtol: f64) -> f64 {
    assert_eq!(actual.size(), expected.size(), "{label}: shapes");
    assert_eq!(actual.device(), expected.device(), "{label}: the result stays on the input's device");
    let cpu64 = |x: &Tensor| x.to_device(Device::Cpu).to_kind(Kind::Double);
    let (a, e) = (cpu64(actual), cpu64(expected));
    let diff = (&a - &e).abs();
    let max_abs = diff.max().double_value(&[]);
    let max_rel = (&diff / e.abs().clamp_min(1e-300)).max().double_value(&[]);
    let excess = (&diff - (e.abs() * rtol + atol)).max().double_value(&[]);
    println!("{label}: max abs diff {max_abs:.3e}, max rel diff {max_rel:.3e}");
    assert!(
        excess <= 0.0 && !max_abs.is_nan(),
        "{label}: max abs diff {max_abs:.3e} (max rel {max_rel:.3e}) exceeds atol {atol:e} + rtol {rtol:e}"
    );
    max_abs
}

/// [`check`] for float64 tables.
pub fn check_vec(label: &str, actual: &[f64], expected: &[f64], atol: f64, rtol: f64) -> f64 {
    check(label, &Tensor::from_slice(actual), &Tensor::from_slice(expected), atol, rtol)
}

/// [`check`] for an estimate of x0 at step(s) `t` (`[B]`), compared at the scale
/// float32 computes it on. From eps, `(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`
/// rounds its terms before dividing by `sqrt(abar_t)` (0.0064 at t = 999); from
/// mu, `(mu - coef2 x_t) / coef1` divides by `coef1` (1.3e-4 at t = 999). Both
/// sides are multiplied by that divisor before comparing.
pub fn check_x0(label: &str, actual: &Tensor, expected: &Tensor, d: &GaussianDiffusion, t: &Tensor, atol: f64, rtol: f64) -> f64 {
    let divisor = match d.config.model_mean_type {
        ModelMeanType::Eps => d.sqrt_alphas_cumprod.clone(),
        ModelMeanType::X0 => vec![1.0; d.betas.len()],
        ModelMeanType::Mu => d.posterior_mean_coef1.clone(),
    };
    let scale = extract(&divisor, t, &actual.to_kind(Kind::Double));
    let scaled = |x: &Tensor| x.to_kind(Kind::Double) * &scale;
    check(&format!("{label} (x divisor)"), &scaled(actual), &scaled(expected), atol, rtol)
}

/// A diffusion over the paper's schedule (T = 1000, linear 1e-4..0.02).
pub fn paper(mean: ModelMeanType, var: VarianceType) -> GaussianDiffusion {
    let config = DiffusionConfig { model_mean_type: mean, model_var_type: var, ..DiffusionConfig::default() };
    GaussianDiffusion::new(&config).expect("valid config")
}

/// diffusers' `prediction_type` and the official code's mean types as ours.
pub fn mean_type(name: &str) -> ModelMeanType {
    match name {
        "epsilon" | "eps" => ModelMeanType::Eps,
        "sample" | "x0" => ModelMeanType::X0,
        "mu" => ModelMeanType::Mu,
        other => panic!("unknown mean type {other}"),
    }
}

/// diffusers' `variance_type` and the official code's names as ours.
pub fn var_type(name: &str) -> VarianceType {
    match name {
        "fixed_large" | "fixedlarge" => VarianceType::FixedLarge,
        "fixed_small" | "fixedsmall" => VarianceType::FixedSmall,
        other => panic!("unknown variance type {other}"),
    }
}
