//! Uploads checkpoints in the background so that training never waits on
//! the store.
//!
//! One async task owns the uploads. [`Uploader::submit`] never blocks: it
//! puts the checkpoint in a single pending slot and returns. While one
//! checkpoint is being uploaded at most one more waits; a newer submission
//! replaces the waiting one (reported as [`UploadEvent::Superseded`]), since
//! only the newest state matters and each pending checkpoint holds four
//! copies of the parameters in memory. So at most two checkpoints are ever
//! held: the one in flight and the newest one waiting.
//!
//! A failed upload is retried with exponential backoff as long as the error
//! is transient (the store unreachable, 5xx), up to `attempts` times, and
//! abandoned early if a newer checkpoint is waiting. Then the failure is
//! reported and training goes on. After each successful upload the run is
//! pruned (keep the last K plus milestones). Outcomes arrive on the event
//! channel and in the logs; [`Uploader::flush`] waits for everything
//! submitted so far (at the end of a run and on SIGTERM).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};

use super::data::CheckpointData;
use super::encode::Encoded;
use super::error::CheckpointError;
use super::policy::Reason;
use super::sharded::ShardedCommit;
use super::{encode, ops, sharded};
use crate::config::CheckpointConfig;
use crate::store::RunStore;

/// Retries and retention of the uploader.
#[derive(Clone, Debug, PartialEq)]
pub struct UploaderConfig {
    /// Attempts per checkpoint (at least 1).
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Retention after each successful upload (see [`super::prune`]).
    pub keep_last: usize,
    pub milestone_every: u64,
}

impl UploaderConfig {
    pub fn from_config(c: &CheckpointConfig) -> Self {
        Self {
            attempts: c.upload_attempts.max(1),
            initial_backoff: Duration::from_secs_f64(c.retry_initial_s.max(0.001)),
            max_backoff: Duration::from_secs_f64(c.retry_max_s.max(c.retry_initial_s).max(0.001)),
            keep_last: c.keep_last.max(1),
            milestone_every: c.milestone_every,
        }
    }
}

/// What happened to a submitted checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum UploadEvent {
    /// Complete in the store (manifest written); `pruned` are the steps
    /// retention deleted afterwards.
    Saved { step: u64, reason: Reason, bytes: u64, seconds: f64, attempts: u32, pruned: Vec<u64> },
    /// An attempt failed; the next starts in `retry_in`.
    Retrying { step: u64, attempt: u32, error: String, retry_in: Duration },
    /// Given up: the checkpoint does not exist; the previous one stays the latest.
    Failed { step: u64, attempts: u32, error: String },
    /// Dropped in favour of the newer checkpoint of step `by` (waiting, or
    /// between retries).
    Superseded { step: u64, by: u64 },
}

struct Job {
    seq: u64,
    reason: Reason,
    payload: Payload,
}

/// What a job uploads.
enum Payload {
    /// The whole state, encoded and written here (the whole layout).
    Whole(Arc<CheckpointData>),
    /// Shards the replicas wrote: only their manifest and small files are
    /// written here (the sharded layout, `sharded.rs`).
    Sharded(Arc<ShardedCommit>),
}

impl Job {
    fn step(&self) -> u64 {
        match &self.payload {
            Payload::Whole(d) => d.step,
            Payload::Sharded(c) => c.step,
        }
    }
}

struct Shared {
    slot: Mutex<Option<Job>>,
    wake: Notify,
    closed: AtomicBool,
    next_seq: AtomicU64,
    /// The last Saved or Failed event.
    last: Mutex<Option<UploadEvent>>,
    events: mpsc::UnboundedSender<UploadEvent>,
}

