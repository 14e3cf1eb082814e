//! Plumbing shared by the `ddpm bench` kinds: sibling binaries, child
//! processes, Python baselines, statistics.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// `ddpm-coord` / `ddpm-worker` next to this executable.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("executable has no directory")?.join(name);
    anyhow::ensure!(path.exists(), "{} not found next to ddpm: build the workspace (`cargo build --workspace --bins`)", path.display());
    Ok(path)
}

/// A child process that is killed when dropped.
pub struct Child2(pub Child);

impl Drop for Child2 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ddpm-coord` on a free loopback port with `args`; returns it and
/// the address it listens on. Its log goes to `log`.
pub fn start_coordinator(args: &[String], log: &Path) -> anyhow::Result<(Child2, String)> {
    let mut child = Command::new(sibling("ddpm-coord")?)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting ddpm-coord")?;
    let stdout = child.stdout.take().context("coordinator stdout")?;
    let mut child = Child2(child);
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(addr) = l.strip_prefix("listening on ") {
                    // Keep draining stdout so the child never blocks on it.
                    std::thread::spawn(move || for _ in lines {});
                    return Ok((child, addr.trim().to_string()));
                }
            }
            _ => break,
        }
    }
    let _ = child.0.kill();
    anyhow::bail!("ddpm-coord did not start; see {}", log.display())
}

/// Starts a CPU `ddpm-worker` with `threads` libtorch threads.
pub fn start_worker(addr: &str, name: &str, threads: usize, log: &Path) -> anyhow::Result<Child2> {
    let child = Command::new(sibling("ddpm-worker")?)
        .args(["--coord", addr, "--device", "cpu", "--threads", &threads.to_string(), "--name", name])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting ddpm-worker")?;
    Ok(Child2(child))
}

/// Waits for a child to exit successfully.
pub fn wait_ok(child: &mut Child2, what: &str, log: &Path) -> anyhow::Result<()> {
    let status = child.0.wait()?;
    anyhow::ensure!(status.success(), "{what} failed ({status}); see {}", log.display());
    Ok(())
}

/// Runs a Python baseline script (its source embedded in the binary) with
/// `args`; returns its last stdout line parsed as JSON.
pub fn python_baseline(python: &str, name: &str, source: &str, args: &[String]) -> anyhow::Result<serde_json::Value> {
    python_baseline_with(python, name, source, &[], args)
}

/// [`python_baseline`] with `modules` (file name, source) beside the script
/// for it to import.
pub fn python_baseline_with(
    python: &str,
    name: &str,
    source: &str,
    modules: &[(&str, &str)],
    args: &[String],
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join(name);
    std::fs::write(&script, source)?;
    for (file, text) in modules {
        std::fs::write(dir.path().join(file), text)?;
    }
    let out = Command::new(python).arg(&script).args(args).output().with_context(|| format!("running {python} {name}"))?;
    anyhow::ensure!(out.status.success(), "{name} failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().context("no output")?;
    Ok(serde_json::from_str(line)?)
}

/// The Python with torch: `--python`, else `$DDPM_PYTHON`, else the
/// project's environment (`$DDPM_VENV`, default ~/.cache/ddpm/torch-2.11.0)
/// if it exists, else `python3`.
pub fn python(flag: &Option<String>) -> String {
    if let Some(p) = flag.clone().or_else(|| std::env::var("DDPM_PYTHON").ok()) {
        return p;
    }
    let venv = std::env::var_os("DDPM_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ddpm/torch-2.11.0")));
    match venv.map(|v| v.join("bin/python")) {
        Some(p) if p.exists() => p.display().to_string(),
        _ => "python3".into(),
    }
}

pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Seconds values of a baseline's `"seconds"` array.
pub fn seconds(v: &serde_json::Value) -> Vec<f64> {
    v["seconds"].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default()
}

/// Where a single-device benchmark runs, and its PyTorch baseline.
#[derive(clap::Args)]
pub struct DeviceArgs {
    /// libtorch CPU threads, on both sides.
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Python with torch and diffusers for the baseline (default $DDPM_PYTHON or python3).
    #[arg(long)]
    pub python: Option<String>,
    /// Skip the PyTorch baseline.
    #[arg(long)]
    pub no_baseline: bool,
}

/// `cpu` or `cuda:N` as a tch device.
pub fn parse_device(s: &str) -> anyhow::Result<tch::Device> {
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(tch::Device::Cuda(i)),
            _ => anyhow::bail!("unknown device {s:?}: use cpu or cuda:N"),
        },
    }
}
