//! `ddpm jobs`: submit, follow and cancel a coordinator's sampling and
//! evaluation jobs over gRPC (the `Jobs` service of `ddpm-coord`).

use super::coord_conn::rpc_err;
use clap::{Args, Subcommand, ValueEnum};
use ddpm::diffusion::SamplerKind;
use ddpm::proto::{self, jobs_client::JobsClient};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_stream::StreamExt;

#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    conn: super::coord_conn::CoordArgs,
    /// Print the job statuses as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Subcommand, Debug)]
enum JobsCommand {
    /// Draw images from the run's weights (a grid PNG, an .npz of the
    /// uint8 images and a job.json under jobs/<id>/ in the run's store).
    SubmitSample(SampleArgs),
    /// Measure FID, Inception Score and/or bits/dim (metrics.json, the
    /// samples' grid and .npz, computed reference statistics under
    /// jobs/<id>/ in the run's store).
    SubmitEval(EvalArgs),
    /// The paper's analysis as a grid: progressive generation (x0_hat along
    /// ancestral trajectories) or interpolation between two dataset images.
    SubmitAnalysis(AnalysisArgs),
    /// One job's status.
    Get {
        /// The job's id, as `submit-*` or `list` printed it.
        job_id: u64,
    },
    /// Follow a job until it ends, with a progress bar.
    Watch {
        /// The job's id, as `submit-*` or `list` printed it.
        job_id: u64,
    },
    /// Every job of the coordinator.
    List,
    /// Cancel a queued or running job.
    Cancel {
        /// The job's id, as `submit-*` or `list` printed it.
        job_id: u64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum WeightsArg {
    Ema,
    Raw,
}

#[derive(Args, Debug)]
struct SampleArgs {
    /// Images to draw.
    #[arg(long, default_value_t = 64)]
    count: u64,
    #[command(flatten)]
    draw: DrawArgs,
    /// Follow the job until it ends.
    #[arg(long)]
    watch: bool,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// Metrics, comma-separated: fid, is (Inception Score), bpd (bits/dim).
    #[arg(long, value_delimiter = ',', default_value = "fid")]
    metrics: Vec<String>,
    /// Samples to draw for fid and is (the paper: 50000).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// The Inception TorchScript file (inception-2015-12-05.pt), as a path on the workers.
    #[arg(long, default_value = "")]
    inception: String,
    /// FID reference statistics: a pytorch-fid / TTUR .npz on the coordinator
    /// (default: computed from --reference-data).
    #[arg(long, default_value = "", hide_default_value = true)]
    reference_stats: String,
    /// Dataset spec for the reference statistics (default: the run's training set).
    #[arg(long, default_value = "", hide_default_value = true)]
    reference_data: String,
    /// Reference images to use, the first ones (default: all).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    reference_images: u64,
    /// Dataset spec for bits/dim (default: the run's training set).
    #[arg(long, default_value = "", hide_default_value = true)]
    bpd_data: String,
    /// Images for bits/dim, the first ones (default: all).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    bpd_images: u64,
    /// Inception Score splits (default 10).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    is_splits: u32,
    /// Images per forward pass of the feature network and the bound (default 50).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    eval_batch: u32,
    #[command(flatten)]
    draw: DrawArgs,
    /// Follow the job until it ends.
    #[arg(long)]
    watch: bool,
}

#[derive(Args, Debug)]
struct AnalysisArgs {
    /// progressive or interpolate.
    kind: String,
    #[command(flatten)]
    from: FromArgs,
    /// progressive: trajectories, one row each (default 8).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    rows: u32,
    /// progressive: x0_hat snapshots per trajectory (default 10).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    snapshots: u32,
    /// progressive: trajectories per forward pass (default 8).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    batch: u32,
    /// interpolate: dataset spec (default: the run's training set).
    #[arg(long, default_value = "", hide_default_value = true)]
    data: String,
    /// interpolate: index of the first image.
    #[arg(long, default_value_t = 0)]
    index_a: u64,
    /// interpolate: index of the second image.
    #[arg(long, default_value_t = 0)]
    index_b: u64,
    /// interpolate: diffusion steps of the encoding (default 500, the paper's).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    t: u32,
    /// interpolate: mixing weights from 0 to 1 (default 11).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    lambdas: u32,
    /// Follow the job until it ends.
    #[arg(long)]
    watch: bool,
}

impl WeightsArg {
    fn proto(self) -> i32 {
        let w = match self {
            WeightsArg::Ema => proto::Weights::Ema,
            WeightsArg::Raw => proto::Weights::Raw,
        };
        w as i32
    }
}

/// The seed and the weights a job draws with.
#[derive(Args, Debug)]
struct FromArgs {
    /// The job's seed: the same seed and weights draw the same images.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Which weights: the EMA or the raw parameters.
    #[arg(long, value_enum, default_value = "ema")]
    weights: WeightsArg,
    /// Use the weights of the checkpoint of this step (default: the live state).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    checkpoint_step: u64,
}

/// How images are drawn, for sample and evaluation jobs.
#[derive(Args, Debug)]
struct DrawArgs {
    /// ancestral (all T steps) or ddim.
    #[arg(long, default_value = "ancestral", value_parser = parse_sampler)]
    sampler: SamplerKind,
    /// DDIM steps (default 50).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    steps: u32,
    /// DDIM eta.
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    #[command(flatten)]
    from: FromArgs,
    /// Images per forward pass (default 16).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    batch: u32,
    /// Also write each image as its own PNG.
    #[arg(long)]
    individual_pngs: bool,
}

/// `--sampler`, parsed where it enters (the request carries the word).
pub(crate) fn parse_sampler(s: &str) -> Result<SamplerKind, String> {
    s.parse().map_err(|e: ddpm::diffusion::SamplerError| e.to_string())
}

impl DrawArgs {
    fn request(&self, count: u64) -> proto::SampleJobRequest {
        proto::SampleJobRequest {
            count,
            sampler: self.sampler.as_str().into(),
            steps: self.steps,
            eta: self.eta,
            seed: self.from.seed,
            weights: self.from.weights.proto(),
            checkpoint_step: self.from.checkpoint_step,
            batch: self.batch,
            individual_pngs: self.individual_pngs,
        }
    }
}

pub fn run(args: JobsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(args))
}

type Client = JobsClient<super::coord_conn::CoordChannel>;

async fn run_async(args: JobsArgs) -> anyhow::Result<()> {
    let mut c: Client = JobsClient::new(args.conn.connect().await?);
    match args.command {
        JobsCommand::SubmitSample(a) => {
            let status = c.submit_sample_job(a.draw.request(a.count)).await.map_err(rpc_err)?.into_inner();
            submitted(&mut c, status, a.watch, args.json).await?;
        }
        JobsCommand::SubmitEval(a) => {
            let req = proto::EvalJobRequest {
                metrics: a.metrics.clone(),
                sample: Some(a.draw.request(a.count)),
                inception: a.inception,
                reference_stats: a.reference_stats,
                reference_data: a.reference_data,
                reference_images: a.reference_images,
                bpd_data: a.bpd_data,
                bpd_images: a.bpd_images,
                is_splits: a.is_splits,
                eval_batch: a.eval_batch,
            };
            let status = c.submit_eval_job(req).await.map_err(rpc_err)?.into_inner();
            submitted(&mut c, status, a.watch, args.json).await?;
        }
        JobsCommand::SubmitAnalysis(a) => {
            let req = proto::AnalysisJobRequest {
                kind: a.kind,
                seed: a.from.seed,
                weights: a.from.weights.proto(),
                checkpoint_step: a.from.checkpoint_step,
                rows: a.rows,
                snapshots: a.snapshots,
                batch: a.batch,
                data: a.data,
                index_a: a.index_a,
                index_b: a.index_b,
                t: a.t,
                lambdas: a.lambdas,
            };
            let status = c.submit_analysis_job(req).await.map_err(rpc_err)?.into_inner();
            submitted(&mut c, status, a.watch, args.json).await?;
        }
        JobsCommand::Get { job_id } => {
            let status = c.get_job(proto::JobRef { job_id }).await.map_err(rpc_err)?.into_inner();
            print_status(&status, args.json);
        }
        JobsCommand::Watch { job_id } => watch(&mut c, job_id, args.json).await?,
        JobsCommand::List => {
            let jobs = c.list_jobs(proto::ListJobsRequest {}).await.map_err(rpc_err)?.into_inner().jobs;
            if args.json {
                for j in &jobs {
                    print_status(j, true);
                }
            } else if jobs.is_empty() {
                println!("no jobs");
            } else {
                println!("{:>6}  {:<7} {:<10} {:>13}  spec", "id", "kind", "state", "images");
                for j in &jobs {
                    println!("{:>6}  {:<7} {:<10} {:>13}  {}", j.job_id, j.kind, j.state, format!("{}/{}", j.done, j.total), j.spec_json);
                }
            }
        }
        JobsCommand::Cancel { job_id } => {
            let status = c.cancel_job(proto::JobRef { job_id }).await.map_err(rpc_err)?.into_inner();
            print_status(&status, args.json);
        }
    }
    Ok(())
}

/// Prints a submitted job's status and, with `follow`, watches it.
async fn submitted(c: &mut Client, status: proto::JobStatus, follow: bool, json: bool) -> anyhow::Result<()> {
    print_status(&status, json);
    if follow {
        watch(c, status.job_id, json).await?;
    }
    Ok(())
}

/// Follows a job to its end; an error if it failed or was cancelled.
async fn watch(c: &mut Client, job_id: u64, json: bool) -> anyhow::Result<()> {
    let mut stream = c.watch_job(proto::JobRef { job_id }).await.map_err(rpc_err)?.into_inner();
    let bar = if json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("job {prefix} {msg:9} [{bar:40}] {pos}/{len} images, {elapsed} (eta {eta})")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        b.set_prefix(job_id.to_string());
        b
    };
    let mut last = None;
    while let Some(status) = stream.next().await {
        let status = status.map_err(rpc_err)?;
        bar.set_length(status.total);
        bar.set_position(status.done);
        bar.set_message(status.state.clone());
        if json {
            print_status(&status, true);
        }
        last = Some(status);
    }
    bar.finish();
    let status = last.ok_or_else(|| anyhow::anyhow!("the coordinator sent no status for job {job_id}"))?;
    if !json {
        print_status(&status, false);
    }
    match status.state.as_str() {
        "done" => Ok(()),
        "failed" => anyhow::bail!("job {job_id} failed: {}", status.error),
        "cancelled" => anyhow::bail!("job {job_id} was cancelled"),
        other => anyhow::bail!("the coordinator stopped reporting job {job_id} while it was {other}"),
    }
}