impl Shared {
    fn emit(&self, e: UploadEvent) {
        match &e {
            UploadEvent::Saved { step, reason, bytes, seconds, attempts, pruned } => {
                tracing::info!(step, %reason, bytes, seconds, attempts, ?pruned, "checkpoint saved");
            }
            UploadEvent::Retrying { step, attempt, error, retry_in } => {
                tracing::warn!(step, attempt, retry_in_s = retry_in.as_secs_f64(), %error, "checkpoint upload failed; retrying");
            }
            UploadEvent::Failed { step, attempts, error } => {
                tracing::error!(step, attempts, %error, "checkpoint upload failed; training goes on without it");
            }
            UploadEvent::Superseded { step, by } => {
                tracing::warn!(step, by, "checkpoint dropped: a newer one replaced it before it was stored");
            }
        }
        if matches!(e, UploadEvent::Saved { .. } | UploadEvent::Failed { .. }) {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        }
        let _ = self.events.send(e);
    }

    fn pending_step(&self) -> Option<u64> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(Job::step)
    }
}

/// The background uploader of a run; see the module documentation.
pub struct Uploader {
    shared: Arc<Shared>,
    settled: watch::Receiver<u64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Uploader {
    /// Starts the upload task on the current tokio runtime; returns the
    /// uploader and the receiver of its events (dropping it is fine).
    pub fn start(store: RunStore, config: UploaderConfig) -> (Self, mpsc::UnboundedReceiver<UploadEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            slot: Mutex::new(None),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            next_seq: AtomicU64::new(1),
            last: Mutex::new(None),
            events,
        });
        let (settled_tx, settled) = watch::channel(0u64);
        let task = tokio::spawn(run(shared.clone(), store, config, settled_tx));
        (Self { shared, settled, task: Some(task) }, rx)
    }

    /// Queues `data` for upload and returns at once. Returns the step of a
    /// waiting checkpoint this one replaced, if any.
    pub fn submit(&self, data: CheckpointData, reason: Reason) -> Option<u64> {
        self.queue(Payload::Whole(Arc::new(data)), reason)
    }

    /// Queues the commit of a sharded checkpoint whose shards the replicas
    /// wrote (its manifest and small files), as [`Uploader::submit`] does.
    pub fn submit_sharded(&self, commit: ShardedCommit, reason: Reason) -> Option<u64> {
        self.queue(Payload::Sharded(Arc::new(commit)), reason)
    }

    fn queue(&self, payload: Payload, reason: Reason) -> Option<u64> {
        let seq = self.shared.next_seq.fetch_add(1, Ordering::SeqCst);
        let job = Job { seq, reason, payload };
        let step = job.step();
        let old = self.shared.slot.lock().unwrap_or_else(|p| p.into_inner()).replace(job);
        self.shared.wake.notify_one();
        let replaced = old.map(|j| j.step());
        if let Some(old_step) = replaced {
            self.shared.emit(UploadEvent::Superseded { step: old_step, by: step });
        }
        replaced
    }

    /// Waits until every checkpoint submitted so far is saved, failed or
    /// superseded; returns the last Saved or Failed event. Bound it with
    /// `tokio::time::timeout` where time is short (SIGTERM's grace period).
    pub async fn flush(&self) -> Option<UploadEvent> {
        let target = self.shared.next_seq.load(Ordering::SeqCst) - 1;
        let mut settled = self.settled.clone();
        // An error means the task is gone: nothing more will settle.
        let _ = settled.wait_for(|s| *s >= target).await;
        self.shared.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Flushes, then stops the task.
    pub async fn close(mut self) -> Option<UploadEvent> {
        let last = self.flush().await;
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        last
    }
}

impl Drop for Uploader {
    /// Stops the task after the upload in flight; a waiting checkpoint is
    /// abandoned (call [`Uploader::close`] to upload it first).
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

async fn run(shared: Arc<Shared>, store: RunStore, config: UploaderConfig, settled: watch::Sender<u64>) {
    loop {
        let job = loop {
            if shared.closed.load(Ordering::SeqCst) {
                return;
            }
            if let Some(job) = shared.slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                break job;
            }
            shared.wake.notified().await;
        };
        upload(&shared, &store, &config, &job).await;
        let _ = settled.send(job.seq);
    }
}

