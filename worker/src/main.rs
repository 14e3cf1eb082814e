//! `ddpm-worker`: parses flags, picks the device, sets up logging and runs
//! the worker until the coordinator ends the run or SIGTERM/Ctrl-C arrives.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ddpm::wire::WorkerRole;
use ddpm_worker::{run, WorkerOptions};
use tch::Device;

/// A worker of a ddpm training run: one process per device.
///
/// It joins the coordinator (`ddpm-coord`) at --coord, builds the run's
/// U-Net on its device, and then computes its shard of every training step
/// (and its part of sampling and evaluation jobs) until the run ends. A
/// lost coordinator is reconnected to and the run joined again, so workers
/// need no restart when the coordinator restarts.
#[derive(Parser, Debug)]
#[command(name = "ddpm-worker", version)]
struct Args {
    /// The coordinator, HOST:PORT (https://HOST:PORT, or any --tls-* flag, for TLS).
    #[arg(long, env = "DDPM_COORD")]
    coord: String,
    /// CUDA device index to run on.
    #[arg(long, conflicts_with = "device")]
    gpu: Option<usize>,
    /// Device to run on: cpu or cuda:N (default: cpu unless --gpu is given).
    #[arg(long)]
    device: Option<String>,
    /// Name in the coordinator's logs (default: hostname/device).
    #[arg(long)]
    name: Option<String>,
    /// CPU threads for libtorch (0: its default, all cores).
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
    #[command(flatten)]
    log: ddpm::runtime::LogArgs,
}

/// `--role`: exactly the two words (listed in `--help`), parsed once into
/// the role (whose wire form also accepts "" for train).
fn role_parser() -> impl clap::builder::TypedValueParser<Value = WorkerRole> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new([WorkerRole::Train.as_str(), WorkerRole::Eval.as_str()])
        .try_map(|s| s.parse::<WorkerRole>())
}

fn pick_device(args: &Args) -> Result<Device, String> {
    let cuda = |i: usize| -> Result<Device, String> {
        if !tch::Cuda::is_available() {
            return Err(format!(
                "CUDA device {i} requested but libtorch sees no CUDA device (driver missing, or a CPU-only libtorch); use --device cpu"
            ));
        }
        let n = tch::Cuda::device_count() as usize;
        if i >= n {
            return Err(format!("CUDA device {i} requested but only {n} device(s) exist (0..{n})"));
        }
        Ok(Device::Cuda(i))
    };
    match (&args.gpu, args.device.as_deref()) {
        (Some(i), _) => cuda(*i),
        (None, None | Some("cpu")) => Ok(Device::Cpu),
        (None, Some(d)) => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ if d == "cuda" => cuda(0),
            _ => Err(format!("unknown device {d:?}: use cpu or cuda:N")),
        },
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    let device = match pick_device(&args) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let token = match ddpm::wire::auth::load_token(args.token_file.as_deref(), ddpm::wire::auth::WORKER_TOKEN_ENV) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let tls = match args.tls.load() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    let name = args.name.clone().unwrap_or_else(|| format!("{host}/{device:?}").to_lowercase());
    let stats = ddpm_worker::telemetry::WorkerStats::new(&format!("{device:?}").to_lowercase(), &name);
    let opts = WorkerOptions {
        coord: args.coord.clone(),
        device,
        name,
        stats: stats.clone(),
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        role: args.role,
        token,
        tls,
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let worked = rt.block_on(async {
        if let Some(addr) = &args.metrics_listen {
            ddpm_worker::telemetry::serve(addr, stats).await?;
        }
        run(opts, ddpm::runtime::shutdown_signal()).await
    });
    match worked {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
