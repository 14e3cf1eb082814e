//! `libnccl.so.2` opened at run time and the functions ddpm calls, resolved
//! once; a missing one or a too-old library is refused when it is opened,
//! never at the first call.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{NcclError, Tried};
use super::search::{self, Candidate};
use super::version::Version;

/// The oldest NCCL ddpm accepts: 2.4.2 is the first release with
/// `ncclCommAbort` and `ncclCommGetAsyncError`, which the exchange needs to
/// tear down a communicator whose peer was lost without hanging (every other
/// function called here is older).
pub const MINIMUM: Version = Version { major: 2, minor: 4, patch: 2 };
const MINIMUM_WHY: &str = "the first NCCL with ncclCommAbort and ncclCommGetAsyncError, which abort a communicator whose peer is lost";

/// `ncclUniqueId`: 128 opaque bytes (`NCCL_UNIQUE_ID_BYTES`), passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct RawUniqueId {
    pub internal: [u8; 128],
}

/// `ncclComm_t`: an opaque pointer.
pub(super) type RawComm = *mut c_void;

// The C signatures of src/nccl.h.in (NCCL 2.28); enums (ncclResult_t,
// ncclDataType_t, ncclRedOp_t) are C ints.
type GetVersionFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type GetUniqueIdFn = unsafe extern "C" fn(*mut RawUniqueId) -> c_int;
type CommInitRankFn = unsafe extern "C" fn(*mut RawComm, c_int, RawUniqueId, c_int) -> c_int;
type AllReduceFn = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, RawComm, *mut c_void) -> c_int;
type CommFn = unsafe extern "C" fn(RawComm) -> c_int;
type CommGetAsyncErrorFn = unsafe extern "C" fn(RawComm, *mut c_int) -> c_int;
type GetErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;

/// The resolved functions; the library stays open as long as this lives.
pub(super) struct Api {
    pub path: PathBuf,
    pub version: Version,
    pub get_unique_id: GetUniqueIdFn,
    pub comm_init_rank: CommInitRankFn,
    pub all_reduce: AllReduceFn,
    pub comm_abort: CommFn,
    pub comm_get_async_error: CommGetAsyncErrorFn,
    pub comm_destroy: CommFn,
    get_error_string: GetErrorStringFn,
    // Last, so that the function pointers above never outlive it.
    _library: libloading::Library,
}

impl Api {
    /// `Ok` for `ncclSuccess` (0), else the call's error with NCCL's own text.
    pub fn check(&self, call: &'static str, code: c_int) -> Result<(), NcclError> {
        if code == 0 {
            return Ok(());
        }
        Err(NcclError::Call { call, code, message: self.error_string(code) })
    }

    fn error_string(&self, code: c_int) -> String {
        // SAFETY: ncclGetErrorString takes any int and returns a static
        // NUL-terminated string (or NULL, checked).
        let text = unsafe { (self.get_error_string)(code) };
        if text.is_null() {
            return "no description".into();
        }
        // SAFETY: non-null, NUL-terminated, static in the library we hold open.
        unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
    }
}

/// An NCCL library, opened and checked. Cheap to clone (shared).
#[derive(Clone)]
pub struct Nccl {
    pub(super) api: Arc<Api>,
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl").field("path", &self.api.path).field("version", &self.api.version).finish()
    }
}

impl Nccl {
    /// Finds and opens NCCL where [`search`] says, refusing one older than [`MINIMUM`].
    pub fn load() -> Result<Self, NcclError> {
        let env = std::env::var_os(search::LIBRARY_ENV);
        Self::load_first(&search::candidates(env.as_deref(), search::loaded_torch_lib().as_deref()), MINIMUM)
    }

    /// The first of `candidates` that opens. A library that opens but is
    /// not a usable NCCL (a missing function, older than `minimum`) is an
    /// error at once rather than a reason to try the next: the user's or
    /// torch's NCCL being unusable is what they need to hear.
    pub fn load_first(candidates: &[Candidate], minimum: Version) -> Result<Self, NcclError> {
        let mut tried = Vec::new();
        for c in candidates {
            if !c.is_bare_name() && !c.target.exists() {
                tried.push(Tried { candidate: c.target.display().to_string(), source: c.source, reason: "no such file".into() });
                continue;
            }
            // SAFETY: loading a library runs its initialisers; NCCL's only
            // set up its own state (no CUDA call happens at load).
            match unsafe { libloading::Library::new(&c.target) } {
                Ok(library) => return Self::from_library(library, &c.target, minimum),
                // The loader's own text (dlerror) is the error's source.
                Err(e) => tried.push(Tried {
                    candidate: c.target.display().to_string(),
                    source: c.source,
                    reason: crate::runtime::error_chain(&e),
                }),
            }
        }
        Err(NcclError::NotFound { tried })
    }

    /// Opens the library at `path` (or a bare soname), checked against `minimum`.
    pub fn open(path: &Path, minimum: Version) -> Result<Self, NcclError> {
        Self::load_first(&[Candidate { target: path.to_path_buf(), source: "given" }], minimum)
    }

    fn from_library(library: libloading::Library, path: &Path, minimum: Version) -> Result<Self, NcclError> {
        let missing = |symbol: &'static str| NcclError::MissingSymbol { library: path.to_path_buf(), symbol, minimum };
        // SAFETY (each): the types are the C signatures of nccl.h; the
        // pointers are copied out and used only while `_library` is held.
        macro_rules! resolve {
            ($name:literal) => {
                *unsafe { library.get($name) }.map_err(|_| missing($name))?
            };
        }
        let get_version: GetVersionFn = resolve!("ncclGetVersion");
        let mut code: c_int = 0;
        // SAFETY: writes one int.
        let rc = unsafe { get_version(&mut code) };
        let get_error_string: GetErrorStringFn = resolve!("ncclGetErrorString");
        let api = Api {
            path: path.to_path_buf(),
            version: Version::from_code(code),
            get_unique_id: resolve!("ncclGetUniqueId"),
            comm_init_rank: resolve!("ncclCommInitRank"),
            all_reduce: resolve!("ncclAllReduce"),
            comm_abort: resolve!("ncclCommAbort"),
            comm_get_async_error: resolve!("ncclCommGetAsyncError"),
            comm_destroy: resolve!("ncclCommDestroy"),
            get_error_string,
            _library: library,
        };
        api.check("ncclGetVersion", rc)?;
        check_version(path, api.version, minimum)?;
        Ok(Self { api: Arc::new(api) })
    }

    /// The library's path (or soname, when the loader searched for it).
    pub fn path(&self) -> &Path {
        &self.api.path
    }

    /// The version the library reports (`ncclGetVersion`).
    pub fn version(&self) -> Version {
        self.api.version
    }
}

/// Refuses `found` when older than `minimum`.
pub fn check_version(library: &Path, found: Version, minimum: Version) -> Result<(), NcclError> {
    if found < minimum {
        return Err(NcclError::TooOld { library: library.to_path_buf(), found, minimum, why: MINIMUM_WHY });
    }
    Ok(())
}
