//! The NVIDIA driver a CUDA worker needs, checked before the run starts.
//!
//! The torch wheel carries its own CUDA runtime; the node gives only the
//! driver (`libcuda.so.1`), and a driver older than the runtime fails at the
//! first CUDA call with an error that names neither. The image used to
//! declare `NVIDIA_REQUIRE_CUDA` for the NVIDIA container toolkit to refuse
//! such a node, but CDI (how current toolkits and Kubernetes device plugins
//! inject GPUs) does not enforce it. So the worker asks the driver itself
//! (`cuDriverGetVersion`, which needs no `cuInit` and no device) and compares
//! with the CUDA version the linked libtorch was built for, recorded at
//! build time (`src/build/torch_cuda.rs`: the image has no Python to ask).
//!
//! The rule is NVIDIA's minor version compatibility: a runtime of CUDA A.B
//! runs on a driver of CUDA A.0 or newer (kernels that need PTX compiled by
//! the driver excepted, which the torch wheels avoid by shipping machine
//! code for the GPUs they support); an older major never does.

use std::ffi::c_int;
use std::fmt;

/// The library the NVIDIA driver installs, found through the loader's path
/// (the container toolkit mounts it there).
pub const DRIVER_LIBRARY: &str = "libcuda.so.1";

/// A CUDA version, major.minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CudaVersion {
    pub major: u32,
    pub minor: u32,
}

impl CudaVersion {
    /// `cuDriverGetVersion`'s number: 1000 x major + 10 x minor (13000, 12080).
    pub fn from_driver_code(code: i32) -> Option<Self> {
        (code > 0).then_some(Self { major: (code / 1000) as u32, minor: ((code % 1000) / 10) as u32 })
    }

    /// "13.0", "12.8".
    pub fn parse(s: &str) -> Option<Self> {
        let (major, minor) = s.trim().split_once('.')?;
        Some(Self { major: major.parse().ok()?, minor: minor.parse().ok()? })
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What the linked libtorch was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Built {
    Cuda(CudaVersion),
    /// torch from the CPU index: it has no CUDA at all.
    CpuOnly,
    /// The build found no version file (a libtorch tree without one).
    Unknown,
}

impl Built {
    /// From the build script's record: "13.0", "" (CPU-only) or nothing.
    pub fn from_record(record: Option<&str>) -> Self {
        match record {
            None => Self::Unknown,
            Some("") => Self::CpuOnly,
            Some(v) => CudaVersion::parse(v).map_or(Self::Unknown, Self::Cuda),
        }
    }

    /// This binary's libtorch.
    pub fn this_build() -> Self {
        Self::from_record(option_env!("DDPM_TORCH_CUDA"))
    }
}

/// The oldest Linux driver for CUDA `major`.x (NVIDIA's CUDA Toolkit
/// release notes, the minor-version-compatibility table).
pub fn minimum_driver(major: u32) -> Option<&'static str> {
    match major {
        11 => Some("450.80.02"),
        12 => Some("525.60.13"),
        13 => Some("580.65.06"),
        _ => None,
    }
}

/// Why this process cannot use a CUDA device.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(
        "a CUDA device was asked for, but this ddpm was built against a CPU-only libtorch (torch from the cpu index): \
         use the CUDA image, or --device cpu"
    )]
    CpuOnlyBuild,
    #[error(
        "a CUDA device was asked for, but the NVIDIA driver cannot be loaded ({library}: {reason}): this machine or \
         container has no NVIDIA driver (in Kubernetes: the pod needs an nvidia.com/gpu limit and the node the driver \
         and NVIDIA's device plugin); install the driver, or use --device cpu"
    )]
    NoDriver { library: String, reason: String },
    #[error("{library} has no cuDriverGetVersion: it is not the NVIDIA driver's libcuda")]
    NotTheDriver { library: String },
    #[error("cuDriverGetVersion failed with CUDA error {code}: the NVIDIA driver is installed but not working (nvidia-smi says why)")]
    Call { code: i32 },
    #[error("the NVIDIA driver supports CUDA {driver} but this build needs CUDA {needs}: {advice}")]
    TooOld { driver: CudaVersion, needs: CudaVersion, advice: String },
}

/// A driver this build can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub driver: CudaVersion,
    /// `None`: the build did not record its CUDA version, so nothing was compared.
    pub built: Option<CudaVersion>,
}

impl Checked {
    /// An older minor than the build's: allowed (minor version
    /// compatibility), but worth a line in the log if a kernel fails.
    pub fn on_minor_compatibility(&self) -> bool {
        self.built.is_some_and(|b| self.driver < b)
    }
}

/// Refuses a driver older than CUDA `built.major`.0, with what to do.
pub fn compare(driver: CudaVersion, built: CudaVersion) -> Result<Checked, DriverError> {
    if driver.major >= built.major {
        return Ok(Checked { driver, built: Some(built) });
    }
    let needs = CudaVersion { major: built.major, minor: 0 };
    let upgrade = match minimum_driver(built.major) {
        Some(floor) => format!("upgrade the driver to >= {floor}"),
        None => format!("upgrade the driver to one for CUDA {needs} or newer"),
    };
    // Only a CUDA 13 build has an older image to fall back to.
    let advice = if built.major > 12 && driver.major == 12 { format!("use the cu12 image or {upgrade}") } else { upgrade };
    Err(DriverError::TooOld { driver, needs, advice })
}

