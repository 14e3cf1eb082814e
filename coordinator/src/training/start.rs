//! When step 1 (or the first step after a resume) starts: with all
//! `--workers` once they are there, or with at least `--min-workers` once
//! no other worker has joined for `--start-grace`, so that a run on a
//! cluster starts with the pods it got instead of waiting for the last one
//! forever. With fewer than `--min-workers` by `--start-timeout` the start
//! fails with [`StartTimeout`] (exit code 3). After the start, steps go on
//! with whoever is there (see `members`): the global batch stays the same,
//! so the result does not depend on how many workers share it.

use std::time::{Duration, Instant};

use crate::lifecycle::Lifecycle;
use crate::roster::Roster;

/// A start policy the run could not start with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StartPolicyError {
    #[error("--min-workers must be at least 1")]
    NoMinimum,
    #[error("--min-workers {min} is more than --workers {workers}: the run could never start; give at most {workers}")]
    MinAboveWorkers { min: usize, workers: usize },
}

/// How many workers the run waits for at its start, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct StartPolicy {
    /// The world size: the run starts at once when this many are ready.
    pub workers: usize,
    /// The fewest the run starts with (after `grace` without a join).
    pub min_workers: usize,
    /// How long the count must stay put before the run starts with fewer
    /// than `workers` (a pod that is still pulling its image gets this long).
    pub grace: Duration,
    /// Give up when fewer than `min_workers` are ready after this long (none: never).
    pub timeout: Option<Duration>,
}

impl StartPolicy {
    /// Waits for exactly `workers`, forever (a run on one machine).
    pub fn exactly(workers: usize) -> Self {
        Self { workers, min_workers: workers, grace: Duration::ZERO, timeout: None }
    }

    /// Refuses a minimum that cannot be met or means nothing.
    pub fn check(&self) -> Result<(), StartPolicyError> {
        if self.min_workers == 0 {
            return Err(StartPolicyError::NoMinimum);
        }
        if self.min_workers > self.workers {
            return Err(StartPolicyError::MinAboveWorkers { min: self.min_workers, workers: self.workers });
        }
        Ok(())
    }

    /// What to do with `have` workers ready, the count unchanged for
    /// `quiet`, after `waited` in all.
    pub fn decide(&self, have: usize, quiet: Duration, waited: Duration) -> StartDecision {
        if have >= self.workers {
            return StartDecision::Go(have);
        }
        let enough = have >= self.min_workers;
        if enough && quiet >= self.grace {
            return StartDecision::Go(have);
        }
        match self.timeout {
            Some(t) if waited >= t && enough => StartDecision::Go(have),
            Some(t) if waited >= t => StartDecision::TimedOut,
            _ => StartDecision::Wait,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartDecision {
    /// Start with this many.
    Go(usize),
    Wait,
    TimedOut,
}

/// Fewer than `--min-workers` workers joined within `--start-timeout`.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "only {have} of the {need} workers needed (--min-workers) joined within {waited_s:.0} s (--start-timeout): \
     check that the workers run (on Kubernetes: kubectl get pods -l app.kubernetes.io/component=worker), \
     that they reach this coordinator's address and present the run's worker token; or lower --min-workers"
)]
pub struct StartTimeout {
    pub have: usize,
    pub need: usize,
    pub waited_s: f64,
}

/// Waits until the run may start at `step`; returns how many workers it
/// starts with, or `None` when a stop was requested meanwhile.
pub async fn await_start(roster: &Roster, lifecycle: &Lifecycle, step: u64, policy: &StartPolicy) -> Result<Option<usize>, StartTimeout> {
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut last_count = usize::MAX;
    let mut count_since = Instant::now();
    loop {
        let change = roster.next_change();
        // Joiners of a resumed run fetch its state first (as in
        // `members::gather`), unless the start may go on from the step the
        // replicas hold (training/adopt.rs decides once they are here).
        let have = if roster.takes_held() {
            roster.idle_trainers()
        } else {
            roster.resync_out_of_sync(step);
            roster.in_sync(step).len()
        };
        if have != last_count {
            last_count = have;
            count_since = Instant::now();
        }
        match policy.decide(have, count_since.elapsed(), started.elapsed()) {
            StartDecision::Go(n) => {
                if n < policy.workers {
                    tracing::warn!(
                        workers = n,
                        expected = policy.workers,
                        "starting with {n} of {} workers (none joined for {:.0} s); the others join when they come",
                        policy.workers,
                        count_since.elapsed().as_secs_f64()
                    );
                }
                return Ok(Some(n));
            }
            StartDecision::TimedOut => {
                return Err(StartTimeout { have, need: policy.min_workers, waited_s: started.elapsed().as_secs_f64() });
            }
            StartDecision::Wait => {
                if last_log.elapsed() > Duration::from_secs(10) {
                    tracing::info!(have, workers = policy.workers, min_workers = policy.min_workers, "waiting for workers");
                    last_log = Instant::now();
                }
            }
        }
        if lifecycle.stop_requested() {
            return Ok(None);
        }
        tokio::select! {
            _ = change => {}
            _ = lifecycle.changed_within(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(workers: usize, min: usize, grace: u64, timeout: Option<u64>) -> StartPolicy {
        StartPolicy { workers, min_workers: min, grace: Duration::from_secs(grace), timeout: timeout.map(Duration::from_secs) }
    }
    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn all_workers_start_at_once_and_fewer_only_after_the_grace() {
        let p = policy(8, 4, 30, None);
        assert_eq!(p.decide(8, S(0), S(0)), StartDecision::Go(8));
        assert_eq!(p.decide(5, S(29), S(100)), StartDecision::Wait);
        assert_eq!(p.decide(5, S(30), S(100)), StartDecision::Go(5));
        // Below the minimum, no grace helps.
        assert_eq!(p.decide(3, S(1000), S(1000)), StartDecision::Wait);
    }

    #[test]
    fn the_timeout_fails_only_below_the_minimum() {
        let p = policy(8, 4, 30, Some(600));
        assert_eq!(p.decide(3, S(10), S(600)), StartDecision::TimedOut);
        assert_eq!(p.decide(3, S(10), S(599)), StartDecision::Wait);
        // At the timeout with enough, the run starts even inside the grace.
        assert_eq!(p.decide(4, S(10), S(600)), StartDecision::Go(4));
    }

    #[test]
    fn exactly_waits_for_all_forever() {
        let p = StartPolicy::exactly(2);
        assert_eq!(p.decide(1, S(10_000), S(10_000)), StartDecision::Wait);
        assert_eq!(p.decide(2, S(0), S(0)), StartDecision::Go(2));
    }

    #[test]
    fn a_minimum_that_cannot_be_met_is_refused() {
        assert!(policy(4, 0, 0, None).check().unwrap_err().to_string().contains("at least 1"));
        assert!(policy(4, 5, 0, None).check().unwrap_err().to_string().contains("at most 4"));
        assert!(policy(4, 4, 0, None).check().is_ok());
    }

    #[test]
    fn the_timeout_says_what_to_check() {
        let e = StartTimeout { have: 1, need: 4, waited_s: 600.0 }.to_string();
        assert!(e.contains("only 1 of the 4") && e.contains("--start-timeout") && e.contains("worker token"), "{e}");
    }
}
