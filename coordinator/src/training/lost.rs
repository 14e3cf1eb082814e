//! The two ways a run loses the state of its last steps, and what a
//! restart resumes from. Both end the run's start with these errors; the
//! coordinator then starts the run again itself, in the same process and
//! on the same address (`crate::restart`), or exits 1 when that start
//! got no further than the one before (a Kubernetes Job starts it again;
//! by hand, the same command):
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
    "{}: start ddpm-coord again on this run to resume from {}; \
     to lose no step when every worker dies at once, use --shadow on",
    self.what(),
    resume_point(*checkpoint, *step)
)]
pub struct StateLost {
    pub step: u64,
    /// The newest checkpoint's step (0: none yet).
    pub checkpoint: u64,
}

impl StateLost {
    fn what(&self) -> String {
        format!(
            "every worker holding the state of step {} is gone, and with [dist] shadow = \"off\" the coordinator keeps no copy of it",
            self.step
        )
    }
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
    "{}: start ddpm-coord again on this run to resume from it ({} steps are trained again)",
    self.what(),
    run_step.saturating_sub(*saved)
)]
pub struct ShadowLost {
    pub why: String,
    pub saved: u64,
    /// The run's step when it stopped.
    pub run_step: u64,
}

impl ShadowLost {
    fn what(&self) -> String {
        format!("{}; the coordinator's copy of the state holds step {} whole and saved it as a checkpoint", self.why, self.saved)
    }
}

/// What a start that lost the state of its last steps lost, for the log
/// of the start that follows it in the same process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// The run's step when it was lost.
    pub step: u64,
    /// What is gone, in words.
    pub what: String,
    /// What the next start resumes from (unless live replicas bring a
    /// later step), in words.
    pub resumes_from: String,
}

/// What `e` lost when it ended a start by losing the state of its last
/// steps ([`StateLost`], [`ShadowLost`]); `None` for any other error.
pub fn loss(e: &anyhow::Error) -> Option<Loss> {
    if let Some(l) = e.downcast_ref::<StateLost>() {
        return Some(Loss { step: l.step, what: l.what(), resumes_from: resume_point(l.checkpoint, l.step) });
    }
    e.downcast_ref::<ShadowLost>().map(|l| Loss { step: l.run_step, what: l.what(), resumes_from: resume_point(l.saved, l.run_step) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lost_state_tells_what_it_lost() {
        let step = |e: &anyhow::Error| loss(e).map(|l| l.step);
        let state: anyhow::Error = StateLost { step: 9, checkpoint: 4 }.into();
        let l = loss(&state).unwrap();
        assert_eq!((l.step, l.resumes_from.as_str()), (9, "the checkpoint of step 4 (5 steps are trained again)"));
        assert!(state.to_string().starts_with(&l.what) && l.what.contains("step 9 is gone"), "{state}");
        let shadow: anyhow::Error = ShadowLost { why: "feeders gone".into(), saved: 4, run_step: 7 }.into();
        assert_eq!(step(&shadow), Some(7));
        assert!(
            shadow.to_string().contains("holds step 4 whole") && shadow.to_string().contains("(3 steps are trained again)"),
            "{shadow}"
        );
        assert_eq!(step(&shadow.context("while training")), Some(7));
        assert_eq!(step(&anyhow::anyhow!("the store is full")), None);
        // A salvage that failed is not a lost state the run can go on from.
        let failed = anyhow::anyhow!("feeders gone").context("the coordinator's copy of the state could not be saved either");
        assert_eq!(step(&failed), None);
    }
}
