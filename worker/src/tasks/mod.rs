//! Job tasks: a share of a sampling, evaluation or analysis job, run with
//! the job's pinned weights and sent back with `SubmitResult`.
//!
//! A task that fails on this worker (a bad sampler, an image it cannot
//! decode, a device error) is reported to the coordinator as the task's
//! result, which fails the job, not this worker. A failed call to the
//! coordinator is a [`CallError`](crate::directive::CallError) for the
//! session to act on: a job that ended meanwhile answers with next-work,
//! and its task is dropped.
//!
//! - `mod.rs`: each kind of task to its file
//! - `context.rs`: [`Tasks`], what every task needs, and the job's weights
//! - `sample.rs`, `eval.rs`, `analysis.rs`: one kind of task each
//! - `inputs.rs`: the dataset images a task brings
//! - `error.rs`: why a task failed on this worker
//! - `result.rs`: a result's named parts on the wire

mod analysis;
pub mod context;
mod error;
mod eval;
mod inputs;
mod result;
mod sample;

use ddpm::proto;

use crate::directive::CallResult;
use context::Tasks;

impl Tasks<'_> {
    pub async fn sample(&mut self, a: &proto::SampleAssignment) -> CallResult<()> {
        sample::run(self, a).await
    }

    pub async fn eval(&mut self, a: &proto::EvalAssignment, encoded: Vec<proto::Sample>) -> CallResult<()> {
        eval::run(self, a, encoded).await
    }

    pub async fn analysis(&mut self, a: &proto::AnalysisAssignment, encoded: Vec<proto::Sample>) -> CallResult<()> {
        analysis::run(self, a, encoded).await
    }
}
