//! `ddpm bench train`: one device's training speed against PyTorch eager on
//! the same U-Net (diffusers' UNet2DModel built from the config ddpm exports).

use std::time::Instant;

use ddpm::config::TrainConfig;
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
    /// Timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[command(flatten)]
    pub on: bench_util::DeviceArgs,
}


pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let device = bench_util::parse_device(&args.on.device)?;
    tch::set_num_threads(args.on.threads);
    let mut cfg = TrainConfig::preset(&args.preset)?;
    cfg.data.spec = Some("synthetic:shapes".parse()?);
    cfg.train.batch_size = args.batch_size;
    let mut trainer = LocalTrainer::new(cfg.clone(), device)?;
    let mut times = Vec::new();
    for i in 0..args.steps + 2 {
        let start = Instant::now();
        trainer.step()?;
        if device != Device::Cpu {
            tch::Cuda::synchronize(match device {
                Device::Cuda(i) => i as i64,
                _ => 0,
            });
        }
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let ours = median(&times);
    let params = cfg.model.param_count();
    println!(
        "training step, preset {} ({params} parameters), batch {}, {} on {}, {} thread(s)",
        args.preset,
        args.batch_size,
        cfg.model.image_size,
        args.on.device,
        args.on.threads
    );
    println!("ddpm (tch): {:.1} ms per step, {:.1} img/s", ours * 1e3, args.batch_size as f64 / ours);
    if args.on.no_baseline {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.json");
    std::fs::write(&config, serde_json::to_string(&ddpm::unet::diffusers::config_json(&cfg.model))?)?;
    let py = bench_util::python(&args.on.python);
    let unet_module = dir.path().join("torch_unet.py");
    std::fs::write(&unet_module, TORCH_UNET)?;
    let a: Vec<String> = vec![
        "--unet-module".into(),
        unet_module.display().to_string(),
        "--params".into(),
        params.to_string(),
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
    ];
    match bench_util::python_baseline(&py, "torch_train_step.py", TORCH_SCRIPT, &a) {
        Ok(v) => {
            let theirs = median(&bench_util::seconds(&v));
            println!(
                "PyTorch eager ({}): {:.1} ms per step, {:.1} img/s",
                v["model"].as_str().unwrap_or("?"),
                theirs * 1e3,
                args.batch_size as f64 / theirs
            );
            println!("speed ratio ddpm / PyTorch: {:.2} (>= 1: ddpm at least as fast)", theirs / ours);
        }
        Err(e) => println!("PyTorch baseline unavailable ({e:#}); pass --python PATH to a Python with torch and diffusers"),
    }
    Ok(())
}
