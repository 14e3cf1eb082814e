//! An evaluation task: images (drawn from the job's pinned weights, or
//! dataset images sent with the task) measured as FID feature sums,
//! Inception Score sums and/or the bound's sums, sent back with the drawn
//! images.

use std::time::Instant;

use ddpm::proto::{self, eval_assignment::Source};

use super::context::Tasks;
use super::error::TaskError;
use super::inputs;
use super::result::ResultParts;
use super::sample::sample_request;
use crate::device::messages::{EvalImages, EvalTask};
use crate::directive::CallResult;

pub(super) async fn run(t: &mut Tasks<'_>, a: &proto::EvalAssignment, encoded: Vec<proto::Sample>) -> CallResult<()> {
    let started = Instant::now();
    let (first, count) = match &a.source {
        Some(Source::Sample(s)) => (s.first, s.count),
        Some(Source::Dataset(d)) => (d.first, d.count),
        None => (0, 0),
    };
    tracing::info!(job = a.job_id, first, count, features = a.features, bpd = a.bpd, "evaluating");
    // The bound and drawn images need the job's weights; features of
    // dataset images do not, and leave the device's weights alone.
    let needs_weights = a.bpd || matches!(a.source, Some(Source::Sample(_)));
    let measured = match images(a, &encoded) {
        Ok(images) => {
            let weights = if needs_weights { t.job_weights(a.job_id).await? } else { None };
            let task = EvalTask {
                images,
                features: a.features,
                inception_score: (a.is_splits > 0).then_some((a.is_splits as usize, a.is_total)),
                bpd_seed: a.bpd.then_some(a.bpd_seed),
                inception: a.inception.clone(),
                batch: a.batch.max(1) as usize,
            };
            let out = t.dev.eval(weights, task).await.map_err(TaskError::from);
            if needs_weights || out.is_err() {
                t.loaded(a.job_id, out.is_ok());
            }
            out
        }
        Err(e) => Err(e),
    };
    if measured.is_ok() {
        tracing::info!(job = a.job_id, seconds = started.elapsed().as_secs_f64(), "task measured");
    }
    let header = t.header(a.job_id, first, count);
    t.send(header, measured.map(ResultParts::measured)).await
}

/// The task's images, as the device takes them.
fn images(a: &proto::EvalAssignment, encoded: &[proto::Sample]) -> Result<EvalImages, TaskError> {
    Ok(match &a.source {
        Some(Source::Sample(s)) => EvalImages::Sample(sample_request(s)?),
        Some(Source::Dataset(d)) => {
            // Decoding (and resizing) a task's images takes a while: off the async workers.
            let pixels = tokio::task::block_in_place(|| inputs::decode_dataset_images(d, encoded))?;
            EvalImages::Dataset { first: d.first, pixels }
        }
        None => return Err(TaskError::Shape("an evaluation task without images".into())),
    })
}