/// Waits `backoff` before the next attempt; a newer checkpoint or close()
/// cuts the wait short. A wake-up that finds neither (a permit an earlier
/// submit left, since the task takes its job from the slot without waiting)
/// does not: the wait goes on to its end. Re-arming the signal here instead
/// would leave a permit that ends every later wait at once, so that all of
/// a later checkpoint's attempts would fire within milliseconds.
async fn wait_backoff(shared: &Shared, backoff: Duration) {
    let deadline = tokio::time::Instant::now() + backoff;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = shared.wake.notified() => {
                if shared.pending_step().is_some() || shared.closed.load(Ordering::SeqCst) {
                    return;
                }
            }
        }
    }
}

fn retryable(e: &CheckpointError) -> bool {
    matches!(e, CheckpointError::Store(s) if s.is_transient())
}

/// The job's files ready to write: encoded (the whole layout, on a
/// blocking thread) or already shards in the store.
enum Ready {
    Whole(Encoded),
    Sharded(Arc<ShardedCommit>),
}

impl Ready {
    async fn prepare(payload: &Payload) -> Result<Self, String> {
        match payload {
            Payload::Sharded(c) => Ok(Ready::Sharded(c.clone())),
            Payload::Whole(data) => {
                let data = data.clone();
                match tokio::task::spawn_blocking(move || encode::encode(&data)).await {
                    Ok(Ok(enc)) => Ok(Ready::Whole(enc)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("encoding task failed: {e}")),
                }
            }
        }
    }

    /// One attempt at writing; the bytes written.
    async fn write(&self, store: &RunStore) -> Result<u64, CheckpointError> {
        match self {
            Ready::Whole(enc) => Ok(ops::write_encoded(store, enc).await?.bytes),
            Ready::Sharded(c) => sharded::commit(store, c).await,
        }
    }
}

async fn upload(shared: &Shared, store: &RunStore, config: &UploaderConfig, job: &Job) {
    let step = job.step();
    let start = Instant::now();
    let ready = match Ready::prepare(&job.payload).await {
        Ok(r) => r,
        Err(error) => return shared.emit(UploadEvent::Failed { step, attempts: 0, error }),
    };
    let mut backoff = config.initial_backoff;
    for attempt in 1..=config.attempts {
        let err = match ready.write(store).await {
            Ok(bytes) => {
                let pruned = match ops::prune(store, config.keep_last, config.milestone_every).await {
                    Ok(p) => p.deleted.into_iter().chain(p.torn_removed).collect(),
                    Err(e) => {
                        tracing::warn!(step, error = %e, "pruning old checkpoints failed; they stay");
                        Vec::new()
                    }
                };
                let seconds = start.elapsed().as_secs_f64();
                return shared.emit(UploadEvent::Saved { step, reason: job.reason, bytes, seconds, attempts: attempt, pruned });
            }
            Err(e) => e,
        };
        if attempt == config.attempts || !retryable(&err) {
            return shared.emit(UploadEvent::Failed { step, attempts: attempt, error: err.to_string() });
        }
        if let Some(by) = shared.pending_step() {
            return shared.emit(UploadEvent::Superseded { step, by });
        }
        shared.emit(UploadEvent::Retrying { step, attempt, error: err.to_string(), retry_in: backoff });
        wait_backoff(shared, backoff).await;
        if let Some(by) = shared.pending_step() {
            return shared.emit(UploadEvent::Superseded { step, by });
        }
        if shared.closed.load(Ordering::SeqCst) {
            let error = format!("the uploader was stopped while retrying; last error: {err}");
            return shared.emit(UploadEvent::Failed { step, attempts: attempt, error });
        }
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

#[cfg(test)]
#[path = "uploader_tests.rs"]
mod tests;
