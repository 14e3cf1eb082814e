// The CUDA version the linked libtorch was built for, recorded for the
// worker's start-up check (src/cuda_driver.rs) as DDPM_TORCH_CUDA: "13.0",
// "12.8", or "" for a CPU-only libtorch. Included by the root build script.
//
// Read at build time because the image has no Python and no version file at
// run time: from the torch package's `version.py` (`cuda: ... = '13.0'`,
// the wheel the binaries link with LIBTORCH_USE_PYTORCH, in the image and in
// a dev checkout), else from a libtorch archive's `build-version`
// (`2.11.0+cu130`). Neither found: not recorded, and the check says it
// cannot know (the binaries then run as before).
fn record_torch_cuda() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(std::path::PathBuf::from) else { return };
    let Some(top) = lib.parent() else { return };
    let (version_py, build_version) = (top.join("version.py"), top.join("build-version"));
    let found = if let Ok(text) = std::fs::read_to_string(&version_py) {
        println!("cargo:rerun-if-changed={}", version_py.display());
        Some(cuda_of_version_py(&text))
    } else if let Ok(text) = std::fs::read_to_string(&build_version) {
        println!("cargo:rerun-if-changed={}", build_version.display());
        Some(cuda_of_build_version(&text))
    } else {
        None
    };
    if let Some(cuda) = found {
        println!("cargo:rustc-env=DDPM_TORCH_CUDA={cuda}");
    }
}

/// `cuda: Optional[str] = '13.0'` (or `cuda = None`) in torch/version.py.
fn cuda_of_version_py(text: &str) -> String {
    let line = text.lines().find(|l| l.trim_start().starts_with("cuda") && l.contains('='));
    match line.and_then(|l| l.rsplit_once('=')).map(|(_, v)| v.trim()) {
        None | Some("None") => String::new(),
        Some(v) => v.trim_matches(|c| c == '\'' || c == '"').to_string(),
    }
}

/// `2.11.0+cu130` -> "13.0", `2.11.0+cu128` -> "12.8", `+cpu` -> "".
fn cuda_of_build_version(text: &str) -> String {
    match text.trim().rsplit_once("+cu") {
        Some((_, digits)) if digits.len() >= 2 && digits.bytes().all(|b| b.is_ascii_digit()) => {
            let (major, minor) = digits.split_at(digits.len() - 1);
            format!("{major}.{minor}")
        }
        _ => String::new(),
    }
}
