//! `ddpm bench dist`: distributed training speed with real processes on
//! loopback, per reduction backend (`bench_allreduce.rs` times the
//! all-reduce alone).

use std::path::Path;

use super::bench_idle::IdleWatch;
use super::bench_util::{self, median, start_coordinator, start_worker, wait_ok};

const DDP_SCRIPT: &str = include_str!("../../tests/bench/ddp_train_step.py");
const TORCH_STEP: &str = include_str!("../../tests/bench/torch_train_step.py");
const TORCH_UNET: &str = include_str!("../../tests/bench/torch_unet.py");

#[derive(clap::Args)]
pub struct DistArgs {
    /// Worker counts to run, comma-separated.
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// Reduction backends to run, comma-separated: coordinator, ring.
    #[arg(long, default_value = "coordinator,ring", value_delimiter = ',')]
    pub backend: Vec<String>,
    /// With the ring, the coordinator's copy of the state, comma-separated:
    /// on (fed after every step) and/or off (`[dist] shadow`).
    #[arg(long, default_value = "on", value_delimiter = ',')]
    pub shadow: Vec<String>,
    /// Training recipe.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Steps per run (the first 3 are not counted).
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    /// Global batch size (default: the preset's).
    #[arg(long, conflicts_with = "batch_per_worker")]
    pub batch_size: Option<usize>,
    /// Images per worker: the global batch grows with the workers (as with
    /// DDP, where each process has its own batch).
    #[arg(long)]
    pub batch_per_worker: Option<usize>,
    /// libtorch threads per worker.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Dataset spec (default: the preset's, else the built-in shapes at the
    /// preset's resolution, so that every preset runs without a download).
    #[arg(long)]
    pub data: Option<String>,
    /// Python with torch for the DDP baseline (default $DDPM_PYTHON or the project's).
    #[arg(long)]
    pub python: Option<String>,
    /// Skip the PyTorch DDP (gloo) baseline.
    #[arg(long)]
    pub no_baseline: bool,
}

/// The medians of one run's metrics log (the first 3 steps not counted).
struct Measured {
    step_s: f64,
    compute_s: f64,
    allreduce_s: f64,
    /// Bytes the coordinator received per step (gradients on the steps'
    /// path, its copy's feed or the replicas' uploads), over the whole run.
    received_per_step: f64,
    /// The machine's idle CPU fraction over the counted steps (Linux only):
    /// the most that overlapping the all-reduce with compute could give back.
    idle: Option<f64>,
}

/// One training run with `n` CPU workers and `backend`.
fn measure(args: &DistArgs, data: &str, n: usize, batch: usize, (backend, shadow): (&str, &str)) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("run");
    // Every step's metrics row is written at once, so that the idle watch
    // sees the counted steps begin and end.
    let overrides = dir.path().join("bench.toml");
    std::fs::write(&overrides, "[train]\nlog_every = 1\n")?;
    let coord_args: Vec<String> = [
        "--preset",
        &args.preset,
        "--config",
        &overrides.display().to_string(),
        "--data",
        data,
        "--workers",
        &n.to_string(),
        "--steps",
        &args.steps.to_string(),
        "--samples",
        "0",
        "--threads",
        "1",
        "--batch-size",
        &batch.to_string(),
        "--backend",
        backend,
        "--shadow",
        shadow,
        "--run",
        &run.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let log = dir.path().join("coord.log");
    let idle = IdleWatch::start(run.join("metrics.jsonl"), 3, args.steps as usize);
    let (mut coord, addr) = start_coordinator(&coord_args, &log)?;
    let wlog = |i: usize| dir.path().join(format!("w{i}.log"));
    let mut workers =
        (0..n).map(|i| start_worker(&addr, &format!("bench{i}"), args.threads, &wlog(i))).collect::<anyhow::Result<Vec<_>>>()?;
    wait_ok(&mut coord, "ddpm-coord", &log)?;
    for (i, w) in workers.iter_mut().enumerate() {
        wait_ok(w, "ddpm-worker", &wlog(i))?;
    }
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(run.join("metrics.jsonl"))?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let counted: Vec<&serde_json::Value> = rows.iter().skip(3).collect();
    anyhow::ensure!(!counted.is_empty(), "run more than 3 steps");
    let col = |k: &str| median(&counted.iter().filter_map(|r| r[k].as_f64()).collect::<Vec<_>>());
    let idle = idle.finish();
    // Over the counted steps (a checkpoint's upload at the end is not a step's cost).
    let received = |r: &serde_json::Value| r["coordinator_received_bytes"].as_f64().unwrap_or(f64::NAN);
    let received_per_step = (received(rows.last().expect("counted rows")) - received(&rows[2])) / counted.len() as f64;
    Ok(Measured { step_s: col("step_s"), compute_s: col("compute_s"), allreduce_s: col("allreduce_s"), received_per_step, idle })
}

