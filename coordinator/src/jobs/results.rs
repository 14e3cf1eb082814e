//! Task results on their way from a worker's SubmitResult to the job that
//! waits for them: each running job opens a channel here, the service
//! routes every result to its job.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

/// A worker's result for a job task: images and/or evaluation sums, each a
/// named part of the result (`ResultPart` in the proto).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResultPart {
    pub worker_id: u64,
    pub first: u64,
    pub count: u64,
    pub resolution: u32,
    /// The images, uint8 `[count, 3, R, R]` (None for dataset tasks).
    pub images: Option<Vec<u8>>,
    /// Binary sums of an evaluation task (`ddpm::eval` forms).
    pub features: Option<Vec<u8>>,
    pub scores: Option<Vec<u8>>,
    pub bpd: Option<Vec<u8>>,
    /// Set when the worker could not do the task (then the rest is empty).
    pub error: String,
}

impl ResultPart {
    /// An empty part for the task `header` describes.
    pub fn new(header: &ddpm::proto::ResultHeader) -> Self {
        Self { worker_id: header.worker_id, first: header.first, count: header.count, resolution: header.resolution, ..Default::default() }
    }
}

/// The results a job receives.
pub type Results = mpsc::UnboundedReceiver<ResultPart>;

/// Why a result could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotCollecting(pub u64);

#[derive(Default)]
pub struct ResultRouter {
    by_job: Mutex<HashMap<u64, mpsc::UnboundedSender<ResultPart>>>,
}

impl ResultRouter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<ResultPart>>> {
        self.by_job.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Job `job` starts collecting results.
    pub fn open(&self, job: u64) -> Results {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(job, tx);
        rx
    }

    /// Job `job` collects no more.
    pub fn close(&self, job: u64) {
        self.lock().remove(&job);
    }

    /// Whether job `job` collects results now.
    pub fn is_open(&self, job: u64) -> bool {
        self.lock().contains_key(&job)
    }

    /// Hands `part` to job `job`.
    pub fn deliver(&self, job: u64, part: ResultPart) -> Result<(), NotCollecting> {
        let sink = self.lock().get(&job).cloned().ok_or(NotCollecting(job))?;
        sink.send(part).map_err(|_| NotCollecting(job))
    }
}
