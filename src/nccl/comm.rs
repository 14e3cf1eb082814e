//! The safe face of an NCCL communicator: a unique id made by one rank and
//! handed to the others, `init_rank` on each, an in-place float32 sum, the
//! async error poll, abort, and destroy on drop.
//!
//! NOT YET RUN ON A GPU: this wrapper is built and its types are checked,
//! but no communicator has been created with it (the machine it was written
//! on has no CUDA device; there `init_rank` of a lone rank is tested to
//! return NCCL's "unhandled cuda error" as a typed error). The exchange that uses it (a communicator per
//! epoch, the unique id through the coordinator, abort on a lost member)
//! is not written yet.

use std::ffi::{c_int, c_void};
use std::sync::Arc;

use super::error::NcclError;
use super::library::{Api, Nccl, RawComm, RawUniqueId};

/// `ncclFloat32` and `ncclSum` (nccl.h).
const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;

/// The bytes one rank makes with [`Nccl::unique_id`] and every rank of the
/// communicator passes to [`Comm::init_rank`]: they name the root's
/// bootstrap socket, so they travel to the others (through the coordinator)
/// and are useless once the communicator exists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UniqueId([u8; UniqueId::BYTES]);

impl UniqueId {
    /// `NCCL_UNIQUE_ID_BYTES`.
    pub const BYTES: usize = 128;

    pub fn as_bytes(&self) -> &[u8; Self::BYTES] {
        &self.0
    }

    /// The id from bytes received from the coordinator; `None` unless exactly [`UniqueId::BYTES`] long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl std::fmt::Debug for UniqueId {
    // The id holds a socket address and a random magic: not for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UniqueId(..)")
    }
}

impl Nccl {
    /// A fresh unique id (`ncclGetUniqueId`), made by rank 0 of each new
    /// communicator. It starts NCCL's bootstrap listener on this host.
    pub fn unique_id(&self) -> Result<UniqueId, NcclError> {
        let mut raw = RawUniqueId { internal: [0; UniqueId::BYTES] };
        // SAFETY: writes the 128-byte struct it is given.
        let rc = unsafe { (self.api.get_unique_id)(&mut raw) };
        self.api.check("ncclGetUniqueId", rc)?;
        Ok(UniqueId(raw.internal))
    }
}

/// A CUDA stream (`cudaStream_t`) the collective is queued on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaStream(*mut c_void);

impl CudaStream {
    /// The default (legacy NULL) stream: libtorch's current stream unless
    /// code sets another one with a stream guard, which ddpm never does, so
    /// the all-reduce is ordered after the backward pass that wrote the
    /// gradient without a synchronisation.
    pub const DEFAULT: CudaStream = CudaStream(std::ptr::null_mut());

    /// A stream from its raw handle.
    ///
    /// # Safety
    /// `raw` must be a valid stream of the communicator's device for as long as collectives queued on it run.
    pub unsafe fn from_raw(raw: *mut c_void) -> Self {
        Self(raw)
    }
}

/// One rank's communicator. Owned by one thread at a time (NCCL does not
/// allow concurrent calls on one communicator): `Send`, not `Sync`.
pub struct Comm {
    api: Arc<Api>,
    raw: RawComm,
    rank: usize,
    size: usize,
}

// SAFETY: an ncclComm_t may be used from any thread, one at a time; `Comm`
// is not `Sync`, and every method takes `&self` or `self` on its owner's thread.
unsafe impl Send for Comm {}

impl Comm {
    /// Joins communicator `id` as `rank` of `size` (`ncclCommInitRank`).
    /// Blocks until every rank has joined (NCCL's bootstrap), so each rank
    /// calls it from its own process. The calling thread's current CUDA
    /// device must be this rank's: NCCL binds the communicator to it.
    pub fn init_rank(nccl: &Nccl, size: usize, id: &UniqueId, rank: usize) -> Result<Comm, NcclError> {
        let invalid = |what: String| NcclError::Call { call: "ncclCommInitRank", code: 4, message: what };
        let n = c_int::try_from(size).map_err(|_| invalid(format!("{size} ranks do not fit a C int")))?;
        if rank >= size {
            return Err(invalid(format!("rank {rank} is not below the size {size}")));
        }
        let mut raw: RawComm = std::ptr::null_mut();
        // SAFETY: writes the new handle; the id is passed by value as nccl.h declares.
        let rc = unsafe { (nccl.api.comm_init_rank)(&mut raw, n, RawUniqueId { internal: id.0 }, rank as c_int) };
        nccl.api.check("ncclCommInitRank", rc)?;
        Ok(Comm { api: nccl.api.clone(), raw, rank, size })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Queues the in-place sum of `count` float32 at `data` across every
    /// rank on `stream` (`ncclAllReduce`, `ncclFloat32`, `ncclSum`). Returns
    /// once queued; the sum is done when the stream reaches it. Every rank
    /// must call it with the same `count`, in the same order of collectives.
    ///
    /// # Safety
    /// `data` must point to `count` float32 in memory of this communicator's
    /// CUDA device, left alone (not freed, read or written by other work)
    /// until `stream` has passed the collective.
    pub unsafe fn all_reduce_f32_sum(&self, data: *mut f32, count: usize, stream: CudaStream) -> Result<(), NcclError> {
        let ptr = data.cast::<c_void>();
        // SAFETY: the caller's contract above; in place (send == receive) as nccl.h allows.
        let rc = unsafe { (self.api.all_reduce)(ptr, ptr, count, NCCL_FLOAT32, NCCL_SUM, self.raw, stream.0) };
        self.api.check("ncclAllReduce", rc)
    }

    /// The communicator's asynchronous error (`ncclCommGetAsyncError`): a
    /// peer lost or a network error after the calls returned. Polled while
    /// waiting on a collective; an error means [`Comm::abort`].
    pub fn async_error(&self) -> Result<(), NcclError> {
        let mut state: c_int = 0;
        // SAFETY: a live communicator; writes one int.
        let rc = unsafe { (self.api.comm_get_async_error)(self.raw, &mut state) };
        self.api.check("ncclCommGetAsyncError", rc)?;
        self.api.check("a collective (ncclCommGetAsyncError)", state)
    }

    /// Ends the communicator at once, cancelling what is queued
    /// (`ncclCommAbort`): what a rank does when a peer is lost, since
    /// destroying it would wait for collectives that never finish.
    pub fn abort(mut self) -> Result<(), NcclError> {
        // SAFETY: a live communicator; nulled so that Drop leaves it alone.
        let rc = unsafe { (self.api.comm_abort)(self.raw) };
        self.raw = std::ptr::null_mut();
        self.api.check("ncclCommAbort", rc)
    }
}

impl Drop for Comm {
    /// `ncclCommDestroy`: frees the communicator once its work is done.
    fn drop(&mut self) {
        if self.raw.is_null() {
            return; // aborted
        }
        // SAFETY: a live communicator, dropped once.
        let rc = unsafe { (self.api.comm_destroy)(self.raw) };
        if let Err(e) = self.api.check("ncclCommDestroy", rc) {
            tracing::warn!("{e}");
        }
    }
}
