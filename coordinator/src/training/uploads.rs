//! `[dist] shadow = "off"`: when the shadow wants the state (a checkpoint,
//! a checksum, a job's weights, a joiner), a replica that is idle at the
//! run's last committed step is asked to upload it (`shadow/upload.rs`
//! keeps what is wanted and from whom). A replica that leaves before its
//! upload arrived is forgotten and another is asked.

use std::convert::Infallible;
use std::time::Duration;

use ddpm::wire::WorkerRole;

use super::trainer::Trainer;
use crate::work::Work;

impl Trainer {
    /// Serves the shadow's wants for as long as the run trains and ends;
    /// never returns (with the shadow on, there is nothing to serve).
    pub(super) async fn serve_uploads(&self) -> Infallible {
        if !self.shadow.is_off() {
            return std::future::pending().await;
        }
        loop {
            let change = self.roster.next_change();
            // Idle at the committed step: between steps, or not in the one running.
            let step = self.shadow.steps().1;
            self.ask_for_upload(step, &self.roster.in_sync(step));
            let _ = tokio::time::timeout(Duration::from_millis(100), change).await;
        }
    }

    /// Asks the first of `idle` (replicas idle at `step`) for the state the
    /// shadow wants, if it wants one; the loop calls it before it hands out
    /// step `step + 1`, so that a checkpoint of `step` is of that step.
    pub(super) fn ask_for_upload(&self, step: u64, idle: &[u64]) {
        // With the shadow on, only a start going on from its replicas' step
        // wants an upload (adopt.rs); the queue says when none is wanted.
        // An upload owed by a replica that left will not come: ask another.
        for id in self.shadow.uploads_owed() {
            if !self.roster.contains(id) {
                self.shadow.upload_failed(id);
            }
        }
        let Some(&id) = idle.first() else { return };
        {
            if let Some(wanted) = self.shadow.claim_upload(step, id) {
                // Only while it is idle still: after its next step's
                // assignment it could no longer send this step's state.
                if self.roster.send_if_idle(id, Work::UploadState(wanted), |role| role == WorkerRole::Train) {
                    tracing::info!(worker = id, step = wanted, "asking worker {id} for the state of step {wanted}");
                } else {
                    self.shadow.upload_failed(id);
                }
            }
        }
    }
}
