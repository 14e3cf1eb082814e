//! `[dist] shadow = "off"`: when the shadow wants the state (a checkpoint,
//! a checksum, a job's weights, a joiner), a replica that is idle at the
//! run's last committed step is asked to upload it (`shadow/upload.rs`
//! keeps what is wanted and from whom). A replica that leaves before its
//! upload arrived is forgotten and another is asked.
//!
//! The same moments hand out the joiners waiting for a state from a peer
//! (`peer_syncs.rs`, any shadow mode): a replica idle at the step is told
//! to send its state straight to the joiner.

use std::convert::Infallible;
use std::time::Duration;

use ddpm::wire::WorkerRole;

use super::trainer::Trainer;
use crate::work::Work;

impl Trainer {
    /// Serves the shadow's wants and the joiners' for as long as the run
    /// trains and ends; never returns.
    pub(super) async fn serve_uploads(&self) -> Infallible {
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
        if let Some(wanted) = self.shadow.claim_upload(step, id) {
            // Only while it is idle still: after its next step's
            // assignment it could no longer send this step's state.
            if self.roster.send_if_idle(id, Work::UploadState(wanted), |role| role == WorkerRole::Train) {
                tracing::info!(worker = id, step = wanted, "asking worker {id} for the state of step {wanted}");
            } else {
                self.shadow.upload_failed(id);
            }
        }
        self.send_to_joiners(step, idle);
    }

    /// Tells replicas of `idle` still idle at `step` to send their state
    /// to the joiners waiting for one (the one asked for an upload just
    /// now is no longer idle: another is, or the next step's boundary).
    fn send_to_joiners(&self, step: u64, idle: &[u64]) {
        if !self.peer_syncs.any() {
            return;
        }
        let handed = self.peer_syncs.hand_out(
            step,
            idle,
            |from| self.roster.checksum(from, step),
            |from, order| self.roster.send_if_idle(from, Work::SendState(order), |role| role == WorkerRole::Train),
        );
        for (joiner, from) in handed {
            tracing::info!(worker = from, joiner, step, "asking worker {from} to send the state of step {step} to worker {joiner}");
        }
    }
}
