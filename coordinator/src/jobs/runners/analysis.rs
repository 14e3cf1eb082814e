//! Analysis jobs (the paper's 4.3 and 4.4 as grids): progressive rows in
//! tasks of whole rows, or one interpolation task with its two images.

use std::collections::VecDeque;
use std::time::Instant;

use ddpm::proto;
use ddpm::train::analysis::AnalysisKind;

use crate::jobs::context::JobContext;
use crate::jobs::failure::{JobFailure, Stage};
use crate::jobs::outputs::{job_dir, write_images_grid, JobRecord};
use crate::jobs::queue::JobEnd;
use crate::jobs::results::{ResultPart, Results};
use crate::jobs::sink::ImageSink;
use crate::jobs::spec::JobSpec;
use crate::jobs::spec_analysis::AnalysisJobSpec;
use crate::jobs::task_loop::run_tasks;
use crate::jobs::tasks::{ranges, TaskBoard};
use crate::work::Work;

pub async fn run(ctx: &JobContext, id: u64, spec: &AnalysisJobSpec, results: &mut Results, started: Instant) -> Result<JobEnd, JobFailure> {
    let (count, cols) = spec.shape();
    let base = proto::AnalysisAssignment {
        job_id: id,
        analysis: proto::Analysis::from(spec.analysis) as i32,
        seed: spec.seed,
        snapshots: spec.snapshots,
        t: spec.t,
        lambdas: spec.lambdas,
        ..Default::default()
    };
    let (tasks, dataset) = match spec.analysis {
        AnalysisKind::Interpolate => {
            let (ds, name) = ctx.open_dataset(&spec.data).await.or_fail(JobFailure::Input)?;
            if let Some(i) = [spec.index_a, spec.index_b].into_iter().find(|&i| i >= ds.len() as u64) {
                return Err(JobFailure::Input(format!("image index {i} is outside the dataset {name} (0..{})", ds.len())));
            }
            (VecDeque::from([(0, count)]), Some(ds))
        }
        AnalysisKind::Progressive => (ranges(count, (spec.batch * spec.snapshots) as u64), None),
    };
    let weights_step = ctx.pin(id, &spec.weights_spec()).await.or_fail(JobFailure::Weights)?;
    let res = ctx.resolution();
    // The grid shows every image: all are kept in memory (the spec bounds them).
    let mut sink = ImageSink::new(count, res, count as usize)?;
    let mut done = 0u64;
    let make = |first, count| {
        let mut a = proto::AnalysisAssignment { first, count, ..base.clone() };
        let ds = dataset.clone();
        let pair = [spec.index_a, spec.index_b];
        async move {
            let mut samples = Vec::new();
            if let Some(ds) = ds {
                a.decoder_json = serde_json::to_string(&ds.decoder()).or_fail(JobFailure::Input)?;
                samples = tokio::task::spawn_blocking(move || {
                    pair.iter()
                        .map(|&i| ds.encoded(i as usize).map(|data| proto::Sample { position: i, data }))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
                .or_fail(JobFailure::Input)?
                .or_fail(JobFailure::Input)?;
            }
            Ok(Work::Analysis { assignment: a, samples })
        }
    };
    let mut on_part = |part: ResultPart| {
        sink.put(&part)?;
        done += part.count;
        ctx.queue().set_progress(id, done);
        Ok(())
    };
    if !run_tasks(ctx, id, results, TaskBoard::new(tasks), make, &mut on_part).await? {
        return Ok(JobEnd::Cancelled);
    }
    let seconds = started.elapsed().as_secs_f64();
    let dir = job_dir(id);
    let mut outputs = write_images_grid(ctx.store(), &dir, &sink, cols, count as usize, false).await.or_fail(JobFailure::Outputs)?;
    let json_key = format!("{dir}/job.json");
    outputs.push(ctx.store().location(&json_key));
    let record = JobRecord {
        job_id: id,
        kind: "analysis",
        spec: &JobSpec::Analysis(spec.clone()),
        weights_step,
        image_size: res,
        images_by_worker: &sink.by_worker,
        seconds,
        images_per_s: count as f64 / seconds.max(1e-9),
        metrics: None,
        outputs: &outputs,
    };
    record.write(ctx.store(), &json_key).await.or_fail(JobFailure::Outputs)?;
    Ok(JobEnd::Done { outputs, metrics: String::new() })
}
