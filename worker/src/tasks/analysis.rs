//! An analysis task (the paper's sections 4.3 and 4.4): progressive rows
//! of `x0_hat` snapshots, or an interpolation between the two dataset
//! images sent with it, drawn from the job's pinned weights.

use std::time::Instant;

use ddpm::proto;
use ddpm::train::analysis::AnalysisKind;
use ddpm::wire;

use super::context::Tasks;
use super::error::TaskError;
use super::inputs;
use super::result::ResultParts;
use crate::device::messages::AnalysisTask;
use crate::directive::CallResult;

/// Rows of a progressive generation per pass of the device.
const PROGRESSIVE_BATCH: usize = 8;

pub(super) async fn run(t: &mut Tasks<'_>, a: &proto::AnalysisAssignment, encoded: Vec<proto::Sample>) -> CallResult<()> {
    let started = Instant::now();
    let kind = wire::analysis_kind(a.analysis);
    tracing::info!(job = a.job_id, kind = ?kind.as_ref().ok(), first = a.first, count = a.count, "analysis task");
    // A task this worker cannot set up fails before the weights are fetched.
    let task = kind.map_err(TaskError::from).and_then(|kind| device_task(kind, a, &encoded));
    let drawn = match task {
        Ok(task) => {
            let weights = t.job_weights(a.job_id).await?;
            let images = t.dev.analysis(weights, task).await.map_err(TaskError::from);
            t.loaded(a.job_id, images.is_ok());
            images
        }
        Err(e) => Err(e),
    };
    if drawn.is_ok() {
        tracing::info!(job = a.job_id, seconds = started.elapsed().as_secs_f64(), "analysis images drawn");
    }
    let header = t.header(a.job_id, a.first, a.count);
    t.send(header, drawn.map(ResultParts::images)).await
}

/// The device's form of the task.
fn device_task(kind: AnalysisKind, a: &proto::AnalysisAssignment, encoded: &[proto::Sample]) -> Result<AnalysisTask, TaskError> {
    Ok(match kind {
        AnalysisKind::Progressive => {
            let snapshots = a.snapshots.max(1) as u64;
            if !(a.first.is_multiple_of(snapshots) && a.count.is_multiple_of(snapshots)) {
                return Err(TaskError::Shape("a progressive task must cover whole rows".into()));
            }
            AnalysisTask::Progressive {
                seed: a.seed,
                first_row: a.first / snapshots,
                rows: (a.count / snapshots) as usize,
                snapshots: snapshots as usize,
                batch: PROGRESSIVE_BATCH,
            }
        }
        AnalysisKind::Interpolate => {
            if encoded.len() != 2 {
                return Err(TaskError::Shape(format!("an interpolation needs 2 images, the task has {}", encoded.len())));
            }
            let decoder = inputs::decoder(&a.decoder_json)?;
            AnalysisTask::Interpolate {
                a: inputs::decode_one(&decoder, &encoded[0])?,
                b: inputs::decode_one(&decoder, &encoded[1])?,
                t: a.t as usize,
                lambdas: a.lambdas as usize,
                seed: a.seed,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progressive_task_covers_whole_rows() {
        let a = proto::AnalysisAssignment { first: 8, count: 12, snapshots: 4, seed: 3, ..Default::default() };
        match device_task(AnalysisKind::Progressive, &a, &[]).unwrap() {
            AnalysisTask::Progressive { seed: 3, first_row: 2, rows: 3, snapshots: 4, batch: PROGRESSIVE_BATCH } => {}
            _ => panic!("wrong task"),
        }
        let a = proto::AnalysisAssignment { first: 2, count: 4, snapshots: 4, ..Default::default() };
        assert!(device_task(AnalysisKind::Progressive, &a, &[]).is_err());
    }

    #[test]
    fn an_interpolation_needs_two_decodable_images() {
        let a = proto::AnalysisAssignment {
            decoder_json: r#"{"format":"raw_chw","resolution":1}"#.into(),
            t: 5,
            lambdas: 3,
            ..Default::default()
        };
        let s = |position, data: &[u8]| proto::Sample { position, data: data.to_vec().into() };
        let e = device_task(AnalysisKind::Interpolate, &a, &[s(0, &[1, 2, 3])]).unwrap_err();
        assert_eq!(e.to_string(), "an interpolation needs 2 images, the task has 1");
        match device_task(AnalysisKind::Interpolate, &a, &[s(0, &[1, 2, 3]), s(9, &[4, 5, 6])]).unwrap() {
            AnalysisTask::Interpolate { a, b, t: 5, lambdas: 3, .. } => assert_eq!((a, b), (vec![1, 2, 3], vec![4, 5, 6])),
            _ => panic!("wrong task"),
        }
        let e = device_task(AnalysisKind::Interpolate, &a, &[s(0, &[1, 2, 3]), s(9, &[4])]).unwrap_err();
        assert!(e.to_string().starts_with("dataset image 9: "), "{e}");
    }
}
