//! The coordinator's jobs: ids, states, progress and outcomes, and a watch
//! channel per job for `WatchJob`. The queue owns every job record; the
//! scheduler moves a job through its states with the methods here.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ddpm::proto;
use tokio::sync::watch;

use super::failure::JobFailure;
use super::spec::JobSpec;
use crate::changes::Changes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    /// The word of `JobStatus.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

struct Job {
    spec: JobSpec,
    /// Run before every job without it (the coordinator's own jobs that
    /// the run waits for).
    urgent: bool,
    state: JobState,
    done: u64,
    total: u64,
    error: String,
    outputs: Vec<String>,
    weights_step: u64,
    metrics_json: String,
    submitted: Instant,
    updates: watch::Sender<proto::JobStatus>,
}

impl Job {
    fn status(&self, id: u64) -> proto::JobStatus {
        proto::JobStatus {
            job_id: id,
            kind: self.spec.kind().into(),
            state: self.state.as_str().into(),
            done: self.done,
            total: self.total,
            error: self.error.clone(),
            outputs: self.outputs.clone(),
            weights_step: self.weights_step,
            spec_json: serde_json::to_string(&self.spec).unwrap_or_default(),
            age_s: self.submitted.elapsed().as_secs_f64(),
            metrics_json: self.metrics_json.clone(),
        }
    }

    fn publish(&self, id: u64) {
        self.updates.send_replace(self.status(id));
    }
}

struct Jobs {
    by_id: BTreeMap<u64, Job>,
    /// The last id handed out (the end-of-training grid and periodic
    /// evaluations take ids too).
    last_id: u64,
}

/// How a running job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEnd {
    /// Where the outputs are, and the metrics as JSON (evaluation jobs).
    Done {
        outputs: Vec<String>,
        metrics: String,
    },
    Failed(JobFailure),
    /// Cancelled meanwhile (the state is already set).
    Cancelled,
}

pub struct JobQueue {
    jobs: Mutex<Jobs>,
    /// Raised when a job is submitted, cancelled or ends.
    wake: Changes,
    /// Users' jobs queued or running at most ([`JobQueue::try_submit`]).
    limit: usize,
}

impl Default for JobQueue {
    fn default() -> Self {
        Self { jobs: Mutex::new(Jobs { by_id: BTreeMap::new(), last_id: 0 }), wake: Changes::default(), limit: usize::MAX }
    }
}

impl JobQueue {
    /// A queue whose first job gets id `last_id + 1`.
    pub fn numbered_after(last_id: u64) -> Self {
        let q = Self::default();
        q.lock().last_id = last_id;
        q
    }

