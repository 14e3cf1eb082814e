//! `ddpm checkpoints`: list a run's checkpoints and export one as a
//! diffusers model directory or a whole diffusers `DDPMPipeline`
//! (`checkpoints/pipeline.rs`).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use ddpm::checkpoint::{self, format, CheckpointInfo};
use ddpm::store::{Location, RetryOptions, RunStore, StoreArgs};
use ddpm::unet::diffusers;

mod pipeline;

#[derive(clap::Args)]
pub struct CheckpointsArgs {
    #[command(subcommand)]
    pub command: CheckpointsCommand,
}

#[derive(clap::Subcommand)]
pub enum CheckpointsCommand {
    /// Every checkpoint of a run: step, time, size, and which is the latest
    /// complete one (the one a coordinator resumes from).
    List(ListArgs),
    /// Write one checkpoint's weights as a diffusers UNet2DModel directory
    /// (`diffusion_pytorch_model.safetensors` + `config.json`), or as a
    /// diffusers DDPMPipeline (that UNet plus a DDPMScheduler configured as
    /// the run was trained) with `--format diffusers-pipeline`.
    Export(ExportArgs),
}

/// Where the run is.
#[derive(clap::Args)]
pub struct RunOpts {
    /// The run: a directory, file:///path or s3://bucket/prefix.
    #[arg(long, value_name = "URL")]
    pub run: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl RunOpts {
    /// The run's store, for reading (`ddpm checkpoints`, `ddpm metrics`).
    pub fn open(&self) -> anyhow::Result<RunStore> {
        // Reading a run must not create an empty directory for a mistyped path.
        if let Location::Local(dir) = Location::parse(&self.run)? {
            anyhow::ensure!(dir.is_dir(), "no run at {}: the directory does not exist", dir.display());
        }
        let mut opts = self.store.options();
        opts.retry = RetryOptions::interactive();
        Ok(RunStore::open(&self.run, &opts)?)
    }
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub run: RunOpts,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also check every file's SHA-256 (downloads every checkpoint).
    #[arg(long)]
    pub verify: bool,
}

/// Output format of `export`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// diffusers UNet2DModel: `UNet2DModel.from_pretrained(DIR)` loads it.
    Diffusers,
    /// diffusers DDPMPipeline: `DDPMPipeline.from_pretrained(DIR)` loads it
    /// (`model_index.json`, `unet/`, `scheduler/`); EMA weights unless `--raw`.
    DiffusersPipeline,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub run: RunOpts,
    /// The step to export, or `latest` (the newest complete checkpoint).
    #[arg(long, default_value = "latest")]
    pub step: String,
    /// Export the EMA weights (what the paper evaluates) instead of the raw
    /// ones. `--format diffusers-pipeline` exports EMA without it.
    #[arg(long, conflicts_with = "raw")]
    pub ema: bool,
    /// Export the raw (trained, not averaged) weights; what `--format
    /// diffusers` exports by default, and what `--format diffusers-pipeline`
    /// exports instead of EMA.
    #[arg(long)]
    pub raw: bool,
    /// Layout of the export. diffusers: a UNet2DModel directory with its
    /// config.json and safetensors, loadable by `UNet2DModel.from_pretrained`.
    /// diffusers-pipeline: a DDPMPipeline directory loadable by
    /// `DDPMPipeline.from_pretrained`, its scheduler as the run was trained
    /// (T, betas, variance, x0 clipping, prediction type); a run that
    /// DDPMScheduler cannot sample (mu-prediction) is refused.
    #[arg(long, value_enum, default_value = "diffusers")]
    pub format: ExportFormat,
    /// Output directory (created). A pipeline is written whole into a new or
    /// empty directory (through a temporary directory beside it).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(args: CheckpointsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match args.command {
        CheckpointsCommand::List(a) => rt.block_on(list(a)),
        CheckpointsCommand::Export(a) => rt.block_on(export(a)),
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let store = args.run.open()?;
    let mut all = checkpoint::list(&store).await?;
    if args.verify {
        for c in all.iter_mut().filter(|c| c.complete) {
            if let Err(e) = checkpoint::verify(&store, c.step).await {
                c.complete = false;
                c.problem = Some(e.to_string());
            }
        }
    }
    let latest = all.iter().rev().find(|c| c.complete).map(|c| c.step);
    if args.json {
        let rows: Vec<_> = all.iter().map(|c| row_json(c, latest)).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no checkpoints in {}", store.url());
        return Ok(());
    }
    println!("{:>12}  {:<20}  {:>10}  status", "step", "created (UTC)", "size");
    for c in &all {
        let status = match (&c.problem, Some(c.step) == latest) {
            (None, true) => "complete, latest".to_string(),
            (None, false) => "complete".to_string(),
            (Some(p), _) => format!("torn: {p}"),
        };
        let status = if c.shards > 0 { format!("{status} ({} shards, by the replicas)", c.shards) } else { status };
        println!("{:>12}  {:<20}  {:>10}  {status}", c.step, c.created.format("%Y-%m-%d %H:%M:%S"), human(c.bytes));
    }
    Ok(())
}

