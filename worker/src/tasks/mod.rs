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
//! - `mod.rs`: [`Tasks`], what every task needs, and the job's weights
//! - `sample.rs`, `eval.rs`, `analysis.rs`: one kind of task each
//! - `inputs.rs`: the dataset images a task brings
//! - `result.rs`: a result's named parts on the wire

mod analysis;
mod eval;
mod inputs;
mod result;
mod sample;

use ddpm::config::RunConfig;
use ddpm::proto;
use ddpm::train::sample::SampleRequest;
use ddpm::wire;

use crate::client::{self, Client};
use crate::device::DeviceHandle;
use crate::directive::CallResult;

use result::ResultParts;

/// What a job task needs: the coordinator, the device, and which job's
/// weights the device holds.
pub struct Tasks<'a> {
    pub client: &'a mut Client,
    pub worker_id: u64,
    pub run: &'a RunConfig,
    pub dev: &'a DeviceHandle,
    /// The job whose pinned weights the device's sampling model holds;
    /// `None` when unknown (after training, or a task that failed midway).
    pub loaded_job: &'a mut Option<u64>,
}

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

    /// The job's pinned weights, unless the device already holds them
    /// (fetched once per job: a job's tasks usually go to the same workers).
    async fn job_weights(&mut self, job_id: u64) -> CallResult<Option<Vec<f32>>> {
        if *self.loaded_job == Some(job_id) {
            return Ok(None);
        }
        // Until the weights are on the device, it holds none we know of.
        *self.loaded_job = None;
        let (_, mut t) = client::fetch_state(self.client, self.worker_id, proto::StateKind::Job, job_id).await?;
        Ok(Some(t.pop().ok_or_else(|| anyhow::anyhow!("the job's weights stream had no tensor"))?))
    }

    /// Records whether the device now holds `job_id`'s weights: after a
    /// task that loaded them succeeded, or nothing known after a failure.
    fn loaded(&mut self, job_id: u64, ok: bool) {
        *self.loaded_job = ok.then_some(job_id);
    }

    fn header(&self, job_id: u64, first: u64, count: u64) -> proto::ResultHeader {
        proto::ResultHeader {
            worker_id: self.worker_id,
            job_id,
            first,
            count,
            resolution: self.run.train.model.image_size as u32,
            ..Default::default()
        }
    }

    async fn send(&mut self, header: proto::ResultHeader, result: anyhow::Result<ResultParts>) -> CallResult<()> {
        result::send_result(self.client, header, result).await
    }
}

/// The device's request for images `[first, first + count)` of a sample
/// assignment.
fn sample_request(a: &proto::SampleAssignment) -> Result<SampleRequest, wire::WireError> {
    Ok(SampleRequest {
        seed: a.seed,
        first: a.first,
        count: a.count,
        sampler: wire::assignment_sampler(a)?,
        batch: a.batch.max(1) as usize,
    })
}
