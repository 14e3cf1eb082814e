//! `ddpm bench sample`: sampling throughput of one device, ancestral (all T
//! steps, Algorithm 2) and DDIM 50 steps, against PyTorch eager on the same
//! U-Net and against the paper's TPU v3-8 (256 CIFAR-10 images in 17 s).
//!
//! A full ancestral run of the cifar10 model on a CPU takes hours, so each
//! sampler is timed over its first `--evals` network evaluations (after 2
//! warm-up ones) through the workers' own sampling code, and images/s is
//! extrapolated to the sampler's whole trajectory: one evaluation costs the
//! same at every t. `--full` runs the complete trajectories instead.

use std::time::Instant;

use ddpm::config::TrainConfig;
use ddpm::diffusion::GaussianDiffusion;
use ddpm::train::flat::FlatModel;
use ddpm::train::sample::{reverse, Sampler};
use tch::Device;

use super::bench_util::{self, median};

const TORCH_SCRIPT: &str = include_str!("../../tests/bench/torch_sample_step.py");
const TORCH_TRAIN: &str = include_str!("../../tests/bench/torch_train_step.py");
const TORCH_UNET: &str = include_str!("../../tests/bench/torch_unet.py");

/// The paper's sampling speed on CIFAR-10: 256 images in 17 s on a TPU v3-8.
const PAPER_IMAGES_PER_S: f64 = 256.0 / 17.0;
/// DDIM steps measured (the monitoring sampler of periodic evaluation).
const DDIM_STEPS: usize = 50;

#[derive(clap::Args)]
pub struct SampleArgs {
    /// Model presets, comma-separated (tiny, cifar10, lsun256).
    #[arg(long, value_delimiter = ',', default_value = "tiny,cifar10")]
    pub presets: Vec<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Timed network evaluations per sampler (after 2 warm-up ones).
    #[arg(long, default_value_t = 10)]
    pub evals: usize,
    /// Run every step of both samplers instead of timing a prefix.
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub on: bench_util::DeviceArgs,
}

pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    let device = bench_util::parse_device(&args.on.device)?;
    tch::set_num_threads(args.on.threads);
    anyhow::ensure!(args.batch > 0 && args.evals > 0, "--batch and --evals must be at least 1");
    println!(
        "ddpm bench sample: batch {}, {} on {}, {} thread(s); {}",
        args.batch,
        args.presets.join(", "),
        args.on.device,
        args.on.threads,
        if args.full {
            "complete trajectories".to_string()
        } else {
            format!("{} timed evaluations per sampler, extrapolated to the whole trajectory", args.evals)
        }
    );
    for preset in &args.presets {
        bench_preset(&args, preset, device)?;
    }
    Ok(())
}

/// Median seconds per network evaluation of `sampler` (its first
/// `2 + evals` evaluations, or all of them with `full`).
fn seconds_per_eval(
    model: &FlatModel,
    diffusion: &GaussianDiffusion,
    sampler: Sampler,
    args: &SampleArgs,
    device: Device,
) -> anyhow::Result<f64> {
    let mut stamps = vec![Instant::now()];
    let limit = if args.full { None } else { Some(2 + args.evals) };
    let x = reverse(&model.unet, diffusion, 1, 0, args.batch, sampler, limit, device, &mut |_, _| {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        stamps.push(Instant::now());
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    anyhow::ensure!(x.isfinite().all().int64_value(&[]) == 1, "sampling produced non-finite values");
    let per: Vec<f64> = stamps.windows(2).skip(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    Ok(median(&per))
}

fn bench_preset(args: &SampleArgs, preset: &str, device: Device) -> anyhow::Result<()> {
    let cfg = TrainConfig::preset(preset)?;
    let model = FlatModel::new(&cfg.model, device)?;
    let diffusion = GaussianDiffusion::new(&cfg.diffusion)?;
    let t = cfg.diffusion.num_timesteps;
    let res = cfg.model.image_size;
    println!("\npreset {preset} ({} parameters, {res}x{res}), T = {t}", cfg.model.param_count());
    let anc = seconds_per_eval(&model, &diffusion, Sampler::Ancestral, args, device)?;
    let ddim = seconds_per_eval(&model, &diffusion, Sampler::Ddim { steps: DDIM_STEPS, eta: 0.0 }, args, device)?;
    let rate = |per_eval: f64, evals: usize| args.batch as f64 / (per_eval * evals as f64);
    let (anc_rate, ddim_rate) = (rate(anc, t), rate(ddim, DDIM_STEPS));
    println!("ddpm (tch) ancestral {t} steps: {:.2} ms per evaluation, {anc_rate:.4} img/s", anc * 1e3);
    println!("ddpm (tch) DDIM {DDIM_STEPS} steps: {:.2} ms per evaluation, {ddim_rate:.3} img/s", ddim * 1e3);
    let hours = |rate: f64| 50_000.0 / rate / 3600.0;
    println!(
        "one worker, 50k samples for a FID: {:.1} h ancestral, {:.1} h DDIM-{DDIM_STEPS}; 5k-sample monitoring FID with DDIM: {:.1} h",
        hours(anc_rate),
        hours(ddim_rate),
        hours(ddim_rate) / 10.0
    );
    if preset == "cifar10" {
        println!(
            "ratio to the paper's TPU v3-8 (256 images in 17 s, {PAPER_IMAGES_PER_S:.1} img/s ancestral): {:.4}",
            anc_rate / PAPER_IMAGES_PER_S
        );
    }
    if args.on.no_baseline {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.json");
    std::fs::write(&config, serde_json::to_string(&ddpm::unet::diffusers::config_json(&cfg.model))?)?;
    let py = bench_util::python(&args.on.python);
    let steps = if args.full { t } else { args.evals };
    let a: Vec<String> = [
        "--unet-module",
        "torch_unet.py",
        "--config",
        &config.display().to_string(),
        "--batch",
        &args.batch.to_string(),
        "--steps",
        &steps.to_string(),
        "--threads",
        &args.on.threads.to_string(),
        "--device",
        &args.on.device,
        "--ddim-steps",
        &DDIM_STEPS.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let modules = [("torch_train_step.py", TORCH_TRAIN), ("torch_unet.py", TORCH_UNET)];
    match bench_util::python_baseline_with(&py, "torch_sample_step.py", TORCH_SCRIPT, &modules, &a) {
        Ok(v) => {
            let times =
                |k: &str| median(&v[k].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect::<Vec<_>>()).unwrap_or_default());
            let (their_anc, their_ddim) = (times("ancestral"), times("ddim"));
            println!(
                "PyTorch eager ({}): ancestral {:.2} ms, DDIM {:.2} ms per evaluation",
                v["model"].as_str().unwrap_or("?"),
                their_anc * 1e3,
                their_ddim * 1e3
            );
            println!(
                "speed ratio ddpm / PyTorch: ancestral {:.2}, DDIM {:.2} (>= 1: ddpm at least as fast)",
                their_anc / anc,
                their_ddim / ddim
            );
        }
        Err(e) => println!("PyTorch baseline unavailable ({e:#}); pass --python PATH to a Python with torch and diffusers"),
    }
    Ok(())
}
