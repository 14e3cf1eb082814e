//! The straggler policy: a member that holds its step's assignment without
//! delivering, while every other member has delivered, is dropped well
//! before `dist.step_timeout_s`.
//!
//! Once the others are done, the stragglers get `straggler_factor` times
//! the time the others took (from the round's start to the last of them
//! delivering), but at least `straggler_min_s`. Past that they are dropped
//! and the step is redone by the others; a dropped worker that is merely
//! slow registers again and catches up from the coordinator's state. A
//! factor of 0 turns the policy off (only the step timeout applies).
//! Relative to the others, because a step's time depends on the model,
//! the batch and the devices; with a floor, because on a tiny step a
//! pause of a few hundred milliseconds (a page fault storm, a GC in a
//! neighbour) is no reason to drop anyone.

use std::time::Duration;

use tokio::time::Instant;

use ddpm::config::DistConfig;

use crate::round::Round;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StragglerPolicy {
    factor: f64,
    min: Duration,
}

impl StragglerPolicy {
    pub fn new(d: &DistConfig) -> Self {
        Self { factor: d.straggler_factor, min: Duration::from_secs_f64(d.straggler_min_s) }
    }

    /// How long stragglers get after the others delivered, the others
    /// having taken `others_took`; `None` when the policy is off.
    pub fn grace(&self, others_took: Duration) -> Option<Duration> {
        (self.factor > 0.0).then(|| others_took.mul_f64(self.factor).max(self.min))
    }

    /// Resolves with the members to drop once the policy's grace has run
    /// out for `round` (opened at `opened`); pending forever when the
    /// policy is off or nobody straggles. Polls: a step is milliseconds to
    /// minutes, and a tenth of a second is nothing against the grace.
    pub async fn expired(&self, round: &Round, opened: Instant) -> (Vec<u64>, String) {
        if self.factor <= 0.0 {
            return std::future::pending().await;
        }
        let mut others_done: Option<(Instant, Duration)> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if round.is_finished() {
                continue;
            }
            let stuck = round.stragglers();
            if stuck.is_empty() || stuck.len() == round.members.len() {
                others_done = None;
                continue;
            }
            let now = Instant::now();
            let (since, took) = *others_done.get_or_insert((now, now - opened));
            if self.grace(took).is_some_and(|grace| now - since >= grace) {
                let reason = format!(
                    "worker(s) {stuck:?} had not delivered {:.1} s after the others (who took {:.1} s; straggler policy: {}x, at least {:.0} s)",
                    (now - since).as_secs_f64(),
                    took.as_secs_f64(),
                    self.factor,
                    self.min.as_secs_f64()
                );
                return (stuck, reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddpm::config::GradDtype;
    use ddpm::proto;
    use tokio::sync::mpsc;

    fn header(worker_id: u64) -> proto::GradientHeader {
        proto::GradientHeader {
            worker_id,
            step: 1,
            elements: 2,
            dtype: proto::GradDtype::F32 as i32,
            loss: 1.0,
            samples: 1,
            ..Default::default()
        }
    }

    /// Under paused time: member 20 never delivers; member 10 delivers
    /// after 10 s; 20 is named 4 x 10 s later (above the 30 s floor),
    /// not at the step timeout.
    #[tokio::test(start_paused = true)]
    async fn a_member_holding_its_assignment_is_named_when_its_grace_runs_out() {
        let (round, _rx) = Round::new(1, 0, vec![10, 20], &[1, 1], 2, 2, GradDtype::F32, 0.0);
        let policy = StragglerPolicy::new(&DistConfig { straggler_factor: 4.0, straggler_min_s: 30.0, ..Default::default() });
        let opened = Instant::now();
        let expired = policy.expired(&round, opened);
        tokio::pin!(expired);
        tokio::select! {
            _ = &mut expired => panic!("nobody straggles while both are computing"),
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        let (out, _keep) = mpsc::channel(8);
        let a = round.join(&header(10), out).unwrap();
        round.offer(a, proto::GradientChunk { index: 0, data: ddpm::wire::encode(&[1.0, 2.0], GradDtype::F32) }).unwrap();
        let done = Instant::now();
        let (stuck, reason) = expired.await;
        assert_eq!(stuck, vec![20]);
        let waited = Instant::now() - done;
        // 4 x 10 s; the policy polls every 100 ms, so the others' time and
        // the end of the grace are each seen up to a poll late.
        assert!(waited >= Duration::from_secs(40) && waited < Duration::from_secs(41), "{waited:?}");
        assert!(reason.contains("worker(s) [20]") && reason.contains("4x"), "{reason}");
    }

    #[test]
    fn stragglers_get_a_multiple_of_the_others_time_with_a_floor() {
        let d = DistConfig { straggler_factor: 4.0, straggler_min_s: 30.0, ..Default::default() };
        let p = StragglerPolicy::new(&d);
        assert_eq!(p.grace(Duration::from_secs(1)), Some(Duration::from_secs(30)));
        assert_eq!(p.grace(Duration::from_secs(20)), Some(Duration::from_secs(80)));
        let off = StragglerPolicy::new(&DistConfig { straggler_factor: 0.0, ..d });
        assert_eq!(off.grace(Duration::from_secs(20)), None);
    }
}
