//! One member's side of an attempt's ring: the plan the coordinator sent,
//! checked against who this member is; dialling the successor and taking
//! the predecessor's connection; then the all-reduce. The worker and the
//! `ddpm bench allreduce` members both run it.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::allreduce::{all_reduce, RingSpec};
use super::allreduce_links::{all_reduce_links, slots_needed, Next, Prev};
use super::fault::{RingError, RingFault};
use super::frame::{Hello, KEY_BYTES};
use super::links;
use super::measure::{Measure, Measured};
use super::peers::{connect, PeerListener};
use crate::config::GradDtype;
use crate::{proto, wire};

/// The host part of a `HOST:PORT` endpoint.
fn host_of(endpoint: &str) -> &str {
    endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h)
}

/// Why a ring plan from the coordinator cannot be followed by this worker.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("the ring plan puts rank {rank} at {at:?}, not this worker ({me})")]
    NotMine { rank: usize, at: Option<u64>, me: u64 },
    #[error("the ring plan's key has {0} bytes, not {KEY_BYTES}")]
    KeyLength(usize),
    #[error("the ring plan's peer timeout is {0}")]
    Timeout(f64),
}

/// A ring plan this member can follow.
#[derive(Clone)]
pub struct RingMembership {
    pub me: u64,
    pub rank: usize,
    /// (worker id, endpoint) in rank order.
    pub members: Vec<(u64, String)>,
    key: [u8; KEY_BYTES],
    pub epoch: u64,
    pub timeout: Duration,
}

impl RingMembership {
    /// The plan for member `me`, or what is wrong with it.
    pub fn from_plan(p: &proto::RingPlan, me: u64) -> Result<Self, PlanError> {
        let rank = p.rank as usize;
        let at = p.members.get(rank).map(|m| m.worker_id);
        if at != Some(me) {
            return Err(PlanError::NotMine { rank, at, me });
        }
        let key = <[u8; KEY_BYTES]>::try_from(&p.key[..]).map_err(|_| PlanError::KeyLength(p.key.len()))?;
        // Also bounds it: Duration::from_secs_f64 panics past u64 seconds.
        if !(p.peer_timeout_s > 0.0 && p.peer_timeout_s < 1e9) {
            return Err(PlanError::Timeout(p.peer_timeout_s));
        }
        Ok(Self {
            me,
            rank,
            members: p.members.iter().map(|m| (m.worker_id, m.endpoint.clone())).collect(),
            key,
            epoch: p.epoch,
            timeout: Duration::from_secs_f64(p.peer_timeout_s),
        })
    }

    /// A plan made on the spot (benchmarks and tests without a coordinator).
    pub fn new(me: u64, rank: usize, members: Vec<(u64, String)>, epoch: u64, key: [u8; KEY_BYTES], timeout: Duration) -> Self {
        Self { me, rank, members, key, epoch, timeout }
    }