fn row_json(c: &CheckpointInfo, latest: Option<u64>) -> serde_json::Value {
    serde_json::json!({
        "step": c.step,
        "created": c.created.to_rfc3339(),
        "bytes": c.bytes,
        "complete": c.complete,
        "latest": Some(c.step) == latest,
        "problem": c.problem,
        "shards": c.shards,
    })
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The checkpoint `step` names: a step number, or `latest` (the latest
/// complete one; torn newer ones are skipped with a warning).
pub async fn read_checkpoint(store: &RunStore, step: &str) -> anyhow::Result<checkpoint::CheckpointData> {
    if step == "latest" {
        let loaded =
            checkpoint::load_latest(store).await?.ok_or_else(|| checkpoint::CheckpointError::NoCheckpoint { url: store.url().into() })?;
        for s in &loaded.skipped {
            eprintln!("warning: skipped the checkpoint of step {}: {}", s.step, s.problem);
        }
        return Ok(loaded.data);
    }
    let n: u64 = step.parse().with_context(|| format!("{step:?} is no checkpoint: give a step number or `latest`"))?;
    Ok(checkpoint::read(store, n).await?)
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let store = args.run.open()?;
    let data = read_checkpoint(&store, &args.step).await?;
    let ema = match args.format {
        ExportFormat::Diffusers => args.ema,
        ExportFormat::DiffusersPipeline => !args.raw,
    };
    // Refuse what diffusers cannot sample before encoding anything.
    let scheduler = match args.format {
        ExportFormat::Diffusers => None,
        ExportFormat::DiffusersPipeline => Some(
            pipeline::scheduler_config(&data.config.diffusion)
                .with_context(|| format!("step {} cannot be exported as a diffusers DDPMPipeline", data.step))?,
        ),
    };
    let weights = if ema { &data.ema } else { &data.params };
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = format::encode_tensors(&data.layout, &[("", weights)], meta)?;
    let unet_config = diffusers::config_json(&data.config.model);
    if let Some(scheduler) = &scheduler {
        pipeline::write(&args.out, &unet_config, &bytes, scheduler)?;
    } else {
        std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
        let config = serde_json::to_string_pretty(&unet_config)? + "\n";
        let config_path = args.out.join(diffusers::CONFIG_FILE);
        std::fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;
        let weights_path = args.out.join(diffusers::WEIGHTS_FILE);
        std::fs::write(&weights_path, &bytes).with_context(|| format!("writing {}", weights_path.display()))?;
    }
    println!(
        "exported the {} weights of step {} ({} parameters) {}to {}",
        if ema { "EMA" } else { "raw" },
        data.step,
        data.layout.total,
        if scheduler.is_some() { "as a diffusers DDPMPipeline " } else { "" },
        args.out.display()
    );
    Ok(())
}
