//! The container image's runtime tree, without a container engine:
//! `deploy/image/layout.sh` (the script the Dockerfile's build stage runs)
//! lays out the debug binaries and the torch wheel they were built against
//! in a temporary directory, `deploy/image/check.sh` accepts the tree and the
//! Dockerfile's runtime stage, and the binaries started from the tree with
//! an empty environment (what `env -i` gives) load every library from it,
//! never from the build's torch venv, and train a tiny run together. Then
//! check.sh refuses the same tree with a stray `python3` in it, and a
//! Dockerfile whose runtime stage runs as root.
//!
//! The tree is about 4.5 GB with the CUDA wheel and debug binaries; the
//! test hard-links the unpatched libraries (DDPM_LAYOUT_LINK=1) instead of
//! copying them as the image build does, and copies the binaries.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use common::{binary, tempdir};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command to completion; panics with its output if it cannot start.
fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// patchelf is a Debian package the rest of the suite does not need; install
/// it the way deploy/env.sh installs its other tools when it is missing.
fn ensure_patchelf() {
    let have = || Command::new("patchelf").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if have() {
        return;
    }
    let out = run(Command::new("bash").current_dir(repo()).args(["-c", "source deploy/env.sh && ddpm_setup_patchelf"]));
    assert!(
        have(),
        "patchelf is missing and could not be installed ({}): install Debian's patchelf, or `source deploy/env.sh && ddpm_setup_patchelf`",
        text(&out.stderr).trim()
    );
}

/// The site-packages of the torch the debug binaries were linked against:
/// their RUNPATH is that torch's `lib` directory (src/build/libtorch_link.rs
/// puts it there). `$DDPM_PYTHON`'s torch if the RUNPATH says nothing.
fn site_packages(bin: &Path) -> PathBuf {
    let out = run(Command::new("readelf").arg("-d").arg(bin));
    let dynamic = text(&out.stdout);
    let from_runpath = dynamic
        .lines()
        .filter(|l| l.contains("(RUNPATH)") || l.contains("(RPATH)"))
        .filter_map(|l| Some(l.split_once('[')?.1.trim_end_matches(']').to_string()))
        .flat_map(|rp| rp.split(':').map(PathBuf::from).collect::<Vec<_>>())
        .find(|p| p.ends_with("torch/lib") && p.is_dir());
    if let Some(lib) = from_runpath {
        return lib.parent().and_then(Path::parent).unwrap().to_path_buf();
    }
    let python = std::env::var("DDPM_PYTHON").unwrap_or_else(|_| {
        panic!("{} has no torch/lib RUNPATH and DDPM_PYTHON is not set: `source deploy/env.sh && ddpm_setup` first", bin.display())
    });
    let out = run(Command::new(&python).args(["-c", "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))"]));
    assert!(out.status.success(), "{python} cannot import torch: {}", text(&out.stderr));
    PathBuf::from(text(&out.stdout).trim())
}

/// The sonames deploy/image/system-libs.txt lets the runtime image provide.
fn system_libs() -> Vec<String> {
    let list = std::fs::read_to_string(repo().join("deploy/image/system-libs.txt")).expect("deploy/image/system-libs.txt");
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// Checks the shared objects a layout binary loaded: each lies in the
/// layout's lib/, or is a system library the runtime image provides (a file
/// of /lib or /usr/lib named by system-libs.txt); libtorch_cpu.so is among
/// those from the layout; none comes from the venv.
fn assert_loaded_from_layout(what: &str, loaded: &BTreeSet<PathBuf>, lib: &Path, site: &Path, system: &[String]) {
    // The loader reports paths as it built them ($ORIGIN/../lib, the /lib
    // symlink of /usr/lib): compare real paths.
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|e| panic!("{what}: {}: {e}", p.display()));
    let loaded: BTreeSet<PathBuf> = loaded.iter().map(|p| real(p)).collect();
    let (lib, site) = (&real(lib), &real(site));
    assert!(
        loaded.contains(&lib.join("libtorch_cpu.so")),
        "{what}: libtorch_cpu.so was not loaded from {}; loaded: {loaded:#?}",
        lib.display()
    );
    for path in &loaded {
        assert!(!path.starts_with(site), "{what} loaded {} from the build's torch venv", path.display());
        if path.parent() == Some(lib.as_path()) {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy();
        let system_dir = ["/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/"].iter().any(|d| path.starts_with(d));
        // Maps show the real file (libstdc++.so.6.0.30) of a soname (libstdc++.so.6).
        let listed = system.iter().any(|s| name == s.as_str() || name.starts_with(&format!("{s}.")));
        assert!(
            system_dir && listed,
            "{what} loaded {}, which is neither in the layout ({}) nor a system library of deploy/image/system-libs.txt",
            path.display(),
            lib.display()
        );
    }
}

/// The objects the dynamic loader initialised, from `LD_DEBUG=libs` output.
fn ld_debug_inits(stderr: &str) -> BTreeSet<PathBuf> {
    stderr.lines().filter_map(|l| l.split_once("calling init: ")).map(|(_, p)| PathBuf::from(p.trim())).collect()
}

/// The shared objects mapped into a running process.
fn mapped_libs(pid: u32) -> BTreeSet<PathBuf> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_else(|e| panic!("/proc/{pid}/maps: {e}"));
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && p.contains(".so"))
        .map(PathBuf::from)
        .collect()
}

