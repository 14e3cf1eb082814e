//! `ddpm metrics`: a run's metrics log, read from its store (a directory or
//! S3), live or finished; an evaluation job's rate-distortion curve, read
//! from its `metrics.json`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ddpm::plot::rd::{self, RdOptions};
use ddpm::plot::rd_curve::RdCurve;
use ddpm::plot::{self, PlotOptions};
use ddpm::store::{metrics_rows, Location, RetryOptions, RunStore, StoreArgs, StoreError};

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
    /// Draw an evaluation job's rate-distortion curve as a PNG, as in the
    /// paper's Figure 5: distortion (RMSE of x0_hat on the [0, 255] scale)
    /// and rate (bits/dim received so far) against the reverse process
    /// steps T - t, and distortion against rate. The job must have measured
    /// bpd (`ddpm jobs submit-eval --metrics bpd`).
    PlotRd(PlotRdArgs),
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

#[derive(clap::Args)]
pub struct PlotRdArgs {
    /// The evaluation job: its directory in the run's store (RUN/jobs/NNNNNN,
    /// a path, file:///path or s3://bucket/prefix) or its metrics.json.
    #[arg(long, value_name = "DIR|URL")]
    pub job: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The PNG file to write (replaced whole).
    #[arg(long, value_name = "FILE.png")]
    pub out: PathBuf,
    /// Width in pixels (480 to 4096).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(plot::MIN_SIZE.0 as i64..=plot::MAX_SIDE as i64))]
    pub width: u32,
    /// Height in pixels (360 to 4096).
    #[arg(long, default_value_t = 520, value_parser = clap::value_parser!(u32).range(plot::MIN_SIZE.1 as i64..=plot::MAX_SIDE as i64))]
    pub height: u32,
}

pub fn run(args: MetricsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match args.command {
        MetricsCommand::Plot(a) => rt.block_on(plot(a)),
        MetricsCommand::PlotRd(a) => rt.block_on(plot_rd(a)),
    }
}

fn ensure_png(out: &Path) -> anyhow::Result<()> {
    let is_png = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    anyhow::ensure!(is_png, "--out {}: the plot is written as PNG; give a file name ending in .png", out.display());
    Ok(())
}

async fn plot(args: PlotArgs) -> anyhow::Result<()> {
    ensure_png(&args.out)?;
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

async fn plot_rd(args: PlotRdArgs) -> anyhow::Result<()> {
    ensure_png(&args.out)?;
    let (record, location) = read_job_record(&args.job, &args.store).await?;
    let curve = RdCurve::from_json(&record).with_context(|| location.clone())?;
    // Where it came from first, as `ddpm metrics plot` does: a title too
    // long loses the start of the path, not the job.
    let mut title = location.clone();
    if let Some(id) = curve.job_id {
        title += &format!(" \u{b7} job {id}");
    }
    if let Some(step) = curve.weights_step {
        title += &format!(", weights of step {step}");
    }
    let opts = RdOptions { width: args.width, height: args.height, title };
    let img = rd::render(&curve, &opts)?;
    write_png(&img, &args.out)?;
    let (rate, distortion) = (curve.rate(), curve.distortion());
    println!(
        "wrote {} ({}x{}): T = {}, rate {:.4} to {:.4} bits/dim (then L_0 {:.4}), distortion {:.3} to {:.3} RMSE [0, 255]",
        args.out.display(),
        img.width(),
        img.height(),
        curve.timesteps(),
        rate[0],
        rate[rate.len() - 1],
        curve.decoder_nll(),
        distortion[0],
        distortion[distortion.len() - 1],
    );
    Ok(())
}

/// `--job` as a store and a key: a `.json` file's directory and its name,
/// else the job directory and `metrics.json`.
fn job_key(job: &str) -> (String, String) {
    let trimmed = job.trim_end_matches('/');
    if !trimmed.to_ascii_lowercase().ends_with(".json") {
        return (trimmed.to_string(), "metrics.json".into());
    }
    match trimmed.rsplit_once('/') {
        Some(("", file)) => ("/".into(), file.into()),
        Some((dir, file)) if !dir.ends_with(":/") && !dir.ends_with("://") => (dir.into(), file.into()),
        Some(_) => (trimmed.into(), "metrics.json".into()),
        None => (".".into(), trimmed.into()),
    }
}

/// The parsed JSON at `--job`, and where it was, for messages.
async fn read_job_record(job: &str, store_args: &StoreArgs) -> anyhow::Result<(serde_json::Value, String)> {
    let (dir, key) = job_key(job);
    // Reading must not create an empty directory for a mistyped path.
    if let Location::Local(path) = Location::parse(&dir)? {
        anyhow::ensure!(path.is_dir(), "no job at {job}: the directory {} does not exist", path.display());
    }
    let mut opts = store_args.options();
    opts.retry = RetryOptions::interactive();
    let store = RunStore::open(&dir, &opts)?;
    let location = store.location(&key);
    let bytes = match store.get(&key).await {
        Ok(b) => b,
        Err(StoreError::NotFound { .. }) if key == "metrics.json" && store.exists("job.json").await.unwrap_or(false) => {
            anyhow::bail!(
                "{dir} holds a job.json and no metrics.json: a sample or analysis job's outputs; the \
                 rate-distortion curve comes from an evaluation job with bpd among its metrics \
                 (`ddpm jobs submit-eval --metrics bpd`)"
            )
        }
        Err(e @ StoreError::NotFound { .. }) => {
            return Err(anyhow::Error::new(e)
                .context(format!("reading {location} (give an evaluation job's directory, RUN/jobs/NNNNNN, or its metrics.json)")))
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {location}"))),
    };
    let record = serde_json::from_slice(&bytes).with_context(|| format!("{location} is not JSON"))?;
    Ok((record, location))
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

#[cfg(test)]
mod tests {
    use super::job_key;

    #[test]
    fn a_job_is_its_directory_or_a_json_file_in_it() {
        let key = job_key;
        assert_eq!(key("runs/a/jobs/000007"), ("runs/a/jobs/000007".into(), "metrics.json".into()));
        assert_eq!(key("runs/a/jobs/000007/"), ("runs/a/jobs/000007".into(), "metrics.json".into()));
        assert_eq!(key("runs/a/jobs/000007/metrics.json"), ("runs/a/jobs/000007".into(), "metrics.json".into()));
        assert_eq!(key("s3://b/run/jobs/000001/M.JSON"), ("s3://b/run/jobs/000001".into(), "M.JSON".into()));
        assert_eq!(key("s3://bkt/x.json"), ("s3://bkt".into(), "x.json".into()));
        assert_eq!(key("file:///r/jobs/1/metrics.json"), ("file:///r/jobs/1".into(), "metrics.json".into()));
        assert_eq!(key("metrics.json"), (".".into(), "metrics.json".into()));
        assert_eq!(key("/metrics.json"), ("/".into(), "metrics.json".into()));
    }
}
