//! `ddpm-coord`: parses flags, sets up logging, binds, and runs the
//! coordinator until the run ends or SIGTERM/Ctrl-C arrives.
//!
//! Over 450 lines and still one concept, the command line: most of it is
//! the flags and their help (clap prints the doc comments), kept beside
//! the parsing and checks they feed; the coordinator itself is `lib.rs`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ddpm::config::{Backend, GradDtype, ShadowMode, TrainConfig};
use ddpm::exit;
use ddpm::store::StoreArgs;
use ddpm::wire::auth;
use ddpm::wire::tls::ServerTls;
use ddpm_coord::options::CoordOptions;
use ddpm_coord::run;
use ddpm_coord::service::access::Access;
use ddpm_coord::training::start::{StartPolicy, StartPolicyError, StartTimeout};
use ddpm_coord::training::summary::Summary;

/// The coordinator of a data-parallel DDPM training run.
///
/// Waits for --workers workers (`ddpm-worker --coord HOST:PORT`; or at least
/// --min-workers, see --start-grace), then trains:
/// it shards every global batch across them, all-reduces their gradients,
/// keeps the parameters and the EMA, checkpoints to --run (resuming from its
/// latest complete checkpoint when there is one) and draws a sample grid at
/// the end. SIGTERM or Ctrl-C: the current step finishes, a checkpoint is
/// saved, and the same command (with the same --run) resumes the run.
/// Started again on a finished run, it changes nothing and exits 0. When
/// every worker holding the last steps is lost, it starts the run again
/// itself on the same address (from its copy or the newest checkpoint),
/// unless they were lost at the same step the last time (then exit 1).
///
/// Exit codes: 0 the run is finished; 1 an error (starting again resumes);
/// 2 bad flags or config; 3 fewer than --min-workers within --start-timeout;
/// 75 stopped by SIGTERM/Ctrl-C after a checkpoint (start again to go on).
///
/// Watch it with `ddpm status --coord HOST:PORT`, or --metrics-listen for
/// Prometheus metrics and a dashboard in the browser; submit sampling and
/// evaluation jobs with `ddpm jobs`.
#[derive(Parser, Debug)]
#[command(name = "ddpm-coord", version)]
struct Args {
    /// The world size: workers to wait for before the first step (more
    /// than this are not needed; fewer train on once lost ones are gone).
    #[arg(long, env = "DDPM_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Start with fewer than --workers, but at least this many, once no
    /// worker has joined for --start-grace seconds; the rest join later
    /// [default: --workers].
    #[arg(long, env = "DDPM_MIN_WORKERS")]
    min_workers: Option<usize>,
    /// Seconds without a new worker after which a run with at least
    /// --min-workers starts without the rest.
    #[arg(long, env = "DDPM_START_GRACE", default_value_t = 30.0, value_parser = parse_seconds)]
    start_grace: f64,
    /// Seconds to wait for --min-workers workers before giving up with
    /// exit code 3 (0: wait forever).
    #[arg(long, env = "DDPM_START_TIMEOUT", default_value_t = 0.0, value_parser = parse_seconds)]
    start_timeout: f64,
    /// Started on a run that is already finished: answer workers that
    /// connect that the run is over (they exit 0) for up to this many
    /// seconds, or until --workers have heard it, then exit 0; 0: at once.
    #[arg(long, env = "DDPM_FINISHED_LINGER", default_value_t = 0.0, value_parser = parse_seconds)]
    finished_linger: f64,
    /// Check the flags and the config (preset, --config, --data's form,
    /// world size, tokens or TLS for a non-loopback --listen) without
    /// listening or reading the run, the data or the token files; print
    /// the resolved config as TOML and exit 0, or the problem and exit 2.
    #[arg(long)]
    check_config: bool,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "0.0.0.0:50051")]
    listen: String,
    /// Training recipe: cifar10, lsun256 (the paper's) or tiny (demos and tests).
    #[arg(long, default_value = "cifar10")]
    preset: String,
    /// TOML file overriding the preset: any subset of the sections [model],
    /// [diffusion], [data], [optim], [train], [dist], [sample], [eval]
    /// (periodic evaluations) and [checkpoint] (when to save, what to keep);
    /// unknown keys are refused. Flags override the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Dataset, KIND:LOCATION[:SPLIT][@RESOLUTION]: cifar10:PATH[:train|:test]
    /// (the batches directory or the downloaded .tar.gz), lsun:PATH[@256]
    /// (an LMDB directory), folder:PATH[@R] (PNG/JPEG/WebP below PATH) or
    /// synthetic:shapes[@R]. PATH may be s3://bucket/key (downloaded first).
    /// Example: cifar10:data/cifar-10-binary.tar.gz
    #[arg(long, value_name = "SPEC")]
    data: Option<String>,
    /// Optimizer steps to train for [default: the preset's; cifar10 800000].
    #[arg(long)]
    steps: Option<u64>,
    /// Global batch size, split across the workers [default: the preset's; cifar10 128].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Run seed: data order, noise, timesteps and initial weights all follow
    /// from it [default: the preset's, 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Gradient wire format, f32 or bf16 [default: the preset's, f32].
    #[arg(long, value_parser = parse_dtype)]
    grad_dtype: Option<GradDtype>,
    /// How gradients are reduced: coordinator (through this process), ring
    /// (worker to worker), nccl (GPU workers with libnccl.so.2; a worker
    /// without a GPU or the library refuses it before the run starts) or
    /// auto (nccl when every member is a GPU, else the ring) [default: the
    /// config's [dist] backend, coordinator].
    #[arg(long, value_parser = parse_backend)]
    backend: Option<Backend>,
    /// With a worker-to-worker backend, whether this process keeps its own
    /// copy of the state after every step: on (a crash of every worker
    /// loses at most [dist] shadow_lag steps) or off (the replicas are the
    /// truth; the state comes from one of them when a checkpoint, a job or
    /// a joiner needs it) [default: the config's [dist] shadow, on].
    #[arg(long, value_parser = parse_shadow)]
    shadow: Option<ShadowMode>,
    /// Images in the sample grid drawn at the end, 0 for none [default: the preset's].
    #[arg(long)]
    samples: Option<u64>,
    /// Where the run lives: a local directory or s3://bucket/prefix
    /// (checkpoints, metrics, sample grids, summary). Give an existing run
    /// to resume it from its latest checkpoint [default: a new directory
    /// runs/<date>-<time>, printed at start].
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    run: Option<String>,
    /// Refuse to start if --run already has checkpoints (default: resume
    /// from the latest complete one).
    #[arg(long)]
    fresh: bool,
    /// After the last step, keep serving sampling jobs (`ddpm jobs`) until
    /// SIGTERM or Ctrl-C (default: finish the jobs already submitted, then exit).
    #[arg(long)]
    serve: bool,
    #[command(flatten)]
    store: StoreArgs,
    /// Seconds the run lease lives without renewal (renewed every third of
    /// it). A second coordinator on the same run is refused while it is
    /// fresh; one killed on another host is taken over after it expires.
    #[arg(long, default_value_t = 20.0, value_parser = parse_ttl)]
    lease_ttl: f64,
    /// File holding the run's worker token (e.g. a mounted Kubernetes
    /// Secret); default: DDPM_WORKER_TOKEN. Workers must present it.
    #[arg(long)]
    worker_token_file: Option<PathBuf>,
    /// File holding the run's user token; default: DDPM_USER_TOKEN. `ddpm
    /// jobs` must present it. Give both tokens or neither.
    #[arg(long)]
    user_token_file: Option<PathBuf>,
    /// A directory or s3://bucket/prefix that job requests may read from
    /// (reference statistics, reference and bpd datasets), besides the run
    /// and its dataset; repeat for more.
    #[arg(long = "job-root")]
    job_roots: Vec<String>,
    /// Serve a run without tokens on a non-loopback address (refused otherwise).
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    tls: ddpm::wire::tls::ServerTlsArgs,
    #[command(flatten)]
    limits: ddpm_coord::limits::Limits,
    /// CPU threads for the coordinator's own copy of the model (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// Serve Prometheus metrics (/metrics) and the dashboard (/) over HTTP
    /// on this address, e.g. 0.0.0.0:9090 (port 0 picks a free one; the URL
    /// is printed). Read-only and without authentication. Default: off.
    #[arg(long, env = "DDPM_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    log: ddpm::runtime::LogArgs,
}

