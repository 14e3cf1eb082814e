//! `ddpm`: the user's tool for models, datasets, checkpoints and jobs.

use clap::{Parser, Subcommand};

mod cli;

/// Denoising diffusion probabilistic models (Ho et al. 2020), trained on many
/// devices: the user's tool for models, datasets, checkpoints, runs and jobs.
///
/// A training run is two more programs: `ddpm-coord` (one per run: reads
/// the dataset, shards each global batch across the workers, all-reduces
/// their gradients, keeps the EMA, checkpoints, serves sampling jobs) and
/// `ddpm-worker` (one per GPU, or `--device cpu`: computes its shard of
/// every step and its part of sampling jobs). Start the coordinator, point
/// the workers at it with --coord, then watch the run with `ddpm status`.
/// README.md has a two-command local run.
#[derive(Parser)]
#[command(name = "ddpm", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: ddpm::runtime::LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Architecture summary and exact parameter count of a U-Net preset.
    Model(cli::model::ModelArgs),
    /// Inspect a dataset, export its samples as PNG, compute its FID statistics.
    Data(cli::data::DataArgs),
    /// List a run's checkpoints; export one as a diffusers model or DDPMPipeline.
    Checkpoints(cli::checkpoints::CheckpointsArgs),
    /// Draw images from a run's checkpoint on this machine (CPU or a GPU),
    /// the same images a sample job with the same settings gives.
    Sample(cli::sample::SampleArgs),
    /// Submit, follow and cancel a coordinator's sampling and evaluation jobs.
    Jobs(cli::jobs::JobsArgs),
    /// A running coordinator's run at a glance: step, loss, speed, time left, checkpoints, workers.
    Status(cli::status::StatusArgs),
    /// Plot a run's loss and throughput curves (a directory or S3, live or
    /// finished), or an evaluation job's rate-distortion curve (plot-rd).
    Metrics(cli::metrics::MetricsArgs),
    /// Throughput benchmarks (not tests).
    Bench(cli::bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    ddpm::runtime::tune_allocator();
    let cli = Cli::parse();
    cli.log.init();
    let result = match cli.command {
        Command::Model(args) => cli::model::run(args),
        Command::Data(args) => cli::data::run(args),
        Command::Checkpoints(args) => cli::checkpoints::run(args),
        Command::Sample(args) => cli::sample::run(args),
        Command::Jobs(args) => cli::jobs::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Metrics(args) => cli::metrics::run(args),
        Command::Bench(args) => cli::bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_flag_explains_itself_once() {
        use clap::CommandFactory;
        let problems = ddpm::runtime::cli_help_problems(&super::Cli::command());
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
