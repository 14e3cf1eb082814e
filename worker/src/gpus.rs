//! `ddpm-worker --gpus all|N|I,J,...`: one worker process per GPU, as
//! torchrun's `--nproc-per-node` starts one per device. Each child is this
//! binary with the same flags and `--gpu I`, its own `--name` and its own
//! metrics and peer ports ([`PortPlan`]); the parent forwards
//! SIGTERM/Ctrl-C to them and exits with the code that matters most (see [`combine`]). A separate process per device
//! keeps each GPU's CUDA context, allocator and failures apart, and each
//! child is an ordinary member of the run.

use std::str::FromStr;

use crate::ports::{ChildPorts, PortError, PortPlan};

/// A `--gpus` value that names no usable set of devices.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuSetError {
    #[error("--gpus {0:?}: give all, a count (e.g. 8) or device indices (e.g. 0,1,3)")]
    Unreadable(String),
    #[error("--gpus {0:?} names a device twice")]
    Twice(String),
    #[error("--gpus {0:?}: at least one GPU")]
    Zero(String),
    #[error("--gpus: libtorch sees no CUDA device (no driver, CUDA_VISIBLE_DEVICES empty, or a CPU-only libtorch); use --device cpu")]
    NoneVisible,
    #[error("--gpus: device {device} requested but only {visible} are visible (0..{visible})")]
    NotVisible { device: usize, visible: usize },
}

/// Which GPUs `--gpus` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSet {
    /// Every device libtorch sees (after CUDA_VISIBLE_DEVICES).
    All,
    /// The first N.
    Count(usize),
    /// These indices.
    List(Vec<usize>),
}

impl FromStr for GpuSet {
    type Err = GpuSetError;
    fn from_str(s: &str) -> Result<Self, GpuSetError> {
        let bad = || GpuSetError::Unreadable(s.to_string());
        if s == "all" {
            return Ok(Self::All);
        }
        if s.contains(',') {
            let ids = s.split(',').map(|p| p.trim().parse::<usize>().map_err(|_| bad())).collect::<Result<Vec<_>, _>>()?;
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != ids.len() {
                return Err(GpuSetError::Twice(s.to_string()));
            }
            return Ok(Self::List(ids));
        }
        match s.parse::<usize>() {
            Ok(0) => Err(GpuSetError::Zero(s.to_string())),
            Ok(n) => Ok(Self::Count(n)),
            Err(_) => Err(bad()),
        }
    }
}

impl GpuSet {
    /// The device indices, given that `visible` devices exist.
    pub fn resolve(&self, visible: usize) -> Result<Vec<usize>, GpuSetError> {
        if visible == 0 {
            return Err(GpuSetError::NoneVisible);
        }
        let ids = match self {
            Self::All => (0..visible).collect(),
            Self::Count(n) => (0..*n).collect(),
            Self::List(ids) => ids.clone(),
        };
        if let Some(&device) = ids.iter().find(|&&i| i >= visible) {
            return Err(GpuSetError::NotVisible { device, visible });
        }
        Ok(ids)
    }
}

/// The command line of the child for `gpu`: `args` (without the program)
/// minus `--gpus`, `--name`, `--threads` and the port flags, plus `--gpu`,
/// the child's name, its share of the threads (none: `threads` 0) and its ports.
pub fn child_args(args: &[String], gpu: usize, name: Option<&str>, threads: i32, ports: &ChildPorts) -> Vec<String> {
    const REPLACED: [&str; 6] = ["--gpus", "--name", "--threads", "--metrics-listen", "--peer-listen", "--peer-advertise"];
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        if REPLACED.contains(&a.as_str()) {
            skip_value = true;
            continue;
        }
        if REPLACED.iter().any(|f| a.starts_with(&format!("{f}="))) {
            continue;
        }
        out.push(a.clone());
    }
    out.push(format!("--gpu={gpu}"));
    if let Some(n) = name {
        out.push(format!("--name={n}-gpu{gpu}"));
    }
    if threads > 0 {
        out.push(format!("--threads={threads}"));
    }
    if let Some(m) = &ports.metrics {
        out.push(format!("--metrics-listen={m}"));
    }
    out.push(format!("--peer-listen={}", ports.peer_listen));
    if let Some(a) = &ports.peer_advertise {
        out.push(format!("--peer-advertise={a}"));
    }
    out
}

/// Every child's command line for devices `ids`, or why these flags
/// cannot give them distinct ports. The parent's `--threads` (a pod's CPU
/// limit) is shared out, `threads / N` each and at least 1, so that N
/// children do not run N times as many threads as there are cores; 0
/// (libtorch's default) stays 0.
pub fn plan_children(
    args: &[String],
    ids: &[usize],
    name: Option<&str>,
    threads: i32,
    ports: &PortPlan,
) -> Result<Vec<Vec<String>>, PortError> {
    ports.check(ids.len())?;
    let share = if threads > 0 { (threads / ids.len().max(1) as i32).max(1) } else { 0 };
    Ok(ids.iter().enumerate().map(|(k, gpu)| child_args(args, *gpu, name, share, &ports.child(k))).collect())
}

/// One exit code for the children's: a failure (its own code) before a stop
/// (75) before the run's end (0), so that a supervisor restarts what failed.
pub fn combine(codes: &[u8]) -> u8 {
    use ddpm::exit::{DONE, STOPPED};
    codes.iter().copied().find(|&c| c != DONE && c != STOPPED).unwrap_or(if codes.contains(&STOPPED) { STOPPED } else { DONE })
}