/// A new run's directory when --run is not given: `runs/<UTC date-time>`
/// (with a suffix if that exists), so that a forgotten --run never resumes
/// someone else's run by accident.
fn new_run_dir() -> String {
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    let mut dir = format!("runs/{stamp}");
    let mut n = 1;
    while std::path::Path::new(&dir).exists() {
        n += 1;
        dir = format!("runs/{stamp}-{n}");
    }
    dir
}

/// The run's tokens and TLS, and whether it may listen where it was asked to.
fn access(args: &Args) -> anyhow::Result<(Access, Option<ServerTls>)> {
    let worker = auth::load_token(args.worker_token_file.as_deref(), auth::WORKER_TOKEN_ENV)?;
    let user = auth::load_token(args.user_token_file.as_deref(), auth::USER_TOKEN_ENV)?;
    let access = Access::new(worker, user)?;
    let tls = args.tls.load()?;
    ddpm_coord::check_exposure(&args.listen, access.is_protected(), tls.as_ref().is_some_and(|t| t.is_mutual()), args.insecure)?;
    if access.is_protected() {
        tracing::info!("tokens set: workers need the worker token, `ddpm jobs` the user token");
    }
    match &tls {
        Some(t) if t.is_mutual() => tracing::info!("TLS on; clients must present a certificate signed by --tls-client-ca"),
        Some(_) => tracing::info!("TLS on"),
        None => {}
    }
    Ok((access, tls))
}

