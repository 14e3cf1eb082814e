//! Checkpoints: everything needed to continue a run as if it had never
//! stopped, written to the run's store ([`crate::store::RunStore`]) data
//! first and manifest last.
//!
//! Storage is separate from policy: this module says what a checkpoint is
//! (`data.rs` in memory, `format.rs` in the store), how to write, list, verify, read and prune them
//! (`ops.rs`), the sharded layout the replicas write when the coordinator
//! keeps no copy of the state (`sharded.rs`), when to take one (`policy.rs`), and how to upload one in the
//! background with retries (`uploader.rs`). The settings (when to save,
//! what to keep, upload retries) are the `[checkpoint]` section of the
//! training config, [`CheckpointConfig`] in `crate::config`. The
//! coordinator decides when to call which.
//!
//! Resume is exact because the state is complete: parameters, Adam's moments
//! and update count, the EMA, the step counter, the skipped-step count, the
//! data-stream position and the RNG state (seed + step: every random choice
//! is a pure function of `(seed, step, sample position)`), and the resolved
//! config.

mod capture;
mod data;
mod encode;
mod error;
pub mod format;
mod ops;
pub mod policy;
pub mod sharded;
pub mod uploader;

/// `[checkpoint]` lives with the rest of the config; re-exported here for
/// the callers that name it `ddpm::checkpoint::CheckpointConfig`.
pub use crate::config::CheckpointConfig;
pub use data::CheckpointData;
pub use encode::{decode, encode, Encoded, EncodedFile};
pub use error::CheckpointError;
pub use format::{step_dir, Manifest, ManifestError, ShardEntry, StateFile, FORMAT_VERSION};
pub use ops::{
    latest_complete, list, load_latest, prune, read, verify, write, write_encoded, CheckpointInfo, Loaded, PruneReport, Skipped,
    WriteReport,
};
pub use policy::{CheckpointPolicy, Reason};
pub use uploader::{UploadEvent, Uploader, UploaderConfig};
