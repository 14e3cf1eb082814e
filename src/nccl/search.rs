//! Where `libnccl.so.2` is looked for, in order:
//!
//! 1. `DDPM_NCCL_LIBRARY`, when set: that file and nothing else (a user who
//!    names a library means that one; falling back would hide a typo);
//! 2. next to the libtorch this process loaded: the same directory (the
//!    image's /opt/ddpm/lib, where deploy/image/layout.sh puts every
//!    library), then the torch wheel's `../../nvidia/nccl/lib` (pip's
//!    nvidia-nccl-cu13, the NCCL that torch itself was built and tested
//!    against, and already mapped in this process by libtorch_cuda.so);
//! 3. the system's, by soname, through the dynamic loader's search path.
//!
//! The libtorch found is the one actually mapped (from /proc/self/maps), not
//! the one the binary was linked against: `LD_LIBRARY_PATH` may point the
//! binaries at another machine's torch (deploy/gpu-check.sh does), and its
//! NCCL is the one that matches it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The environment variable that names the library to load.
pub const LIBRARY_ENV: &str = "DDPM_NCCL_LIBRARY";
/// NCCL 2's soname.
pub const SONAME: &str = "libnccl.so.2";

/// One place to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// A path, or the bare soname for the loader's own search.
    pub target: PathBuf,
    /// Where it came from, for the error that lists what was tried.
    pub source: &'static str,
}

impl Candidate {
    /// Whether the loader searches for it (a bare name) rather than opening a file.
    pub fn is_bare_name(&self) -> bool {
        self.target.components().count() == 1 && !self.target.is_absolute()
    }
}

/// The candidates, in order, given `DDPM_NCCL_LIBRARY`'s value and the
/// directory of the loaded libtorch (see the module's comment).
pub fn candidates(env: Option<&OsStr>, torch_lib: Option<&Path>) -> Vec<Candidate> {
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return vec![Candidate { target: PathBuf::from(path), source: LIBRARY_ENV }];
    }
    let mut out = Vec::new();
    if let Some(lib) = torch_lib {
        out.push(Candidate { target: lib.join(SONAME), source: "next to the loaded libtorch (the image layout)" });
        if let Some(site) = lib.parent().and_then(Path::parent) {
            out.push(Candidate { target: site.join("nvidia/nccl/lib").join(SONAME), source: "the torch wheel's nvidia-nccl" });
        }
    }
    out.push(Candidate { target: PathBuf::from(SONAME), source: "the system's (the dynamic loader's search path)" });
    out
}

/// The directory of the libtorch mapped into this process (`libtorch_cpu.so`
/// is in every build, CPU or CUDA), from `/proc/self/maps`; `None` where
/// there is none or no procfs.
pub fn loaded_torch_lib() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    torch_lib_in_maps(&maps)
}

/// [`loaded_torch_lib`] on the text of a maps file.
pub fn torch_lib_in_maps(maps: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(Path::new)
        .find(|p| p.file_name() == Some(OsStr::new("libtorch_cpu.so")))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_alone_when_set_else_torch_then_the_system() {
        let only = candidates(Some(OsStr::new("/opt/nccl/libnccl.so.2")), Some(Path::new("/x/torch/lib")));
        assert_eq!(only, vec![Candidate { target: "/opt/nccl/libnccl.so.2".into(), source: LIBRARY_ENV }]);
        let all = candidates(Some(OsStr::new("")), Some(Path::new("/venv/site-packages/torch/lib")));
        let targets: Vec<_> = all.iter().map(|c| c.target.to_string_lossy().into_owned()).collect();
        assert_eq!(
            targets,
            ["/venv/site-packages/torch/lib/libnccl.so.2", "/venv/site-packages/nvidia/nccl/lib/libnccl.so.2", "libnccl.so.2"]
        );
        assert!(all[2].is_bare_name() && !all[0].is_bare_name());
        assert_eq!(candidates(None, None).len(), 1);
    }

    #[test]
    fn the_loaded_libtorch_is_found_in_the_maps() {
        let maps = "7f00-7f10 r--p 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
                    7f20-7f30 r-xp 00000000 08:01 2 /opt/ddpm/lib/libtorch_cpu.so\n\
                    7f40-7f50 rw-p 00000000 00:00 0 \n";
        assert_eq!(torch_lib_in_maps(maps), Some(PathBuf::from("/opt/ddpm/lib")));
        assert_eq!(torch_lib_in_maps("7f00-7f10 r--p 0 0:0 1 /lib/libc.so.6\n"), None);
        // This test process links libtorch, so its own maps name it.
        let here = loaded_torch_lib().expect("the test binary maps libtorch_cpu.so");
        assert!(here.join("libtorch_cpu.so").is_file(), "{}", here.display());
    }
}
