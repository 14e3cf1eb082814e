//! Unit tests of the diffusion module: configuration, the off-by-one at both
//! ends of the tables, the sampling steps and the bound's pieces. Golden
//! comparisons with diffusers and numpy live in `tests/golden_diffusion.rs`.

mod bound;
mod config;
mod steps;
mod tables;

use tch::{Kind, Tensor};

use super::{DiffusionConfig, GaussianDiffusion};

/// A diffusion with the default config but `num_timesteps` steps (linear betas
/// 1e-4..0.02 over T steps), and the given changes.
fn diffusion(num_timesteps: usize, edit: impl FnOnce(&mut DiffusionConfig)) -> GaussianDiffusion {
    let mut config = DiffusionConfig { num_timesteps, ..DiffusionConfig::default() };
    edit(&mut config);
    GaussianDiffusion::new(&config).expect("valid test config")
}

/// Standard normal float64 `[b, 3, 4, 4]` from a fixed seed, drawn with the
/// project's counter-based generator (libtorch's global one is shared by the
/// test threads).
fn randn(seed: u64, b: i64) -> Tensor {
    let mut v = vec![0f32; (b * 48) as usize];
    crate::rng::Stream::new(seed).fill_normal(&mut v);
    Tensor::from_slice(&v).to_kind(Kind::Double).view([b, 3, 4, 4])
}

/// int64 `[B]` timesteps.
fn ts(values: &[i64]) -> Tensor {
    Tensor::from_slice(values)
}

/// Largest absolute difference of two tensors.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}
