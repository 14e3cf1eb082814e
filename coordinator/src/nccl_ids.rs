//! The NCCL backend's communicator epochs and the hand-out of their unique
//! ids: the training loop asks for the epoch of a step's members
//! ([`NcclIds::epoch_for`]), the epoch's rank 0 offers the id it made
//! ([`NcclIds::offer`], the NcclUniqueId rpc), every other member waits for
//! it ([`NcclIds::wait`]), and a failed attempt ends the epoch
//! ([`NcclIds::end`]) so that the survivors' next assignment names a new
//! one, whose rank 0 makes a fresh id.
//!
//! An epoch stays while the same members train and no attempt fails: a
//! communicator costs NCCL's bootstrap and the links' set-up, so workers
//! keep theirs from step to step. Only the current epoch is held: an id
//! of an older one names a communicator that no member will join.

use std::sync::Mutex;

use bytes::Bytes;
use ddpm::nccl::UniqueId;
use tokio::sync::watch;

/// Why an id was refused or never came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NcclIdError {
    #[error("an NCCL unique id is {want} bytes, got {got}")]
    WrongLength { got: usize, want: usize },
    #[error("NCCL epoch {got:#x} is not the current one{}: that communicator is gone; ask for the next work", current_note(.current))]
    StaleEpoch { got: u64, current: Option<u64> },
    #[error("worker {worker} is not a member of NCCL epoch {epoch:#x}")]
    NotMember { worker: u64, epoch: u64 },
    #[error("worker {worker} is rank {rank} of NCCL epoch {epoch:#x}: only rank 0 makes the unique id; the others send none and wait")]
    NotRankZero { worker: u64, rank: usize, epoch: u64 },
    #[error("rank 0 of NCCL epoch {epoch:#x} already gave another unique id")]
    AlreadyOffered { epoch: u64 },
    #[error("NCCL epoch {epoch:#x} ended before rank 0's unique id arrived (its attempt failed); ask for the next work")]
    Ended { epoch: u64 },
}

fn current_note(current: &Option<u64>) -> String {
    current.map(|c| format!(" ({c:#x})")).unwrap_or_default()
}

/// The current epoch: its members in rank order, and rank 0's id once given.
#[derive(Debug, Clone, PartialEq)]
struct Epoch {
    epoch: u64,
    members: Vec<u64>,
    id: Option<Bytes>,
}

/// The epochs of one run. Waiters watch the current epoch's state.
pub struct NcclIds {
    /// `None`: no epoch (none yet, or the last one ended).
    current: watch::Sender<Option<Epoch>>,
    /// Serialises the decisions (the watch's own lock is per call).
    decide: Mutex<()>,
}

impl Default for NcclIds {
    fn default() -> Self {
        Self { current: watch::Sender::new(None), decide: Mutex::new(()) }
    }
}

impl NcclIds {
    /// The epoch of a step with `members` (rank order): the current one
    /// when it has the same members, else a new one (random, so never one
    /// of an earlier life of this coordinator), which ends the old.
    pub fn epoch_for(&self, members: &[u64]) -> u64 {
        let _g = self.decide.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = self.current.borrow().as_ref().filter(|e| e.members == members) {
            return e.epoch;
        }
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the OS random source");
        let epoch = u64::from_le_bytes(bytes);
        self.current.send_replace(Some(Epoch { epoch, members: members.to_vec(), id: None }));
        epoch
    }

    /// Ends `epoch` (an attempt of it failed): members waiting for its id
    /// are told, and the next step's members get a new one.
    pub fn end(&self, epoch: u64) {
        let _g = self.decide.lock().unwrap_or_else(|p| p.into_inner());
        self.current.send_if_modified(|c| {
            let ends = c.as_ref().is_some_and(|e| e.epoch == epoch);
            if ends {
                *c = None;
            }
            ends
        });
    }

    /// Ends whatever epoch is current (the run stops): members waiting for
    /// an id are told at once rather than held until the server closes.
    pub fn close(&self) {
        let _g = self.decide.lock().unwrap_or_else(|p| p.into_inner());
        self.current.send_if_modified(|c| c.take().is_some());
    }

    /// Rank 0's id for `epoch`, from `worker`. Offering the same id again
    /// (a retry after a lost reply) is accepted.
    pub fn offer(&self, worker: u64, epoch: u64, id: Bytes) -> Result<(), NcclIdError> {
        if UniqueId::from_bytes(&id).is_none() {
            return Err(NcclIdError::WrongLength { got: id.len(), want: UniqueId::BYTES });
        }
        let _g = self.decide.lock().unwrap_or_else(|p| p.into_inner());
        let mut result = Ok(());
        self.current.send_if_modified(|c| {
            result = Self::check_offer(c.as_ref(), worker, epoch, &id);
            match c.as_mut() {
                Some(e) if result.is_ok() && e.id.is_none() => {
                    e.id = Some(id.clone());
                    true
                }
                _ => false,
            }
        });
        result
    }

