//! `ddpm-worker`: parses flags, picks the device, sets up logging and runs
//! the worker until the coordinator ends the run or SIGTERM/Ctrl-C arrives.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ddpm::cuda_driver::DriverError;
use ddpm::exit;
use ddpm::wire::WorkerRole;
use ddpm_worker::client::CoordinatorGone;
use ddpm_worker::gpus::{GpuSet, GpuSetError};
use ddpm_worker::options::WorkerOptions;
use ddpm_worker::ports::{PortError, PortPlan};
use ddpm_worker::{run, Ended};
use tch::Device;

/// A worker of a ddpm training run: one process per device.
///
/// It joins the coordinator (`ddpm-coord`) at --coord, builds the run's
/// U-Net on its device, and then computes its shard of every training step
/// (and its part of sampling and evaluation jobs) until the run ends. A
/// lost coordinator is reconnected to and the run joined again, so workers
/// need no restart when the coordinator restarts (or is stopped by SIGTERM:
/// it resumes the run when it starts again).
///
/// Exit codes: 0 the run is finished; 1 an error; 2 bad flags; 4 the
/// coordinator stayed unreachable for --connect-timeout (gone, or never
/// there); 75 stopped by SIGTERM/Ctrl-C before the run's end.
#[derive(Parser, Debug)]
#[command(name = "ddpm-worker", version)]
struct Args {
    /// The coordinator, HOST:PORT (https://HOST:PORT, or any --tls-* flag, for TLS).
    #[arg(long, env = "DDPM_COORD")]
    coord: String,
    /// CUDA device index to run on.
    #[arg(long, conflicts_with = "device")]
    gpu: Option<usize>,
    /// One worker process per GPU: all (every visible device), a count N
    /// (devices 0..N) or indices I,J,...; the K-th (from 0) gets --gpu I,
    /// NAME-gpuI as its name, its share of --threads, and the
    /// --metrics-listen and --peer-listen ports (and a --peer-advertise
    /// port) plus K; ranges that would meet are refused. The NVIDIA driver
    /// is checked first. With --check-config: prints each child's command line.
    #[arg(long, value_name = "all|N|I,J", value_parser = clap::value_parser!(GpuSet), conflicts_with_all = ["gpu", "device"])]
    gpus: Option<GpuSet>,
    /// Device to run on: cpu or cuda:N (default: cpu unless --gpu is given).
    #[arg(long)]
    device: Option<String>,
    /// Name in the coordinator's logs (default: hostname/device).
    #[arg(long)]
    name: Option<String>,
    /// CPU threads for libtorch (0: its default, all cores). With --gpus,
    /// shared out: each of N children gets THREADS / N (at least 1).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// "train": training steps, and sampling jobs once training is over;
    /// "eval": sampling jobs only, also while the run trains.
    #[arg(long, default_value = "train", value_parser = role_parser())]
    role: WorkerRole,
    /// File holding the run's worker token (e.g. a mounted Kubernetes
    /// Secret); default: DDPM_WORKER_TOKEN. Needed when the coordinator has tokens.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: ddpm::wire::tls::ClientTlsArgs,
    /// Seconds to keep trying to reach the coordinator.
    #[arg(long, default_value_t = 120.0)]
    connect_timeout: f64,
    /// Serve this worker's Prometheus metrics (/metrics) and the gRPC health
    /// service (for Kubernetes probes) on this address, e.g. 0.0.0.0:9091
    /// (port 0 picks one; the URL is printed). Default: off.
    #[arg(long, env = "DDPM_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Listen for ring neighbours here ([dist] backend = "ring": gradients
    /// go worker to worker); port 0 picks a free one. "off": no listener
    /// (such a worker cannot train in a ring run).
    #[arg(long, env = "DDPM_PEER_LISTEN", default_value = "0.0.0.0:0", value_name = "ADDR|off")]
    peer_listen: String,
    /// The address neighbours dial, HOST or HOST:PORT (e.g. the pod IP);
    /// default: the address this machine reaches the coordinator from,
    /// with the listener's port.
    #[arg(long, env = "DDPM_PEER_ADVERTISE", value_name = "HOST[:PORT]")]
    peer_advertise: Option<String>,
    /// Check the flags (device form, address, numbers) without touching
    /// a device, a file or the network; exit 0, or 2 with the problem.
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    log: ddpm::runtime::LogArgs,
}

/// `--role`: exactly the two words (listed in `--help`), parsed once into
/// the role (whose wire form also accepts "" for train).
fn role_parser() -> impl clap::builder::TypedValueParser<Value = WorkerRole> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new([WorkerRole::Train.as_str(), WorkerRole::Eval.as_str()]).try_map(|s| s.parse::<WorkerRole>())
}

