//! `ddpm-worker --gpus all|N|I,J,...`: one worker process per GPU, as
//! torchrun's `--nproc-per-node` starts one per device. Each child is this
//! binary with the same flags and `--gpu I`, its own `--name` and its own
//! metrics and peer ports ([`PortPlan`]); the parent forwards SIGTERM/Ctrl-C to them and exits with the
//! code that matters most (see [`combine`]). A separate process per device
//! keeps each GPU's CUDA context, allocator and failures apart, and each
//! child is an ordinary member of the run.

use std::net::SocketAddr;
use std::str::FromStr;

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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--gpus {s:?}: give all, a count (e.g. 8) or device indices (e.g. 0,1,3)");
        if s == "all" {
            return Ok(Self::All);
        }
        if s.contains(',') {
            let ids = s.split(',').map(|p| p.trim().parse::<usize>().map_err(|_| bad())).collect::<Result<Vec<_>, _>>()?;
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != ids.len() {
                return Err(format!("--gpus {s:?} names a device twice"));
            }
            return Ok(Self::List(ids));
        }
        match s.parse::<usize>() {
            Ok(0) => Err(format!("--gpus {s:?}: at least one GPU")),
            Ok(n) => Ok(Self::Count(n)),
            Err(_) => Err(bad()),
        }
    }
}

impl GpuSet {
    /// The device indices, given that `visible` devices exist.
    pub fn resolve(&self, visible: usize) -> Result<Vec<usize>, String> {
        if visible == 0 {
            return Err(
                "--gpus: libtorch sees no CUDA device (no driver, CUDA_VISIBLE_DEVICES empty, or a CPU-only libtorch); use --device cpu"
                    .into(),
            );
        }
        let ids = match self {
            Self::All => (0..visible).collect(),
            Self::Count(n) => (0..*n).collect(),
            Self::List(ids) => ids.clone(),
        };
        if let Some(bad) = ids.iter().find(|&&i| i >= visible) {
            return Err(format!("--gpus: device {bad} requested but only {visible} are visible (0..{visible})"));
        }
        Ok(ids)
    }
}

/// The ports of one child process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildPorts {
    /// `--metrics-listen` (none: the parent has no metrics port).
    pub metrics: Option<String>,
    /// `--peer-listen` (an address, or "off").
    pub peer_listen: String,
    /// `--peer-advertise` (none: the parent advertises nothing explicit).
    pub peer_advertise: Option<String>,
}

/// The rule that gives each child its own ports, from the parent's flags:
/// child k (its position in `--gpus`, from 0) listens for metrics on the
/// `--metrics-listen` port + k and for ring neighbours on the
/// `--peer-listen` port + k (an explicit `--peer-advertise` port + k too);
/// port 0 stays 0 (each child picks a free one) and `off` stays off. Two
/// children can then never share a port of one kind; the two ranges must
/// not overlap either, which [`PortPlan::check`] refuses before any child
/// starts (with `--metrics-listen=0.0.0.0:9091 --peer-listen=0.0.0.0:9092`,
/// child 1's metrics port would be child 0's peer port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPlan {
    metrics: Option<SocketAddr>,
    /// None: `--peer-listen off`.
    peer: Option<SocketAddr>,
    /// `--peer-advertise`: the host, and its port if it has one.
    advertise: Option<(String, Option<u16>)>,
}

impl PortPlan {
    /// Reads the three flags; an address that does not parse is an error naming its flag.
    pub fn parse(metrics_listen: Option<&str>, peer_listen: &str, peer_advertise: Option<&str>) -> Result<Self, String> {
        let metrics = metrics_listen
            .map(|m| m.parse::<SocketAddr>().map_err(|e| format!("--metrics-listen {m:?}: {e}; give IP:PORT")))
            .transpose()?;
        let peer = match peer_listen {
            "off" => None,
            p => Some(p.parse::<SocketAddr>().map_err(|_| format!("--peer-listen {p:?}: give IP:PORT (port 0: any free one) or off"))?),
        };
        let advertise = peer_advertise.filter(|a| !a.is_empty()).map(|a| match a.rsplit_once(':') {
            // A bare IPv6 address ends in a group, not a port: "[v6]:PORT" has the port after "]".
            Some((h, p)) if !a.ends_with(']') && (!h.contains(':') || h.ends_with(']')) => match p.parse::<u16>() {
                Ok(p) => (h.to_string(), Some(p)),
                Err(_) => (a.to_string(), None),
            },
            _ => (a.to_string(), None),
        });
        Ok(Self { metrics, peer, advertise })
    }