    fn check_offer(current: Option<&Epoch>, worker: u64, epoch: u64, id: &Bytes) -> Result<(), NcclIdError> {
        let e = Self::member_of(current, worker, epoch)?;
        match e.members.iter().position(|&m| m == worker) {
            Some(0) => {}
            Some(rank) => return Err(NcclIdError::NotRankZero { worker, rank, epoch }),
            None => unreachable!("member_of checked it"),
        }
        match &e.id {
            Some(given) if given != id => Err(NcclIdError::AlreadyOffered { epoch }),
            _ => Ok(()),
        }
    }

    /// The epoch, if it is the current one and `worker` is its member.
    fn member_of(current: Option<&Epoch>, worker: u64, epoch: u64) -> Result<&Epoch, NcclIdError> {
        let e = current.filter(|e| e.epoch == epoch).ok_or(NcclIdError::StaleEpoch { got: epoch, current: current.map(|e| e.epoch) })?;
        if !e.members.contains(&worker) {
            return Err(NcclIdError::NotMember { worker, epoch });
        }
        Ok(e)
    }

    /// Waits for rank 0's id of `epoch`, as `worker` (a member); ends with
    /// [`NcclIdError::Ended`] when the epoch ends first.
    pub async fn wait(&self, worker: u64, epoch: u64) -> Result<Bytes, NcclIdError> {
        let mut rx = self.current.subscribe();
        Self::member_of(rx.borrow_and_update().as_ref(), worker, epoch)?;
        loop {
            match rx.borrow_and_update().as_ref() {
                Some(e) if e.epoch == epoch => {
                    if let Some(id) = &e.id {
                        return Ok(id.clone());
                    }
                }
                _ => return Err(NcclIdError::Ended { epoch }),
            }
            // The sender lives as long as `self`.
            if rx.changed().await.is_err() {
                return Err(NcclIdError::Ended { epoch });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> Bytes {
        Bytes::from(vec![byte; UniqueId::BYTES])
    }

    #[tokio::test]
    async fn rank_zeros_id_reaches_the_others_and_an_epoch_stays_while_its_members_do() {
        let ids = std::sync::Arc::new(NcclIds::default());
        let e = ids.epoch_for(&[7, 3, 9]);
        assert_eq!(ids.epoch_for(&[7, 3, 9]), e, "the same members keep their communicator");
        let waiter = tokio::spawn({
            let ids = ids.clone();
            async move { ids.wait(9, e).await }
        });
        tokio::task::yield_now().await;
        ids.offer(7, e, id(1)).unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), id(1));
        assert_eq!(ids.wait(3, e).await.unwrap(), id(1), "a later waiter gets it at once");
        ids.offer(7, e, id(1)).unwrap();
        assert_eq!(ids.offer(7, e, id(2)), Err(NcclIdError::AlreadyOffered { epoch: e }));
        let other = ids.epoch_for(&[7, 9]);
        assert_ne!(other, e, "other members, another communicator");
        assert_eq!(ids.wait(9, e).await, Err(NcclIdError::StaleEpoch { got: e, current: Some(other) }));
    }

    #[tokio::test]
    async fn bad_offers_are_refused_by_reason() {
        let ids = NcclIds::default();
        let e = ids.epoch_for(&[1, 2]);
        assert_eq!(ids.offer(1, e, Bytes::from_static(&[0; 127])), Err(NcclIdError::WrongLength { got: 127, want: 128 }));
        assert_eq!(ids.offer(2, e, id(1)), Err(NcclIdError::NotRankZero { worker: 2, rank: 1, epoch: e }));
        assert_eq!(ids.offer(5, e, id(1)), Err(NcclIdError::NotMember { worker: 5, epoch: e }));
        assert_eq!(ids.offer(1, e ^ 1, id(1)), Err(NcclIdError::StaleEpoch { got: e ^ 1, current: Some(e) }));
        assert!(ids.offer(2, e, id(1)).unwrap_err().to_string().contains("only rank 0 makes the unique id"));
    }

    #[tokio::test]
    async fn an_ended_epoch_releases_its_waiters_and_the_same_members_get_a_new_one() {
        let ids = std::sync::Arc::new(NcclIds::default());
        let e = ids.epoch_for(&[1, 2]);
        let waiter = tokio::spawn({
            let ids = ids.clone();
            async move { ids.wait(2, e).await }
        });
        tokio::task::yield_now().await;
        ids.end(e ^ 1); // not the current one: nothing happens
        ids.end(e);
        assert_eq!(waiter.await.unwrap(), Err(NcclIdError::Ended { epoch: e }));
        assert_eq!(ids.offer(1, e, id(1)), Err(NcclIdError::StaleEpoch { got: e, current: None }));
        let again = ids.epoch_for(&[1, 2]);
        assert_ne!(again, e, "after a failure, a fresh communicator");
        ids.close();
        assert_eq!(ids.wait(1, again).await, Err(NcclIdError::StaleEpoch { got: again, current: None }), "closed with the run");
    }
}
