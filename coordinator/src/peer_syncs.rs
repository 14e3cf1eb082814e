//! Training state from a peer (SyncFromPeer, SendState): a joiner, or a
//! replica told to resync, asks for the state; rather than relay it
//! (FetchState: replica -> coordinator -> joiner), the coordinator tells a
//! replica idle at the run's step to send it straight to the joiner's peer
//! listener, and tells the joiner whom to take it from, of which step,
//! with which secret, and which digest the replicas agreed on for it.
//!
//! This book holds who waits for such a state. The training loop hands
//! the waiters out (`training/uploads.rs`) where it asks for uploads: to
//! replicas still idle at the run's step, before it hands out the next
//! step, so the state sent is exactly that step's.

use std::sync::Mutex;

use ddpm::proto;
use tokio::sync::oneshot;

/// What a waiter is told: the state's step, its sender and the transfer's
/// id and secret, and the digest the replicas agreed on for the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub step: u64,
    pub from: u64,
    pub epoch: u64,
    pub key: [u8; ddpm::ring::frame::KEY_BYTES],
    pub param_checksum: Option<u64>,
}

struct Waiter {
    joiner: u64,
    endpoint: String,
    reply: oneshot::Sender<Assigned>,
}

/// The members waiting for a state from a peer.
#[derive(Default)]
pub struct PeerSyncs {
    waiting: Mutex<Vec<Waiter>>,
}

impl PeerSyncs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `joiner` (listening at `endpoint`) waits for a state; an earlier
    /// wait of the same joiner is replaced.
    pub fn wait_for(&self, joiner: u64, endpoint: String) -> oneshot::Receiver<Assigned> {
        let (reply, rx) = oneshot::channel();
        let mut w = self.lock();
        w.retain(|x| x.joiner != joiner && !x.reply.is_closed());
        w.push(Waiter { joiner, endpoint, reply });
        rx
    }

    /// Whether anyone waits (a caller that gave up does not).
    pub fn any(&self) -> bool {
        !self.joiners().is_empty()
    }

    /// Who waits (callers that gave up do not): the training loop expects
    /// them in the next step, so that a joiner loads the step the run
    /// waits at instead of one the run leaves behind while it loads.
    pub fn joiners(&self) -> Vec<u64> {
        let mut w = self.lock();
        w.retain(|x| !x.reply.is_closed());
        w.iter().map(|x| x.joiner).collect()
    }

    /// Hands each waiter to one of `idle` (replicas idle at `step`, in
    /// turn; never the waiter itself): `send` tells the replica (false when
    /// it is no longer idle: the next is tried), `checksum` is a replica's
    /// reported digest of `step`. Waiters no replica took wait on.
    pub fn hand_out(
        &self,
        step: u64,
        idle: &[u64],
        checksum: impl Fn(u64) -> Option<u64>,
        mut send: impl FnMut(u64, proto::SendState) -> bool,
    ) -> Vec<(u64, u64)> {
        let mut handed = Vec::new();
        if idle.is_empty() {
            return handed;
        }
        let mut waiting = self.lock();
        let mut next = 0usize;
        let mut kept = Vec::new();
        for w in waiting.drain(..) {
            if w.reply.is_closed() {
                continue;
            }
            let mut taken = None;
            for k in 0..idle.len() {
                let from = idle[(next + k) % idle.len()];
                if from == w.joiner {
                    continue;
                }
                let (epoch, key) = secret();
                let order = proto::SendState { step, to_worker: w.joiner, endpoint: w.endpoint.clone(), epoch, key: key.to_vec().into() };
                if send(from, order) {
                    next = (next + k + 1) % idle.len();
                    taken = Some(Assigned { step, from, epoch, key, param_checksum: checksum(from) });
                    break;
                }
            }
            match taken {
                Some(a) => {
                    handed.push((w.joiner, a.from));
                    // A joiner that gave up meanwhile: the sender's dial fails, nothing else.
                    let _ = w.reply.send(a);
                }
                None => kept.push(w),
            }
        }
        *waiting = kept;
        handed
    }
}

/// A transfer's id and secret, from the OS's random source.
fn secret() -> (u64, [u8; ddpm::ring::frame::KEY_BYTES]) {
    let mut key = [0u8; ddpm::ring::frame::KEY_BYTES];
    getrandom::fill(&mut key).expect("the OS random source");
    let mut epoch = [0u8; 8];
    getrandom::fill(&mut epoch).expect("the OS random source");
    (u64::from_le_bytes(epoch), key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_waiter_goes_to_a_replica_still_idle_and_never_to_itself() {
        let book = PeerSyncs::default();
        let mut a = book.wait_for(7, "h:1".into());
        let mut b = book.wait_for(8, "h:2".into());
        assert!(book.any());
        // Replica 3 is no longer idle; 7 is a waiter, not a sender.
        let mut sent = Vec::new();
        let handed = book.hand_out(
            12,
            &[3, 7, 5],
            |r| Some(100 + r),
            |r, o| {
                sent.push((r, o.to_worker, o.endpoint.clone()));
                r != 3
            },
        );
        assert_eq!(handed, [(7, 5), (8, 7)]);
        assert_eq!(sent, [(3, 7, "h:1".into()), (5, 7, "h:1".into()), (3, 8, "h:2".into()), (7, 8, "h:2".into())]);
        let a = a.try_recv().unwrap();
        assert_eq!((a.step, a.from, a.param_checksum), (12, 5, Some(105)));
        let b = b.try_recv().unwrap();
        assert_ne!((a.epoch, a.key), (b.epoch, b.key), "each transfer has its own secret");
        assert!(!book.any());
    }

    #[test]
    fn a_waiter_nobody_took_waits_on_and_one_that_gave_up_is_forgotten() {
        let book = PeerSyncs::default();
        let mut a = book.wait_for(7, "h:1".into());
        assert!(book.hand_out(3, &[], |_| None, |_, _| true).is_empty());
        assert!(book.hand_out(3, &[1], |_| None, |_, _| false).is_empty());
        assert!(a.try_recv().is_err() && book.any());
        drop(a);
        assert!(!book.any());
        // Asking again replaces the earlier wait.
        let _first = book.wait_for(9, "h:1".into());
        let mut second = book.wait_for(9, "h:9".into());
        let mut to = Vec::new();
        book.hand_out(
            3,
            &[1],
            |_| None,
            |_, o| {
                to.push(o.endpoint);
                true
            },
        );
        assert_eq!(to, ["h:9"]);
        assert_eq!(second.try_recv().unwrap().from, 1);
    }
}
