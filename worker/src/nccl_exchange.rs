//! The NCCL backend of [`GradientExchange`]: the gradient is summed
//! between the members' GPUs by NCCL, and the coordinator's
//! ReduceGradients stream carries the scalars it carries for the ring
//! (`ring_exchange.rs`, whose pieces are reused): the header with this
//! member's chunk norms, the SegmentDigests of the segment its rank owns
//! (`ddpm::ring::plan::segments`, as a ring rank's), its ReplicaDigest,
//! and back the outcome that commits the step; after it, the shadow's
//! feed. So the coordinator's audit, checksums and copy of the state work
//! as they do for the ring.
//!
//! A communicator lives for an epoch (NcclPlan): the first step of a new
//! epoch hands out its unique id through the coordinator (rank 0 makes
//! it, NcclUniqueId) and joins; later steps of the epoch reuse it. When an
//! attempt ends without a commit (a member lost or stalled, which the
//! coordinator decides and says by ending the stream), or NCCL reports an
//! asynchronous error, the communicator is aborted (`ncclCommAbort`): a
//! lost rank's collective never finishes. The next assignment names a new
//! epoch.
//!
//! NOT YET RUN ON A GPU: written and built on a machine without one. The
//! hand-out, the epochs and the coordinator's side are tested there with
//! real processes (tests/nccl_handout.rs); the communicator, the
//! all-reduce, the error poll and abort have not run.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ddpm::config::GradDtype;
use ddpm::nccl::{CommWatch, Nccl, UniqueId};
use ddpm::proto::{self, gradient_message, reduced_message};
use ddpm::ring::{feed, plan};
use ddpm::train::Outcome;
use ddpm::wire::{self, digest};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::client::Client;
use crate::device::messages::Computed;
use crate::device::DeviceHandle;
use crate::directive::CallError;
use crate::exchange::{ended, Exchanged, GradientExchange};
use crate::ring_exchange::{feed_and_keep, header_with_faults, msg};
use crate::spares::Spares;

/// How often the communicator's asynchronous error is polled while an
/// all-reduce runs (PyTorch's NCCL watchdog polls on the same order).
const POLL: Duration = Duration::from_millis(100);

/// A worker's NCCL across steps: the library, and the communicator of the
/// current epoch (held by the device thread; watched from here).
pub struct NcclLink {
    nccl: Nccl,
    current: Option<(u64, CommWatch)>,
    /// True while the device thread is in `ncclCommInitRank`, which
    /// blocks until every rank joined and cannot be interrupted.
    joining: bool,
}

impl NcclLink {
    pub fn new(nccl: Nccl) -> Self {
        Self { nccl, current: None, joining: false }
    }

    /// Aborts the current communicator, if any (its epoch is over). An
    /// abort that cannot happen (a call on it that does not return) is a
    /// fault: the worker exits rather than hang, and a fresh process rejoins.
    fn abort(&mut self) -> anyhow::Result<()> {
        if let Some((epoch, watch)) = self.current.take() {
            watch.abort().map_err(|e| anyhow::anyhow!("aborting the NCCL communicator of epoch {epoch:#x}: {e}"))?;
        }
        Ok(())
    }
}

/// The all-reduce over NCCL.
pub struct NcclExchange<'a> {
    pub client: &'a mut Client,
    pub worker_id: u64,
    pub dev: &'a DeviceHandle,
    pub link: &'a mut NcclLink,
    /// The shadow's spares this member keeps.
    pub spares: &'a mut Spares,
}

/// An NcclPlan checked against this worker: (rank, size).
fn rank_in(p: &proto::NcclPlan, worker: u64) -> anyhow::Result<(usize, usize)> {
    let (rank, size) = (p.rank as usize, p.size as usize);
    anyhow::ensure!(size == p.members.len() && size > 0, "an NCCL plan of size {size} with {} members", p.members.len());
    anyhow::ensure!(p.members.get(rank) == Some(&worker), "worker {worker} is not rank {rank} of the NCCL plan {:?}", p.members);
    Ok((rank, size))
}

