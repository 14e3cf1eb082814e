//! `ddpm`: the user's tool for models, datasets, checkpoints and jobs.

use clap::{Parser, Subcommand};

mod cli;

/// Denoising diffusion probabilistic models: inspect models, datasets and checkpoints.
#[derive(Parser)]
#[command(name = "ddpm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Architecture summary and exact parameter count of a U-Net preset.
    Model(cli::model::ModelArgs),
    /// Inspect a dataset, export its samples as PNG, compute its FID statistics.
    Data(cli::data::DataArgs),
    /// List a run's checkpoints; export one as a diffusers model.
    Checkpoints(cli::checkpoints::CheckpointsArgs),
    /// Submit, follow and cancel a coordinator's sampling jobs.
    Jobs(cli::jobs::JobsArgs),
    /// Throughput benchmarks (not tests).
    Bench(cli::bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    ddpm::runtime::init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Model(args) => cli::model::run(args),
        Command::Data(args) => cli::data::run(args),
        Command::Checkpoints(args) => cli::checkpoints::run(args),
        Command::Jobs(args) => cli::jobs::run(args),
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
