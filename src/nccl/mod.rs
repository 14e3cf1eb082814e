//! NCCL, loaded at run time: the reduction backend for GPU workers
//! (`[dist] backend = "nccl"`, and `auto` when every member is a GPU).
//!
//! `libnccl.so.2` is opened with `dlopen` when a worker is asked for NCCL,
//! never linked: CPU builds, CPU workers and the coordinator need none of
//! it. Where it is looked for is in `search.rs` (`DDPM_NCCL_LIBRARY`, the
//! torch wheel's, the system's); `library.rs` resolves the functions and
//! refuses a library without them or older than [`MINIMUM`] (a
//! [`Version`], in `version.rs`); `comm.rs` is the safe wrapper of a
//! communicator; `error.rs` says what went wrong and what to do. [`preflight`] is what a worker runs when it registers for
//! an NCCL run: a CPU worker or a missing library refuses there, before the
//! run starts.
//!
//! `pinned.rs` pins the algorithm and protocol every replica reduces
//! with; `cuda.rs` makes a rank's device current before it joins.
//!
//! Built and tested on a machine without a GPU: loading, the version, the
//! unique id and every refusal are tested; a communicator, the all-reduce
//! and abort have NOT YET RUN ON A GPU, nor has the worker's exchange over
//! them (`nccl_exchange.rs` of ddpm-worker).

mod comm;
mod cuda;
mod error;
mod library;
mod pinned;
pub mod search;
mod version;

pub use comm::{Comm, CommWatch, CudaStream, UniqueId};
pub use cuda::set_current_device;
pub use error::{NcclError, Tried};
pub use library::{check_version, Nccl, MINIMUM};
pub use pinned::{pin_collectives, PINNED};
pub use version::Version;

/// What a worker checks when a run asks it for NCCL, before it joins:
/// a CUDA device (NCCL has no CPU ranks), then the library.
pub fn preflight(device: tch::Device) -> Result<Nccl, NcclError> {
    if !device.is_cuda() {
        return Err(NcclError::NoCudaDevice { device: format!("{device:?}").to_lowercase() });
    }
    Nccl::load()
}

#[cfg(test)]
mod tests;
