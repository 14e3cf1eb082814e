//! Where a run's bytes go: the local filesystem or an S3-compatible object
//! store, behind one small async API over the `object_store` crate.
//!
//! This module knows nothing of checkpoints (that is `crate::checkpoint`,
//! which decides what to write and when); it moves named blobs under the
//! run's root. Keys are relative `/`-separated names such as
//! `checkpoints/step_0000001000/model.safetensors`.
//!
//! - Puts above the part size go up as multipart uploads (4 parts in
//!   flight), smaller ones in one request. The local store writes a
//!   temporary file, fsyncs it, renames it and fsyncs the directory
//!   (`object_store`'s `with_fsync`), so a reader never sees half an object
//!   and an object that was put survives a power cut: a checkpoint's
//!   manifest, written last, only ever names files that are on disk.
//! - Every request is retried with exponential backoff
//!   ([`RetryOptions`]) on connection errors, 5xx and throttling; what is
//!   left is classified into a [`StoreError`] that says what to fix.
//!
//! - A store can be fenced ([`RunStore::fenced_by`]): every write asks the
//!   fence first, so a coordinator that lost its run lease writes nothing.
//!
//! Files: `run_store.rs` ([`RunStore`], the API), `options.rs` (the
//! `--run` grammar, S3 options, clap flags), `error.rs` (the error and its
//! classification), `lease.rs` (the run lease: one coordinator per run),
//! `metrics_rows.rs` (a run's metrics log read back), `run_id.rs` (the
//! run's id), `faulty.rs` (faults injected for tests).

mod error;
pub mod faulty;
pub mod lease;
pub mod metrics_rows;
mod options;
pub mod run_id;
mod run_store;

pub use error::{FenceError, StoreError};
pub use options::{Location, RetryOptions, StoreArgs, StoreOptions, DEFAULT_PART_SIZE, MIN_PART_SIZE};
pub use run_store::{Fence, ObjectInfo, PeerLocation, RunStore};
