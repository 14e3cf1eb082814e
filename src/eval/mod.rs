//! Evaluation (docs/ddpm.md sections 9 and 4): FID and Inception Score through the
//! Inception TorchScript file, feature statistics that shard across workers,
//! the pytorch-fid / TTUR `.npz` layouts, and the bound in bits/dim.
//!
//! # How a distributed evaluation fits together
//!
//! - Reference statistics: each worker runs [`dataset_stats_range`] on its
//!   index range and ships [`FeatureStats::to_bytes`]; the coordinator
//!   [`FeatureStats::from_bytes`] + [`FeatureStats::merge`]s them, takes
//!   [`FeatureStats::to_fid_stats`] and [`write_stats_npz`]s the result.
//! - Samples: each worker draws its images (`train::sample::sample_images`,
//!   uint8 as for PNG), runs [`add_images`] into an [`ImageEvalSums`] and
//!   ships both sums; the coordinator merges, then
//!   `FidStats::fid(&read_stats_npz(reference)?)` and [`ScoreStats::score`].
//!   [`SamplesNpzWriter`] keeps the images as an openai-style `.npz`.
//! - Bits/dim: each worker runs [`dataset_bpd`] (or [`images_bpd`]) on its
//!   range; [`BpdSums`] merge.
//!
//! # Files
//!
//! - `stats.rs`: [`FeatureStats`] (float64 sums), [`FidStats`] (`mu`, `sigma`)
//! - `bytes.rs`: their binary forms for the wire
//! - `fid.rs`: [`frechet_distance`]
//! - `npy.rs`, `npz.rs`: `.npy` / `.npz` reading and writing
//! - `inception.rs`: [`InceptionModel`], the TorchScript call convention
//! - `score.rs`: [`ScoreStats`], [`inception_score`]
//! - `images.rs`: datasets and samples through the model in batches
//! - `bpd.rs`: the bound in bits/dim on dataset images
//! - `error.rs`: [`EvalError`]

mod bpd;
mod bytes;
mod error;
mod fid;
mod images;
mod inception;
pub mod npy;
mod npz;
mod score;
mod stats;

pub use bpd::{bpd_noise, dataset_bpd, images_bpd, BpdBatch, BpdSums};
pub use error::EvalError;
pub use fid::{frechet_distance, trace_sqrt_product};
pub use images::{add_images, dataset_stats, dataset_stats_range, ImageEvalSums};
pub use inception::{images_tensor, InceptionModel};
pub use npz::{read_npz_array, read_samples_npz, read_stats_npz, write_samples_npz, write_stats_npz, SampleImages, SamplesNpzWriter};
pub use score::{inception_score, ScoreStats};
pub use stats::{FeatureStats, FidStats};

#[cfg(test)]
mod tests;
