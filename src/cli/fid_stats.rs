//! `ddpm data fid-stats`: a dataset's reference statistics for FID, written
//! in the pytorch-fid / TTUR `.npz` layout (`mu`, `sigma`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use ddpm::eval::{self, InceptionModel};
use tch::Device;

use super::data_opts::DataOpts;

#[derive(clap::Args)]
pub struct FidStatsArgs {
    #[command(flatten)]
    pub data: DataOpts,
    /// The .npz file to write (mu [D], sigma [D, D], float64).
    #[arg(long, value_name = "FILE.npz")]
    pub out: PathBuf,
    /// The Inception TorchScript file, inception-2015-12-05.pt (as used by
    /// clean-fid and the StyleGAN metrics); images are fed at their own size
    /// and the module resizes them to 299x299 itself.
    #[arg(long, value_name = "FILE.pt", env = "DDPM_INCEPTION")]
    pub inception: PathBuf,
    /// Use only the first N images (default: all; the headline figure uses
    /// the whole training set).
    #[arg(long, value_name = "N")]
    pub max: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_device(s: &str) -> anyhow::Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(Device::Cuda(i)),
            _ => anyhow::bail!("unknown device {s:?}: use cpu or cuda:N"),
        },
    }
}

pub fn run(args: FidStatsArgs) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let ds = args.data.open()?;
    let model = InceptionModel::load(&args.inception, device)?;
    let start = Instant::now();
    let total = args.max.unwrap_or(usize::MAX).min(ds.len());
    let mut last_report = Instant::now();
    let stats = eval::dataset_stats(ds.as_ref(), &model, args.max, args.batch, &mut |done, total| {
        if last_report.elapsed().as_secs() >= 10 || done == total {
            tracing::info!(done, total, "fid-stats");
            last_report = Instant::now();
        }
    })?;
    let fid_stats = stats.to_fid_stats()?;
    eval::write_stats_npz(&args.out, &fid_stats).with_context(|| format!("writing {}", args.out.display()))?;
    let trace: f64 = (0..fid_stats.dim()).map(|i| fid_stats.sigma[i * fid_stats.dim() + i]).sum();
    let info = ds.info();
    if args.json {
        let v = serde_json::json!({
            "out": args.out.display().to_string(),
            "data": info.spec,
            "images": total,
            "resolution": info.resolution,
            "feature_dim": fid_stats.dim(),
            "trace_sigma": trace,
            "inception": args.inception.display().to_string(),
            "seconds": start.elapsed().as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let (r, d, secs) = (info.resolution, fid_stats.dim(), start.elapsed().as_secs_f64());
        println!(
            "wrote {} ({total} images of {}, {r}x{r}, {d}-d features, trace(sigma) {trace:.6}, {secs:.1} s)",
            args.out.display(),
            info.spec
        );
    }
    Ok(())
}
