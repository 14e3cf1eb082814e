//! What can go wrong with a checkpoint.

use crate::store::StoreError;

/// What went wrong with a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data handed over to be written is inconsistent (a caller bug).
    #[error("invalid checkpoint data: {reason}")]
    Invalid { reason: String },
    /// No checkpoint of that step.
    #[error("no checkpoint of step {step} in {url}: `ddpm checkpoints list --run {url}` shows the ones there are")]
    NotFound { url: String, step: u64 },
    /// The run has no complete checkpoint at all.
    #[error("no complete checkpoint in {url}")]
    NoCheckpoint { url: String },
    /// The checkpoint is incomplete or damaged (no manifest, missing file,
    /// wrong size or checksum): it does not count as a checkpoint.
    #[error("checkpoint of step {step} is incomplete or damaged: {problem}")]
    Torn { step: u64, problem: String },
    /// A file matches its checksum but its contents are not what the format says.
    #[error("checkpoint of step {step}: {file}: {reason}")]
    Format { step: u64, file: String, reason: String },
    /// The checkpoint cannot continue this run.
    #[error("cannot resume from the checkpoint of step {step}: {reason}")]
    Incompatible { step: u64, reason: String },
}
