//! `[checkpoint] writers = "replicas"`: the one sharded checkpoint whose
//! shards are being written, between the training loop that asked each
//! replica for its shard ([`ShardBook::open`]) and the ReportShard rpc
//! that brings what each wrote ([`ShardBook::report`]). The saver is
//! woken when the last shard is in ([`ShardBook::completed`]), even in
//! the middle of a step, and takes the set ([`ShardBook::take`]) to
//! commit it; it polls between steps to give up on one that is late.
//!
//! Only the current set is held: a report of another step, of a shard
//! not asked of its sender, or a second report of one shard is refused,
//! so a lying or confused replica cannot fill another's place.

use std::sync::Mutex;

use ddpm::proto;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// Why a shard report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("no checkpoint of step {step} is waiting for shards")]
    NotWaiting { step: u64 },
    #[error("worker {worker} was not asked for shard {index} of {count} of step {step}")]
    NotAsked { worker: u64, step: u64, index: u32, count: u32 },
    #[error("shard {index} of step {step} was reported already")]
    Again { step: u64, index: u32 },
}

/// One shard asked of one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    pub worker: u64,
    pub index: u32,
    pub start: u64,
    pub end: u64,
}

struct Open {
    step: u64,
    asked: Vec<Asked>,
    reports: Vec<Option<proto::ShardReport>>,
}

/// Where the open set stands.
#[derive(Debug, PartialEq)]
pub enum ShardState {
    /// No set is open.
    Idle,
    /// Reports are missing; the workers they are owed by.
    Waiting(Vec<u64>),
    /// Every shard reported (in order), taken out of the book.
    Reported { step: u64, asked: Vec<Asked>, reports: Vec<proto::ShardReport> },
}

/// See the module documentation.
#[derive(Default)]
pub struct ShardBook {
    open: Mutex<Option<Open>>,
    /// Raised when the open set's last report arrives.
    complete: Notify,
}

impl ShardBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shards of step `step` are asked of `asked` (replacing any set
    /// still open: its checkpoint was given up).
    pub fn open(&self, step: u64, asked: Vec<Asked>) {
        let reports = vec![None; asked.len()];
        *self.lock() = Some(Open { step, asked, reports });
    }

    /// Gives up on the open set, if any.
    pub fn close(&self) {
        self.lock().take();
    }

    /// Worker `worker`'s report of the shard it was asked for.
    pub fn report(&self, worker: u64, r: proto::ShardReport) -> Result<(), ShardError> {
        let mut open = self.lock();
        let o = open.as_mut().filter(|o| o.step == r.step).ok_or(ShardError::NotWaiting { step: r.step })?;
        let count = o.asked.len() as u32;
        let slot = o.asked.iter().position(|a| a.worker == worker && a.index == r.index).filter(|_| r.count == count);
        let Some(i) = slot else {
            return Err(ShardError::NotAsked { worker, step: r.step, index: r.index, count: r.count });
        };
        if o.reports[i].is_some() {
            return Err(ShardError::Again { step: r.step, index: r.index });
        }
        o.reports[i] = Some(r);
        if o.reports.iter().all(Option::is_some) {
            self.complete.notify_waiters();
        }
        Ok(())
    }

    /// Whether every shard of the open set is reported.
    pub fn is_complete(&self) -> bool {
        self.lock().as_ref().is_some_and(|o| o.reports.iter().all(Option::is_some))
    }

    /// Resolves when an open set's last report arrives after this call
    /// (check [`ShardBook::is_complete`] after creating it: nothing is missed).
    pub fn completed(&self) -> Notified<'_> {
        self.complete.notified()
    }

    /// Where the open set stands; a complete one is taken out.
    pub fn take(&self) -> ShardState {
        let mut open = self.lock();
        let Some(o) = open.as_ref() else { return ShardState::Idle };
        let owed: Vec<u64> = o.asked.iter().zip(&o.reports).filter(|(_, r)| r.is_none()).map(|(a, _)| a.worker).collect();
        if !owed.is_empty() {
            return ShardState::Waiting(owed);
        }
        let o = open.take().expect("checked above");
        ShardState::Reported { step: o.step, asked: o.asked, reports: o.reports.into_iter().flatten().collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `f` is ready at its first poll.
    fn futures_ready(f: std::pin::Pin<&mut Notified<'_>>) -> bool {
        use std::future::Future;
        let waker = std::task::Waker::noop();
        f.poll(&mut std::task::Context::from_waker(waker)).is_ready()
    }

    fn asked() -> Vec<Asked> {
        vec![Asked { worker: 7, index: 0, start: 0, end: 5 }, Asked { worker: 9, index: 1, start: 5, end: 10 }]
    }

    fn report(step: u64, index: u32, count: u32) -> proto::ShardReport {
        proto::ShardReport { step, index, count, name: format!("s{index}"), ..Default::default() }
    }

    #[test]
    fn a_set_completes_once_each_shard_is_reported_by_its_replica() {
        let book = ShardBook::default();
        assert_eq!(book.take(), ShardState::Idle);
        assert_eq!(book.report(7, report(4, 0, 2)), Err(ShardError::NotWaiting { step: 4 }));
        book.open(4, asked());
        assert_eq!(book.report(7, report(3, 0, 2)), Err(ShardError::NotWaiting { step: 3 }));
        // Another's shard, or a count that is not the set's.
        assert!(matches!(book.report(9, report(4, 0, 2)), Err(ShardError::NotAsked { worker: 9, .. })));
        assert!(matches!(book.report(7, report(4, 0, 3)), Err(ShardError::NotAsked { .. })));
        book.report(9, report(4, 1, 2)).unwrap();
        assert_eq!(book.report(9, report(4, 1, 2)), Err(ShardError::Again { step: 4, index: 1 }));
        assert_eq!(book.take(), ShardState::Waiting(vec![7]));
        assert!(!book.is_complete());
        // The last report wakes whoever waits for the set.
        let completed = book.completed();
        tokio::pin!(completed);
        completed.as_mut().enable();
        book.report(7, report(4, 0, 2)).unwrap();
        assert!(book.is_complete());
        assert!(futures_ready(completed.as_mut()), "the last report woke nobody");
        match book.take() {
            ShardState::Reported { step, asked: a, reports } => {
                assert_eq!((step, a, reports.iter().map(|r| r.index).collect::<Vec<_>>()), (4, asked(), vec![0, 1]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(book.take(), ShardState::Idle);
    }

    #[test]
    fn a_closed_set_takes_no_more_reports() {
        let book = ShardBook::default();
        book.open(4, asked());
        book.close();
        assert_eq!(book.report(7, report(4, 0, 2)), Err(ShardError::NotWaiting { step: 4 }));
    }
}
