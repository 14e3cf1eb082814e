//! The step's all-reduce in progress, if any: opened by the training loop,
//! joined by the members' ReduceGradients streams, and failed from here,
//! whoever notices the failure (a lost member, the step's deadline).

use std::sync::{Arc, Mutex};

use crate::round::{deliver, Round, RoundError, RoundFailure};

/// Holds the current round.
#[derive(Default)]
pub struct RoundSlot {
    current: Mutex<Option<Arc<Round>>>,
}

impl RoundSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Round>>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `round` the step's all-reduce.
    pub fn open(&self, round: Arc<Round>) {
        *self.lock() = Some(round);
    }

    /// No round is in progress any more.
    pub fn close(&self) {
        *self.lock() = None;
    }

    /// The round a member's gradient stream must join: the current one.
    pub fn join_target(&self, worker: u64, step: u64) -> Result<Arc<Round>, RoundError> {
        self.lock().clone().ok_or(RoundError::NoRound { worker, step })
    }

    /// Fails the current round because member `id` is gone, if it is one of
    /// its members; true if a round was failed.
    pub async fn fail_member(&self, id: u64, reason: String) -> bool {
        let round = self.lock().clone();
        match round {
            Some(round) if round.rank_of(id).is_some() => {
                fail(&round, RoundFailure::new(Some(id), reason)).await;
                true
            }
            _ => false,
        }
    }
}

/// Fails `round` and tells its members.
pub async fn fail(round: &Round, failure: RoundFailure) {
    deliver(round.fail(failure)).await;
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
            attempt: 0,
            elements: 2,
            dtype: proto::GradDtype::F32 as i32,
            loss: 1.0,
            samples: 1,
            compute_s: 0.0,
            chunk_norms: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_lost_member_fails_the_round_it_is_in_and_no_other() {
        let slot = RoundSlot::default();
        assert_eq!(slot.join_target(1, 1).err(), Some(RoundError::NoRound { worker: 1, step: 1 }));
        assert!(!slot.fail_member(1, "gone".into()).await, "no round: nothing to fail");
        let (round, done) = Round::new(1, 0, vec![1, 2], &[1, 1], 2, 2, GradDtype::F32, 1.0);
        let round = Arc::new(round);
        slot.open(round.clone());
        let (o1, mut r1) = mpsc::channel(4);
        let (o2, mut r2) = mpsc::channel(4);
        slot.join_target(1, 1).unwrap().join(&header(1), o1).unwrap();
        round.join(&header(2), o2).unwrap();
        assert!(!slot.fail_member(3, "not in it".into()).await);
        assert!(!round.is_finished());
        assert!(slot.fail_member(2, "worker 2 stopped answering".into()).await);
        let failure = done.await.unwrap().err().expect("the trainer hears the failure");
        assert_eq!(failure.culprit, Some(2));
        assert!(matches!(r1.recv().await.unwrap(), Err(RoundError::Abandoned { .. })));
        assert_eq!(r2.recv().await.unwrap(), Err(RoundError::Refused("worker 2 stopped answering".into())));
        slot.close();
        assert!(slot.join_target(1, 1).is_err());
    }
}