/// A flag the worker cannot run with.
#[derive(Debug, thiserror::Error)]
enum FlagError {
    #[error("unknown device {0:?}: use cpu or cuda:N")]
    UnknownDevice(String),
    #[error("CUDA device {0} requested but libtorch sees no CUDA device (driver missing, or a CPU-only libtorch); use --device cpu")]
    NoCuda(usize),
    #[error("CUDA device {device} requested but only {count} device(s) exist (0..{count})")]
    NoSuchCuda { device: usize, count: usize },
    #[error("--coord {0:?}: give HOST:PORT, e.g. ddpm-coord:50051")]
    Coord(String),
    #[error("--threads must be 0 (libtorch's default) or more")]
    Threads,
    #[error("--connect-timeout must be a positive number of seconds")]
    ConnectTimeout,
    #[error(transparent)]
    Ports(#[from] PortError),
    #[error(transparent)]
    Gpus(#[from] GpuSetError),
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// The device `--device` names, without asking libtorch whether it exists.
fn device_form(d: &str) -> Result<Option<usize>, FlagError> {
    match d {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        _ => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(Some(i)),
            _ => Err(FlagError::UnknownDevice(d.to_string())),
        },
    }
}

/// Before any CUDA call: a libtorch with CUDA and a driver new enough for
/// it (`ddpm::cuda_driver`), so that a node with an old driver or none
/// refuses the worker with what to do instead of failing in libtorch.
fn check_driver() -> Result<(), DriverError> {
    let checked = ddpm::cuda_driver::check()?;
    let built = checked.built.map(|b| b.to_string());
    if checked.on_minor_compatibility() {
        tracing::warn!(
            driver_cuda = %checked.driver, built_cuda = built.as_deref(),
            "the NVIDIA driver is older than this build's CUDA minor version: running on CUDA minor version compatibility"
        );
    } else {
        tracing::info!(driver_cuda = %checked.driver, built_cuda = built.as_deref(), "NVIDIA driver checked");
    }
    Ok(())
}

fn pick_device(args: &Args) -> Result<Device, FlagError> {
    let cuda = |i: usize| -> Result<Device, FlagError> {
        check_driver()?;
        if !tch::Cuda::is_available() {
            return Err(FlagError::NoCuda(i));
        }
        let count = tch::Cuda::device_count() as usize;
        if i >= count {
            return Err(FlagError::NoSuchCuda { device: i, count });
        }
        Ok(Device::Cuda(i))
    };
    match (&args.gpu, args.device.as_deref()) {
        (Some(i), _) => cuda(*i),
        (None, None) => Ok(Device::Cpu),
        (None, Some(d)) => device_form(d)?.map_or(Ok(Device::Cpu), cuda),
    }
}

/// The ports flags, read once for both `--check-config` and `--gpus`.
fn port_plan(args: &Args) -> Result<PortPlan, PortError> {
    PortPlan::parse(args.metrics_listen.as_deref(), &args.peer_listen, args.peer_advertise.as_deref())
}

/// This process's flags, which each `--gpus` child gets with its own
/// device, name and ports in place of the parent's (less `--check-config`,
/// so that its dry run shows the children as `--gpus` starts them).
fn child_argv() -> Vec<String> {
    std::env::args().skip(1).filter(|a| a != "--check-config").collect()
}

/// `--check-config`: everything a flag says, short of the device, the
/// token and TLS files and the coordinator. With `--gpus N` or `I,J` it
/// also prints each child's command line (stdout), so that a GPU node's
/// flags can be checked on any machine.
fn check_only(args: &Args) -> Result<(), FlagError> {
    if let Some(d) = &args.device {
        device_form(d)?;
    }
    let coord = args.coord.trim_start_matches("https://").trim_start_matches("http://");
    match coord.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
        _ => return Err(FlagError::Coord(args.coord.clone())),
    }
    if args.threads < 0 {
        return Err(FlagError::Threads);
    }
    if !(args.connect_timeout.is_finite() && args.connect_timeout > 0.0) {
        return Err(FlagError::ConnectTimeout);
    }
    let ports = port_plan(args)?;
    match &args.gpus {
        // `all` has as many children as devices, which only a device check
        // can count: say how many the ports fit instead.
        Some(GpuSet::All) => match ports.capacity() {
            usize::MAX => eprintln!("--gpus all: any number of GPU processes fit these ports"),
            cap => eprintln!("--gpus all: up to {cap} GPU processes fit these ports"),
        },
        Some(set) => {
            let ids = set.resolve(usize::MAX)?;
            // The dry run: each child's command line, as --gpus would start it.
            for child in ddpm_worker::gpus::plan_children(&child_argv(), &ids, args.name.as_deref(), args.threads, &ports)? {
                println!("ddpm-worker {}", child.join(" "));
            }
        }
        None => ports.check(1)?,
    }
    Ok(())
}

/// `--gpus`: one child process per device; returns the combined exit code.
fn run_per_gpu(args: &Args, set: &GpuSet) -> ExitCode {
    if let Err(e) = check_driver() {
        eprintln!("error: {e}");
        return exit::code(exit::USAGE);
    }
    let visible = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    let ids = match set.resolve(visible) {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::code(exit::USAGE);
        }
    };
    let children = match port_plan(args)
        .and_then(|ports| ddpm_worker::gpus::plan_children(&child_argv(), &ids, args.name.as_deref(), args.threads, &ports))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::code(exit::USAGE);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::code(exit::FAILED);
        }
    };
    match rt.block_on(ddpm_worker::gpus::supervise(children, ddpm::runtime::shutdown_signal())) {
        Ok(code) => exit::code(code),
        Err(e) => {
            eprintln!("error: cannot start the worker processes: {e:#}");
            exit::code(exit::FAILED)
        }
    }
}

