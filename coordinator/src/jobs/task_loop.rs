//! The loop of one phase of a job: hands its tasks (whole forward batches)
//! to the workers that may take them ([`JobContext::may_take_tasks`]) and
//! feeds their results back to the runner. A task of a worker that leaves
//! goes back to the board; a result for a task a worker does not hold is
//! ignored; a task that failed on its worker fails the job.

use std::future::Future;
use std::time::{Duration, Instant};

use super::context::JobContext;
use super::failure::JobFailure;
use super::queue::JobState;
use super::results::{ResultPart, Results};
use super::tasks::{Receipt, Task, TaskBoard};
use crate::work::Work;

/// Hands the tasks of `board` to workers that may take them (`make_work`
/// builds a task's work) and feeds every result to `on_part`, until all are
/// done. Returns false when the job was cancelled meanwhile.
pub async fn run_tasks<F, Fut>(
    ctx: &JobContext,
    id: u64,
    results: &mut Results,
    mut board: TaskBoard,
    make_work: F,
    on_part: &mut (dyn FnMut(ResultPart) -> Result<(), JobFailure> + Send),
) -> Result<bool, JobFailure>
where
    F: Fn(u64, u64) -> Fut,
    Fut: Future<Output = Result<Work, JobFailure>>,
{
    let mut last_wait_log = Instant::now();
    let urgent = ctx.queue().is_urgent(id);
    loop {
        if ctx.queue().state_of(id) == Some(JobState::Cancelled) {
            return Ok(false);
        }
        let roster_changed = ctx.roster().next_change();
        for (worker, task) in board.reclaim(|w| ctx.roster().contains(w)) {
            tracing::warn!(job = id, worker, first = task.0, "worker left during a task: reassigning it");
        }
        // An urgent job (the run waits for it) has the workers first.
        let idle =
            if urgent || !ctx.queue().urgent_running() { ctx.roster().idle_members(|role| ctx.may_take_tasks(role)) } else { Vec::new() };
        let free: Vec<u64> = board.free(&idle).collect();
        for worker in free {
            let Some(task) = board.next_task() else { break };
            let work = make_work(task.0, task.1).await?;
            if ctx.roster().send_if_idle(worker, work, |role| ctx.may_take_tasks(role)) {
                board.assigned(worker, task);
            } else {
                board.unassigned(task);
            }
        }
        if board.is_done() {
            return Ok(true);
        }
        if board.is_idle() && last_wait_log.elapsed() > Duration::from_secs(30) {
            tracing::info!(job = id, "waiting for a worker that can take job tasks (an eval worker, or the end of training)");
            last_wait_log = Instant::now();
        }
        let wait = Duration::from_millis(500);
        tokio::select! {
            part = results.recv() => {
                let Some(part) = part else { return Err(JobFailure::ResultsClosed) };
                let task: Task = (part.first, part.count);
                if board.receive(part.worker_id, task) == Receipt::Stray {
                    tracing::warn!(job = id, worker = part.worker_id, first = part.first, "ignoring a result for a task the worker does not hold");
                    continue;
                }
                if !part.error.is_empty() {
                    let (worker, first, end) = (part.worker_id, part.first, part.first + part.count);
                    return Err(JobFailure::Task { worker, first, end, reason: part.error });
                }
                on_part(part)?;
            }
            _ = roster_changed => {}
            _ = ctx.queue().changed_within(wait) => {}
            _ = ctx.lifecycle().changed_within(wait) => {}
        }
    }
}
