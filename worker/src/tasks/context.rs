//! What every job task needs: the coordinator, the device, and which
//! job's weights the device holds; fetching those weights once per job,
//! and sending a task's result.

use ddpm::config::RunConfig;
use ddpm::proto;

use super::error::TaskError;
use super::result::{self, ResultParts};
use crate::client::{self, Client};
use crate::device::DeviceHandle;
use crate::directive::CallResult;

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
    /// The job's pinned weights, unless the device already holds them
    /// (fetched once per job: a job's tasks usually go to the same workers).
    pub(super) async fn job_weights(&mut self, job_id: u64) -> CallResult<Option<Vec<f32>>> {
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
    pub(super) fn loaded(&mut self, job_id: u64, ok: bool) {
        *self.loaded_job = ok.then_some(job_id);
    }

    pub(super) fn header(&self, job_id: u64, first: u64, count: u64) -> proto::ResultHeader {
        proto::ResultHeader {
            worker_id: self.worker_id,
            job_id,
            first,
            count,
            resolution: self.run.train.model.image_size as u32,
            ..Default::default()
        }
    }

    pub(super) async fn send(&mut self, header: proto::ResultHeader, result: Result<ResultParts, TaskError>) -> CallResult<()> {
        result::send_result(self.client, header, result).await
    }
}
