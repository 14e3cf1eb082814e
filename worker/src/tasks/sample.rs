//! A sampling task: images `[first, first + count)` of a job, drawn from
//! the job's pinned weights and sent back as the result's images.

use std::time::Instant;

use ddpm::proto;
use ddpm::train::sample::SampleRequest;
use ddpm::wire;

use super::context::Tasks;
use super::error::TaskError;
use super::result::ResultParts;
use crate::directive::CallResult;

pub(super) async fn run(t: &mut Tasks<'_>, a: &proto::SampleAssignment) -> CallResult<()> {
    let started = Instant::now();
    let request = sample_request(a);
    let sampler = request.as_ref().map(|r| r.sampler).ok();
    tracing::info!(job = a.job_id, first = a.first, count = a.count, ?sampler, "sampling");
    // A task this worker cannot set up fails before the weights are fetched.
    let drawn = match request {
        Ok(request) => {
            let weights = t.job_weights(a.job_id).await?;
            let images = t.dev.sample(weights, request).await.map_err(TaskError::from);
            t.loaded(a.job_id, images.is_ok());
            images
        }
        Err(e) => Err(e.into()),
    };
    if drawn.is_ok() {
        tracing::info!(job = a.job_id, seconds = started.elapsed().as_secs_f64(), "images drawn");
    }
    let header = t.header(a.job_id, a.first, a.count);
    t.send(header, drawn.map(ResultParts::images)).await
}

/// The device's request for images `[first, first + count)` of a sample
/// assignment.
pub(super) fn sample_request(a: &proto::SampleAssignment) -> Result<SampleRequest, wire::WireError> {
    Ok(SampleRequest {
        seed: a.seed,
        first: a.first,
        count: a.count,
        sampler: wire::assignment_sampler(a)?,
        batch: a.batch.max(1) as usize,
    })
}
