//! One member's side of an attempt's ring: the plan the coordinator sent,
//! checked against who this member is; dialling the successor and taking
//! the predecessor's connection; then the all-reduce. The worker and the
//! `ddpm bench allreduce` members both run it.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::frame::{Hello, KEY_BYTES};
use super::{all_reduce, connect, PeerListener, RingError, RingSpec};
use crate::proto;

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
    pub fn from_plan(p: &proto::RingPlan, me: u64) -> anyhow::Result<Self> {
        let rank = p.rank as usize;
        anyhow::ensure!(
            p.members.get(rank).is_some_and(|m| m.worker_id == me),
            "the ring plan puts rank {rank} at {:?}, not this worker ({me})",
            p.members.get(rank).map(|m| m.worker_id)
        );
        let key = <[u8; KEY_BYTES]>::try_from(&p.key[..])
            .map_err(|_| anyhow::anyhow!("the ring plan's key has {} bytes, not {KEY_BYTES}", p.key.len()))?;
        anyhow::ensure!(p.peer_timeout_s.is_finite() && p.peer_timeout_s > 0.0, "the ring plan's peer timeout is {}", p.peer_timeout_s);
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
    /// returning it; the chunks of
    /// this member's segment go to `owned` as they are final. `first_bytes`
    /// hears when the predecessor's first bytes arrive (fault injection).
    /// An error names the neighbour at fault (its worker id) and why.
    pub async fn all_reduce(
        &self,
        peers: &PeerListener,
        spec: RingSpec,
        mut local: Vec<f32>,
        owned: mpsc::UnboundedSender<(u32, Bytes)>,
        first_bytes: Option<oneshot::Sender<()>>,
    ) -> Result<Vec<f32>, (u64, String)> {
        let n = self.members.len();
        if n == 1 {
            let r = all_reduce(&spec, &mut local, tokio::io::empty(), tokio::io::sink(), owned, &mut Vec::new()).await;
            return r.map(|()| local).map_err(|e| (self.me, e.to_string()));
        }
        let (next_id, next_endpoint) = &self.members[(self.rank + 1) % n];
        let (prev_id, _) = &self.members[(self.rank + n - 1) % n];
        let hello = Hello { epoch: self.epoch, from: self.me, key: self.key };
        let (out, inn) =
            tokio::join!(connect(next_endpoint, &hello, self.timeout), peers.accept_from(self.epoch, &self.key, *prev_id, self.timeout));
        let out = out.map_err(|e| (*next_id, format!("the successor {e}")))?;
        let inn = inn.map_err(|e| (*prev_id, format!("the predecessor {e}")))?;
        let inn = FirstBytes { inner: inn, arrived: first_bytes };
        let mut frames = peers.take_frames();
        let reduced = all_reduce(&spec, &mut local, inn, out, owned, &mut frames).await;
        peers.keep_frames(frames);
        match reduced {
            Ok(()) => Ok(local),
            Err(e @ RingError::Prev(_)) => Err((*prev_id, e.to_string())),
            Err(e @ RingError::Next(_)) => Err((*next_id, e.to_string())),
        }
    }
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
        let mut p = proto::RingPlan { epoch: 1, key: vec![0; 32].into(), rank: 1, members: vec![member(4), member(5)], peer_timeout_s: 1.0 };
        assert!(RingMembership::from_plan(&p, 5).is_ok());
        assert!(RingMembership::from_plan(&p, 4).err().unwrap().to_string().contains("not this worker"));
        p.rank = 7;
        assert!(RingMembership::from_plan(&p, 5).is_err());
        p.rank = 1;
        p.key = vec![0; 3].into();
        assert!(RingMembership::from_plan(&p, 5).err().unwrap().to_string().contains("3 bytes"));
    }
}