/// What a race between a step of the exchange and the coordinator's
/// stream gave: the step's result, or the end the coordinator directed.
enum Raced<T> {
    Done(T),
    Ended(anyhow::Result<Exchanged>),
}

/// Runs `work` until it ends or the coordinator ends the attempt on
/// `inbound` (its verdict, or a broken stream).
async fn race<T>(inbound: &mut tonic::Streaming<proto::ReducedMessage>, context: &str, work: impl Future<Output = T>) -> Raced<T> {
    tokio::select! {
        done = work => Raced::Done(done),
        m = inbound.next() => Raced::Ended(verdict(m, context)),
    }
}

/// The end of an attempt the coordinator gave before this member reported
/// its replica: an outcome cannot come yet, so anything else is a fault.
fn verdict(m: Option<Result<proto::ReducedMessage, tonic::Status>>, context: &str) -> anyhow::Result<Exchanged> {
    match m {
        Some(Err(s)) => ended(CallError::from_status(&s, context)),
        Some(Ok(other)) => Err(anyhow::anyhow!("unexpected message before this replica's digest: {other:?}")),
        None => Err(anyhow::anyhow!("{context}: the stream ended without a verdict")),
    }
}

impl GradientExchange for NcclExchange<'_> {
    async fn exchange(&mut self, a: &proto::TrainAssignment, mut local: Computed) -> anyhow::Result<Exchanged> {
        let p = a.nccl.as_ref().ok_or_else(|| anyhow::anyhow!("an NCCL exchange without an NCCL plan"))?;
        let (rank, size) = rank_in(p, self.worker_id)?;
        let dtype = GradDtype::from_proto(a.grad_dtype)?;
        anyhow::ensure!(a.global_batch > 0 && a.shard_size <= a.global_batch, "shard {} of a batch of {}", a.shard_size, a.global_batch);
        // The coordinator's weight for a member, computed as the ring does.
        let weight = (a.shard_size as f64 / a.global_batch as f64) as f32;
        let chunk = a.chunk_elements.max(1) as usize;
        let header = header_with_faults(self.worker_id, a, &mut local, dtype, chunk);
        let (tx, rx) = mpsc::channel(16);
        tx.send(msg(gradient_message::Kind::Header(header.clone()))).await.map_err(|_| anyhow::anyhow!("upload queue closed"))?;
        let context = format!("the all-reduce of step {} failed", a.step);
        let mut inbound = match self.client.reduce_gradients(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return ended(CallError::from_status(&s, &context)),
        };
        let started = Instant::now();
        let watch = match race(&mut inbound, &context, self.communicator(p, rank, size)).await {
            Raced::Done(Ok(watch)) => watch,
            Raced::Done(Err(e)) => {
                self.link.abort()?;
                return ended(e);
            }
            Raced::Ended(end) => return self.interrupted(end),
        };
        let mut grad = match race(&mut inbound, &context, watched(self.dev.nccl_all_reduce(local.grad, weight), &watch)).await {
            Raced::Done(Ok(grad)) => grad,
            Raced::Done(Err(e)) => {
                // Aborted already; the coordinator decides what the attempt
                // became (a lost member is dropped, the step redone).
                tracing::warn!(step = a.step, "the NCCL all-reduce failed: {e:#}; waiting for the coordinator's verdict");
                self.link.abort()?;
                return verdict(inbound.next().await, &context);
            }
            Raced::Ended(end) => return self.interrupted(end),
        };
        // With the communicator's set-up on an epoch's first step.
        tracing::debug!(step = a.step, seconds = started.elapsed().as_secs_f64(), "NCCL all-reduce done");
        anyhow::ensure!(grad.len() as u64 == header.elements, "the all-reduce returned {} values for {}", grad.len(), header.elements);
        let owned = report_owned(&mut grad, rank, size, chunk, dtype, &tx).await;
        let replica = proto::ReplicaDigest { digest: digest::gradient_digest(&grad, wire::chunk_ranges(grad.len(), chunk)) };
        let _ = tx.send(msg(gradient_message::Kind::Replica(replica))).await;
        let outcome = match inbound.next().await {
            Some(Ok(proto::ReducedMessage { kind: Some(reduced_message::Kind::Outcome(o)) })) => o,
            m => {
                self.link.abort()?;
                return verdict(m, &context);
            }
        };
        if a.feed_shadow {
            let spare = feed::successor_chunks(&grad, rank, size, chunk, dtype);
            feed_and_keep(self.client, self.spares, header, owned, spare);
        }
        let outcome = Outcome { apply: outcome.apply, grad_norm: outcome.grad_norm, clip_scale: outcome.clip_scale };
        Ok(Exchanged::Reduced { grad, outcome })
    }
}

