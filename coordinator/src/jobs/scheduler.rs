//! Runs queued jobs, for the life of the coordinator: the urgent ones at
//! once, the others one after another, each through its runner
//! (`runners/`), which hands out its tasks through `task_loop.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::JobContext;
use super::queue::JobEnd;
use super::runners;
use super::spec::JobSpec;

/// Runs queued jobs until the task is aborted: the coordinator's urgent
/// jobs (the end-of-training grid) at once, the others one after another.
/// Aborting it aborts the jobs it runs.
pub async fn run(ctx: Arc<JobContext>) {
    let mut running = tokio::task::JoinSet::new();
    let mut normal: Option<tokio::task::AbortHandle> = None;
    loop {
        while let Some((id, spec)) = ctx.queue().next_queued_urgent() {
            ctx.queue().start(id);
            running.spawn(run_one(ctx.clone(), id, spec));
        }
        if normal.as_ref().is_none_or(|h| h.is_finished()) {
            if let Some((id, spec)) = ctx.queue().next_queued() {
                ctx.queue().start(id);
                normal = Some(running.spawn(run_one(ctx.clone(), id, spec)));
            }
        }
        while running.try_join_next().is_some() {}
        ctx.queue().changed_within(Duration::from_millis(500)).await;
    }
}

/// Runs job `id` to its end and records how it ended.
async fn run_one(ctx: Arc<JobContext>, id: u64, spec: JobSpec) {
    tracing::info!(job = id, kind = spec.kind(), spec = %serde_json::to_string(&spec).unwrap_or_default(), "job started");
    let started = Instant::now();
    let mut results = ctx.results().open(id);
    let result = runners::run(&ctx, id, &spec, &mut results, started).await;
    ctx.pinned().unpin(id);
    ctx.results().close(id);
    let end = result.unwrap_or_else(JobEnd::Failed);
    match &end {
        JobEnd::Done { metrics, .. } => {
            tracing::info!(job = id, seconds = started.elapsed().as_secs_f64(), metrics = %metrics, "job done")
        }
        JobEnd::Cancelled => tracing::info!(job = id, "job cancelled"),
        JobEnd::Failed(e) => tracing::error!(job = id, "job failed: {e}"),
    }
    ctx.queue().finish(id, end);
    ctx.roster().notify();
}