/// A flag's value that does not parse (clap prints it with the flag).
#[derive(Debug, thiserror::Error)]
enum FlagError {
    #[error("{0:?} is no lease time to live: give seconds, at least 1")]
    Ttl(String),
    #[error("{0:?} is no number of seconds: give a number, 0 or more")]
    Seconds(String),
    #[error("unknown gradient dtype {0:?}: use f32 or bf16")]
    Dtype(String),
    #[error("unknown shadow mode {0:?}: use on or off")]
    Shadow(String),
    #[error("unknown reduction backend {0:?}: use coordinator, ring, nccl or auto")]
    Backend(String),
}

fn parse_ttl(s: &str) -> Result<f64, FlagError> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 1.0 => Ok(v),
        _ => Err(FlagError::Ttl(s.to_string())),
    }
}

fn parse_seconds(s: &str) -> Result<f64, FlagError> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(FlagError::Seconds(s.to_string())),
    }
}

fn parse_dtype(s: &str) -> Result<GradDtype, FlagError> {
    match s {
        "f32" => Ok(GradDtype::F32),
        "bf16" => Ok(GradDtype::Bf16),
        _ => Err(FlagError::Dtype(s.to_string())),
    }
}

fn parse_shadow(s: &str) -> Result<ShadowMode, FlagError> {
    match s {
        "on" => Ok(ShadowMode::On),
        "off" => Ok(ShadowMode::Off),
        _ => Err(FlagError::Shadow(s.to_string())),
    }
}

fn parse_backend(s: &str) -> Result<Backend, FlagError> {
    match s {
        "coordinator" => Ok(Backend::Coordinator),
        "ring" => Ok(Backend::Ring),
        "nccl" => Ok(Backend::Nccl),
        "auto" => Ok(Backend::Auto),
        _ => Err(FlagError::Backend(s.to_string())),
    }
}

fn resolve(args: &Args) -> anyhow::Result<TrainConfig> {
    let base = TrainConfig::preset(&args.preset)?;
    let mut c = match &args.config {
        Some(path) => TrainConfig::from_toml_file(path, &base)?,
        None => base,
    };
    if let Some(d) = &args.data {
        c.data.spec = Some(d.parse()?);
    }
    if let Some(s) = args.steps {
        c.train.steps = s;
    }
    if let Some(b) = args.batch_size {
        c.train.batch_size = b;
    }
    if let Some(s) = args.seed {
        c.train.seed = s;
    }
    if let Some(d) = args.grad_dtype {
        c.dist.grad_dtype = d;
    }
    if let Some(b) = args.backend {
        c.dist.backend = b;
    }
    if let Some(m) = args.shadow {
        c.dist.shadow = m;
    }
    if let Some(n) = args.samples {
        c.sample.at_end = n > 0;
        c.sample.count = n.max(1);
    }
    c.validate()?;
    c.check_world_size(args.workers)?;
    start_policy(args)?;
    Ok(c)
}

fn start_policy(args: &Args) -> Result<StartPolicy, StartPolicyError> {
    let policy = StartPolicy {
        workers: args.workers,
        min_workers: args.min_workers.unwrap_or(args.workers),
        grace: Duration::from_secs_f64(args.start_grace),
        timeout: (args.start_timeout > 0.0).then(|| Duration::from_secs_f64(args.start_timeout)),
    };
    policy.check()?;
    Ok(policy)
}