/// The installed driver's CUDA version, from `library` (a soname or a path).
pub fn driver_version(library: &str) -> Result<CudaVersion, DriverError> {
    type DriverGetVersionFn = unsafe extern "C" fn(*mut c_int) -> c_int;
    // SAFETY: loading runs the driver library's initialisers, which libtorch
    // would run anyway on its first CUDA call; no CUDA call happens here
    // before cuDriverGetVersion.
    let lib = unsafe { libloading::Library::new(library) }
        .map_err(|e| DriverError::NoDriver { library: library.to_string(), reason: crate::runtime::error_chain(&e) })?;
    // SAFETY: the C signature of cuda.h's cuDriverGetVersion; used while `lib` is held.
    let get: libloading::Symbol<DriverGetVersionFn> =
        unsafe { lib.get(b"cuDriverGetVersion\0") }.map_err(|_| DriverError::NotTheDriver { library: library.to_string() })?;
    let mut code: c_int = 0;
    // SAFETY: writes one int; needs no cuInit.
    let rc = unsafe { get(&mut code) };
    if rc != 0 {
        return Err(DriverError::Call { code: rc });
    }
    CudaVersion::from_driver_code(code).ok_or(DriverError::Call { code })
}

/// The check a worker runs before it touches a CUDA device: this build's
/// libtorch has CUDA, the driver loads, and it is new enough.
pub fn check() -> Result<Checked, DriverError> {
    let built = match Built::this_build() {
        Built::CpuOnly => return Err(DriverError::CpuOnlyBuild),
        Built::Cuda(v) => Some(v),
        Built::Unknown => None,
    };
    let driver = driver_version(DRIVER_LIBRARY)?;
    match built {
        Some(b) => compare(driver, b),
        None => Ok(Checked { driver, built: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> CudaVersion {
        CudaVersion::parse(s).unwrap()
    }

    #[test]
    fn versions_read_from_the_driver_and_the_build() {
        assert_eq!(CudaVersion::from_driver_code(13000), Some(v("13.0")));
        assert_eq!(CudaVersion::from_driver_code(12080), Some(v("12.8")));
        assert_eq!(CudaVersion::from_driver_code(11040).unwrap().to_string(), "11.4");
        assert_eq!(CudaVersion::from_driver_code(0), None);
        assert_eq!(CudaVersion::parse("13"), None);
        assert_eq!(CudaVersion::parse("x.1"), None);
        assert_eq!(Built::from_record(Some("12.6")), Built::Cuda(v("12.6")));
        assert_eq!(Built::from_record(Some("")), Built::CpuOnly);
        assert_eq!(Built::from_record(None), Built::Unknown);
        assert_eq!(Built::from_record(Some("garbage")), Built::Unknown);
    }

    #[test]
    fn a_driver_of_the_builds_major_runs_it_and_an_older_one_is_refused_with_what_to_do() {
        assert!(!compare(v("13.0"), v("13.0")).unwrap().on_minor_compatibility());
        assert!(!compare(v("13.1"), v("12.8")).unwrap().on_minor_compatibility());
        // Minor version compatibility: a 12.8 build on a 12.0 driver (525).
        assert!(compare(v("12.0"), v("12.8")).unwrap().on_minor_compatibility());
        let e = compare(v("12.4"), v("13.0")).unwrap_err().to_string();
        assert_eq!(
            e,
            "the NVIDIA driver supports CUDA 12.4 but this build needs CUDA 13.0: use the cu12 image or upgrade the driver to >= 580.65.06"
        );
        // The cu12 image on a CUDA 11 driver: only an upgrade helps.
        let e = compare(v("11.8"), v("12.8")).unwrap_err().to_string();
        assert_eq!(e, "the NVIDIA driver supports CUDA 11.8 but this build needs CUDA 12.0: upgrade the driver to >= 525.60.13");
        let e = compare(v("13.0"), v("14.2")).unwrap_err().to_string();
        assert!(e.ends_with("upgrade the driver to one for CUDA 14.0 or newer"), "{e}");
    }

    #[test]
    fn a_missing_driver_or_a_library_that_is_not_one_says_so() {
        let e = driver_version("libcuda-not-here.so.1").unwrap_err();
        assert!(matches!(e, DriverError::NoDriver { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("libcuda-not-here.so.1") && text.contains("no NVIDIA driver") && text.contains("--device cpu"), "{text}");
        let e = driver_version("libc.so.6").unwrap_err();
        assert!(matches!(e, DriverError::NotTheDriver { .. }), "{e}");
    }

    #[test]
    fn this_build_recorded_its_libtorch() {
        // The build script read torch's version.py or build-version; a
        // checkout whose libtorch has neither would say Unknown, and the
        // check would then compare nothing.
        assert_ne!(Built::this_build(), Built::Unknown, "the build script recorded no DDPM_TORCH_CUDA");
    }
}
