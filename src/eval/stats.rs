//! Running float64 sums of feature vectors, from which the mean and the
//! covariance of the FID follow (docs/ddpm.md section 9), and the `(mu, sigma)` pair those
//! give.
//!
//! Sums of `x` and `x x^T` add exactly the same way whichever worker saw
//! which images, so shards from many workers [`merge`](FeatureStats::merge)
//! into the statistics of one pass (up to float64 rounding of the order in
//! which the per-batch sums are added, ~1e-16 relative).

use tch::{Kind, Tensor};

use super::error::EvalError;
use super::fid::frechet_distance;

/// Float64 sums over `count` feature vectors of dimension `dim`.
///
/// `sum_outer` is the full, exactly symmetric `dim x dim` matrix
/// `sum_i x_i x_i^T`, row-major (each batch's upper triangle is mirrored
/// before it is added, so serializing only the upper triangle loses nothing).
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureStats {
    dim: usize,
    count: u64,
    sum: Vec<f64>,
    sum_outer: Vec<f64>,
}

impl FeatureStats {
    /// Empty statistics for `dim`-dimensional features (2048 for Inception's pool features).
    pub fn new(dim: usize) -> Self {
        Self { dim, count: 0, sum: vec![0.0; dim], sum_outer: vec![0.0; dim * dim] }
    }

    /// Rebuilds statistics from their parts (used by deserialization);
    /// checks the lengths and that `sum_outer` is symmetric.
    pub fn from_parts(dim: usize, count: u64, sum: Vec<f64>, sum_outer: Vec<f64>) -> Result<Self, EvalError> {
        if sum.len() != dim || sum_outer.len() != dim * dim {
            return Err(EvalError::Stats(format!(
                "dimension {dim} needs {dim} sums and {} outer-product sums, got {} and {}",
                dim * dim,
                sum.len(),
                sum_outer.len()
            )));
        }
        for i in 0..dim {
            for j in i + 1..dim {
                if sum_outer[i * dim + j].to_bits() != sum_outer[j * dim + i].to_bits() {
                    return Err(EvalError::Stats(format!("sum_outer is not symmetric at ({i}, {j})")));
                }
            }
        }
        Ok(Self { dim, count, sum, sum_outer })
    }

    /// Feature dimension `D`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of feature vectors added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// `sum_i x_i`, `[D]`.
    pub fn sum(&self) -> &[f64] {
        &self.sum
    }

    /// `sum_i x_i x_i^T`, `[D, D]` row-major, symmetric.
    pub fn sum_outer(&self) -> &[f64] {
        &self.sum_outer
    }

    /// Adds a batch of features `[n, D]` of any float kind on any device.
    /// The products are taken in float64 on the features' device (one
    /// `x^T x` matmul, fast on a GPU for D = 2048) and added on the host.
    pub fn add_batch(&mut self, features: &Tensor) -> Result<(), EvalError> {
        let size = features.size();
        if size.len() != 2 || size[1] != self.dim as i64 {
            return Err(EvalError::shape("features", format!("[n, {}]", self.dim), format!("{size:?}")));
        }
        if size[0] == 0 {
            return Ok(());
        }
        let (sum, outer) = tch::no_grad(|| -> Result<(Vec<f64>, Vec<f64>), EvalError> {
            let x = features.f_to_kind(Kind::Double).map_err(EvalError::torch("features to float64"))?; // [n, D]
            let outer = x.f_tr().and_then(|xt| xt.f_mm(&x)).map_err(EvalError::torch("x^T x in float64"))?; // [D, D]
                                                                                                            // BLAS need not give (i, j) and (j, i) the same rounding: mirror the
                                                                                                            // upper triangle (exact, as it adds zeros) so that the sums stay
                                                                                                            // bitwise symmetric.
            let symmetric =
                outer.f_triu(0).and_then(|upper| upper.f_add(&upper.f_triu(1)?.f_tr()?)).map_err(EvalError::torch("mirroring x^T x"))?;
            let sum = x.f_sum_dim_intlist(0, false, Kind::Double).map_err(EvalError::torch("sum of features"))?; // [D]
            Ok((to_vec_f64(&sum)?, to_vec_f64(&symmetric)?))
        })?;
        if sum.iter().any(|v| !v.is_finite()) {
            return Err(EvalError::NonFinite("a batch of features".into()));
        }
        self.add_sums(size[0] as u64, &sum, &outer);
        Ok(())
    }

    /// Adds `rows.len() / D` feature vectors stored row after row.
    pub fn add_rows(&mut self, rows: &[f32]) -> Result<(), EvalError> {
        if self.dim == 0 || !rows.len().is_multiple_of(self.dim) {
            return Err(EvalError::shape("feature rows", format!("a multiple of D = {}", self.dim), rows.len().to_string()));
        }
        let n = (rows.len() / self.dim) as i64;
        self.add_batch(&Tensor::from_slice(rows).view([n, self.dim as i64]))
    }