impl NcclExchange<'_> {
    /// The communicator of `p`'s epoch: the one held, or a new one whose
    /// unique id rank 0 makes and the coordinator hands to the others.
    async fn communicator(&mut self, p: &proto::NcclPlan, rank: usize, size: usize) -> Result<CommWatch, CallError> {
        if let Some((epoch, watch)) = &self.link.current {
            if *epoch == p.epoch && !watch.is_aborted() {
                return Ok(watch.clone());
            }
        }
        self.link.abort()?;
        let context = format!("the NCCL unique id of epoch {:#x}", p.epoch);
        let offered = if rank == 0 { Some(self.link.nccl.unique_id().map_err(anyhow::Error::from)?) } else { None };
        let request = proto::NcclIdRequest {
            worker_id: self.worker_id,
            epoch: p.epoch,
            unique_id: offered.map(|id| id.as_bytes().to_vec().into()).unwrap_or_default(),
        };
        let reply = self.client.nccl_unique_id(request).await.map_err(|s| CallError::from_status(&s, &context))?.into_inner();
        let id = UniqueId::from_bytes(&reply.unique_id)
            .ok_or_else(|| anyhow::anyhow!("{context}: the coordinator sent {} bytes, not {}", reply.unique_id.len(), UniqueId::BYTES))?;
        tracing::info!(epoch = p.epoch, rank, size, "joining an NCCL communicator");
        self.link.joining = true;
        let watch = self.dev.nccl_join(self.link.nccl.clone(), id, rank, size).await.map_err(anyhow::Error::from)?;
        self.link.joining = false;
        self.link.current = Some((p.epoch, watch.clone()));
        Ok(watch)
    }

    /// The coordinator ended the attempt while this member was still
    /// setting up or reducing: the communicator is aborted. A member that
    /// is inside `ncclCommInitRank` cannot be: its device thread waits for
    /// ranks that will not come, so the worker exits (a fresh process
    /// rejoins) rather than hang.
    fn interrupted(&mut self, end: anyhow::Result<Exchanged>) -> anyhow::Result<Exchanged> {
        if self.link.joining {
            anyhow::bail!(
                "the attempt ended while this worker was joining an NCCL communicator (ncclCommInitRank cannot be \
                 interrupted, and its device thread waits for ranks that will not come): exiting so that a fresh \
                 process rejoins"
            );
        }
        self.link.abort()?;
        end
    }
}

/// Runs the device's all-reduce while polling the communicator's
/// asynchronous error; on one, aborts it (which ends the device's wait).
async fn watched<T>(
    all_reduce: impl Future<Output = Result<T, crate::device::error::DeviceError>>,
    watch: &CommWatch,
) -> anyhow::Result<T> {
    tokio::pin!(all_reduce);
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            done = &mut all_reduce => return Ok(done?),
            _ = poll.tick() => {
                if let Err(e) = watch.async_error() {
                    watch.abort().map_err(|a| anyhow::anyhow!("NCCL reported an error during the all-reduce ({e}), and {a}"))?;
                    anyhow::bail!("NCCL reported an error during the all-reduce: {e}");
                }
            }
        }
    }
}

