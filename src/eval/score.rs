//! The Inception Score (Salimans et al. 2016) as the original code and
//! StyleGAN3's `inception_score.py` compute it: the N images in index order
//! are cut into `splits` parts, part k holding indices
//! `[k N / splits, (k + 1) N / splits)` (integer division); each part scores
//! `exp(mean_i KL(p(y | x_i) || p(y)))` with `p(y)` the part's mean; the
//! result is the mean and (population) standard deviation over parts.
//!
//! Per part, `mean_i KL = (1/n) sum_i sum_y p_iy log p_iy - sum_y p(y) log p(y)`,
//! so a part needs only `n`, `sum_i sum_y p log p` and `sum_i p_i`: float64
//! sums that shards from many workers add up. An image's part follows from its
//! global index and the job's total N, both known to every worker. `0 log 0`
//! is taken as 0 (numpy's `p * log(p)` would give NaN there).

use tch::{Kind, Tensor};

use super::error::EvalError;
use super::stats::to_vec_f64;

/// Float64 sums for the Inception Score of a job of `total` images.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreStats {
    total: u64,
    classes: usize,
    counts: Vec<u64>,
    sum_plogp: Vec<f64>,
    /// `[splits, classes]` row-major.
    sum_p: Vec<f64>,
}

impl ScoreStats {
    /// Empty sums for `total` images in `splits` parts (10 is the standard)
    /// over `classes` classes (1008 for Inception-v3).
    pub fn new(total: u64, splits: usize, classes: usize) -> Result<Self, EvalError> {
        if splits == 0 || classes == 0 || total < splits as u64 {
            return Err(EvalError::InvalidArgument(format!(
                "Inception Score of {total} images in {splits} splits over {classes} classes: \
                 need splits >= 1, classes >= 1 and at least one image per split"
            )));
        }
        Ok(Self { total, classes, counts: vec![0; splits], sum_plogp: vec![0.0; splits], sum_p: vec![0.0; splits * classes] })
    }

    pub(crate) fn from_parts(
        total: u64,
        classes: usize,
        counts: Vec<u64>,
        sum_plogp: Vec<f64>,
        sum_p: Vec<f64>,
    ) -> Result<Self, EvalError> {
        let mut s = Self::new(total, counts.len(), classes).map_err(|e| EvalError::Stats(e.to_string()))?;
        if sum_plogp.len() != counts.len() || sum_p.len() != counts.len() * classes {
            return Err(EvalError::Stats("Inception Score sums of inconsistent sizes".into()));
        }
        if sum_plogp.iter().chain(&sum_p).any(|v| !v.is_finite()) {
            return Err(EvalError::NonFinite("serialized Inception Score sums".into()));
        }
        for (k, &c) in counts.iter().enumerate() {
            if c > s.part_len(k) {
                return Err(EvalError::Stats(format!("split {k} counts {c} images but holds only {}", s.part_len(k))));
            }
        }
        (s.counts, s.sum_plogp, s.sum_p) = (counts, sum_plogp, sum_p);
        Ok(s)
    }

    /// Images in the whole job.
    pub fn total(&self) -> u64 {
        self.total
    }
    /// Number of parts.
    pub fn splits(&self) -> usize {
        self.counts.len()
    }
    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// Images added, per part.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
    /// `sum_i sum_y p log p`, per part.
    pub fn sum_plogp(&self) -> &[f64] {
        &self.sum_plogp
    }
    /// `sum_i p_i`, `[splits, classes]` row-major.
    pub fn sum_p(&self) -> &[f64] {
        &self.sum_p
    }

    fn bound(&self, k: usize) -> u64 {
        ((k as u128 * self.total as u128) / self.splits() as u128) as u64
    }

    fn part_len(&self, k: usize) -> u64 {
        self.bound(k + 1) - self.bound(k)
    }

    /// The part holding global image `index`.
    pub fn split_of(&self, index: u64) -> usize {
        let s = self.splits();
        let mut k = ((index as u128 * s as u128) / self.total as u128) as usize;
        while k + 1 < s && self.bound(k + 1) <= index {
            k += 1;
        }
        while k > 0 && self.bound(k) > index {
            k -= 1;
        }
        k
    }

