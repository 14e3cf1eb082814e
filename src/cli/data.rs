//! `ddpm data`: look at a dataset the way training will read it.

use std::path::PathBuf;

use anyhow::Context;
use ddpm::data;
use ddpm::imageio;

use super::data_opts::DataOpts;

#[derive(clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Count, resolution, channels and split of a dataset, and optionally a
    /// PNG grid of its first images.
    Inspect(InspectArgs),
    /// Write one sample, decoded (cropped and resized) but not augmented, as PNG.
    Export(ExportArgs),
    /// Reference statistics for FID: mean and covariance of the Inception
    /// pool features of the dataset's images (as decoded, not flipped),
    /// written as a pytorch-fid / TTUR .npz (mu, sigma).
    FidStats(super::fid_stats::FidStatsArgs),
}

#[derive(clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub data: DataOpts,
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write a PNG grid of the first images here.
    #[arg(long, value_name = "FILE")]
    pub grid: Option<PathBuf>,
    /// Images in the grid.
    #[arg(long, default_value_t = 64)]
    pub grid_count: usize,
    /// Images per grid row.
    #[arg(long, default_value_t = 8)]
    pub grid_cols: usize,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub data: DataOpts,
    /// Index of the sample (0-based, in the dataset's own order).
    #[arg(long)]
    pub index: usize,
    /// PNG file to write.
    #[arg(long, value_name = "FILE.png")]
    pub out: PathBuf,
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Inspect(a) => inspect(a),
        DataCommand::Export(a) => export(a),
        DataCommand::FidStats(a) => super::fid_stats::run(a),
    }
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let ds = args.data.open()?;
    let info = ds.info();
    let mut grid_written = None;
    if let Some(path) = &args.grid {
        let n = args.grid_count.clamp(1, ds.len());
        let images = (0..n).map(|i| data::decode_sample(ds.as_ref(), i)).collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
        let r = info.resolution;
        imageio::save_grid_png(path, &refs, info.channels, r, r, args.grid_cols.max(1))
            .with_context(|| format!("writing the grid {}", path.display()))?;
        grid_written = Some((path.display().to_string(), n));
    }
    if args.json {
        let mut v = serde_json::to_value(&info)?;
        if let Some((path, n)) = &grid_written {
            v["grid"] = serde_json::json!({ "path": path, "images": n });
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("spec        {}", info.spec);
        println!("format      {}", info.format);
        println!("source      {}", info.source);
        println!("split       {}", info.split.as_deref().unwrap_or("-"));
        println!("count       {}", info.count);
        println!("resolution  {0}x{0}", info.resolution);
        println!("channels    {}", info.channels);
        if let Some((path, n)) = &grid_written {
            println!("grid        {path} (first {n} images)");
        }
    }
    Ok(())
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    let ds = args.data.open()?;
    let pixels = data::decode_sample(ds.as_ref(), args.index)?;
    let r = ds.decoder().resolution();
    imageio::save_png(&args.out, &pixels, data::CHANNELS, r, r)?;
    eprintln!("wrote {} ({}, {r}x{r})", args.out.display(), ds.describe(args.index));
    Ok(())
}