    /// This queue, admitting at most `limit` unfinished jobs from users.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Job)) {
        if let Some(job) = self.lock().by_id.get_mut(&id) {
            f(job);
            job.publish(id);
        }
    }

    fn insert(&self, spec: JobSpec, urgent: bool) -> proto::JobStatus {
        let (updates, _) = watch::channel(proto::JobStatus::default());
        let job = Job {
            total: spec.initial_total(),
            spec,
            urgent,
            state: JobState::Queued,
            done: 0,
            error: String::new(),
            outputs: Vec::new(),
            weights_step: 0,
            metrics_json: String::new(),
            submitted: Instant::now(),
            updates,
        };
        let status = {
            let mut jobs = self.lock();
            jobs.last_id += 1;
            let id = jobs.last_id;
            let status = job.status(id);
            job.publish(id);
            jobs.by_id.insert(id, job);
            status
        };
        self.wake.notify();
        status
    }

    /// Queues a validated job of the coordinator's own (periodic
    /// evaluations: never refused); returns its first status (with its id).
    pub fn submit(&self, spec: JobSpec) -> proto::JobStatus {
        self.insert(spec, false)
    }

    /// Queues a user's validated job, unless the cap of unfinished jobs is
    /// reached (`Err(cap)`).
    pub fn try_submit(&self, spec: JobSpec) -> Result<proto::JobStatus, usize> {
        let unfinished = self.lock().by_id.values().filter(|j| !j.state.is_final()).count();
        if unfinished >= self.limit {
            return Err(self.limit);
        }
        Ok(self.insert(spec, false))
    }

    /// Queues a job of the coordinator's own that runs before every other
    /// queued job (the run waits for it).
    pub fn submit_urgent(&self, spec: JobSpec) -> proto::JobStatus {
        self.insert(spec, true)
    }

    fn first_queued(&self, urgent: bool) -> Option<(u64, JobSpec)> {
        let jobs = self.lock();
        let mut queued = jobs.by_id.iter().filter(|(_, j)| j.state == JobState::Queued && j.urgent == urgent);
        queued.next().map(|(id, j)| (*id, j.spec.clone()))
    }

    /// The oldest queued job of the coordinator's own that the run waits for.
    pub fn next_queued_urgent(&self) -> Option<(u64, JobSpec)> {
        self.first_queued(true)
    }

    /// The oldest other queued job.
    pub fn next_queued(&self) -> Option<(u64, JobSpec)> {
        self.first_queued(false)
    }

    pub fn is_urgent(&self, id: u64) -> bool {
        self.lock().by_id.get(&id).is_some_and(|j| j.urgent)
    }

    /// Whether an urgent job is running (the others then wait for workers).
    pub fn urgent_running(&self) -> bool {
        self.lock().by_id.values().any(|j| j.urgent && j.state == JobState::Running)
    }

    pub fn start(&self, id: u64) {
        self.update(id, |j| j.state = JobState::Running);
    }

    pub fn set_progress(&self, id: u64, done: u64) {
        self.update(id, |j| j.done = done);
    }

    pub fn set_total(&self, id: u64, total: u64) {
        self.update(id, |j| j.total = total);
    }

    pub fn set_weights_step(&self, id: u64, step: u64) {
        self.update(id, |j| j.weights_step = step);
    }

    /// Records how running job `id` ended.
    pub fn finish(&self, id: u64, end: JobEnd) {
        self.update(id, |j| match end {
            JobEnd::Done { outputs, metrics } => {
                j.state = JobState::Done;
                j.outputs = outputs;
                j.metrics_json = metrics;
            }
            JobEnd::Failed(failure) => {
                j.state = JobState::Failed;
                j.error = failure.to_string();
            }
            JobEnd::Cancelled => {}
        });
        self.wake.notify();
    }

    /// Cancels job `id` unless it has ended; its status after, if it exists.
    pub fn cancel(&self, id: u64, reason: &str) -> Option<proto::JobStatus> {
        let status = {
            let mut jobs = self.lock();
            let job = jobs.by_id.get_mut(&id)?;
            if !job.state.is_final() {
                job.state = JobState::Cancelled;
                job.error = reason.into();
                job.publish(id);
                tracing::info!(job = id, "job cancelled: {reason}");
            }
            job.status(id)
        };
        self.wake.notify();
        Some(status)
    }

    pub fn state_of(&self, id: u64) -> Option<JobState> {
        self.lock().by_id.get(&id).map(|j| j.state)
    }

    /// Whether job `id` has ended (or does not exist).
    pub fn ended(&self, id: u64) -> bool {
        self.state_of(id).is_none_or(JobState::is_final)
    }

    /// Whether every submitted job has ended.
    pub fn all_final(&self) -> bool {
        self.lock().by_id.values().all(|j| j.state.is_final())
    }

    /// The status of job `id`, if it exists.
    pub fn status(&self, id: u64) -> Option<proto::JobStatus> {
        self.lock().by_id.get(&id).map(|j| j.status(id))
    }

    /// Every job's status, oldest first.
    pub fn list(&self) -> Vec<proto::JobStatus> {
        self.lock().by_id.iter().map(|(id, j)| j.status(*id)).collect()
    }

    /// Job `id`'s status updates, if it exists.
    pub fn subscribe(&self, id: u64) -> Option<watch::Receiver<proto::JobStatus>> {
        self.lock().by_id.get(&id).map(|j| j.updates.subscribe())
    }

    /// Waits until a job is submitted, cancelled or ends, or `timeout`.
    pub async fn changed_within(&self, timeout: Duration) {
        self.wake.within(timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::spec_sample::SampleJobSpec;

    fn spec(count: u64) -> JobSpec {
        JobSpec::Sample(SampleJobSpec::from_request(&proto::SampleJobRequest { count, ..Default::default() }, 10).unwrap())
    }

    #[test]
    fn ids_count_up_and_urgent_jobs_are_apart() {
        let q = JobQueue::default();
        let a = q.submit(spec(1)).job_id;
        let b = q.submit_urgent(spec(2)).job_id;
        assert_eq!((a, b), (1, 2));
        assert_eq!(q.next_queued_urgent().map(|(id, _)| id), Some(b));
        assert_eq!(q.next_queued().map(|(id, _)| id), Some(a));
        assert!(q.is_urgent(b) && !q.is_urgent(a));
        q.start(b);
        assert!(q.urgent_running());
        assert_eq!(q.next_queued_urgent(), None);
        q.finish(b, JobEnd::Done { outputs: vec!["x".into()], metrics: String::new() });
        assert_eq!(q.status(b).unwrap().state, "done");
        assert!(!q.urgent_running() && !q.all_final());
    }

    #[test]
    fn users_jobs_are_capped_while_unfinished_and_the_coordinators_are_not() {
        let q = JobQueue::default().with_limit(2);
        let a = q.try_submit(spec(1)).unwrap().job_id;
        q.try_submit(spec(1)).unwrap();
        assert_eq!(q.try_submit(spec(1)), Err(2));
        q.submit(spec(1));
        q.cancel(a, "by a client").unwrap();
        assert_eq!(q.try_submit(spec(1)), Err(2), "the coordinator's own job counts while it waits");
    }

    #[test]
    fn a_cancelled_job_stays_cancelled_and_finished_jobs_cannot_be_cancelled() {
        let q = JobQueue::default();
        let a = q.submit(spec(1)).job_id;
        q.start(a);
        let mut rx = q.subscribe(a).unwrap();
        assert_eq!(q.cancel(a, "by a client").unwrap().state, "cancelled");
        assert_eq!(rx.borrow_and_update().state, "cancelled");
        q.finish(a, JobEnd::Cancelled);
        assert_eq!(q.state_of(a), Some(JobState::Cancelled));
        let b = q.submit(spec(1)).job_id;
        q.start(b);
        q.finish(b, JobEnd::Failed(JobFailure::Metrics("boom".into())));
        assert_eq!(q.cancel(b, "late").unwrap().state, "failed");
        assert!(q.all_final() && q.ended(99));
        assert_eq!(q.list().len(), 2);
    }
}
