//! `ddpm bench train`: one device's training speed against PyTorch eager on
//! the same U-Net (diffusers' UNet2DModel built from the config ddpm exports).

use std::time::Instant;

use ddpm::config::{Precision, TrainConfig};
use ddpm::train::local::LocalTrainer;
use tch::Device;

use super::bench_util::{self, median};

const TORCH_SCRIPT: &str = include_str!("../../tests/bench/torch_train_step.py");
const TORCH_UNET: &str = include_str!("../../tests/bench/torch_unet.py");

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Model preset (tiny, cifar10, lsun256).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Timed steps per round and side (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Rounds, each ddpm's steps then PyTorch's (a fresh process): the two
    /// sides alternate, so a machine that drifts (a noisy neighbour, clock
    /// changes) weighs on both alike.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// fp32, or bf16: ddpm under its bfloat16 autocast ([train] precision)
    /// against PyTorch under torch.autocast(dtype=torch.bfloat16).
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    pub precision: Precision,
    #[command(flatten)]
    pub on: bench_util::DeviceArgs,
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    match s {
        "fp32" => Ok(Precision::Fp32),
        "bf16" => Ok(Precision::Bf16),
        _ => Err(format!("unknown precision {s:?}: use fp32 or bf16")),
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let device = bench_util::parse_device(&args.on.device)?;
    tch::set_num_threads(args.on.threads);
    let mut cfg = TrainConfig::preset(&args.preset)?;
    cfg.data.spec = Some("synthetic:shapes".parse()?);
    cfg.train.batch_size = args.batch_size;
    cfg.train.precision = args.precision;
    let mut trainer = LocalTrainer::new(cfg.clone(), device)?;
    let params = cfg.model.param_count();
    println!(
        "training step, preset {} ({params} parameters), batch {}, {}, {} on {}, {} thread(s), {} round(s) of {} steps each side",
        args.preset,
        args.batch_size,
        args.precision.name(),
        cfg.model.image_size,
        args.on.device,
        args.on.threads,
        args.rounds.max(1),
        args.steps
    );
    let baseline = (!args.on.no_baseline).then(|| Baseline::new(&args, &cfg)).transpose()?;
    let (mut ours_all, mut theirs_all, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds.max(1) {
        // Two warm-up steps before the first round only: the trainer lives on.
        let ours = time_steps(&mut trainer, device, args.steps, if round == 1 { 2 } else { 0 })?;
        let ours_median = median(&ours);
        ours_all.extend(ours);
        let Some(baseline) = &baseline else {
            println!("round {round}: ddpm {:.1} ms per step", ours_median * 1e3);
            continue;
        };
        match baseline.run() {
            Ok((model, theirs)) => {
                let theirs_median = median(&theirs);
                theirs_all.extend(theirs);
                ratios.push(theirs_median / ours_median);
                println!(
                    "round {round}: ddpm {:.1} ms, PyTorch eager ({model}) {:.1} ms per step: ratio {:.2}",
                    ours_median * 1e3,
                    theirs_median * 1e3,
                    theirs_median / ours_median
                );
            }
            Err(e) => {
                println!("PyTorch baseline unavailable ({e:#}); pass --python PATH to a Python with torch and diffusers");
                break;
            }
        }
    }
    let ours = median(&ours_all);
    println!("ddpm (tch): {:.1} ms per step, {:.1} img/s", ours * 1e3, args.batch_size as f64 / ours);
    if !theirs_all.is_empty() {
        let theirs = median(&theirs_all);
        println!("PyTorch eager: {:.1} ms per step, {:.1} img/s", theirs * 1e3, args.batch_size as f64 / theirs);
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "speed ratio ddpm / PyTorch: {:.2} (>= 1: ddpm at least as fast; medians over all rounds; rounds ranged {lo:.2} to {hi:.2})",
            theirs / ours
        );
    }
    Ok(())
}

/// `steps` timed training steps after `warmup` untimed ones, in seconds.
fn time_steps(trainer: &mut LocalTrainer, device: Device, steps: usize, warmup: usize) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(steps);
    for i in 0..steps + warmup {
        let start = Instant::now();
        trainer.step()?;
        if let Device::Cuda(d) = device {
            tch::Cuda::synchronize(d as i64);
        }
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

/// The PyTorch side: its script, the exported U-Net config and the
/// arguments, run afresh (a new process) each round.
struct Baseline {
    _dir: tempfile::TempDir,
    python: String,
    args: Vec<String>,
}

impl Baseline {
    fn new(args: &TrainArgs, cfg: &TrainConfig) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("config.json");
        std::fs::write(&config, serde_json::to_string(&ddpm::unet::diffusers::config_json(&cfg.model))?)?;
        let unet_module = dir.path().join("torch_unet.py");
        std::fs::write(&unet_module, TORCH_UNET)?;
        let a: Vec<String> = vec![
            "--unet-module".into(),
            unet_module.display().to_string(),
            "--params".into(),
            cfg.model.param_count().to_string(),
            "--config".into(),
            config.display().to_string(),
            "--batch".into(),
            args.batch_size.to_string(),
            "--steps".into(),
            args.steps.to_string(),
            "--threads".into(),
            args.on.threads.to_string(),
            "--device".into(),
            args.on.device.clone(),
            "--precision".into(),
            args.precision.name().into(),
        ];
        Ok(Self { _dir: dir, python: bench_util::python(&args.on.python), args: a })
    }

    /// One run of the script: the model it built and its step times.
    fn run(&self) -> anyhow::Result<(String, Vec<f64>)> {
        let v = bench_util::python_baseline(&self.python, "torch_train_step.py", TORCH_SCRIPT, &self.args)?;
        Ok((v["model"].as_str().unwrap_or("?").to_string(), bench_util::seconds(&v)))
    }
}