/// Every file of the tree with its size and modification time: the image's
/// root filesystem is read-only, so running the binaries must not change it.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    walkdir(root)
        .into_iter()
        .map(|p| {
            let m = std::fs::symlink_metadata(&p).unwrap();
            (p, (m.len(), m.modified().unwrap()))
        })
        .collect()
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(walkdir(&path));
        }
        all.push(path);
    }
    all
}

/// A command for a layout binary with nothing inherited from the test's
/// environment (no LD_LIBRARY_PATH, no VIRTUAL_ENV, no DDPM_*): `env -i
/// PATH=/usr/bin:/bin HOME=...`.
fn clean(bin: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear().env("PATH", "/usr/bin:/bin").env("HOME", home);
    cmd
}

/// A started layout binary whose output lines are collected; killed on drop.
struct Started {
    child: Child,
    name: &'static str,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Started {
    fn new(name: &'static str, mut cmd: Command) -> Started {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, rx) = mpsc::channel();
        for stream in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Started { child, name, lines: rx, log: Vec::new() }
    }

    fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    self.log.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!("{} did not print {needle:?} within {timeout:?}; output:\n{}", self.name, self.log.join("\n")),
            }
        }
    }

    /// Waits for the exit; returns the exit code and everything printed.
    fn finish(&mut self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(l) = self.lines.try_recv() {
                self.log.push(l);
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader threads end at EOF, which follows the exit.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.log.push(l);
                }
                return (status.code().unwrap_or(-1), self.log.join("\n"));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} did not exit within {timeout:?}; output:\n{}", self.name, self.log.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_image_layout_runs_the_binaries_on_its_own_libraries() {
    ensure_patchelf();
    let started = Instant::now();
    let coord_bin = binary("ddpm-coord");
    let bin_dir = coord_bin.parent().unwrap().to_path_buf();
    binary("ddpm-worker");
    binary("ddpm");
    let site = site_packages(&coord_bin);
    let system = system_libs();

    let tmp = tempdir();
    let out_dir = tmp.path().join("layout");
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();

    // --- layout.sh, as the Dockerfile's build stage runs it.
    let t = Instant::now();
    // Hard links where it can (DDPM_LAYOUT_LINK): the same tree without a 4 GB copy.
    let out = run(Command::new("bash")
        .env("DDPM_LAYOUT_LINK", "1")
        .arg(repo().join("deploy/image/layout.sh"))
        .arg(&out_dir)
        .arg(&bin_dir)
        .arg(&site));
    let layout_s = t.elapsed().as_secs_f64();
    println!("{}", text(&out.stdout));
    assert!(out.status.success(), "layout.sh failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    println!("layout.sh: {layout_s:.1} s (bin {}, site-packages {})", bin_dir.display(), site.display());
    let root = out_dir.join("opt/ddpm");
    let (bin, lib) = (root.join("bin"), root.join("lib"));

    // --- check.sh accepts the tree and the Dockerfile.
    let dockerfile = repo().join("deploy/Dockerfile");
    let check = |dockerfile: &Path| run(Command::new("bash").arg(repo().join("deploy/image/check.sh")).arg(&out_dir).arg(dockerfile));
    let out = check(&dockerfile);
    assert!(out.status.success(), "check.sh refused the layout or deploy/Dockerfile:\n{}{}", text(&out.stdout), text(&out.stderr));
    println!("{}", text(&out.stdout).trim());

    // --- NCCL (CUDA wheel only): the layout carries the wheel's
    // libnccl.so.2 beside libtorch, where ddpm's loader (src/nccl/search.rs)
    // looks first in the image.
    let wheel_nccl = site.join("nvidia/nccl/lib/libnccl.so.2");
    if wheel_nccl.is_file() {
        let laid = lib.join("libnccl.so.2");
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(size(&laid), size(&wheel_nccl), "the layout's libnccl.so.2 is not the wheel's");
        let candidates = ddpm::nccl::search::candidates(None, Some(&lib));
        assert_eq!(candidates[0].target, laid, "the loader's first place in the image is not the layout's NCCL");
        println!("the layout carries the wheel's NCCL at {}", laid.display());
    }

    let before = snapshot(&out_dir);

    // --- `--version` of each binary, from the tree, with an empty
    // environment: the loader's own trace says where each library came from.
    for name in ["ddpm", "ddpm-coord", "ddpm-worker"] {
        let out = run(clean(&bin.join(name), &home).env("LD_DEBUG", "libs").arg("--version"));
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{name} --version from the layout failed: {stderr}");
        assert_eq!(text(&out.stdout).trim(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
        assert_loaded_from_layout(&format!("{name} --version"), &ld_debug_inits(&stderr), &lib, &site, &system);
    }

    // --- A real run: the coordinator and one CPU worker, both from the tree.
    let run_dir = tmp.path().join("run");
    let mut cmd = clean(&bin.join("ddpm-coord"), &home);
    cmd.args(["--preset", "tiny", "--data", "synthetic:shapes", "--steps", "4", "--batch-size", "4", "--workers", "1"])
        .args(["--listen", "127.0.0.1:0", "--samples", "0", "--run"])
        .arg(&run_dir);
    let mut coord = Started::new("ddpm-coord (layout)", cmd);
    let line = coord.wait_for_line("listening on ", Duration::from_secs(60));
    let addr = line.rsplit("listening on ").next().unwrap().trim().to_string();
    // It waits for its worker: everything it loads at start-up is mapped now.
    assert_loaded_from_layout("ddpm-coord (running)", &mapped_libs(coord.child.id()), &lib, &site, &system);

    // The worker under LD_DEBUG, so that what it opens while training
    // (dlopen) is seen too, not only what it loads at start.
    let mut cmd = clean(&bin.join("ddpm-worker"), &home);
    cmd.env("LD_DEBUG", "libs").args(["--device", "cpu", "--threads", "1", "--coord", &addr]);
    let mut worker = Started::new("ddpm-worker (layout)", cmd);
    let (code, worker_log) = worker.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "the layout's ddpm-worker failed; output:\n{worker_log}");
    let (code, coord_log) = coord.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "the layout's ddpm-coord failed; output:\n{coord_log}");
    assert!(coord_log.contains("run finished: 4 steps"), "the run did not finish its 4 steps:\n{coord_log}");
    assert!(run_dir.join("summary.json").is_file(), "the run wrote no summary.json:\n{coord_log}");
    assert_loaded_from_layout("ddpm-worker (training)", &ld_debug_inits(&worker_log), &lib, &site, &system);
    println!("ddpm-coord and ddpm-worker from the layout trained 4 steps, loading libraries only from {}", lib.display());

    // Nothing was written into the tree (a read-only root in the image).
    assert_eq!(snapshot(&out_dir), before, "running the binaries changed the layout");

    // --- NVRTC (CUDA wheel only): libnvrtc.so.13 opens libnvrtc-builtins by
    // name, through its own RUNPATH, which layout.sh had to add. It compiles
    // without a GPU, so a clean-environment compile proves the fix here; a
    // GPU is not needed. Uses the system's Python only as a ctypes harness.
    let nvrtc = lib.join("libnvrtc.so.13");
    if nvrtc.is_file() && Path::new("/usr/bin/python3").is_file() {
        let probe = r#"
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
prog = ctypes.c_void_p()
src = b'extern "C" __global__ void k(float* x) { x[threadIdx.x] *= 2.0f; }'
assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"k.cu", 0, None, None) == 0
opts = (ctypes.c_char_p * 1)(b"--gpu-architecture=compute_80")
print(lib.nvrtcCompileProgram(prog, 1, opts))
"#;
        let out = run(clean(Path::new("/usr/bin/python3"), &home).arg("-c").arg(probe).arg(&nvrtc));
        assert_eq!(
            text(&out.stdout).trim(),
            "0",
            "NVRTC from the layout cannot compile (7 = it did not find libnvrtc-builtins): {}",
            text(&out.stderr)
        );
        println!("NVRTC from the layout compiles a kernel in a clean environment");
    }

    // --- check.sh refuses a stray file, and a runtime stage running as root.
    let stray = bin.join("python3");
    // A real interpreter where there is one; check.sh goes by what it is called.
    let python = ["/usr/bin/python3", "/bin/sh"].into_iter().find(|p| Path::new(p).is_file()).unwrap();
    std::fs::copy(python, &stray).unwrap();
    let bad_dockerfile = tmp.path().join("Dockerfile.root");
    let original = std::fs::read_to_string(&dockerfile).unwrap();
    assert!(original.contains("\nUSER 10001:10001\n"), "deploy/Dockerfile no longer has `USER 10001:10001`; update this test");
    std::fs::write(&bad_dockerfile, original.replace("\nUSER 10001:10001\n", "\nUSER 0:0\n")).unwrap();
    let out = check(&bad_dockerfile);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "check.sh accepted a layout with bin/python3 in it:\n{}", text(&out.stdout));
    assert!(
        stderr.contains("opt/ddpm/bin/python3: Python has no place in the runtime image"),
        "check.sh did not name the stray python3:\n{stderr}"
    );
    assert!(stderr.contains("USER 0:0 is root"), "check.sh did not refuse USER 0:0:\n{stderr}");
    std::fs::remove_file(&stray).unwrap();

    println!("image layout test: {:.1} s in all", started.elapsed().as_secs_f64());
}
