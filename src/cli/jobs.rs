//! `ddpm jobs`: submit, follow and cancel a coordinator's sampling jobs over
//! gRPC (the `Jobs` service of `ddpm-coord`).

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use ddpm::proto::{self, jobs_client::JobsClient};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

#[derive(Args, Debug)]
pub struct JobsArgs {
    /// The coordinator, HOST:PORT.
    #[arg(long, global = true, default_value = "127.0.0.1:50051")]
    coord: String,
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
    /// One job's status.
    Get { job_id: u64 },
    /// Follow a job until it ends, with a progress bar.
    Watch { job_id: u64 },
    /// Every job of the coordinator.
    List,
    /// Cancel a queued or running job.
    Cancel { job_id: u64 },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WeightsArg {
    Ema,
    Raw,
}

#[derive(Args, Debug)]
struct SampleArgs {
    /// Images to draw.
    #[arg(long, default_value_t = 64)]
    count: u64,
    /// ancestral (all T steps) or ddim.
    #[arg(long, default_value = "ancestral")]
    sampler: String,
    /// DDIM steps (default 50).
    #[arg(long, default_value_t = 0)]
    steps: u32,
    /// DDIM eta.
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Which weights: the EMA (default) or the raw parameters.
    #[arg(long, value_enum, default_value = "ema")]
    weights: WeightsArg,
    /// Use the weights of the checkpoint of this step (default: the live state).
    #[arg(long, default_value_t = 0)]
    checkpoint_step: u64,
    /// Images per forward pass (default 16).
    #[arg(long, default_value_t = 0)]
    batch: u32,
    /// Also write each image as its own PNG.
    #[arg(long)]
    individual_pngs: bool,
    /// Follow the job until it ends.
    #[arg(long)]
    watch: bool,
}

pub fn run(args: JobsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(args))
}

async fn connect(addr: &str) -> anyhow::Result<JobsClient<Channel>> {
    let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let channel = tonic::transport::Endpoint::from_shared(url)
        .with_context(|| format!("bad coordinator address {addr:?}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {addr} (is ddpm-coord running there?)"))?;
    Ok(JobsClient::new(channel))
}

/// A gRPC error as a message for people.
fn rpc_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

async fn run_async(args: JobsArgs) -> anyhow::Result<()> {
    let mut c = connect(&args.coord).await?;
    match args.command {
        JobsCommand::SubmitSample(a) => {
            let req = proto::SampleJobRequest {
                count: a.count,
                sampler: a.sampler,
                steps: a.steps,
                eta: a.eta,
                seed: a.seed,
                weights: match a.weights {
                    WeightsArg::Ema => proto::Weights::Ema,
                    WeightsArg::Raw => proto::Weights::Raw,
                } as i32,
                checkpoint_step: a.checkpoint_step,
                batch: a.batch,
                individual_pngs: a.individual_pngs,
            };
            let status = c.submit_sample_job(req).await.map_err(rpc_err)?.into_inner();
            print_status(&status, args.json);
            if a.watch {
                watch(&mut c, status.job_id, args.json).await?;
            }
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
                    println!(
                        "{:>6}  {:<7} {:<10} {:>13}  {}",
                        j.job_id,
                        j.kind,
                        j.state,
                        format!("{}/{}", j.done, j.total),
                        j.spec_json
                    );
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

/// Follows a job to its end; an error if it failed or was cancelled.
async fn watch(c: &mut JobsClient<Channel>, job_id: u64, json: bool) -> anyhow::Result<()> {
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
    for o in &s.outputs {
        println!("  output: {o}");
    }
}
