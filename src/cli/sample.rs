//! `ddpm sample --run URL`: a sample job on this machine, without a
//! coordinator or workers. The same weights (a checkpoint's EMA or raw
//! parameters), the same noise (keyed by seed and image index), the same
//! forward-pass batches and the same outputs (`grid.png`, `samples.npz`,
//! `images/NNNNNN.png`), so its images equal a sample job's with the same
//! settings byte for byte.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ddpm::diffusion::{GaussianDiffusion, Sampler, SamplerKind};
use ddpm::imageio::{rgb_grid_png, square_cols, GRID_IMAGES};
use ddpm::train::sample::{sample_images, SampleRequest, DEFAULT_BATCH};

use super::checkpoints::{read_checkpoint, RunOpts};
use super::jobs::{parse_sampler, WeightsArg};

#[derive(clap::Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub run: RunOpts,
    /// The checkpoint whose weights to draw with: a step, or latest (the
    /// latest complete one).
    #[arg(long, default_value = "latest")]
    pub checkpoint_step: String,
    /// Which weights: the EMA or the raw parameters.
    #[arg(long, value_enum, default_value = "ema")]
    pub weights: WeightsArg,
    /// Images to draw.
    #[arg(long, default_value_t = 64)]
    pub count: u64,
    /// The seed: the same seed and weights draw the same images, here and
    /// in a sample job (`ddpm jobs submit-sample --seed`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// ancestral (all T steps) or ddim.
    #[arg(long, default_value = "ancestral", value_parser = parse_sampler)]
    pub sampler: SamplerKind,
    /// DDIM steps (default 50).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub steps: u32,
    /// DDIM eta.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Images per forward pass (default 16, as a sample job's).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub batch: u32,
    /// Also write each image as its own PNG (images/NNNNNN.png).
    #[arg(long)]
    pub individual_pngs: bool,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads for libtorch (0: its default).
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
    /// Directory for grid.png, samples.npz (and images/); created if missing.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

fn device(spec: &str) -> anyhow::Result<tch::Device> {
    let cuda = |i: usize| -> anyhow::Result<tch::Device> {
        anyhow::ensure!(
            tch::Cuda::is_available(),
            "--device {spec}: libtorch sees no CUDA device (driver missing, or a CPU-only libtorch)"
        );
        let n = tch::Cuda::device_count() as usize;
        anyhow::ensure!(i < n, "--device {spec}: only {n} CUDA device(s) exist");
        Ok(tch::Device::Cuda(i))
    };
    match spec {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => cuda(0),
        _ => match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => anyhow::bail!("unknown device {spec:?}: use cpu or cuda:N"),
        },
    }
}

pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    let device = device(&args.device)?;
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let store = args.run.open()?;
    let rt = tokio::runtime::Runtime::new()?;
    let data = rt.block_on(read_checkpoint(&store, &args.checkpoint_step))?;
    let config = &data.config;
    let diffusion = GaussianDiffusion::new(&config.diffusion)?;
    let sampler = Sampler::resolve(args.sampler, args.steps, args.eta, diffusion.num_timesteps() as usize)?;
    let batch = if args.batch == 0 { DEFAULT_BATCH } else { args.batch } as usize;
    let mut model = ddpm::train::flat::FlatModel::new(&config.model, device)?;
    let weights = match args.weights {
        WeightsArg::Ema => &data.ema,
        WeightsArg::Raw => &data.params,
    };
    model.load_flat(&tch::Tensor::from_slice(weights).to_device(device));
    let res = config.model.image_size as usize;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    if args.individual_pngs {
        std::fs::create_dir_all(args.out.join("images"))?;
    }
    eprintln!(
        "sampling {} images of {res}x{res} from the {} weights of step {} ({sampler:?}, seed {}, {batch} per pass, {device:?})",
        args.count,
        if matches!(args.weights, WeightsArg::Ema) { "EMA" } else { "raw" },
        data.step,
        args.seed
    );
    let npz_path = args.out.join("samples.npz");
    let mut npz = ddpm::eval::SamplesNpzWriter::create(&npz_path, args.count as usize, res, res)?;
    let shown = (args.count as usize).min(GRID_IMAGES);
    let mut head = Vec::with_capacity(shown * 3 * res * res);
    let per = 3 * res * res;
    let started = std::time::Instant::now();
    // One forward pass at a time, as a job's tasks draw them, so that the
    // images (and their float rounding) are the job's.
    let mut first = 0u64;
    while first < args.count {
        let n = (args.count - first).min(batch as u64);
        let req = SampleRequest { seed: args.seed, first, count: n, sampler, batch };
        let images = sample_images(&model.unet, &diffusion, &req, device, &mut |_, _| {})?;
        npz.push_nchw(&images)?;
        let keep = shown.saturating_sub(head.len() / per).min(n as usize);
        head.extend_from_slice(&images[..keep * per]);
        if args.individual_pngs {
            for (k, img) in images.chunks_exact(per).enumerate() {
                write(&args.out.join(format!("images/{:06}.png", first + k as u64)), &ddpm::imageio::encode_png(img, 3, res, res)?)?;
            }
        }
        first += n;
        eprintln!("  {first}/{} images ({:.1} s)", args.count, started.elapsed().as_secs_f64());
    }
    npz.finish()?;
    let grid = args.out.join("grid.png");
    write(&grid, &rgb_grid_png(&head, res, square_cols(shown), shown)?)?;
    println!("samples: {}", npz_path.display());
    println!("grid: {}", grid.display());
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
