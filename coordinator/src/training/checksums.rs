//! Replica checksums against the coordinator's: every `checksum_every`
//! steps (and after the last) each replica reports a hash of its
//! parameters; one that differs from the coordinator's copy is counted and
//! sent the coordinator's state. With the shadow off there is no copy of
//! that step: the replicas are compared among themselves, and one that
//! differs from a strict majority is counted and resynced.

use std::collections::{BTreeMap, BTreeSet};

use crate::roster::Roster;

/// Checksums of steps this run still compares, kept for 1000 steps.
const KEEP_STEPS: u64 = 1000;

#[derive(Default)]
pub struct ChecksumBook {
    /// The coordinator's checksum by step.
    expected: BTreeMap<u64, u64>,
    /// Steps whose replicas are compared among themselves.
    agreement: BTreeSet<u64>,
    mismatches: u64,
    compared: u64,
}

/// Whether step `step` asks the replicas for their checksum: the last step,
/// and every `every`-th (0: only the last).
pub fn due(step: u64, total: u64, every: u64) -> bool {
    step == total || (every > 0 && step.is_multiple_of(every))
}

impl ChecksumBook {
    /// The coordinator's checksum after `step`.
    pub fn expect(&mut self, step: u64, checksum: u64) {
        self.expected.insert(step, checksum);
    }

    /// Step `step`'s replicas are compared among themselves.
    pub fn expect_agreement(&mut self, step: u64) {
        self.agreement.insert(step);
    }

    /// Compares the replicas of the steps up to `upto` that are compared
    /// among themselves (every member of a step reports its checksum of
    /// the step before when it asks for work, so `upto` is the step before
    /// the one just done, or the last one once its members are idle).
    /// Returns the mismatches found.
    pub fn verify_agreement(&mut self, roster: &Roster, upto: u64) -> u64 {
        let steps: BTreeSet<u64> = self.agreement.iter().copied().filter(|&s| s <= upto).collect();
        if steps.is_empty() {
            return 0;
        }
        self.agreement.retain(|s| *s > upto);
        let mut by_step: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
        for (id, s, c) in roster.take_checksums(|s| steps.contains(&s), upto) {
            by_step.entry(s).or_default().push((id, c));
        }
        let mut found = 0;
        for (s, reports) in by_step {
            let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
            for (_, c) in &reports {
                *counts.entry(*c).or_default() += 1;
            }
            self.compared += reports.len() as u64;
            let (&common, &n) = counts.iter().max_by_key(|(_, n)| **n).expect("a step with reports");
            let majority = 2 * n > reports.len();
            for &(id, c) in reports.iter().filter(|(_, c)| *c != common || !majority) {
                found += 1;
                if majority {
                    tracing::error!(worker = id, step = s, got = %format!("{c:016x}"), want = %format!("{common:016x}"),
                        "replica's parameters differ from the other replicas': resending the state");
                    roster.resync_if_idle(id, format!("parameter checksum mismatch at step {s}"));
                } else {
                    tracing::error!(worker = id, step = s, got = %format!("{c:016x}"), "replicas disagree and none has a majority");
                }
            }
        }
        self.mismatches += found;
        found
    }

    /// Compares what the members reported with the coordinator's; a
    /// mismatching replica is sent the coordinator's state. `step` is the
    /// step just done (its reports are kept for the summary). Returns the
    /// mismatches found now.
    pub fn verify(&mut self, roster: &Roster, step: u64) -> u64 {
        let mut found = 0;
        for (id, s, c) in roster.take_checksums(|s| self.expected.contains_key(&s), step) {
            let want = self.expected[&s];
            self.compared += 1;
            if c == want {
                tracing::debug!(worker = id, step = s, "replica checksum matches");
            } else {
                found += 1;
                tracing::error!(worker = id, step = s, got = %format!("{c:016x}"), want = %format!("{want:016x}"),
                    "replica's parameters differ from the coordinator's: resending the state");
                roster.resync_if_idle(id, format!("parameter checksum mismatch at step {s}"));
            }
        }
        self.expected.retain(|s, _| *s + KEEP_STEPS > step);
        self.mismatches += found;
        found + self.verify_agreement(roster, step.saturating_sub(1))
    }

    /// Replica checksums compared so far.
    pub fn compared(&self) -> u64 {
        self.compared
    }

    /// Mismatches found so far.
    pub fn mismatches(&self) -> u64 {
        self.mismatches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddpm::wire::WorkerRole;

    #[test]
    fn checksums_are_asked_for_every_n_steps_and_at_the_end() {
        let asked: Vec<u64> = (1..=25).filter(|&s| due(s, 25, 10)).collect();
        assert_eq!(asked, vec![10, 20, 25]);
        assert_eq!((1..=5).filter(|&s| due(s, 5, 0)).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn a_replica_that_differs_is_counted_and_resynced() {
        let roster = Roster::default();
        let good = roster.register("good".into(), "cpu".into(), WorkerRole::Train, String::new()).unwrap();
        let bad = roster.register("bad".into(), "cpu".into(), WorkerRole::Train, String::new()).unwrap();
        for id in [good, bad] {
            roster.mark_ready(id).unwrap();
        }
        let mut book = ChecksumBook::default();
        book.expect(10, 0xabc);
        roster.report_idle(good, 10, 0xabc).unwrap();
        roster.report_idle(bad, 10, 0xdef).unwrap();
        assert_eq!(book.verify(&roster, 10), 1);
        assert_eq!(book.mismatches(), 1);
        // The bad replica was sent the state: it is no longer idle.
        assert_eq!(roster.in_sync(10), vec![good]);
        // Read once: verifying again finds nothing new, the kept step's
        // reports stay for the summary.
        assert_eq!(book.verify(&roster, 10), 0);
        assert_eq!(roster.checksum(good, 10), Some(0xabc));
    }
}
