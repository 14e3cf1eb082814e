//! Weights that running jobs pinned when they started, by job id, for the
//! workers' FetchState (STATE_KIND_JOB). A job's weights are a copy, so
//! training goes on and nothing a job does touches the training state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One job's weights and the step they are of.
#[derive(Clone)]
pub struct Pinned {
    pub step: u64,
    pub weights: Arc<Vec<f32>>,
}

#[derive(Default)]
pub struct PinnedWeights {
    by_job: Mutex<HashMap<u64, Pinned>>,
}

impl PinnedWeights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pinned>> {
        self.by_job.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pin(&self, job: u64, pinned: Pinned) {
        self.lock().insert(job, pinned);
    }

    pub fn unpin(&self, job: u64) {
        self.lock().remove(&job);
    }

    /// Job `job`'s weights, while it runs.
    pub fn get(&self, job: u64) -> Option<Pinned> {
        self.lock().get(&job).cloned()
    }
}
