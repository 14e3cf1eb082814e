//! Images through the feature network, in batches: a dataset's reference
//! statistics over an index range (one shard of a job), and the features
//! and class probabilities of generated samples.
//!
//! Images enter as uint8 exactly as decoded (datasets: cropped and resized,
//! never flipped) or as quantized for PNG (samples: `train::sample::to_uint8`),
//! so both sides of the FID see the same kind of pixels (docs/ddpm.md section 9).

use std::ops::Range;

use super::error::EvalError;
use super::inception::{images_tensor, InceptionModel};
use super::score::ScoreStats;
use super::stats::FeatureStats;
use crate::data::{decode_sample, Dataset};

/// Feature statistics of dataset images `range` (indices in the dataset's own
/// order), `batch` images per forward pass. Shards over disjoint ranges
/// [`merge`](FeatureStats::merge) into the statistics of their union.
/// `progress(done, total)` is called after each batch.
pub fn dataset_stats_range(
    ds: &dyn Dataset,
    model: &InceptionModel,
    range: Range<usize>,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FeatureStats, EvalError> {
    if range.start >= range.end || range.end > ds.len() {
        return Err(EvalError::InvalidArgument(format!(
            "image range {}..{} is empty or outside the dataset's 0..{}",
            range.start,
            range.end,
            ds.len()
        )));
    }
    let batch = check_batch(batch)?;
    let r = ds.decoder().resolution();
    let mut stats = FeatureStats::new(model.feature_dim());
    let total = range.len();
    let mut start = range.start;
    while start < range.end {
        let end = (start + batch).min(range.end);
        let pixels = decode_parallel(ds, start..end)?;
        let x = images_tensor(&pixels, r, r, model.device())?;
        stats.add_batch(&model.features(&x)?)?;
        progress(end - range.start, total);
        start = end;
    }
    Ok(stats)
}

/// Feature statistics of the first `max` images of a dataset (all of them
/// when `max` is `None`): [`dataset_stats_range`] over `0..min(max, len)`.
pub fn dataset_stats(
    ds: &dyn Dataset,
    model: &InceptionModel,
    max: Option<usize>,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FeatureStats, EvalError> {
    let n = max.unwrap_or(usize::MAX).min(ds.len());
    dataset_stats_range(ds, model, 0..n, batch, progress)
}

/// Decodes samples `range` to uint8 `[n, 3, R, R]`, on several threads
/// (LSUN's WebP decoding and resizing dominate otherwise).
pub(crate) fn decode_parallel(ds: &dyn Dataset, range: Range<usize>) -> Result<Vec<u8>, EvalError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let chunk = range.len().div_ceil(threads).max(1);
    let starts: Vec<usize> = range.clone().step_by(chunk).collect();
    let parts: Vec<Result<Vec<u8>, EvalError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = starts
            .iter()
            .map(|&a| {
                let b = (a + chunk).min(range.end);
                scope.spawn(move || -> Result<Vec<u8>, EvalError> {
                    let mut out = Vec::new();
                    for i in a..b {
                        out.extend(decode_sample(ds, i)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(EvalError::InvalidArgument("a decoding thread panicked".into()))))
            .collect()
    });
    let mut pixels = Vec::new();
    for part in parts {
        pixels.extend(part?);
    }
    Ok(pixels)
}

/// What to take from generated images.
#[derive(Debug)]
pub struct ImageEvalSums {
    /// Pool-feature statistics (FID).
    pub features: FeatureStats,
    /// Inception Score sums, when asked for.
    pub scores: Option<ScoreStats>,
}

/// Feeds uint8 images `[n, 3, h, w]`, global indices `first..first + n` of a
/// job, through the model in batches of `batch`: their features into
/// `sums.features` and, if `sums.scores` is set, their probabilities (with
/// `no_output_bias`, as the Inception Score uses) into it. A worker calls this
/// on its shard and ships both sums ([`FeatureStats::to_bytes`],
/// [`ScoreStats::to_bytes`]).
pub fn add_images(
    model: &InceptionModel,
    pixels_nchw: &[u8],
    height: usize,
    width: usize,
    first: u64,
    batch: usize,
    sums: &mut ImageEvalSums,
) -> Result<(), EvalError> {
    let batch = check_batch(batch)?;
    let per = 3 * height * width;
    if per == 0 || !pixels_nchw.len().is_multiple_of(per) {
        return Err(EvalError::shape(
            "images",
            format!("whole images of 3 x {height} x {width} bytes"),
            format!("{} bytes", pixels_nchw.len()),
        ));
    }
    for (b, chunk) in pixels_nchw.chunks(batch * per).enumerate() {
        let x = images_tensor(chunk, height, width, model.device())?;
        sums.features.add_batch(&model.features(&x)?)?;
        if let Some(scores) = sums.scores.as_mut() {
            scores.add_probs(&model.probabilities(&x, true)?, first + (b * batch) as u64)?;
        }
    }
    Ok(())
}

impl ImageEvalSums {
    /// Empty sums for `model`'s features, and for the Inception Score of a
    /// job of `total` images in `splits` parts when `splits` is given.
    pub fn new(model: &InceptionModel, total: u64, splits: Option<usize>) -> Result<Self, EvalError> {
        let scores = splits.map(|s| ScoreStats::new(total, s, model.num_classes())).transpose()?;
        Ok(Self { features: FeatureStats::new(model.feature_dim()), scores })
    }
}

fn check_batch(batch: usize) -> Result<usize, EvalError> {
    if batch == 0 {
        return Err(EvalError::InvalidArgument("batch size 0: use at least 1 image per forward pass".into()));
    }
    Ok(batch)
}
