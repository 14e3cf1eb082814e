//! The two ways a run loses the state of its last steps, and what a
//! restart resumes from. Both end the coordinator with exit code 1 (a
//! Kubernetes Job starts it again; by hand, the same command):
//!
//! - [`StateLost`]: with `[dist] shadow = "off"` the replicas hold the
//!   run's step, and every one of them is gone: the newest checkpoint.
//! - [`ShadowLost`]: with the shadow on, every member that could complete
//!   a committed step's update is gone, so the coordinator's copy stops at
//!   the step before; that step is saved as a checkpoint first, so a
//!   restart loses at most `shadow_lag` steps and the one in flight.

/// The run cannot go on: every replica of step `step` is gone and the
/// coordinator keeps no copy (`[dist] shadow = "off"`). Exit code 1:
/// starting the coordinator again resumes from the newest checkpoint.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "every worker holding the state of step {step} is gone, and with [dist] shadow = \"off\" the coordinator keeps no copy of it: \
     start ddpm-coord again on this run to resume from {}; \
     to lose no step when every worker dies at once, use --shadow on",
    resume_point(*checkpoint, *step)
)]
pub struct StateLost {
    pub step: u64,
    /// The newest checkpoint's step (0: none yet).
    pub checkpoint: u64,
}

pub(super) fn resume_point(checkpoint: u64, step: u64) -> String {
    match checkpoint {
        0 => format!("the start (no checkpoint yet; {step} steps are trained again)"),
        c => format!("the checkpoint of step {c} ({} steps are trained again)", step - c.min(step)),
    }
}

/// The coordinator's copy of the state broke at `broken` (`why`), and its
/// last whole step `saved` was saved as a checkpoint.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{why}; the coordinator's copy of the state holds step {saved} whole and saved it as a checkpoint: \
     start ddpm-coord again on this run to resume from it ({} steps are trained again)",
    run_step.saturating_sub(*saved)
)]
pub struct ShadowLost {
    pub why: String,
    pub saved: u64,
    /// The run's step when it stopped.
    pub run_step: u64,
}
