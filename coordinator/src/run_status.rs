//! The live numbers GetStatus, `/metrics` and the dashboard report: the
//! last step's record, the recent throughput, skipped steps, this start's
//! pace (for the time left), and where checkpointing stands (the complete
//! checkpoints in the store, the steps not in the newest, the last upload
//! error). The training loop records each step's [`StepMetrics`], the
//! uploader's events arrive through [`RunStatus::upload_event`]; readers
//! take a consistent copy.

use std::sync::Mutex;
use std::time::Instant;

use ddpm::checkpoint::UploadEvent;

use crate::step_record::{self, StepMetrics};

/// A copy of the live numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusInfo {
    pub step: u64,
    /// The step this start resumed from (0: a new run).
    pub resumed_from: u64,
    /// The last completed step's record (none yet in this start: `None`).
    pub last: Option<StepMetrics>,
    pub loss: f64,
    /// Over the current progress window.
    pub images_per_s: f64,
    pub skipped_steps: u64,
    /// Seconds from this start's first step to its latest.
    pub elapsed_s: f64,
    /// The step of the newest checkpoint in the store (0: none).
    pub last_checkpoint: u64,
    /// The complete checkpoints in the store, oldest first.
    pub checkpoints: Vec<u64>,
    /// The last failed upload's error, until a checkpoint is saved again.
    pub checkpoint_error: Option<String>,
}

impl StatusInfo {
    /// Steps done that a restart now would have to redo.
    pub fn unsaved_steps(&self) -> u64 {
        self.step.saturating_sub(self.last_checkpoint)
    }

    /// Seconds to step `total` at this start's pace (`None` before this
    /// start's first step).
    pub fn eta_s(&self, total: u64) -> Option<f64> {
        step_record::eta_s(self.elapsed_s, self.step.saturating_sub(self.resumed_from), total.saturating_sub(self.step))
    }
}

#[derive(Default)]
pub struct RunStatus {
    info: Mutex<StatusInfo>,
    /// When this start's first step began (its end minus its wall time).
    first_step: Mutex<Option<Instant>>,
}

impl RunStatus {
    /// A run that starts at step `start` (the resumed checkpoint's, or 0),
    /// with the complete checkpoints `checkpoints` in its store.
    pub fn starting_at(start: u64, checkpoints: Vec<u64>) -> Self {
        let last_checkpoint = checkpoints.last().copied().unwrap_or(0).max(start);
        Self {
            info: Mutex::new(StatusInfo { step: start, resumed_from: start, last_checkpoint, checkpoints, ..Default::default() }),
            first_step: Mutex::new(None),
        }
    }

    /// This start goes on from step `step` (the replicas' step, newer than
    /// the checkpoint it loaded), with `skipped` steps skipped up to it.
    pub fn resumed_at(&self, step: u64, skipped: u64) {
        let mut info = self.lock();
        (info.step, info.resumed_from, info.skipped_steps) = (step, step, skipped);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After step `m.step`: `skipped` steps skipped so far, `images_per_s`
    /// over the current progress window.
    pub fn record(&self, m: &StepMetrics, skipped: u64, images_per_s: f64) {
        let now = Instant::now();
        let first = *self
            .first_step
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| now.checked_sub(std::time::Duration::from_secs_f64(m.step_s.max(0.0))).unwrap_or(now));
        let mut info = self.lock();
        info.step = m.step;
        info.loss = m.loss;
        info.images_per_s = images_per_s;
        info.skipped_steps = skipped;
        info.elapsed_s = now.duration_since(first).as_secs_f64();
        info.last = Some(m.clone());
    }

    /// What the uploader reported.
    pub fn upload_event(&self, e: &UploadEvent) {
        let mut info = self.lock();
        match e {
            UploadEvent::Saved { step, pruned, .. } => {
                info.last_checkpoint = info.last_checkpoint.max(*step);
                info.checkpoint_error = None;
                info.checkpoints.retain(|s| s != step && !pruned.contains(s));
                info.checkpoints.push(*step);
                info.checkpoints.sort_unstable();
            }
            UploadEvent::Failed { step, error, .. } => {
                info.checkpoint_error = Some(format!("the checkpoint of step {step} was not saved: {error}"));
            }
            UploadEvent::Retrying { step, attempt, error, .. } => {
                info.checkpoint_error = Some(format!("the checkpoint of step {step} failed (attempt {attempt}, retrying): {error}"));
            }
            UploadEvent::Superseded { .. } => {}
        }
    }

    pub fn get(&self) -> StatusInfo {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsaved_steps_count_from_the_last_saved_checkpoint() {
        let s = RunStatus::starting_at(10, vec![5, 10]);
        assert_eq!(s.get().unsaved_steps(), 0);
        let m = |step| StepMetrics { step, ..StepMetrics::default() };
        s.record(&m(14), 0, 1.0);
        assert_eq!(s.get().unsaved_steps(), 4);
        s.upload_event(&UploadEvent::Failed { step: 12, attempts: 3, error: "no space".into() });
        assert_eq!(s.get().checkpoint_error.as_deref(), Some("the checkpoint of step 12 was not saved: no space"));
        s.upload_event(&UploadEvent::Saved {
            step: 14,
            reason: ddpm::checkpoint::Reason::Steps,
            bytes: 1,
            seconds: 0.1,
            attempts: 1,
            pruned: vec![5],
        });
        let info = s.get();
        assert_eq!((info.last_checkpoint, info.unsaved_steps(), info.checkpoint_error), (14, 0, None));
        assert_eq!(info.checkpoints, vec![10, 14]);
        assert_eq!(info.resumed_from, 10);
    }

    #[test]
    fn the_time_left_counts_this_starts_steps_only() {
        // Resumed at 1000 of 2000; 10 steps of this start took 20 s: 990 left at 2 s each.
        let info = StatusInfo { step: 1010, resumed_from: 1000, elapsed_s: 20.0, ..Default::default() };
        assert_eq!(info.eta_s(2000), Some(1980.0));
        let fresh = StatusInfo { step: 1000, resumed_from: 1000, ..Default::default() };
        assert_eq!(fresh.eta_s(2000), None);
    }
}
