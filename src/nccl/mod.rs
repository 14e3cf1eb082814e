//! NCCL, loaded at run time: the reduction backend for GPU workers
//! (`[dist] backend = "nccl"`, and `auto` when every member is a GPU).
//!
//! `libnccl.so.2` is opened with `dlopen` when a worker is asked for NCCL,
//! never linked: CPU builds, CPU workers and the coordinator need none of
//! it. Where it is looked for is in `search.rs` (`DDPM_NCCL_LIBRARY`, the
//! torch wheel's, the system's); `library.rs` resolves the functions and
//! refuses a library without them or older than [`MINIMUM`]; `comm.rs` is
//! the safe wrapper of a communicator; `error.rs` says what went wrong and
//! what to do. [`preflight`] is what a worker runs when it registers for
//! an NCCL run: a CPU worker or a missing library refuses there, before the
//! run starts.
//!
//! Built and tested on a machine without a GPU: loading, the version, the
//! unique id and every refusal are tested; a communicator, the all-reduce
//! and abort have NOT YET RUN ON A GPU, and the exchange that will use them
//! (the worker's `GradientExchange` over NCCL) is not written yet.

mod comm;
mod error;
mod library;
pub mod search;

pub use comm::{Comm, CudaStream, UniqueId};
pub use error::{NcclError, Tried};
pub use library::{check_version, Nccl, MINIMUM};

/// An NCCL version, as `ncclGetVersion` encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// Decodes `NCCL_VERSION_CODE`: `X*1000 + Y*100 + Z` up to 2.8, then
    /// `X*10000 + Y*100 + Z` (nccl.h's `NCCL_VERSION` macro), so 2.4.2 is
    /// 2402 and 2.28.9 is 22809.
    pub fn from_code(code: i32) -> Self {
        let c = code.max(0) as u32;
        if c >= 10_000 {
            Self { major: c / 10_000, minor: (c % 10_000) / 100, patch: c % 100 }
        } else {
            Self { major: c / 1000, minor: (c % 1000) / 100, patch: c % 100 }
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

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
