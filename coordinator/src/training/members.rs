//! Choosing each step's members. After the first step the world size is not
//! awaited again: whoever is ready, idle and in sync trains, but the loop
//! waits (up to the step timeout) for every live member of the previous
//! step and every joiner that is fetching the state, so that a step is not
//! started with fewer members than are about to be there. A joiner waiting
//! for its state from a peer is expected too: a replica idle at the step
//! the loop waits at sends it meanwhile (`training/uploads.rs`), so the
//! joiner trains the next step instead of loading a step the run has
//! left and fetching again.
//!
//! With the shadow off the replicas may be the only holders of the last
//! step's state: when every one of them is gone for the step timeout,
//! the wait ends with [`Gathered::StateLost`] (the run resumes from its
//! checkpoint on the next start, `lost.rs`) instead of waiting for nobody.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::lifecycle::Lifecycle;
use crate::peer_syncs::PeerSyncs;
use crate::roster::Roster;

/// What to do about the next step's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start the step with these members (rank order); `missing` were
    /// expected but did not come back in time.
    Go { members: Vec<u64>, missing: Vec<u64> },
    /// Wait: `have` of `need`, and who is still expected.
    Wait { have: usize, need: usize, missing: Vec<u64> },
}

/// How a wait for the next step's members ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gathered {
    /// These members (rank order) compute the next step.
    Members(Vec<u64>),
    /// A stop was requested while waiting.
    Stopped,
    /// Nobody holds the last step's state any more: no live member was in
    /// it or reported it, and the coordinator keeps no copy.
    StateLost,
}

/// The decision for members `in_sync` now, when `expected` (live members
/// of the previous step, and joiners fetching the state) should be there,
/// at least `min` are needed, and `timed_out` says the wait is over.
pub fn decide(in_sync: &[u64], expected: &BTreeSet<u64>, min: usize, timed_out: bool) -> Decision {
    let missing: Vec<u64> = expected.iter().filter(|id| !in_sync.contains(id)).copied().collect();
    if in_sync.len() >= min && (missing.is_empty() || timed_out) {
        Decision::Go { members: in_sync.to_vec(), missing }
    } else {
        Decision::Wait { have: in_sync.len(), need: min, missing }
    }
}

/// What a wait for step `step + 1`'s members expects.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// The last step done.
    pub step: u64,
    /// The members of the last step done (or those left to redo the next).
    pub previous: &'a BTreeSet<u64>,
    /// Members needed at least.
    pub min: usize,
    /// How long to wait for `previous` and the resyncing joiners.
    pub timeout: Duration,
    /// The coordinator has no copy of step `step`'s state: the wait ends
    /// when no replica of it is left.
    pub replicas_only: bool,
}

/// Waits until the members that can compute step `want.step + 1` are
/// known. Idle members that are out of sync are told to fetch the state
/// again (and are then expected, in `resyncing`).
pub async fn gather(
    roster: &Roster,
    lifecycle: &Lifecycle,
    joining: &PeerSyncs,
    want: Wanted<'_>,
    resyncing: &mut BTreeSet<u64>,
) -> Gathered {
    let Wanted { step, previous, min, timeout, replicas_only } = want;
    let started = Instant::now();
    let mut last_log = Instant::now();
    loop {
        let change = roster.next_change();
        resyncing.extend(roster.resync_out_of_sync(step));
        resyncing.extend(joining.joiners());
        *resyncing = roster.live(resyncing);
        let in_sync = roster.in_sync(step);
        for id in &in_sync {
            resyncing.remove(id);
        }
        let expected: BTreeSet<u64> = roster.live(previous).union(resyncing).copied().collect();
        match decide(&in_sync, &expected, min, started.elapsed() > timeout) {
            Decision::Go { members, missing } => {
                if !missing.is_empty() {
                    tracing::warn!(
                        step = step + 1,
                        ?missing,
                        "going on without members that did not come back within {:.1} s (they are resynced when they return)",
                        timeout.as_secs_f64()
                    );
                }
                return Gathered::Members(members);
            }
            Decision::Wait { have, need, missing } => {
                let timed_out = started.elapsed() > timeout;
                if replicas_only && timed_out && roster.live(previous).is_empty() && roster.at_step(step).is_empty() {
                    return Gathered::StateLost;
                }
                if last_log.elapsed() > Duration::from_secs(10) {
                    tracing::info!(have, need, ?missing, "waiting for workers");
                    last_log = Instant::now();
                }
            }
        }
        if lifecycle.stop_requested() {
            return Gathered::Stopped;
        }
        tokio::select! {
            _ = change => {}
            _ = lifecycle.changed_within(Duration::from_millis(500)) => {}
        }
    }
}