/// `--check-config`: what can be checked without the run's environment.
/// Token and TLS files are not read (they are mounted only where the run
/// runs), but a non-loopback --listen must name some.
fn check_only(args: &Args, config: &TrainConfig) -> anyhow::Result<String> {
    args.limits.check(args.workers)?;
    let protected = args.worker_token_file.is_some() || std::env::var_os(auth::WORKER_TOKEN_ENV).is_some();
    let user = args.user_token_file.is_some() || std::env::var_os(auth::USER_TOKEN_ENV).is_some();
    anyhow::ensure!(
        protected == user,
        "give both tokens or neither: the worker token ({}, --worker-token-file) and the user token ({}, --user-token-file)",
        auth::WORKER_TOKEN_ENV,
        auth::USER_TOKEN_ENV
    );
    ddpm_coord::check_exposure(&args.listen, protected, args.tls.tls_client_ca.is_some(), args.insecure)?;
    Ok(toml::to_string(config)?)
}

fn main() -> ExitCode {
    ddpm::runtime::tune_allocator();
    let args = Args::parse();
    args.log.init();
    let config = match resolve(&args) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    if args.check_config {
        return check_config(&args, &config);
    }
    // Validated by resolve().
    let Ok(start) = start_policy(&args) else { return exit::code(exit::USAGE) };
    let run_location = args.run.clone().unwrap_or_else(|| {
        let dir = new_run_dir();
        // Scripts read the run from this line, as they read the address.
        println!("new run: {dir} (to resume it later, pass --run {dir})");
        dir
    });
    let (access, tls) = match access(&args).and_then(|a| args.limits.check(args.workers).map(|()| a)) {
        Ok(a) => a,
        Err(e) => return usage_error(e),
    };
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = CoordOptions {
        config,
        start,
        run: run_location,
        store: args.store.options(),
        fresh: args.fresh,
        serve: args.serve,
        lease_ttl: Duration::from_secs_f64(args.lease_ttl),
        access,
        job_roots: args.job_roots.clone(),
        tls,
        limits: args.limits.clone(),
        metrics_listen: args.metrics_listen.clone(),
        finished_linger: Duration::from_secs_f64(args.finished_linger),
    };
    let result = rt.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
        // Tests and scripts read the chosen address from this line.
        println!("listening on {}", listener.local_addr()?);
        run(listener, opts, ddpm::runtime::shutdown_signal()).await
    });
    ended(result)
}

/// A usage error: its message, and the exit code that says so.
fn usage_error(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    exit::code(exit::USAGE)
}

/// `--check-config`: prints the resolved config, or why it cannot run.
fn check_config(args: &Args, config: &TrainConfig) -> ExitCode {
    match check_only(args, config) {
        Ok(toml) => {
            println!("{toml}");
            eprintln!("config ok: {} steps, global batch {}, {} workers", config.train.steps, config.train.batch_size, args.workers);
            exit::code(exit::DONE)
        }
        Err(e) => usage_error(e),
    }
}

/// What the run's end prints, and its exit code.
fn ended(result: anyhow::Result<Summary>) -> ExitCode {
    match result {
        Ok(summary) => {
            let code = if summary.stopped { exit::STOPPED } else { exit::DONE };
            if summary.stopped {
                println!("run stopped after step {}; run the same command again to resume (exit code {code})", summary.steps);
            } else {
                println!("run finished: {} steps, final loss {:.4}", summary.steps, summary.final_loss);
            }
            if let Some(c) = &summary.checkpoint {
                println!("checkpoint: {c}");
            }
            if let Some(grid) = &summary.grid {
                println!("sample grid: {grid}");
            }
            exit::code(code)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<StartTimeout>().is_some() {
                exit::code(exit::START_TIMEOUT)
            } else {
                exit::code(exit::FAILED)
            }
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
    fn the_help_names_every_config_section_and_data_form() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        for section in ["[model]", "[diffusion]", "[data]", "[optim]", "[train]", "[dist]", "[sample]", "[eval]", "[checkpoint]"] {
            assert!(help.contains(section), "--config help lacks {section}");
        }
        for form in ["cifar10:PATH", ":test", "@256", "s3://", "synthetic:shapes"] {
            assert!(help.contains(form), "--data help lacks {form}");
        }
        // Every section the config file takes is named (a new section must be added to the help).
        let sections = toml::Table::try_from(TrainConfig::default()).unwrap();
        for key in sections.keys() {
            assert!(help.contains(&format!("[{key}]")), "--config help lacks [{key}]");
        }
    }

    #[test]
    fn without_run_a_new_directory_is_made_up() {
        let a = new_run_dir();
        assert!(a.starts_with("runs/2") && !std::path::Path::new(&a).exists(), "{a}");
        let parsed = Args::try_parse_from(["ddpm-coord"]).unwrap();
        assert_eq!(parsed.run, None);
    }
}