    /// How many children these ports fit (`usize::MAX`: any number, every
    /// port 0): each fixed range must stay within 65535, and the metrics and
    /// peer ranges of addresses that can collide (the same IP, or either
    /// unspecified) must stay apart, so at most |peer - metrics| children.
    pub fn capacity(&self) -> usize {
        let fixed = |a: &Option<SocketAddr>| a.filter(|a| a.port() != 0);
        let mut cap = usize::MAX;
        for a in [fixed(&self.metrics), fixed(&self.peer)].into_iter().flatten() {
            cap = cap.min(65536 - usize::from(a.port()));
        }
        if let Some(p) = self.advertise.as_ref().and_then(|(_, p)| *p).filter(|p| *p != 0) {
            cap = cap.min(65536 - usize::from(p));
        }
        if let (Some(m), Some(p)) = (fixed(&self.metrics), fixed(&self.peer)) {
            if m.ip() == p.ip() || m.ip().is_unspecified() || p.ip().is_unspecified() {
                cap = cap.min(usize::from(m.port().abs_diff(p.port())));
            }
        }
        cap
    }

    /// Refuses `n` processes (1: a single worker) that these ports do not fit, saying which flags to change.
    pub fn check(&self, n: usize) -> Result<(), String> {
        let cap = self.capacity();
        if n <= cap {
            return Ok(());
        }
        let show = |a: &Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
        let (m, p) = (show(&self.metrics), show(&self.peer));
        Err(if cap == 0 {
            format!("--metrics-listen {m} and --peer-listen {p} are the same port: give them different ports")
        } else {
            format!(
                "{n} worker processes need {n} metrics ports from --metrics-listen {m} and {n} peer ports from --peer-listen {p} \
                 (each child k takes port + k), but only {cap} fit before the two ranges meet or pass 65535: \
                 put the peer port at least {n} away from the metrics port (e.g. --metrics-listen=0.0.0.0:9091 --peer-listen=0.0.0.0:9100 for up to 9)"
            )
        })
    }

    /// Child `index`'s ports (after [`PortPlan::check`] passed for more than `index` children).
    pub fn child(&self, index: usize) -> ChildPorts {
        let shift = |a: SocketAddr| {
            let mut a = a;
            if a.port() != 0 {
                a.set_port(a.port() + index as u16);
            }
            a.to_string()
        };
        ChildPorts {
            metrics: self.metrics.map(shift),
            peer_listen: self.peer.map_or_else(|| "off".to_string(), shift),
            peer_advertise: self.advertise.as_ref().map(|(h, p)| match p {
                Some(p) if *p != 0 => format!("{h}:{}", p + index as u16),
                Some(p) => format!("{h}:{p}"),
                None => h.clone(),
            }),
        }
    }
}

