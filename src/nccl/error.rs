//! Why NCCL cannot be used here, with what to do about it.

use std::path::PathBuf;

use super::version::Version;

/// A place the loader looked for `libnccl.so.2`, and why it was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    /// The path, or the bare soname handed to the dynamic loader.
    pub candidate: String,
    /// Where the candidate came from (`DDPM_NCCL_LIBRARY`, the torch wheel, ...).
    pub source: &'static str,
    /// The loader's answer (no such file, a dlopen error).
    pub reason: String,
}

/// Why the NCCL backend cannot run in this process.
#[derive(Debug, thiserror::Error)]
pub enum NcclError {
    /// NCCL all-reduces between CUDA devices only: a worker on the CPU has
    /// no rank to give it.
    #[error(
        "[dist] backend = \"nccl\" needs a CUDA device, but this worker runs on {device}: run it with --gpu N \
         (or --gpus), or choose backend = \"ring\" or \"auto\" (the ring whenever a member is a CPU)"
    )]
    NoCudaDevice { device: String },
    /// No candidate could be loaded.
    #[error(
        "cannot load NCCL (libnccl.so.2); looked in:\n{}\nset DDPM_NCCL_LIBRARY to the library's path, or install the \
         torch wheel's NCCL (pip's nvidia-nccl-cu13, which puts nvidia/nccl/lib/libnccl.so.2 next to torch) or the \
         system's (libnccl2)",
        list(.tried)
    )]
    NotFound { tried: Vec<Tried> },
    /// A library that loaded but is not NCCL, or an NCCL without a function we call.
    #[error("{library} has no {symbol}: it is not NCCL, or an NCCL too old for ddpm (it needs {minimum} or newer)")]
    MissingSymbol { library: PathBuf, symbol: &'static str, minimum: Version },
    /// An NCCL older than the API ddpm calls.
    #[error(
        "{library} is NCCL {found}, but ddpm needs {minimum} or newer ({why}): install a newer NCCL or point DDPM_NCCL_LIBRARY at one"
    )]
    TooOld { library: PathBuf, found: Version, minimum: Version, why: &'static str },
    /// No CUDA runtime in this process (a CPU-only libtorch).
    #[error("this process has no CUDA runtime (cudaSetDevice is not loaded): a CPU-only libtorch cannot run NCCL; use a CUDA build")]
    NoCudaRuntime,
    /// A CUDA runtime call that failed (`cudaError_t`).
    #[error("{call} failed: CUDA error {code} (no usable device, or a driver older than the runtime)")]
    Cuda { call: &'static str, code: i32 },
    /// A call that returned an error code.
    #[error("{call} failed: NCCL error {code} ({message})")]
    Call { call: &'static str, code: i32, message: String },
}

fn list(tried: &[Tried]) -> String {
    if tried.is_empty() {
        return "  (nowhere: no candidate)".into();
    }
    tried.iter().map(|t| format!("  {} ({}): {}", t.candidate, t.source, t.reason)).collect::<Vec<_>>().join("\n")
}
