//! A start on a run whose workers outlived its last coordinator (killed
//! with -9): with a worker-to-worker backend the replicas keep the EMA
//! too, so they hold the whole state of the run's last committed step,
//! newer than the checkpoint this start loaded (with the shadow on as
//! well: the coordinator's copy died with it). Such workers keep their state when they join (ReadyReply's
//! `keep_state`) and report their step and parameter checksum; once the
//! start's workers are there, the step the most of them hold is chosen if
//! a strict majority of its holders agree by checksum. The shadow then
//! takes that step's state from one of them (an upload, as for a
//! checkpoint) and the run goes on from it: no step is trained twice.
//! Holders that disagree, and everyone at another step, are resynced to
//! it by the step loop. Without such a step the start goes on from the
//! checkpoint, as it always did.

use std::time::Duration;

use super::lost::StateLost;
use super::trainer::Trainer;

/// The step the start goes on from, and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub step: u64,
    /// Its holders with the majority's checksum.
    pub agreeing: Vec<u64>,
    /// Its holders with another checksum (or none reported).
    pub outvoted: Vec<u64>,
}

/// Of the members' reports `(id, step, checksum)`, the newest step after
/// `start` whose holders agree by a strict majority; `None` when there is
/// no newer step, or its holders do not agree.
pub fn choose(held: &[(u64, u64, u64)], start: u64) -> Option<Choice> {
    let step = held.iter().map(|h| h.1).max().filter(|&s| s > start)?;
    let holders: Vec<(u64, u64)> = held.iter().filter(|h| h.1 == step).map(|h| (h.0, h.2)).collect();
    let count = |c: u64| holders.iter().filter(|h| h.1 == c).count();
    let best = holders.iter().map(|h| h.1).filter(|&c| c != 0).max_by_key(|&c| (count(c), c))?;
    if 2 * count(best) <= holders.len() {
        return None;
    }
    let ids = |agree: bool| holders.iter().filter(|h| (h.1 == best) == agree).map(|h| h.0).collect();
    Some(Choice { step, agreeing: ids(true), outvoted: ids(false) })
}

impl Trainer {
    /// Goes on from the step the live replicas hold, if they hold a newer
    /// one than the state's and agree on it; returns once the shadow holds
    /// it (or at once when there is none). Fails with [`StateLost`] when
    /// every holder left before one of them sent it.
    pub(super) async fn adopt_replicas(&self) -> anyhow::Result<()> {
        let held = self.roster.close_held();
        let start = self.shadow.steps().1;
        let Some(choice) = choose(&held, start) else {
            let newer = held.iter().filter(|h| h.1 > start).count();
            if newer > 0 {
                tracing::warn!(?held, "workers hold steps after {start} but do not agree on one by checksum: going on from step {start}");
            }
            return Ok(());
        };
        let (step, n, of) = (choice.step, choice.agreeing.len(), choice.agreeing.len() + choice.outvoted.len());
        for &id in &choice.outvoted {
            self.roster.resync_if_idle(id, format!("its state of step {step} differs from the other replicas'"));
        }
        tracing::info!(
            step,
            agree = n,
            holders = of,
            "the live replicas hold step {step} ({n} of {of} agree by checksum): going on from it, not from step {start}"
        );
        self.shadow.adopt(step);
        // A replica idle at `step` is asked (the agreeing ones: the others
        // were resynced); with the shadow off the uploads task asks too.
        loop {
            let change = self.roster.next_change();
            if self.shadow.steps().0 == step || self.lifecycle.stop_requested() {
                break;
            }
            self.ask_for_upload(step, &self.roster.in_sync(step));
            if let Some(e) = self.shadow.broken() {
                anyhow::bail!("the state of step {step} from the replicas could not be loaded: {e}");
            }
            if self.roster.at_step(step).is_empty() && self.shadow.uploads_owed().is_empty() {
                return Err(StateLost { step, checkpoint: self.status.get().last_checkpoint }.into());
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), change).await;
        }
        self.status.resumed_at(step, self.shadow.committed_skipped());
        // The dashboard's curves keep the killed coordinator's rows up to
        // this step (the start's load kept them up to the checkpoint).
        let (history, store) = (self.history.clone(), self.store.clone());
        tokio::spawn(async move { history.load(&store, step).await });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_step_is_chosen_when_most_of_its_holders_agree() {
        // Two of three at step 9 agree; the third is outvoted, the one at 8 is not a holder.
        let held = [(1, 9, 0xa), (2, 9, 0xa), (3, 9, 0xb), (4, 8, 0xc)];
        assert_eq!(choose(&held, 6), Some(Choice { step: 9, agreeing: vec![1, 2], outvoted: vec![3] }));
        // One holder alone is a majority of its step.
        assert_eq!(choose(&[(5, 7, 0xd)], 6), Some(Choice { step: 7, agreeing: vec![5], outvoted: vec![] }));
    }

    #[test]
    fn no_newer_step_a_tie_or_no_checksum_keeps_the_checkpoint() {
        assert_eq!(choose(&[(1, 6, 0xa), (2, 6, 0xa)], 6), None, "not newer than the state");
        assert_eq!(choose(&[(1, 9, 0xa), (2, 9, 0xb)], 6), None, "a tie is no majority");
        assert_eq!(choose(&[(1, 9, 0)], 6), None, "no checksum reported");
        assert_eq!(choose(&[], 0), None);
    }
}
