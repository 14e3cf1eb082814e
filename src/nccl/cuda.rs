//! The one CUDA runtime call the NCCL backend makes itself:
//! `cudaSetDevice`, because `ncclCommInitRank` binds the communicator to
//! the calling thread's current device, and libtorch only switches the
//! device around each of its own calls (a device guard), leaving the
//! thread on device 0. A worker of `--gpus` runs `--gpu I` with every GPU
//! visible, so device I must be made current before the communicator is.
//!
//! The function comes from the CUDA runtime libtorch already loaded (a
//! CUDA build of libtorch links `libcudart`), found in the process's
//! global symbol scope, so that this runtime and libtorch's are the same.

use std::ffi::c_int;

use super::error::NcclError;

type SetDeviceFn = unsafe extern "C" fn(c_int) -> c_int;

/// Makes CUDA device `index` the calling thread's current device.
pub fn set_current_device(index: usize) -> Result<(), NcclError> {
    let this = libloading::os::unix::Library::this();
    // SAFETY: cudaSetDevice's C signature (cuda_runtime_api.h); the
    // process's own scope stays loaded for its whole life.
    let set: libloading::os::unix::Symbol<SetDeviceFn> = unsafe { this.get(b"cudaSetDevice\0") }.map_err(|_| NcclError::NoCudaRuntime)?;
    let device = c_int::try_from(index).map_err(|_| NcclError::Cuda { call: "cudaSetDevice", code: 101 })?;
    // SAFETY: takes an int; returns a cudaError_t.
    let rc = unsafe { set(device) };
    if rc != 0 {
        return Err(NcclError::Cuda { call: "cudaSetDevice", code: rc });
    }
    Ok(())
}
