//! The live numbers GetStatus reports: the last step's loss and step, the
//! recent throughput, skipped steps. The training loop records each step's
//! [`StepMetrics`]; the service reads a copy.

use std::sync::Mutex;

use crate::training::StepMetrics;

/// A copy of the live numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusInfo {
    pub step: u64,
    pub loss: f64,
    pub images_per_s: f64,
    pub skipped_steps: u64,
}

#[derive(Default)]
pub struct RunStatus {
    info: Mutex<StatusInfo>,
}

impl RunStatus {
    /// After step `m.step`: `skipped` steps skipped so far, `images_per_s`
    /// over the current progress window.
    pub fn record(&self, m: &StepMetrics, skipped: u64, images_per_s: f64) {
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        *info = StatusInfo { step: m.step, loss: m.loss, images_per_s, skipped_steps: skipped };
    }

    pub fn get(&self) -> StatusInfo {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
