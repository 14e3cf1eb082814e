//! Sample jobs, and the end-of-training grid (a sample job whose only
//! output is the run's `samples/step_N.png`).

use std::time::Instant;

use crate::jobs::context::JobContext;
use crate::jobs::failure::{JobFailure, Stage};
use crate::jobs::outputs::{grid_png, job_dir, square_cols, write_images, JobRecord, GRID_IMAGES};
use crate::jobs::queue::JobEnd;
use crate::jobs::results::{ResultPart, Results};
use crate::jobs::sink::ImageSink;
use crate::jobs::spec::{GridJobSpec, JobSpec};
use crate::jobs::spec_sample::SampleJobSpec;
use crate::jobs::task_loop::run_tasks;
use crate::jobs::tasks::{ranges, TaskBoard};
use crate::work::Work;

/// Draws the job's images on the workers; None when it was cancelled.
/// The first `keep` images stay in memory too.
async fn draw(
    ctx: &JobContext,
    id: u64,
    spec: &SampleJobSpec,
    results: &mut Results,
    keep: usize,
) -> Result<Option<(u64, ImageSink)>, JobFailure> {
    let weights_step = ctx.pin(id, spec).await.or_fail(JobFailure::Weights)?;
    let mut sink = ImageSink::new(spec.count, ctx.resolution(), keep)?;
    let mut done = 0u64;
    let make = |first, count| async move { Ok(Work::Sample(spec.assignment(id, weights_step, first, count))) };
    let mut on_part = |part: ResultPart| {
        sink.put(&part)?;
        done += part.count;
        ctx.queue().set_progress(id, done);
        Ok(())
    };
    let board = TaskBoard::new(ranges(spec.count, spec.batch as u64));
    if !run_tasks(ctx, id, results, board, make, &mut on_part).await? {
        return Ok(None);
    }
    Ok(Some((weights_step, sink)))
}

pub async fn run_sample(
    ctx: &JobContext,
    id: u64,
    spec: &SampleJobSpec,
    results: &mut Results,
    started: Instant,
) -> Result<JobEnd, JobFailure> {
    let Some((weights_step, sink)) = draw(ctx, id, spec, results, GRID_IMAGES).await? else {
        return Ok(JobEnd::Cancelled);
    };
    let seconds = started.elapsed().as_secs_f64();
    let res = ctx.resolution();
    let dir = job_dir(id);
    let mut outputs = write_images(ctx.store(), &dir, &sink, spec.individual_pngs).await.or_fail(JobFailure::Outputs)?;
    let json_key = format!("{dir}/job.json");
    outputs.push(ctx.store().location(&json_key));
    let record = JobRecord {
        job_id: id,
        kind: "sample",
        spec: &JobSpec::Sample(spec.clone()),
        weights_step,
        image_size: res,
        images_by_worker: &sink.by_worker,
        seconds,
        images_per_s: spec.count as f64 / seconds.max(1e-9),
        metrics: None,
        outputs: &outputs,
    };
    record.write(ctx.store(), &json_key).await.or_fail(JobFailure::Outputs)?;
    Ok(JobEnd::Done { outputs, metrics: String::new() })
}

pub async fn run_grid(ctx: &JobContext, id: u64, spec: &GridJobSpec, results: &mut Results) -> Result<JobEnd, JobFailure> {
    let s = &spec.sample;
    tracing::info!(images = s.count, sampler = %s.sampler, "drawing the sample grid from the EMA weights");
    let count = s.count as usize;
    let Some((_, sink)) = draw(ctx, id, s, results, count).await? else {
        return Ok(JobEnd::Cancelled);
    };
    let png = grid_png(sink.head(), ctx.resolution(), square_cols(count), count).or_fail(JobFailure::Outputs)?;
    let key = spec.key();
    ctx.store().put(&key, png.into()).await.or_fail(JobFailure::Outputs)?;
    let location = ctx.store().location(&key);
    tracing::info!(grid = %location, "sample grid written");
    Ok(JobEnd::Done { outputs: vec![location], metrics: String::new() })
}