fn print_status(s: &proto::JobStatus, json: bool) {
    if json {
        let v = serde_json::json!({
            "job_id": s.job_id,
            "kind": s.kind,
            "state": s.state,
            "done": s.done,
            "total": s.total,
            "error": s.error,
            "outputs": s.outputs,
            "weights_step": s.weights_step,
            "spec": serde_json::from_str::<serde_json::Value>(&s.spec_json).unwrap_or(serde_json::Value::Null),
            "age_s": s.age_s,
            "metrics": serde_json::from_str::<serde_json::Value>(&s.metrics_json).unwrap_or(serde_json::Value::Null),
        });
        println!("{v}");
        return;
    }
    println!("job {}: {} ({}/{} images)", s.job_id, s.state, s.done, s.total);
    if s.weights_step > 0 {
        println!("  weights of step {}", s.weights_step);
    }
    if !s.error.is_empty() {
        println!("  error: {}", s.error);
    }
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(&s.metrics_json) {
        if let Some(v) = m.get("fid").and_then(|f| f["value"].as_f64()) {
            println!("  FID: {v:.4}");
        }
        if let Some(is) = m.get("inception_score") {
            println!("  Inception Score: {:.4} +- {:.4}", is["mean"].as_f64().unwrap_or(f64::NAN), is["std"].as_f64().unwrap_or(f64::NAN));
        }
        if let Some(v) = m.get("bpd").and_then(|b| b["bits_per_dim"].as_f64()) {
            println!("  bits/dim: {v:.4}");
        }
    }
    for o in &s.outputs {
        println!("  output: {o}");
    }
}