    /// Adds sums; `outer` must be exactly symmetric, so that `sum_outer` stays so.
    fn add_sums(&mut self, n: u64, sum: &[f64], outer: &[f64]) {
        self.count += n;
        for (acc, v) in self.sum.iter_mut().zip(sum) {
            *acc += v;
        }
        for (acc, v) in self.sum_outer.iter_mut().zip(outer) {
            *acc += v;
        }
    }

    /// Adds another shard's sums: afterwards `self` holds the statistics of
    /// both sets of features.
    pub fn merge(&mut self, other: &FeatureStats) -> Result<(), EvalError> {
        if other.dim != self.dim {
            return Err(EvalError::Stats(format!(
                "cannot merge statistics of {}-dimensional features into {}-dimensional ones",
                other.dim, self.dim
            )));
        }
        self.add_sums(other.count, &other.sum, &other.sum_outer);
        Ok(())
    }

    /// The mean `mu = sum / n`, `[D]`. Needs at least one vector.
    pub fn mean(&self) -> Result<Vec<f64>, EvalError> {
        if self.count == 0 {
            return Err(EvalError::Stats("no features were added: the mean of nothing is undefined".into()));
        }
        let n = self.count as f64;
        Ok(self.sum.iter().map(|s| s / n).collect())
    }

    /// The unbiased covariance `(sum_outer - n mu mu^T) / (n - 1)`, `[D, D]`
    /// row-major, like `np.cov(x, rowvar=False)`. Needs at least two vectors.
    pub fn covariance(&self) -> Result<Vec<f64>, EvalError> {
        if self.count < 2 {
            return Err(EvalError::Stats(format!(
                "{} feature vector(s): a covariance needs at least 2 (and FID wants thousands)",
                self.count
            )));
        }
        let mu = self.mean()?;
        let (d, n) = (self.dim, self.count as f64);
        let mut sigma = vec![0.0; d * d];
        for i in 0..d {
            for j in i..d {
                let v = (self.sum_outer[i * d + j] - n * mu[i] * mu[j]) / (n - 1.0);
                sigma[i * d + j] = v;
                sigma[j * d + i] = v;
            }
        }
        Ok(sigma)
    }

    /// Mean and covariance, the pair FID compares.
    pub fn to_fid_stats(&self) -> Result<FidStats, EvalError> {
        FidStats::new(self.mean()?, self.covariance()?)
    }
}

/// The Gaussian FID fits to a set of features: `mu` `[D]` and `sigma`
/// `[D, D]` row-major, float64 — the `mu` and `sigma` of a pytorch-fid / TTUR
/// `.npz` ([`read_stats_npz`](super::read_stats_npz)).
#[derive(Clone, Debug, PartialEq)]
pub struct FidStats {
    /// Mean feature, `[D]`.
    pub mu: Vec<f64>,
    /// Feature covariance, `[D, D]` row-major.
    pub sigma: Vec<f64>,
}

impl FidStats {
    /// Checks that `sigma` is `D x D` for `D = mu.len()` and that all values are finite.
    pub fn new(mu: Vec<f64>, sigma: Vec<f64>) -> Result<Self, EvalError> {
        let d = mu.len();
        if d == 0 {
            return Err(EvalError::shape("mu", "[D] with D >= 1", "[0]"));
        }
        if sigma.len() != d * d {
            return Err(EvalError::shape("sigma", format!("[{d}, {d}] ({} values) to match mu", d * d), format!("{} values", sigma.len())));
        }
        if mu.iter().chain(&sigma).any(|v| !v.is_finite()) {
            return Err(EvalError::NonFinite("mu or sigma".into()));
        }
        Ok(Self { mu, sigma })
    }

    /// Feature dimension `D`.
    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// The Frechet distance to `other` ([`frechet_distance`]).
    pub fn fid(&self, other: &FidStats) -> Result<f64, EvalError> {
        frechet_distance(&self.mu, &self.sigma, &other.mu, &other.sigma)
    }
}

/// A float64 tensor's values, on the host.
pub(crate) fn to_vec_f64(t: &Tensor) -> Result<Vec<f64>, EvalError> {
    let t = t
        .f_to_device(tch::Device::Cpu)
        .and_then(|t| t.f_to_kind(Kind::Double))
        .and_then(|t| t.f_contiguous())
        .map_err(EvalError::torch("copying a tensor to the host"))?;
    let n = t.numel();
    let mut out = vec![0f64; n];
    t.f_copy_data(&mut out, n).map_err(EvalError::torch("copying a tensor to the host"))?;
    Ok(out)
}