    /// Connects to both neighbours and all-reduces `local` in place,
    /// returning it with its replica digest; `events` hears this member's
    /// chunk norms once its gradient was read and the scalars of each
    /// chunk of its segment as it becomes final (`measure.rs`).
    /// `first_bytes` hears when the predecessor's first bytes arrive
    /// (fault injection). An error names the neighbour at fault (its
    /// worker id), the kind of fault and why.
    pub async fn all_reduce(
        &self,
        peers: &PeerListener,
        spec: RingSpec,
        mut local: Vec<f32>,
        events: mpsc::UnboundedSender<Measured>,
        first_bytes: Option<oneshot::Sender<()>>,
    ) -> Result<Reduced, RingFault> {
        let n = self.members.len();
        let mut measure = Measure::new(wire::chunk_count(spec.total, spec.chunk_elements), events);
        let done = |grad: Vec<f32>, measure: Measure| {
            // Every chunk is measured once the ring succeeded (owned or
            // gathered); the separate pass is only a guard.
            let digest = measure
                .replica_digest()
                .unwrap_or_else(|| wire::digest::gradient_digest(&grad, wire::chunk_ranges(grad.len(), spec.chunk_elements)));
            Reduced { grad, digest }
        };
        if n == 1 {
            // Alone the ring reads and writes nothing, so it cannot fail.
            let r = all_reduce(&spec, &mut local, tokio::io::empty(), tokio::io::sink(), &mut measure, &mut Vec::new()).await;
            return r.map(|()| done(local, measure)).map_err(|e| RingFault::new(self.me, &e));
        }
        let (next_id, next_endpoint) = &self.members[(self.rank + 1) % n];
        let (prev_id, _) = &self.members[(self.rank + n - 1) % n];
        let hello = Hello { epoch: self.epoch, from: self.me, key: self.key };
        let (out, inn) =
            tokio::join!(connect(next_endpoint, &hello, self.timeout), peers.accept_from(self.epoch, &self.key, *prev_id, self.timeout));
        let blame = |e: RingError| match e {
            RingError::Prev(_) => RingFault::new(*prev_id, &e),
            RingError::Next(_) => RingFault::new(*next_id, &e),
        };
        let mut out = out.map_err(|e| blame(RingError::Next(e)))?;
        let mut inn = inn.map_err(|e| blame(RingError::Prev(e)))?;

        // Each link agrees how it carries the bytes: shared memory when its
        // two ends share it (tried only between members of one address),
        // else TCP.
        let chunks = wire::chunk_count(spec.total, spec.chunk_elements);
        let need = (slots_needed(chunks, n), spec.chunk_elements.clamp(1, spec.total.max(1)) * 4);
        let f32_ring = spec.shm && spec.dtype == GradDtype::F32 && cfg!(target_endian = "little");
        let same_host = host_of(&self.members[self.rank].1) == host_of(next_endpoint);
        let mut outbox = if f32_ring && same_host { peers.take_outbox(need.0, need.1) } else { None };
        let offer = outbox.as_ref().map(|o| o.offer());
        let dir = peers.shm_dir().filter(|_| f32_ring);
        let (offered, answered) = tokio::join!(
            links::offer(&mut out, offer.as_ref(), self.timeout),
            links::answer(&mut inn, dir, need, peers.take_view(), self.timeout)
        );
        let (out_shm, view) = match (offered, answered) {
            (Ok(o), Ok(v)) => (o, v),
            (o, v) => {
                peers.keep_outbox(outbox);
                return Err(match (o, v) {
                    (_, Err(e)) => blame(RingError::Prev(e)),
                    (Err(e), _) => blame(RingError::Next(e)),
                    _ => unreachable!("one failed"),
                });
            }
        };
        peers.set_last_links(view.is_some(), out_shm);

        let mut frames = peers.take_frames();
        let reduced = if !out_shm && view.is_none() {
            let inn = FirstBytes { inner: inn, arrived: first_bytes };
            all_reduce(&spec, &mut local, inn, out, &mut measure, &mut frames).await
        } else {
            let (in_read, in_write) = inn.into_split();
            let (out_read, out_write) = out.into_split();
            let prev = Prev { read: FirstBytes { inner: in_read, arrived: first_bytes }, write: in_write, shared: view.as_ref() };
            let next = Next { write: out_write, read: out_read, shared: outbox.as_mut().filter(|_| out_shm) };
            all_reduce_links(&spec, &mut local, prev, next, &mut measure, &mut frames).await
        };
        peers.keep_frames(frames);
        peers.keep_outbox(outbox);
        peers.keep_view(view);
        reduced.map(|()| done(local, measure)).map_err(blame)
    }
}

/// A member's result of a successful all-reduce.
pub struct Reduced {
    /// The reduced gradient, the same bits in every member.
    pub grad: Vec<f32>,
    /// Its replica digest (`wire::digest::replica_digest` of its chunks).
    pub digest: u64,
}

/// A reader that tells once its first bytes arrived (fault injection).
struct FirstBytes<R> {
    inner: R,
    arrived: Option<oneshot::Sender<()>>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstBytes<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            if let Some(tx) = self.arrived.take() {
                let _ = tx.send(());
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_that_is_not_for_this_worker_is_refused() {
        let member = |id| proto::RingMember { worker_id: id, endpoint: "127.0.0.1:1".into() };
        let mut p = proto::RingPlan {
            epoch: 1,
            key: vec![0; 32].into(),
            rank: 1,
            members: vec![member(4), member(5)],
            peer_timeout_s: 1.0,
            shm: false,
        };
        assert!(RingMembership::from_plan(&p, 5).is_ok());
        assert_eq!(RingMembership::from_plan(&p, 4).err(), Some(PlanError::NotMine { rank: 1, at: Some(5), me: 4 }));
        assert!(RingMembership::from_plan(&p, 4).err().unwrap().to_string().contains("not this worker"));
        p.rank = 7;
        assert_eq!(RingMembership::from_plan(&p, 5).err(), Some(PlanError::NotMine { rank: 7, at: None, me: 5 }));
        p.rank = 1;
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300] {
            p.peer_timeout_s = bad;
            assert!(matches!(RingMembership::from_plan(&p, 5), Err(PlanError::Timeout(_))), "{bad}");
        }
        p.peer_timeout_s = 1.0;
        p.key = vec![0; 3].into();
        assert!(RingMembership::from_plan(&p, 5).err().unwrap().to_string().contains("3 bytes"));
    }
}
