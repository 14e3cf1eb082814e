//! Sampling order: which dataset images make up global batch `step`, and
//! which part of it each worker trains on.
//!
//! The training stream is an endless sequence of positions `p = 0, 1, 2...`;
//! position `p` lies in epoch `p / len` and reads dataset index
//! `permutation(seed, epoch)[p % len]` (`rng::permutation`, a Fisher-Yates
//! shuffle per epoch). Global batch `step` is positions
//! `step * batch_size .. (step + 1) * batch_size`, so a batch may span two
//! epochs and the whole order is a function of `(seed, len, batch_size,
//! step)`: the only stream state a checkpoint needs is the step (see
//! [`OrderState`]).
//!
//! Per-sample randomness (timestep, noise, flip) is keyed by the position,
//! the *global* sample index: [`BatchItem::draw`] and [`BatchItem::noise`].
//! A sample therefore gets the same loss whichever worker holds it, and
//! splitting a batch over 1, 2 or 3 workers trains the same model.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::rng;

/// One sample of a global batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchItem {
    /// Global sample index = position in the stream = `step * batch_size + j`.
    pub position: u64,
    /// Index into the dataset.
    pub index: usize,
}

impl BatchItem {
    /// Timestep and flip of this sample at `step` (`rng::sample_draw` keyed
    /// by `(seed, step, position)`).
    pub fn draw(&self, seed: u64, step: u64, num_timesteps: u64, flip_enabled: bool) -> rng::SampleDraw {
        rng::sample_draw(seed, step, self.position, num_timesteps, flip_enabled)
    }

    /// The noise `eps` of this sample at `step`, `out.len()` standard normals.
    pub fn noise(&self, seed: u64, step: u64, out: &mut [f32]) {
        rng::sample_noise(seed, step, self.position, out)
    }
}

/// The positions -> indices map with the current epoch's permutation cached,
/// so consecutive batches cost O(batch) rather than O(len).
#[derive(Clone, Debug)]
pub struct SampleOrder {
    seed: u64,
    len: usize,
    cached: Option<(u64, Vec<u32>)>,
}

impl SampleOrder {
    /// # Panics
    /// If `len` is 0 or above 2^32 (datasets refuse to open empty).
    pub fn new(seed: u64, len: usize) -> Self {
        assert!(len > 0, "SampleOrder over an empty dataset");
        assert!(len <= u32::MAX as usize, "dataset larger than 2^32 samples");
        SampleOrder { seed, len, cached: None }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn dataset_len(&self) -> usize {
        self.len
    }

    /// The dataset index at stream position `position`.
    pub fn index_at(&mut self, position: u64) -> usize {
        let len = self.len as u64;
        let epoch = position / len;
        if self.cached.as_ref().map(|(e, _)| *e) != Some(epoch) {
            self.cached = Some((epoch, rng::permutation(self.seed, epoch, self.len)));
        }
        let perm = &self.cached.as_ref().expect("just cached").1;
        perm[(position % len) as usize] as usize
    }

    /// Global batch `step`: positions `step * batch_size ..` and their indices.
    pub fn batch(&mut self, batch_size: usize, step: u64) -> Vec<BatchItem> {
        let start = step * batch_size as u64;
        (start..start + batch_size as u64).map(|position| BatchItem { position, index: self.index_at(position) }).collect()
    }
}

/// Global batch `step` (see the module documentation). Builds the epoch's
/// permutation on every call; loops should keep a [`SampleOrder`].
pub fn global_batch(seed: u64, dataset_len: usize, batch_size: usize, step: u64) -> Vec<BatchItem> {
    SampleOrder::new(seed, dataset_len).batch(batch_size, step)
}

/// The global batch of 1-based training step `step`: batch index
/// `step - 1` of the stream ([`global_batch`]). This is the data order of a
/// run: the single-process trainer reads it and the coordinator shards it.
pub fn step_batch(seed: u64, dataset_len: usize, batch_size: usize, step: u64) -> Vec<BatchItem> {
    global_batch(seed, dataset_len, batch_size, step - 1)
}

/// Splits a batch of `batch_size` over `workers`: contiguous ranges whose
/// sizes differ by at most one, the earlier ones larger. With more workers
/// than samples the last ranges are empty.
///
/// # Panics
/// If `workers` is 0.
pub fn shard_ranges(batch_size: usize, workers: usize) -> Vec<Range<usize>> {
    assert!(workers > 0, "shard_ranges over zero workers");
    let (base, extra) = (batch_size / workers, batch_size % workers);
    let mut start = 0;
    (0..workers)
        .map(|w| {
            let len = base + usize::from(w < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// Where a run stands in its data stream, as a checkpoint saves it. The
/// order is a function of these fields, so resuming at `step` reproduces
/// the batches exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub seed: u64,
    pub dataset_len: usize,
    pub batch_size: usize,
    /// The next step to train: batches `0..step` have been consumed.
    pub step: u64,
}

impl OrderState {
    /// Stream position of the next sample.
    pub fn position(&self) -> u64 {
        self.step * self.batch_size as u64
    }

    /// Epochs completed, fractional.
    pub fn epoch(&self) -> f64 {
        self.position() as f64 / self.dataset_len.max(1) as f64
    }

    /// Checks that a run resumed from this state reads the same stream: the
    /// dataset must have the same length and the batch the same size.
    pub fn check_resume(&self, dataset_len: usize, batch_size: usize) -> Result<(), ResumeError> {
        if dataset_len != self.dataset_len {
            return Err(ResumeError::DatasetLength { trained: self.dataset_len, now: dataset_len });
        }
        if batch_size != self.batch_size {
            return Err(ResumeError::BatchSize { trained: self.batch_size, now: batch_size });
        }
        Ok(())
    }
}

/// Why a resumed run would not read the stream the checkpoint's run read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error(
        "the checkpoint was trained on a dataset of {trained} samples but this one has {now}: \
         resuming would change the sampling order; use the same dataset"
    )]
    DatasetLength { trained: usize, now: usize },
    #[error(
        "the checkpoint used a global batch of {trained} but this run has {now}: \
         the stream position would not line up; keep the global batch size"
    )]
    BatchSize { trained: usize, now: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ranges_are_contiguous_and_balanced() {
        assert_eq!(shard_ranges(10, 3), vec![0..4, 4..7, 7..10]);
        assert_eq!(shard_ranges(2, 3), vec![0..1, 1..2, 2..2]);
        assert_eq!(shard_ranges(128, 8).iter().map(|r| r.len()).collect::<Vec<_>>(), vec![16; 8]);
    }

    #[test]
    fn batches_span_epochs() {
        // len 5, batch 3: step 1 is positions 3, 4 (epoch 0) and 5 (epoch 1).
        let b = global_batch(9, 5, 3, 1);
        let p0 = rng::permutation(9, 0, 5);
        let p1 = rng::permutation(9, 1, 5);
        assert_eq!(b.iter().map(|i| i.position).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(b.iter().map(|i| i.index).collect::<Vec<_>>(), vec![p0[3] as usize, p0[4] as usize, p1[0] as usize]);
    }
}
