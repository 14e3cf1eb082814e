//! The Frechet distance between two Gaussians (Heusel et al. 2017; docs/ddpm.md section 9):
//!
//! `FID = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2})`.
//!
//! # Method
//!
//! pytorch-fid takes `scipy.linalg.sqrtm(S1 @ S2)` of the non-symmetric
//! product, which can come out complex or non-finite for near-singular
//! covariances (it then retries with `1e-6 I` added to both). Here the trace
//! is computed from symmetric problems and an SVD only, in float64:
//!
//! - `A = S1^{1/2}` and `B = S2^{1/2}` from the eigendecompositions
//!   `S = V diag(w) V^T` (`linalg_eigh`), eigenvalues below 0 (rounding)
//!   clamped to 0;
//! - `S1 S2 = A (A B^2)` has the eigenvalues of `A B^2 A = (A B)(A B)^T`,
//!   the squared singular values of `A B`, so
//!   `Tr((S1 S2)^{1/2}) = ||A B||_*`, the nuclear norm (sum of singular values).
//!
//! Taking singular values of `A B` rather than square roots of the
//! eigenvalues of `A S2 A` keeps directions both covariances lack (fewer
//! samples than dimensions) at ~1e-16 instead of ~sqrt(1e-16): the FID of
//! singular statistics against themselves is ~1e-13, where pytorch-fid and
//! the eigenvalue route give ~1e-6. No offset is ever added. On
//! well-conditioned statistics the result agrees with pytorch-fid's
//! `calculate_frechet_distance` to ~1e-14 relative; on rank-deficient ones
//! to ~1e-8, the size of pytorch-fid's own error there
//! (tests/golden_eval.rs). Both inputs are symmetrized, `(S + S^T) / 2`,
//! first. The result is not clamped: identical statistics give 0 up to
//! rounding, which may be a tiny negative number.

use tch::{Kind, Tensor};

use super::error::EvalError;

/// The Frechet distance between `N(mu1, sigma1)` and `N(mu2, sigma2)`;
/// `mu` is `[D]` and `sigma` `[D, D]` row-major. Errors on mismatched
/// shapes or non-finite values.
pub fn frechet_distance(mu1: &[f64], sigma1: &[f64], mu2: &[f64], sigma2: &[f64]) -> Result<f64, EvalError> {
    let d = mu1.len();
    if d == 0 {
        return Err(EvalError::shape("mu1", "[D] with D >= 1", "[0]"));
    }
    if mu2.len() != d {
        return Err(EvalError::shape("mu2", format!("[{d}] like mu1 (features of the same network)"), format!("[{}]", mu2.len())));
    }
    for (name, s) in [("sigma1", sigma1), ("sigma2", sigma2)] {
        if s.len() != d * d {
            return Err(EvalError::shape(name, format!("[{d}, {d}] ({} values)", d * d), format!("{} values", s.len())));
        }
    }
    if mu1.iter().chain(mu2).chain(sigma1).chain(sigma2).any(|v| !v.is_finite()) {
        return Err(EvalError::NonFinite("the statistics given to the Frechet distance".into()));
    }
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let trace = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    let tr_covmean = trace_sqrt_product(sigma1, sigma2, d)?;
    Ok(mean_term + trace(sigma1) + trace(sigma2) - 2.0 * tr_covmean)
}

/// `Tr((S1 S2)^{1/2})` for symmetric positive semi-definite `S1`, `S2`
/// `[d, d]` row-major (see the module docs).
pub fn trace_sqrt_product(sigma1: &[f64], sigma2: &[f64], d: usize) -> Result<f64, EvalError> {
    tch::no_grad(|| {
        let a = sqrtm_psd(&symmetric(sigma1, d as i64)?, "sigma1")?;
        let b = sqrtm_psd(&symmetric(sigma2, d as i64)?, "sigma2")?;
        let tr = a
            .f_mm(&b)
            .and_then(|ab| ab.f_linalg_norm_ord_str("nuc", [-2i64, -1].as_slice(), false, None::<Kind>))
            .and_then(|n| n.f_double_value(&[]))
            .map_err(EvalError::torch("nuclear norm of sqrtm(sigma1) sqrtm(sigma2)"))?;
        if !tr.is_finite() {
            return Err(EvalError::NonFinite("Tr((sigma1 sigma2)^(1/2))".into()));
        }
        Ok(tr)
    })
}

/// `V diag(sqrt(max(w, 0))) V^T` for a symmetric `S = V diag(w) V^T`.
fn sqrtm_psd(s: &Tensor, name: &str) -> Result<Tensor, EvalError> {
    let (w, v) = s.f_linalg_eigh("L").map_err(EvalError::torch(format!("eigendecomposition of {name}")))?;
    w.f_clamp_min(0.0)
        .and_then(|w| w.f_sqrt())
        .and_then(|root| v.f_mul(&root.unsqueeze(0))) // scales V's columns
        .and_then(|vs| vs.f_mm(&v.tr()))
        .map_err(EvalError::torch(format!("sqrtm({name})")))
}

/// `(S + S^T) / 2` as a float64 `[d, d]` tensor on the CPU.
fn symmetric(s: &[f64], d: i64) -> Result<Tensor, EvalError> {
    let t = Tensor::from_slice(s).view([d, d]);
    ((&t + t.tr()) * 0.5).f_contiguous().map_err(EvalError::torch("symmetrizing a covariance"))
}
