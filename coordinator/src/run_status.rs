//! The live numbers GetStatus reports: the last step's loss and step, the
//! recent throughput, skipped steps, and where checkpointing stands (the
//! last checkpoint in the store, the steps not in it, the last upload
//! error). The training loop records each step's [`StepMetrics`], the
//! uploader's events arrive through [`RunStatus::upload_event`]; the
//! service reads a copy.

use std::sync::Mutex;

use ddpm::checkpoint::UploadEvent;

use crate::training::StepMetrics;

/// A copy of the live numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusInfo {
    pub step: u64,
    pub loss: f64,
    pub images_per_s: f64,
    pub skipped_steps: u64,
    /// The step of the newest checkpoint in the store (0: none).
    pub last_checkpoint: u64,
    /// The last failed upload's error, until a checkpoint is saved again.
    pub checkpoint_error: Option<String>,
}

impl StatusInfo {
    /// Steps done that a restart now would have to redo.
    pub fn unsaved_steps(&self) -> u64 {
        self.step.saturating_sub(self.last_checkpoint)
    }
}

#[derive(Default)]
pub struct RunStatus {
    info: Mutex<StatusInfo>,
}

impl RunStatus {
    /// A run that starts at step `start` (the resumed checkpoint's, or 0).
    pub fn starting_at(start: u64) -> Self {
        Self { info: Mutex::new(StatusInfo { step: start, last_checkpoint: start, ..Default::default() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After step `m.step`: `skipped` steps skipped so far, `images_per_s`
    /// over the current progress window.
    pub fn record(&self, m: &StepMetrics, skipped: u64, images_per_s: f64) {
        let mut info = self.lock();
        info.step = m.step;
        info.loss = m.loss;
        info.images_per_s = images_per_s;
        info.skipped_steps = skipped;
    }

    /// What the uploader reported.
    pub fn upload_event(&self, e: &UploadEvent) {
        let mut info = self.lock();
        match e {
            UploadEvent::Saved { step, .. } => {
                info.last_checkpoint = info.last_checkpoint.max(*step);
                info.checkpoint_error = None;
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
        let s = RunStatus::starting_at(10);
        assert_eq!(s.get().unsaved_steps(), 0);
        let m = |step| StepMetrics { step, ..StepMetrics::default() };
        s.record(&m(14), 0, 1.0);
        assert_eq!(s.get().unsaved_steps(), 4);
        s.upload_event(&UploadEvent::Failed { step: 12, attempts: 3, error: "no space".into() });
        assert_eq!(s.get().checkpoint_error.as_deref(), Some("the checkpoint of step 12 was not saved: no space"));
        s.upload_event(&UploadEvent::Saved { step: 14, reason: ddpm::checkpoint::Reason::Steps, bytes: 1, seconds: 0.1, attempts: 1, pruned: vec![] });
        let info = s.get();
        assert_eq!((info.last_checkpoint, info.unsaved_steps(), info.checkpoint_error), (14, 0, None));
    }
}