    /// Adds the probabilities `[n, C]` of global images `first..first + n`.
    pub fn add_probs(&mut self, probs: &Tensor, first: u64) -> Result<(), EvalError> {
        let size = probs.size();
        if size.len() != 2 || size[1] != self.classes as i64 {
            return Err(EvalError::shape("class probabilities", format!("[n, {}]", self.classes), format!("{size:?}")));
        }
        let n = size[0] as u64;
        if first.checked_add(n).is_none_or(|end| end > self.total) {
            return Err(EvalError::InvalidArgument(format!(
                "images {first}..{} are outside the job's 0..{}",
                first.saturating_add(n),
                self.total
            )));
        }
        let p = to_vec_f64(&probs.to_kind(Kind::Double))?;
        let c = self.classes;
        for (i, row) in p.chunks_exact(c).enumerate() {
            check_distribution(row, first + i as u64)?;
            let k = self.split_of(first + i as u64);
            self.counts[k] += 1;
            self.sum_plogp[k] += row.iter().map(|&v| if v > 0.0 { v * v.ln() } else { 0.0 }).sum::<f64>();
            for (acc, v) in self.sum_p[k * c..(k + 1) * c].iter_mut().zip(row) {
                *acc += v;
            }
        }
        Ok(())
    }

    /// Adds another shard's sums (same total, splits and classes).
    pub fn merge(&mut self, other: &ScoreStats) -> Result<(), EvalError> {
        if (other.total, other.splits(), other.classes) != (self.total, self.splits(), self.classes) {
            return Err(EvalError::Stats(format!(
                "cannot merge Inception Score sums of {} images / {} splits / {} classes into {} / {} / {}",
                other.total,
                other.splits(),
                other.classes,
                self.total,
                self.splits(),
                self.classes
            )));
        }
        for k in 0..self.splits() {
            if self.counts[k] + other.counts[k] > self.part_len(k) {
                return Err(EvalError::Stats(format!("split {k} would count more images than it holds: overlapping shards")));
            }
        }
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
        self.sum_plogp.iter_mut().zip(&other.sum_plogp).for_each(|(a, b)| *a += b);
        self.sum_p.iter_mut().zip(&other.sum_p).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// `(mean, std)` of the per-part scores; every image of the job must have been added.
    pub fn score(&self) -> Result<(f64, f64), EvalError> {
        let c = self.classes;
        let mut scores = Vec::with_capacity(self.splits());
        for k in 0..self.splits() {
            let n = self.counts[k];
            if n != self.part_len(k) {
                return Err(EvalError::Stats(format!(
                    "split {k} has {n} of its {} images: add every image of the job before scoring",
                    self.part_len(k)
                )));
            }
            let n = n as f64;
            let marginal_term: f64 =
                self.sum_p[k * c..(k + 1) * c].iter().map(|&s| s / n).map(|py| if py > 0.0 { py * py.ln() } else { 0.0 }).sum();
            scores.push((self.sum_plogp[k] / n - marginal_term).exp());
        }
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        let var = scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / scores.len() as f64;
        Ok((mean, var.sqrt()))
    }
}

/// Rows must be probabilities: non-negative and summing to 1 (a softmax).
fn check_distribution(row: &[f64], index: u64) -> Result<(), EvalError> {
    let total: f64 = row.iter().sum();
    if row.iter().any(|v| !v.is_finite() || *v < 0.0) || (total - 1.0).abs() > 1e-3 {
        return Err(EvalError::InvalidArgument(format!(
            "row {index} is not a probability distribution (sum {total}): the Inception Score takes \
             softmax probabilities, not logits"
        )));
    }
    Ok(())
}

/// The Inception Score `(mean, std)` of probabilities `[N, C]` (rows are
/// softmax outputs) in `splits` parts: [`ScoreStats`] over one shard.
pub fn inception_score(probs: &Tensor, splits: usize) -> Result<(f64, f64), EvalError> {
    let size = probs.size();
    if size.len() != 2 {
        return Err(EvalError::shape("class probabilities", "[N, C]", format!("{size:?}")));
    }
    let mut s = ScoreStats::new(size[0] as u64, splits, size[1] as usize)?;
    s.add_probs(probs, 0)?;
    s.score()
}
