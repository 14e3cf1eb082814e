//! What the device thread does for the NCCL backend
//! (`crate::nccl_exchange`): join an epoch's communicator, and one
//! all-reduce of a step's gradient on the device.
//!
//! NOT YET RUN ON A GPU: written on a machine without one; only the
//! refusals before any CUDA call are exercised there.

use ddpm::nccl::{Comm, CommWatch, CudaStream, Nccl, NcclError, UniqueId};
use tch::{Device, Tensor};

use super::error::DeviceError;

/// Replaces the thread's communicator with rank `rank` of `size` of
/// communicator `id`; returns the handle that watches it from the async
/// side. Blocks until every rank has joined (NCCL's bootstrap).
pub(super) fn join(
    slot: &mut Option<Comm>,
    device: Device,
    nccl: &Nccl,
    id: &UniqueId,
    rank: usize,
    size: usize,
) -> Result<CommWatch, DeviceError> {
    if let Some(old) = slot.take() {
        // The old epoch ended, perhaps with a rank lost: destroying its
        // communicator could wait forever for that rank, aborting cannot.
        if let Err(e) = old.abort() {
            tracing::warn!("aborting the previous NCCL communicator: {e}");
        }
    }
    let Device::Cuda(index) = device else {
        return Err(DeviceError::Nccl(NcclError::NoCudaDevice { device: format!("{device:?}").to_lowercase() }));
    };
    // ncclCommInitRank binds the communicator to the thread's current
    // device; libtorch leaves the thread on device 0.
    ddpm::nccl::set_current_device(index).map_err(DeviceError::Nccl)?;
    let comm = Comm::init_rank(nccl, size, id, rank).map_err(DeviceError::Nccl)?;
    let watch = comm.watch();
    *slot = Some(comm);
    Ok(watch)
}

/// The sum over the communicator's ranks of `weight * grad` (each
/// member's shard weight, so that the sum is the batch's mean gradient,
/// as the star and the ring weigh it), back in `grad`'s buffer.
///
/// On libtorch's current CUDA stream, which is the device's default
/// (legacy NULL) stream since ddpm never sets another: the upload and the
/// scaling are queued on it before the collective, the copy back after
/// it, so each waits for the one before without a synchronisation of its
/// own. The copy back is where this thread waits for the collective; when
/// a rank is lost, the async side aborts the communicator (its
/// `CommWatch`), which ends the collective and this wait, and the result
/// is refused below.
pub(super) fn all_reduce(comm: Option<&Comm>, device: Device, mut grad: Vec<f32>, weight: f32) -> Result<Vec<f32>, DeviceError> {
    let comm = comm.ok_or(DeviceError::NoCommunicator)?;
    let n = grad.len();
    let torch = DeviceError::NcclTensor;
    // [n] float32 on the device, in place from here on.
    let mut flat = Tensor::from_slice(&grad).f_to_device(device).map_err(torch)?;
    let _ = flat.f_mul_scalar_(f64::from(weight)).map_err(torch)?;
    // SAFETY: `flat` holds n contiguous float32 on the communicator's
    // device and is neither freed nor touched by other work until the copy
    // below, queued on the same stream after the collective, has returned.
    unsafe { comm.all_reduce_f32_sum(flat.data_ptr().cast::<f32>(), n, CudaStream::DEFAULT) }.map_err(DeviceError::Nccl)?;
    let host = flat.f_to_device(Device::Cpu).map_err(torch)?;
    // An aborted or failed collective leaves garbage: refused, never applied.
    comm.async_error().map_err(DeviceError::Nccl)?;
    host.f_copy_data(&mut grad, n).map_err(torch)?;
    Ok(grad)
}