/// Starts one child per entry of `children` (its arguments) and waits for
/// all; SIGTERM or Ctrl-C to this process is passed on to each.
pub async fn supervise(children: Vec<Vec<String>>, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<u8> {
    let exe = std::env::current_exe()?;
    let mut running = Vec::new();
    for args in &children {
        let child = tokio::process::Command::new(&exe).args(args).kill_on_drop(true).spawn()?;
        tracing::info!(pid = child.id(), args = ?args, "started a worker process");
        running.push(child);
    }
    let pids: Vec<u32> = running.iter().filter_map(|c| c.id()).collect();
    tokio::pin!(shutdown);
    let mut forwarded = false;
    let mut codes = Vec::new();
    for mut child in running {
        let status = loop {
            if forwarded {
                break child.wait().await?;
            }
            tokio::select! {
                s = child.wait() => break s?,
                _ = &mut shutdown => {
                    forwarded = true;
                    for &pid in &pids {
                        // SAFETY: kill(2) on our own children's pids; no memory involved.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                    }
                }
            }
        };
        // A child killed by a signal has no code: count it as a failure.
        codes.push(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(ddpm::exit::FAILED));
    }
    Ok(combine(&codes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_forms_of_gpus_parse_and_resolve() {
        assert_eq!("all".parse::<GpuSet>().unwrap().resolve(4).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!("2".parse::<GpuSet>().unwrap().resolve(4).unwrap(), vec![0, 1]);
        assert_eq!("3,1".parse::<GpuSet>().unwrap().resolve(4).unwrap(), vec![3, 1]);
        assert!("5".parse::<GpuSet>().unwrap().resolve(4).unwrap_err().to_string().contains("only 4"));
        assert!("all".parse::<GpuSet>().unwrap().resolve(0).unwrap_err().to_string().contains("no CUDA device"));
        assert!("0".parse::<GpuSet>().is_err());
        assert!("1,1".parse::<GpuSet>().unwrap_err().to_string().contains("twice"));
        assert!("some".parse::<GpuSet>().unwrap_err().to_string().contains("give all"));
    }

    #[test]
    fn a_child_gets_its_gpu_name_and_ports_and_no_gpus() {
        let args = s(&[
            "--coord",
            "c:50051",
            "--gpus",
            "all",
            "--name=n",
            "--metrics-listen",
            "0.0.0.0:9091",
            "--threads=4",
            "--peer-listen",
            "x",
        ]);
        let plan = PortPlan::parse(Some("0.0.0.0:9091"), "0.0.0.0:9100", Some("10.0.0.5")).unwrap();
        let child = child_args(&args, 1, Some("n"), 2, &plan.child(1));
        let want = ["--coord", "c:50051", "--gpu=1", "--name=n-gpu1", "--threads=2", "--metrics-listen=0.0.0.0:9092"];
        assert_eq!(child, s(&[&want[..], &["--peer-listen=0.0.0.0:9101", "--peer-advertise=10.0.0.5"]].concat()));
        let off = PortPlan::parse(None, "off", None).unwrap();
        let bare = child_args(&s(&["--gpus=2", "--threads", "8", "--peer-listen=1.2.3.4:5"]), 0, None, 0, &off.child(0));
        assert_eq!(bare, s(&["--gpu=0", "--peer-listen=off"]));
    }

    #[test]
    fn children_never_share_a_port() {
        let plan = PortPlan::parse(Some("0.0.0.0:9091"), "0.0.0.0:9100", Some("pod-ip:7000")).unwrap();
        let args = s(&["--coord", "c:1", "--gpus", "8"]);
        let children = plan_children(&args, &(0..8).collect::<Vec<_>>(), None, 32, &plan).unwrap();
        let mut ports = std::collections::BTreeSet::new();
        for c in &children {
            for a in c.iter().filter(|a| a.starts_with("--metrics-listen=") || a.starts_with("--peer-listen=")) {
                assert!(ports.insert(a.rsplit(':').next().unwrap().to_string()), "port of {a} used twice: {children:?}");
            }
        }
        assert_eq!(ports.len(), 16);
        assert!(children[7].contains(&"--peer-advertise=pod-ip:7007".to_string()), "{:?}", children[7]);
        // A pod's 32 cores, 4 for each of the 8; never fewer than 1.
        assert!(children.iter().all(|c| c.contains(&"--threads=4".to_string())), "{children:?}");
        let few = plan_children(&args, &[0, 1, 2], None, 2, &plan).unwrap();
        assert!(few.iter().all(|c| c.contains(&"--threads=1".to_string())), "{few:?}");
        // The shipped manifests' single-GPU ports cannot start two.
        let shipped = PortPlan::parse(Some("0.0.0.0:9091"), "0.0.0.0:9092", None).unwrap();
        assert!(plan_children(&args, &[0, 1], None, 0, &shipped).is_err());
    }

    #[test]
    fn a_failure_outranks_a_stop_which_outranks_the_end() {
        assert_eq!(combine(&[0, 0]), 0);
        assert_eq!(combine(&[0, 75]), 75);
        assert_eq!(combine(&[75, 1, 0]), 1);
        assert_eq!(combine(&[2, 75]), 2);
    }
}
