//! One runner per kind of job: each pins the job's weights, runs its
//! phases of tasks through the scheduler, merges what comes back and
//! writes the outputs.

mod analysis;
mod eval;
mod sample;

use std::time::Instant;

use super::context::JobContext;
use super::failure::JobFailure;
use super::queue::JobEnd;
use super::results::Results;
use super::spec::JobSpec;

/// Runs job `id` to its end.
pub async fn run(ctx: &JobContext, id: u64, spec: &JobSpec, results: &mut Results, started: Instant) -> Result<JobEnd, JobFailure> {
    match spec {
        JobSpec::Sample(s) => sample::run_sample(ctx, id, s, results, started).await,
        JobSpec::Grid(g) => sample::run_grid(ctx, id, g, results).await,
        JobSpec::Eval(e) => eval::run(ctx, id, e, results, started).await,
        JobSpec::Analysis(a) => analysis::run(ctx, id, a, results, started).await,
    }
}