/// The command line of the child for `gpu`: `args` (without the program)
/// minus `--gpus`, `--name` and the port flags, plus `--gpu`, the child's
/// name and its ports.
pub fn child_args(args: &[String], gpu: usize, name: Option<&str>, ports: &ChildPorts) -> Vec<String> {
    const REPLACED: [&str; 5] = ["--gpus", "--name", "--metrics-listen", "--peer-listen", "--peer-advertise"];
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
/// cannot give them distinct ports.
pub fn plan_children(args: &[String], ids: &[usize], name: Option<&str>, ports: &PortPlan) -> Result<Vec<Vec<String>>, String> {
    ports.check(ids.len())?;
    Ok(ids.iter().enumerate().map(|(k, gpu)| child_args(args, *gpu, name, &ports.child(k))).collect())
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
        assert!("5".parse::<GpuSet>().unwrap().resolve(4).unwrap_err().contains("only 4"));
        assert!("all".parse::<GpuSet>().unwrap().resolve(0).unwrap_err().contains("no CUDA device"));
        assert!("0".parse::<GpuSet>().is_err());
        assert!("1,1".parse::<GpuSet>().unwrap_err().contains("twice"));
        assert!("some".parse::<GpuSet>().unwrap_err().contains("give all"));
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
        let child = child_args(&args, 1, Some("n"), &plan.child(1));
        let want = ["--coord", "c:50051", "--threads=4", "--gpu=1", "--name=n-gpu1", "--metrics-listen=0.0.0.0:9092"];
        assert_eq!(child, s(&[&want[..], &["--peer-listen=0.0.0.0:9101", "--peer-advertise=10.0.0.5"]].concat()));
        let off = PortPlan::parse(None, "off", None).unwrap();
        assert_eq!(child_args(&s(&["--gpus=2", "--peer-listen=1.2.3.4:5"]), 0, None, &off.child(0)), s(&["--gpu=0", "--peer-listen=off"]));
    }

    #[test]
    fn children_never_share_a_port() {
        let plan = PortPlan::parse(Some("0.0.0.0:9091"), "0.0.0.0:9100", Some("pod-ip:7000")).unwrap();
        let args = s(&["--coord", "c:1", "--gpus", "8"]);
        let children = plan_children(&args, &(0..8).collect::<Vec<_>>(), None, &plan).unwrap();
        let mut ports = std::collections::BTreeSet::new();
        for c in &children {
            for a in c.iter().filter(|a| a.starts_with("--metrics-listen=") || a.starts_with("--peer-listen=")) {
                assert!(ports.insert(a.rsplit(':').next().unwrap().to_string()), "port of {a} used twice: {children:?}");
            }
        }
        assert_eq!(ports.len(), 16);
        assert!(children[7].contains(&"--peer-advertise=pod-ip:7007".to_string()), "{:?}", children[7]);
        // Port 0 stays 0: every child asks the kernel for a free one.
        let any = PortPlan::parse(Some("127.0.0.1:0"), "0.0.0.0:0", None).unwrap();
        assert_eq!(any.capacity(), usize::MAX);
        assert_eq!(any.child(5).peer_listen, "0.0.0.0:0");
    }

    #[test]
    fn ranges_that_would_meet_are_refused_before_any_child_starts() {
        // The shipped manifests' single-GPU ports: fine for one process, not for two.
        let shipped = PortPlan::parse(Some("0.0.0.0:9091"), "0.0.0.0:9092", None).unwrap();
        shipped.check(1).unwrap();
        let e = shipped.check(2).unwrap_err();
        assert!(e.contains("only 1 fit") && e.contains("--peer-listen"), "{e}");
        assert!(plan_children(&[], &[0, 1], None, &shipped).is_err());
        let same = PortPlan::parse(Some("0.0.0.0:9091"), "127.0.0.1:9091", None).unwrap();
        assert!(same.check(1).unwrap_err().contains("same port"));
        // Different specific IPs cannot collide; the top of the port space still bounds.
        let apart = PortPlan::parse(Some("127.0.0.1:9091"), "10.0.0.1:9092", None).unwrap();
        apart.check(8).unwrap();
        let top = PortPlan::parse(Some("0.0.0.0:65534"), "off", None).unwrap();
        top.check(2).unwrap();
        assert!(top.check(3).is_err());
        assert!(PortPlan::parse(Some("nope"), "off", None).unwrap_err().contains("--metrics-listen"));
        assert!(PortPlan::parse(None, "0.0.0.0", None).unwrap_err().contains("--peer-listen"));
        let v6 = PortPlan::parse(None, "[::]:9100", Some("[fd00::5]:7000")).unwrap();
        assert_eq!(v6.child(2).peer_advertise.as_deref(), Some("[fd00::5]:7002"));
        assert_eq!(v6.child(2).peer_listen, "[::]:9102");
        let bare_v6 = PortPlan::parse(None, "off", Some("fd00::5")).unwrap();
        assert_eq!(bare_v6.child(1).peer_advertise.as_deref(), Some("fd00::5"));
    }

    #[test]
    fn a_failure_outranks_a_stop_which_outranks_the_end() {
        assert_eq!(combine(&[0, 0]), 0);
        assert_eq!(combine(&[0, 75]), 75);
        assert_eq!(combine(&[75, 1, 0]), 1);
        assert_eq!(combine(&[2, 75]), 2);
    }
}
