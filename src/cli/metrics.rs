//! `ddpm metrics`: a run's metrics log, read from its store (a directory or
//! S3), live or finished.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ddpm::plot::{self, PlotOptions};
use ddpm::store::metrics_rows;

#[derive(clap::Args)]
pub struct MetricsArgs {
    #[command(subcommand)]
    pub command: MetricsCommand,
}

#[derive(clap::Subcommand)]
pub enum MetricsCommand {
    /// Draw the loss (log scale) and throughput curves of a run as a PNG:
    /// every step faint, its moving average bold, skipped updates and
    /// periodic evaluations (FID) marked. Works while the run trains.
    Plot(PlotArgs),
}

#[derive(clap::Args)]
pub struct PlotArgs {
    #[command(flatten)]
    pub run: super::checkpoints::RunOpts,
    /// The PNG file to write (replaced whole, so a viewer never sees half a plot).
    #[arg(long, value_name = "FILE.png")]
    pub out: PathBuf,
    /// Width in pixels (480 to 4096).
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u32).range(plot::MIN_SIZE.0 as i64..=plot::MAX_SIDE as i64))]
    pub width: u32,
    /// Height in pixels (360 to 4096).
    #[arg(long, default_value_t = 800, value_parser = clap::value_parser!(u32).range(plot::MIN_SIZE.1 as i64..=plot::MAX_SIDE as i64))]
    pub height: u32,
    /// Moving-average window in steps (1: no smoothing; default: about a
    /// fiftieth of the run, at most 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub smooth: Option<u64>,
}

pub fn run(args: MetricsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match args.command {
        MetricsCommand::Plot(a) => rt.block_on(plot(a)),
    }
}

async fn plot(args: PlotArgs) -> anyhow::Result<()> {
    let is_png = args.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    anyhow::ensure!(is_png, "--out {}: the plot is written as PNG; give a file name ending in .png", args.out.display());
    let store = args.run.open()?;
    let rows = metrics_rows::read(&store).await.with_context(|| format!("reading the metrics log of {}", store.url()))?;
    if rows.skipped_lines > 0 {
        let (n, s) = (rows.skipped_lines, if rows.skipped_lines == 1 { "" } else { "s" });
        eprintln!("warning: skipped {n} unreadable line{s} of the metrics log of {}", store.url());
    }
    anyhow::ensure!(
        !rows.steps.is_empty(),
        "the run at {} has no metrics yet: its metrics log holds no step rows (the coordinator writes them as it trains)",
        store.url()
    );
    let opts = PlotOptions {
        width: args.width,
        height: args.height,
        smooth: args.smooth.map(|n| n as usize),
        title: format!("ddpm run {}", store.url()),
    };
    let img = plot::render(&rows, &opts)?;
    write_png(&img, &args.out)?;
    let (first, last) = (rows.steps[0].step, rows.steps[rows.steps.len() - 1].step);
    let skipped = rows.steps.iter().filter(|r| !r.applied).count();
    println!(
        "wrote {} ({}x{}): steps {first} to {last} ({} rows, {skipped} skipped updates, {} evaluations)",
        args.out.display(),
        img.width(),
        img.height(),
        rows.steps.len(),
        rows.evals.len()
    );
    Ok(())
}

/// Encodes beside `out` and renames over it: a viewer refreshing the file
/// during a live run reads the old plot or the new one, never half of one.
fn write_png(img: &image::RgbImage, out: &Path) -> anyhow::Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png).context("encoding the PNG")?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, bytes.into_inner()).and_then(|()| std::fs::rename(&tmp, out));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", out.display()))
}