/// Waits (up to `timeout`) until `ids` are idle after `step`; returns those that are.
pub async fn wait_idle(roster: &Roster, ids: &BTreeSet<u64>, step: u64, timeout: Duration) -> Vec<u64> {
    let started = Instant::now();
    loop {
        let change = roster.next_change();
        let done = roster.idle_at(ids, step);
        if done.len() == roster.live(ids).len() || started.elapsed() > timeout {
            return done;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), change).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddpm::wire::WorkerRole;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn the_step_waits_for_the_world_size_then_for_the_previous_members() {
        assert_eq!(decide(&[1], &set(&[]), 2, false), Decision::Wait { have: 1, need: 2, missing: vec![] });
        assert_eq!(decide(&[1, 2], &set(&[]), 2, false), Decision::Go { members: vec![1, 2], missing: vec![] });
        // Member 2 of the last step is busy still: wait for it, until the timeout.
        assert_eq!(decide(&[1], &set(&[1, 2]), 1, false), Decision::Wait { have: 1, need: 1, missing: vec![2] });
        assert_eq!(decide(&[1], &set(&[1, 2]), 1, true), Decision::Go { members: vec![1], missing: vec![2] });
        // Never below the minimum, even after the timeout.
        assert!(matches!(decide(&[], &set(&[1]), 1, true), Decision::Wait { .. }));
    }

    /// Member a idle after step 5, member b just joined (at 0).
    fn a_at_5_and_a_joiner() -> (Roster, Lifecycle, u64, u64) {
        let roster = Roster::default();
        let a = roster.register("a".into(), "cpu".into(), WorkerRole::Train, String::new()).unwrap();
        let b = roster.register("b".into(), "cpu".into(), WorkerRole::Train, String::new()).unwrap();
        for id in [a, b] {
            roster.mark_ready(id).unwrap();
        }
        roster.report_idle(a, 5, 0).unwrap();
        roster.report_idle(b, 0, 0).unwrap();
        (roster, Lifecycle::default(), a, b)
    }

    #[tokio::test]
    async fn a_joiner_out_of_sync_is_resynced_and_awaited() {
        let (roster, lifecycle, a, b) = a_at_5_and_a_joiner();
        let mut resyncing = BTreeSet::new();
        // b is told to resync and expected: with a short timeout the step goes on with a alone.
        let got = gather(
            &roster,
            &lifecycle,
            &PeerSyncs::default(),
            Wanted { step: 5, previous: &set(&[a]), min: 1, timeout: Duration::from_millis(50), replicas_only: true },
            &mut resyncing,
        )
        .await;
        assert_eq!(got, Gathered::Members(vec![a]));
        assert_eq!(resyncing, set(&[b]));
        // b reads its order, and comes back in sync: it is in the next step.
        roster.delivered(b);
        roster.report_idle(b, 5, 0).unwrap();
        let got = gather(
            &roster,
            &lifecycle,
            &PeerSyncs::default(),
            Wanted { step: 5, previous: &set(&[a]), min: 1, timeout: Duration::from_secs(5), replicas_only: true },
            &mut resyncing,
        )
        .await;
        assert_eq!(got, Gathered::Members(vec![a, b]));
        assert!(resyncing.is_empty());
    }

    /// A joiner waiting for its state from a peer is expected before it
    /// holds the step: the step waits for it (until the timeout), and it
    /// is a member as soon as it is idle at the step.
    #[tokio::test]
    async fn a_joiner_waiting_for_a_peers_state_is_awaited() {
        let roster = Roster::default();
        let a = roster.register("a".into(), "cpu".into(), WorkerRole::Train, String::new()).unwrap();
        roster.mark_ready(a).unwrap();
        roster.report_idle(a, 5, 0).unwrap();
        let b = roster.register("b".into(), "cpu".into(), WorkerRole::Train, String::new()).unwrap();
        roster.mark_ready(b).unwrap();
        let (lifecycle, peers) = (Lifecycle::default(), PeerSyncs::default());
        let _waiting = peers.wait_for(b, "127.0.0.1:9".into());
        let none = set(&[]);
        let want = |timeout| Wanted { step: 5, previous: &none, min: 1, timeout, replicas_only: true };
        let mut resyncing = BTreeSet::new();
        let got = gather(&roster, &lifecycle, &peers, want(Duration::from_millis(50)), &mut resyncing).await;
        assert_eq!(got, Gathered::Members(vec![a]), "after the timeout, without it");
        assert_eq!(resyncing, set(&[b]), "still expected");
        // Within the timeout it loads step 5 (from a peer) and asks for work: it trains the next step.
        let gathering = gather(&roster, &lifecycle, &peers, want(Duration::from_secs(30)), &mut resyncing);
        let arrives = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            roster.report_idle(b, 5, 0).unwrap();
        };
        let (got, ()) = tokio::join!(gathering, arrives);
        assert_eq!(got, Gathered::Members(vec![a, b]));
    }

    #[tokio::test]
    async fn a_stop_request_ends_the_wait() {
        let roster = Roster::default();
        let lifecycle = Lifecycle::default();
        lifecycle.request_stop();
        let got = gather(
            &roster,
            &lifecycle,
            &PeerSyncs::default(),
            Wanted { step: 0, previous: &set(&[]), min: 1, timeout: Duration::from_secs(60), replicas_only: false },
            &mut BTreeSet::new(),
        )
        .await;
        assert_eq!(got, Gathered::Stopped);
    }

    #[tokio::test]
    async fn with_no_replica_of_the_step_left_the_state_is_lost_after_the_timeout() {
        // a held step 5 and left; b joined (at 0) and is told to resync.
        let (roster, lifecycle, a, _) = a_at_5_and_a_joiner();
        roster.remove(a);
        let wait = Duration::from_millis(50);
        let got = gather(
            &roster,
            &lifecycle,
            &PeerSyncs::default(),
            Wanted { step: 5, previous: &set(&[a]), min: 1, timeout: wait, replicas_only: true },
            &mut BTreeSet::new(),
        )
        .await;
        assert_eq!(got, Gathered::StateLost);
        // The same with the coordinator's copy of step 5: the joiner gets it.
        let (previous, mut resyncing, peers) = (set(&[a]), BTreeSet::new(), PeerSyncs::default());
        let gathering = gather(
            &roster,
            &lifecycle,
            &peers,
            Wanted { step: 5, previous: &previous, min: 1, timeout: wait, replicas_only: false },
            &mut resyncing,
        );
        let got = tokio::time::timeout(Duration::from_millis(300), gathering).await;
        assert!(got.is_err(), "with a copy, the loop waits for the joiner: {got:?}");
    }
}