/// Rounds `grad` to the step's wire dtype (bf16: the values a ring's
/// all-gather would carry, so that the digests, the shadow's feed and the
/// applied update agree) and reports the SegmentDigests of the segment
/// `rank` owns, as a ring owner does; returns that segment's chunks, as
/// encoded, for the shadow's feed.
async fn report_owned(
    grad: &mut [f32],
    rank: usize,
    size: usize,
    chunk: usize,
    dtype: GradDtype,
    tx: &mpsc::Sender<proto::GradientMessage>,
) -> Vec<(u32, Bytes)> {
    let segment = plan::segments(wire::chunk_count(grad.len(), chunk), size)[rank].clone();
    let (owned_tx, owned_rx) = mpsc::unbounded_channel();
    for (i, range) in wire::chunk_ranges(grad.len(), chunk).enumerate() {
        let data = wire::encode(&grad[range.clone()], dtype);
        if dtype != GradDtype::F32 {
            // Cannot fail: the bytes were just encoded from this range.
            let _ = wire::decode_into(&data, dtype, i as u32, &mut grad[range]);
        }
        if segment.contains(&i) {
            let _ = owned_tx.send((i as u32, data));
        }
    }
    drop(owned_tx);
    report_segment(owned_rx, tx.clone(), dtype, chunk).await
}

/// Reports each final chunk of this member's segment (its float64 sum of
/// squares and digest, of the values every replica applies) as it comes;
/// returns the chunks as encoded, for the shadow's feed.
async fn report_segment(
    mut owned: mpsc::UnboundedReceiver<(u32, Bytes)>,
    tx: mpsc::Sender<proto::GradientMessage>,
    dtype: GradDtype,
    chunk_elements: usize,
) -> Vec<(u32, Bytes)> {
    let mut kept = Vec::new();
    let mut values = vec![0f32; chunk_elements];
    while let Some((index, data)) = owned.recv().await {
        let n = data.len() / dtype.bytes_per_element();
        let v = &mut values[..n.min(chunk_elements)];
        if wire::decode_into(&data, dtype, index, v).is_err() {
            // The ring checked its own frames: this cannot be, and the
            // coordinator, missing this digest, ends the attempt.
            tracing::error!(index, "an owned chunk of the wrong size; not reported");
            return kept;
        }
        let (sumsq, digest) = digest::chunk_scalars(v);
        let d = proto::SegmentDigest { index, sumsq, digest };
        if tx.send(msg(gradient_message::Kind::Segment(d))).await.is_err() {
            return kept;
        }
        kept.push((index, data));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_must_name_this_worker_at_its_rank() {
        let p = proto::NcclPlan { epoch: 1, rank: 1, size: 2, members: vec![4, 9] };
        assert_eq!(rank_in(&p, 9).unwrap(), (1, 2));
        assert!(rank_in(&p, 4).unwrap_err().to_string().contains("not rank 1"));
        let short = proto::NcclPlan { size: 3, ..p.clone() };
        assert!(rank_in(&short, 9).unwrap_err().to_string().contains("size 3 with 2 members"));
    }

    #[tokio::test]
    async fn an_owner_reports_its_segment_of_the_rounded_gradient() {
        // 5 chunks of 2 over 2 ranks: rank 1 owns chunks 2..5.
        let mut grad: Vec<f32> = (0..10).map(|i| 1.0 + i as f32 / 3.0).collect();
        let (tx, mut rx) = mpsc::channel(16);
        let owned = report_owned(&mut grad, 1, 2, 2, GradDtype::Bf16, &tx).await;
        assert_eq!(owned.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![2, 3, 4]);
        // Rounded to bf16 in place: encoding again changes nothing.
        for (i, r) in wire::chunk_ranges(10, 2).enumerate() {
            let mut back = vec![0f32; r.len()];
            wire::decode_into(&wire::encode(&grad[r.clone()], GradDtype::Bf16), GradDtype::Bf16, i as u32, &mut back).unwrap();
            assert_eq!(back, grad[r]);
        }
        drop(tx);
        let mut digests = Vec::new();
        while let Some(m) = rx.recv().await {
            match m.kind {
                Some(gradient_message::Kind::Segment(d)) => digests.push(d),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(digests.iter().map(|d| d.index).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!((digests[0].sumsq, digests[0].digest), digest::chunk_scalars(&grad[4..6]));
    }
}
