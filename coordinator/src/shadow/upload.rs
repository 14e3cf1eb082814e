//! `[dist] shadow = "off"`: the shadow follows no step; the replicas are
//! the truth (they keep the EMA too), and the coordinator takes the whole
//! state from one of them when something reads it: a checkpoint, a
//! checksum, a job's weights, a joiner.
//!
//! Such a read is an entry in the shadow's queue like a step's update, but
//! filled by one replica's upload ([`Shadow::offer_state`]) instead of the
//! members' feed. It is either bound to a step (a checkpoint or a checksum
//! of that step) or takes whatever step the loop is at when a replica is
//! asked (a job's weights, a joiner's state). A replica idle at the run's
//! step is asked ([`Shadow::claim_upload`]): by the training loop before
//! it hands out the next step, and at other times (a pause, the end) by a
//! task beside it; a replica that leaves or sends something wrong is
//! forgotten and another is asked.
//!
//! This file holds what an upload is; the queue's methods that use it
//! are `Shadow`'s, in `shadow.rs` (they share its lock).

use crate::state::Uploaded;

/// The upload that fills a queue entry.
pub struct Upload {
    /// The replica asked for it, once one is.
    pub asked: Option<u64>,
    /// Whether the entry's step is fixed (else it is set when a replica is
    /// asked).
    pub bound: bool,
    /// Steps skipped up to the entry's step; `None` for a start going on
    /// from the replicas' step (nothing else knows it): the step less the
    /// updates applied, from the state itself.
    pub skipped: Option<u64>,
    pub state: Option<Box<Uploaded>>,
}

impl Upload {
    /// Not asked of any replica yet, and not arrived.
    pub fn waiting(&self) -> bool {
        self.asked.is_none() && self.state.is_none()
    }

    /// The state, and the steps skipped up to its step.
    pub fn into_state(self) -> (Box<Uploaded>, u64) {
        let state = self.state.expect("an entry is applied once its upload arrived");
        let skipped = self.skipped.unwrap_or(state.step.saturating_sub(state.adam_step));
        (state, skipped)
    }
}

/// Why an uploaded state was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("worker {worker} was not asked for the state of step {step}")]
    NotAsked { worker: u64, step: u64 },
}
