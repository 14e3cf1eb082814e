//! The loader on a machine without a GPU: the torch wheel's real NCCL, and
//! each way of refusing one.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::search::{self, Candidate};
use super::*;

/// The torch wheel's NCCL as the search finds it without `DDPM_NCCL_LIBRARY`
/// (the variable is ignored here: the test must not depend on the caller's
/// environment), and the version its pip package says it is.
fn wheel_nccl() -> (Nccl, String) {
    let torch_lib = search::loaded_torch_lib().expect("the test binary maps libtorch_cpu.so");
    let nccl = Nccl::load_first(&search::candidates(None, Some(&torch_lib)), MINIMUM).unwrap_or_else(|e| {
        panic!("the torch wheel's NCCL does not load (a CPU-only torch has none; the project's venv has the CUDA wheel): {e}")
    });
    let site = torch_lib.parent().and_then(Path::parent).unwrap();
    let dist = std::fs::read_dir(site)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("nvidia_nccl_cu") && n.ends_with(".dist-info"))
        .unwrap_or_else(|| panic!("no nvidia_nccl_cu*.dist-info in {}", site.display()));
    // nvidia_nccl_cu13-2.28.9.dist-info -> 2.28.9
    let version = dist.trim_end_matches(".dist-info").rsplit('-').next().unwrap().to_string();
    (nccl, version)
}

#[test]
fn version_codes_decode_in_both_encodings() {
    assert_eq!(Version::from_code(2402), Version { major: 2, minor: 4, patch: 2 });
    assert_eq!(Version::from_code(2708).to_string(), "2.7.8");
    assert_eq!(Version::from_code(21003).to_string(), "2.10.3");
    assert_eq!(Version::from_code(22809).to_string(), "2.28.9");
    assert!(Version::from_code(2402) < Version::from_code(21003));
}

#[test]
fn the_torch_wheels_nccl_loads_and_reports_the_version_of_its_package() {
    let (nccl, package) = wheel_nccl();
    assert_eq!(nccl.version().to_string(), package, "{nccl:?}");
    assert!(nccl.version() >= MINIMUM);
    assert!(nccl.path().ends_with("nvidia/nccl/lib/libnccl.so.2"), "{}", nccl.path().display());
}

#[test]
fn a_unique_id_is_made_without_a_gpu() {
    // ncclGetUniqueId only starts the bootstrap listener (a socket on this
    // host): no CUDA call, so rank 0's half of the hand-out works on a CPU
    // machine. Two ids differ (each names its own listener and a random magic).
    let (nccl, _) = wheel_nccl();
    let a = nccl.unique_id().unwrap_or_else(|e| panic!("{e}"));
    let b = nccl.unique_id().unwrap();
    assert_ne!(a, b);
    assert!(a.as_bytes().iter().any(|&x| x != 0));
    assert_eq!(UniqueId::from_bytes(a.as_bytes()), Some(a));
    assert_eq!(UniqueId::from_bytes(&a.as_bytes()[1..]), None);
    assert_eq!(format!("{a:?}"), "UniqueId(..)", "the id is not for logs");
}

#[test]
fn a_missing_library_names_every_place_tried_and_the_fix() {
    let named = search::candidates(Some(OsStr::new("/nonexistent/libnccl.so.2")), Some(Path::new("/x/torch/lib")));
    let e = Nccl::load_first(&named, MINIMUM).unwrap_err();
    let text = e.to_string();
    assert!(matches!(&e, NcclError::NotFound { tried } if tried.len() == 1), "{e:?}");
    assert!(text.contains("/nonexistent/libnccl.so.2 (DDPM_NCCL_LIBRARY): no such file"), "{text}");
    assert!(text.contains("set DDPM_NCCL_LIBRARY") && text.contains("nvidia-nccl-cu13"), "{text}");
    // Nothing anywhere: each place with the loader's reason.
    let nowhere = [
        Candidate { target: PathBuf::from("/nonexistent/torch/lib/libnccl.so.2"), source: "next to torch" },
        Candidate { target: PathBuf::from("libnccl-absent.so.2"), source: "the system's" },
    ];
    let text = Nccl::load_first(&nowhere, MINIMUM).unwrap_err().to_string();
    assert!(text.contains("/nonexistent/torch/lib/libnccl.so.2 (next to torch): no such file"), "{text}");
    assert!(text.contains("libnccl-absent.so.2 (the system's): ") && text.contains("cannot open"), "{text}");
}

#[test]
fn a_library_that_is_not_nccl_is_refused_by_the_first_missing_function() {
    let e = Nccl::open(Path::new("libc.so.6"), MINIMUM).unwrap_err();
    assert!(matches!(e, NcclError::MissingSymbol { symbol: "ncclGetVersion", .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("libc.so.6 has no ncclGetVersion") && text.contains("2.4.2 or newer"), "{text}");
}

#[test]
fn a_library_older_than_the_minimum_is_refused_with_the_reason() {
    let (real, _) = wheel_nccl();
    // The same library against a minimum above it: what an old NCCL meets.
    let future = Version { major: 2, minor: 99, patch: 0 };
    let e = Nccl::open(real.path(), future).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, NcclError::TooOld { found, minimum, .. } if found == real.version() && minimum == future), "{text}");
    assert!(text.contains(&format!("is NCCL {}", real.version())) && text.contains("needs 2.99.0 or newer"), "{text}");
    assert!(text.contains("ncclCommAbort"), "the reason for the minimum: {text}");
    let old = Version::from_code(2307);
    assert!(check_version(Path::new("old.so"), old, MINIMUM).unwrap_err().to_string().contains("NCCL 2.3.7"));
    check_version(Path::new("ok.so"), MINIMUM, MINIMUM).unwrap();
}

#[test]
fn a_cpu_worker_is_refused_before_any_library_is_looked_for() {
    let e = preflight(tch::Device::Cpu).unwrap_err();
    assert!(matches!(e, NcclError::NoCudaDevice { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("needs a CUDA device") && text.contains("runs on cpu") && text.contains("--gpu"), "{text}");
}

#[test]
fn joining_a_communicator_without_a_cuda_device_fails_with_nccls_error() {
    // The one part of a communicator this machine can run: ncclCommInitRank
    // of a lone rank reaches CUDA and reports its failure as an error code
    // (not a crash or a hang), which `Comm::init_rank` returns typed. It
    // also shows the id crosses the C boundary by value as nccl.h declares.
    let (nccl, _) = wheel_nccl();
    let id = nccl.unique_id().unwrap();
    let e = Comm::init_rank(&nccl, 1, &id, 0).err().expect("no CUDA device here, so no communicator");
    assert!(matches!(&e, NcclError::Call { call: "ncclCommInitRank", code, .. } if *code != 0), "{e:?}");
    eprintln!("{e}");
    let e = Comm::init_rank(&nccl, 2, &id, 2).err().unwrap();
    assert!(e.to_string().contains("rank 2 is not below the size 2"), "{e}");
}

#[test]
fn the_cuda_runtime_is_found_in_the_process_and_reports_no_device() {
    // The CUDA libtorch this test binary links brings libcudart; without a
    // GPU, cudaSetDevice answers with an error code (no device, or no
    // driver), which comes back typed rather than as a crash.
    match set_current_device(0) {
        Err(NcclError::Cuda { call: "cudaSetDevice", code }) => assert_ne!(code, 0),
        Ok(()) => assert!(tch::Cuda::is_available(), "device 0 set, but libtorch sees no CUDA device"),
        Err(e) => panic!("{e}"),
    }
}