fn main() -> ExitCode {
    ddpm::runtime::tune_allocator();
    // Before any thread exists (ddpm::nccl::pinned says why).
    let overridden = ddpm::nccl::pin_collectives();
    let args = Args::parse();
    args.log.init();
    for (var, value, old) in overridden {
        tracing::warn!("{var}={old} replaced by {var}={value}: every replica must reduce with the same NCCL algorithm and protocol");
    }
    if args.check_config {
        return match check_only(&args) {
            Ok(()) => {
                eprintln!("flags ok");
                exit::code(exit::DONE)
            }
            Err(e) => usage_error(e.into()),
        };
    }
    if let Some(set) = &args.gpus {
        return run_per_gpu(&args, set);
    }
    let opts = match options(&args) {
        Ok(opts) => opts,
        Err(e) => return usage_error(e),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::code(exit::FAILED);
        }
    };
    match rt.block_on(serve(&args, opts)) {
        Ok(Ended::RunOver) => exit::code(exit::DONE),
        Ok(Ended::Stopped) => exit::code(exit::STOPPED),
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<CoordinatorGone>() {
                Some(_) => exit::code(exit::NO_COORDINATOR),
                None => exit::code(exit::FAILED),
            }
        }
    }
}

/// A usage error: its message, and the exit code that says so.
fn usage_error(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    exit::code(exit::USAGE)
}

/// What the flags ask of one worker process: its device, token, TLS and
/// name, and every flag checked.
fn options(args: &Args) -> anyhow::Result<WorkerOptions> {
    let device = pick_device(args)?;
    let token = ddpm::wire::auth::load_token(args.token_file.as_deref(), ddpm::wire::auth::WORKER_TOKEN_ENV)?;
    let tls = args.tls.load()?;
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    let name = args.name.clone().unwrap_or_else(|| format!("{host}/{device:?}").to_lowercase());
    let stats = ddpm_worker::telemetry::WorkerStats::new(&format!("{device:?}").to_lowercase(), &name);
    check_only(args)?;
    Ok(WorkerOptions {
        coord: args.coord.clone(),
        device,
        name,
        stats,
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        role: args.role,
        token,
        tls,
        peers: None,
    })
}

/// The worker's ports (metrics, ring neighbours) as the flags ask, then
/// the worker itself until the run ends or a signal stops it.
async fn serve(args: &Args, mut opts: WorkerOptions) -> anyhow::Result<Ended> {
    if let Some(addr) = &args.metrics_listen {
        ddpm_worker::telemetry::serve(addr, opts.stats.clone()).await?;
    }
    if args.peer_listen != "off" {
        let advertise = args.peer_advertise.as_deref();
        let coord = args.coord.as_str();
        let peers = ddpm::ring::PeerListener::bind(&args.peer_listen, |bound| ddpm::ring::advertised_endpoint(bound, advertise, coord))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for ring neighbours on {} (--peer-listen): {e}", args.peer_listen))?;
        tracing::info!(endpoint = peers.endpoint(), "listening for ring neighbours");
        opts.peers = Some(std::sync::Arc::new(peers));
    }
    run(opts, ddpm::runtime::shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_explains_itself_once() {
        use clap::CommandFactory;
        let problems = ddpm::runtime::cli_help_problems(&Args::command());
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn the_role_flag_takes_the_two_words() {
        let parse = |extra: &[&str]| Args::try_parse_from([&["ddpm-worker", "--coord", "h:1"], extra].concat());
        assert_eq!(parse(&[]).unwrap().role, WorkerRole::Train);
        assert_eq!(parse(&["--role", "eval"]).unwrap().role, WorkerRole::Eval);
        assert!(parse(&["--role", "gpu"]).is_err());
        // The wire's "" alias of train is no flag value.
        assert!(parse(&["--role", ""]).is_err());
    }
}