/// PyTorch DDP (gloo) img/s with `n` processes of `per_worker` images.
fn ddp_images_per_s(args: &DistArgs, model: &ddpm::unet::UNetConfig, n: usize, per_worker: usize, dir: &Path) -> anyhow::Result<f64> {
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_string(&ddpm::unet::diffusers::config_json(model))?)?;
    let unet = dir.join("torch_unet.py");
    std::fs::write(&unet, TORCH_UNET)?;
    let a: Vec<String> = [
        "--config",
        &config.display().to_string(),
        "--world",
        &n.to_string(),
        "--batch",
        &per_worker.to_string(),
        "--steps",
        &args.steps.saturating_sub(3).max(3).to_string(),
        "--warmup",
        "3",
        "--threads",
        &args.threads.to_string(),
        "--unet-module",
        &unet.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let py = bench_util::python(&args.python);
    let v = bench_util::python_baseline_with(&py, "ddp_train_step.py", DDP_SCRIPT, &[("torch_train_step.py", TORCH_STEP)], &a)?;
    Ok((n * per_worker) as f64 / median(&bench_util::seconds(&v)))
}

pub fn run_dist(args: DistArgs) -> anyhow::Result<()> {
    let preset = ddpm::config::TrainConfig::preset(&args.preset)?;
    // The paper's presets name no dataset (a run must say what it trains
    // on); the bench brings its own so that it measures every preset.
    let data = match (&args.data, &preset.data.spec) {
        (Some(spec), _) => spec.clone(),
        (None, Some(spec)) => spec.to_string(),
        (None, None) => format!("synthetic:shapes@{}", preset.model.image_size),
    };
    for b in &args.backend {
        anyhow::ensure!(b == "coordinator" || b == "ring", "unknown backend {b:?}: use coordinator or ring");
    }
    println!(
        "distributed training, preset {} on {data}, loopback, CPU workers with {} thread(s) each; this machine has {} cores",
        args.preset,
        args.threads,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "{:>8} {:>12} {:>7} {:>10} {:>10} {:>12} {:>14} {:>9} {:>12} {:>9} {:>14}",
        "workers",
        "backend",
        "batch",
        "img/s",
        "step ms",
        "compute ms",
        "all-reduce ms",
        "speedup",
        "vs DDP gloo",
        "CPU idle",
        "coord MB/step"
    );
    for s in &args.shadow {
        anyhow::ensure!(s == "on" || s == "off", "unknown --shadow {s:?}: use on or off");
    }
    let runs: Vec<(&str, &str)> = args
        .backend
        .iter()
        .flat_map(|b| {
            let modes: Vec<&str> = if b == "ring" { args.shadow.iter().map(String::as_str).collect() } else { vec!["on"] };
            modes.into_iter().map(move |m| (b.as_str(), m))
        })
        .collect();
    let tmp = tempfile::tempdir()?;
    let mut base = None;
    for &n in &args.workers {
        let batch = match (args.batch_per_worker, args.batch_size) {
            (Some(per), _) => per * n,
            (None, Some(b)) => b,
            (None, None) => preset.train.batch_size,
        };
        let ddp = if args.no_baseline || batch % n != 0 {
            None
        } else {
            match ddp_images_per_s(&args, &preset.model, n, batch / n, tmp.path()) {
                Ok(v) => Some(v),
                Err(e) => {
                    println!("PyTorch DDP baseline with {n} processes unavailable ({e:#}); pass --python PATH to a Python with torch");
                    None
                }
            }
        };
        for &(backend, shadow) in &runs {
            let m = measure(&args, &data, n, batch, (backend, shadow))?;
            let label = if backend == "ring" { format!("ring/{shadow}") } else { backend.to_string() };
            let imgs = batch as f64 / m.step_s;
            let speedup = imgs / *base.get_or_insert(imgs);
            let vs = ddp.map_or("-".to_string(), |d| format!("{:.2}", imgs / d));
            let idle = m.idle.map_or("-".to_string(), |f| format!("{:.1}%", 100.0 * f));
            println!(
                "{n:>8} {label:>12} {batch:>7} {imgs:>10.2} {:>10.1} {:>12.1} {:>14.1} {speedup:>8.2}x {vs:>12} {idle:>9} {:>14.3}",
                1e3 * m.step_s,
                1e3 * m.compute_s,
                1e3 * m.allreduce_s,
                m.received_per_step / 1e6
            );
        }
        if let Some(d) = ddp {
            println!("{n:>8} {:>12} {batch:>7} {d:>10.2}   (PyTorch DDP, gloo, {n} processes of {} images)", "DDP gloo", batch / n);
        }
    }
    println!("CPU idle: the share of all cores idle during the counted steps; overlapping the all-reduce with the");
    println!("backward pass can give back at most that (on CPU workers the ring's copies and sums share the cores)");
    Ok(())
}
