//! The safe face of an NCCL communicator: a unique id made by one rank and
//! handed to the others, `init_rank` on each, an in-place float32 sum, the
//! async error poll, abort, and destroy on drop.
//!
//! NOT YET RUN ON A GPU: this wrapper is built and its types are checked,
//! but no communicator has been created with it (the machine it was written
//! on has no CUDA device; there `init_rank` of a lone rank is tested to
//! return NCCL's "unhandled cuda error" as a typed error). The worker's
//! exchange that uses it (a communicator per epoch, the unique id through
//! the coordinator, abort on a lost member) is `nccl_exchange.rs` of
//! ddpm-worker, not yet run on a GPU either.

use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

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

/// One rank's communicator, owned by the thread that queues its
/// collectives (the device thread): `Send`, not `Sync`. A [`CommWatch`]
/// from [`Comm::watch`] polls its asynchronous error and aborts it from
/// another thread while that one waits on the device.
pub struct Comm {
    shared: Arc<Shared>,
    rank: usize,
    size: usize,
}

/// The handle both sides hold. The lock keeps an abort from freeing the
/// communicator in the middle of another call on it; no call holds it
/// while a collective runs on the device, so a hung collective never keeps
/// an abort waiting. A call that itself blocks (the first collective sets
/// up NCCL's connections, and waits for a lost peer) does: the watcher
/// then polls nothing and its abort gives up after [`ABORT_WAIT`], so that
/// the process can exit instead of hanging.
struct Shared {
    api: Arc<Api>,
    /// Null once aborted or destroyed.
    raw: Mutex<RawComm>,
}

// SAFETY: the raw handle is only used under the mutex, and NCCL allows a
// communicator's calls from any thread, one at a time.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

// SAFETY: as for `Shared`; `Comm` is not `Sync`.
unsafe impl Send for Comm {}

/// How long an abort waits for a call on the communicator to return.
pub const ABORT_WAIT: Duration = Duration::from_secs(5);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, RawComm> {
        self.raw.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock, unless another thread holds it (`None`).
    fn try_lock(&self) -> Option<std::sync::MutexGuard<'_, RawComm>> {
        match self.raw.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// `ncclCommGetAsyncError`; an aborted communicator is an error too.
    /// Without `wait`, `Ok` while another thread is inside a call (nothing
    /// is known yet; the next poll asks again).
    fn async_error(&self, wait: bool) -> Result<(), NcclError> {
        let raw = if wait {
            self.lock()
        } else {
            match self.try_lock() {
                Some(g) => g,
                None => return Ok(()),
            }
        };
        if raw.is_null() {
            return Err(aborted("ncclCommGetAsyncError"));
        }
        let mut state: c_int = 0;
        // SAFETY: a live communicator (under the lock); writes one int.
        let rc = unsafe { (self.api.comm_get_async_error)(*raw, &mut state) };
        self.api.check("ncclCommGetAsyncError", rc)?;
        self.api.check("a collective (ncclCommGetAsyncError)", state)
    }

    /// `ncclCommAbort`, once; later calls do nothing. Gives up after
    /// [`ABORT_WAIT`] while another thread is inside a call on it.
    fn abort(&self) -> Result<(), NcclError> {
        let deadline = Instant::now() + ABORT_WAIT;
        let mut raw = loop {
            match self.try_lock() {
                Some(g) => break g,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                None => {
                    let message = format!("another call on the communicator has not returned within {ABORT_WAIT:?}");
                    return Err(NcclError::Call { call: "ncclCommAbort", code: NCCL_INVALID_USAGE, message });
                }
            }
        };
        if raw.is_null() {
            return Ok(());
        }
        // SAFETY: a live communicator, nulled so that nothing uses it again.
        let rc = unsafe { (self.api.comm_abort)(*raw) };
        *raw = std::ptr::null_mut();
        self.api.check("ncclCommAbort", rc)
    }
}

fn aborted(call: &'static str) -> NcclError {
    NcclError::Call { call, code: NCCL_INVALID_USAGE, message: "the communicator was aborted".into() }
}

/// `ncclInvalidUsage` (nccl.h), for a call on an aborted communicator.
const NCCL_INVALID_USAGE: c_int = 5;

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
        Ok(Comm { shared: Arc::new(Shared { api: nccl.api.clone(), raw: Mutex::new(raw) }), rank, size })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// A handle that polls this communicator's errors and aborts it from
    /// another thread.
    pub fn watch(&self) -> CommWatch {
        CommWatch { shared: self.shared.clone() }
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
        let raw = self.shared.lock();
        if raw.is_null() {
            return Err(aborted("ncclAllReduce"));
        }
        let ptr = data.cast::<c_void>();
        // SAFETY: the caller's contract above; in place (send == receive) as nccl.h allows.
        let rc = unsafe { (self.shared.api.all_reduce)(ptr, ptr, count, NCCL_FLOAT32, NCCL_SUM, *raw, stream.0) };
        self.shared.api.check("ncclAllReduce", rc)
    }

    /// The communicator's asynchronous error (`ncclCommGetAsyncError`): a
    /// peer lost or a network error after the calls returned. Polled while
    /// waiting on a collective; an error means [`Comm::abort`].
    pub fn async_error(&self) -> Result<(), NcclError> {
        self.shared.async_error(true)
    }

    /// Ends the communicator at once, cancelling what is queued
    /// (`ncclCommAbort`): what a rank does when a peer is lost, since
    /// destroying it would wait for collectives that never finish.
    pub fn abort(self) -> Result<(), NcclError> {
        self.shared.abort()
    }
}

/// Another thread's view of a [`Comm`]: the error poll and abort, which
/// NCCL allows while the owner's collective is stuck on the device (a
/// lost peer), so that the owner's wait ends.
#[derive(Clone)]
pub struct CommWatch {
    shared: Arc<Shared>,
}

impl CommWatch {
    /// As [`Comm::async_error`]; an aborted communicator is an error.
    /// Never blocks: `Ok` while the owner is inside a call on it.
    pub fn async_error(&self) -> Result<(), NcclError> {
        self.shared.async_error(false)
    }

    /// As [`Comm::abort`]; a second abort does nothing. Blocks up to
    /// [`ABORT_WAIT`] while the owner is inside a call on it.
    pub fn abort(&self) -> Result<(), NcclError> {
        self.shared.abort()
    }

    /// Whether the communicator was aborted (false while the owner is
    /// inside a call on it, which an aborted one never is).
    pub fn is_aborted(&self) -> bool {
        self.shared.try_lock().is_some_and(|raw| raw.is_null())
    }
}

impl Drop for Shared {
    /// `ncclCommDestroy`: frees the communicator once its work is done
    /// (an aborted one is freed already).
    fn drop(&mut self) {
        let raw = *self.lock();
        if raw.is_null() {
            return;
        }
        // SAFETY: a live communicator, dropped once.
        let rc = unsafe { (self.api.comm_destroy)(raw) };
        if let Err(e) = self.api.check("ncclCommDestroy", rc) {
            tracing::warn!("{e}");
        }
    }
}
