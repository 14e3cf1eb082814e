//! The ring backend of [`GradientExchange`]: the gradient goes worker to
//! worker (`ddpm::ring`), and the coordinator's ReduceGradients stream
//! carries only what the control plane needs: the header (loss, shard,
//! compute time, and the norm of each chunk of this member's own gradient,
//! which the coordinator screens as it screens the star's chunks), this
//! member's reduced segment as soon as each chunk of
//! it is final (while the all-gather still runs), a fault report if the
//! ring breaks, and back the step's outcome, which commits the step.
//!
//! The update is applied only after the outcome arrives, so a replica
//! never runs ahead of the coordinator's copy. A broken ring is reported
//! (naming the neighbour at fault) and the worker waits for the
//! coordinator's verdict: the attempt is abandoned and redone without the
//! culprit.

use std::time::{Duration, Instant};

use ddpm::config::GradDtype;
use ddpm::proto::{self, gradient_message, reduced_message};
use ddpm::ring::{PeerListener, RingFault, RingMembership, RingSpec};
use ddpm::train::Outcome;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::client::Client;
use crate::device::messages::Computed;
use crate::directive::CallError;
use crate::exchange::{ended, Exchanged, GradientExchange};

/// The worker-to-worker all-reduce.
pub struct RingExchange<'a> {
    pub client: &'a mut Client,
    pub worker_id: u64,
    pub peers: &'a PeerListener,
    /// Seconds the last ring took (for the worker's metrics).
    pub ring_s: f64,
}

/// Fault injection for the tests (`tests/ring_faults.rs`):
/// `DDPM_FAULT_RING_FREEZE=STEP:SECONDS` freezes this worker in the middle
/// of step STEP's first ring (after its predecessor's first bytes arrived)
/// for SECONDS: it neither reads, writes nor reports, while its heartbeats
/// go on, like a process hung in the data plane.
fn freeze_at(step: u64, attempt: u32) -> Option<Duration> {
    let v = std::env::var("DDPM_FAULT_RING_FREEZE").ok()?;
    let (s, secs) = v.split_once(':')?;
    (attempt == 0 && s.parse::<u64>().ok()? == step).then(|| Duration::from_secs_f64(secs.parse().unwrap_or(0.0)))
}

/// Fault injections for the tests (`tests/ring_faults.rs`), each setting
/// the first element of this worker's gradient to VALUE (`NaN`, `1e20`) in
/// step STEP's first ring attempt: `DDPM_FAULT_GRAD_POISON=STEP:VALUE`
/// before its chunk norms are taken, like a device that computed garbage;
/// `DDPM_FAULT_RING_LIE=STEP:VALUE` after, so that its header describes
/// another gradient than the one it sends the ring, like a member that
/// lies (it behaves when the redo goes through the star).
fn fault_value(var: &str, step: u64, attempt: u32) -> Option<f32> {
    let v = std::env::var(var).ok()?;
    let (s, value) = v.split_once(':')?;
    (attempt == 0 && s.parse::<u64>().ok()? == step).then(|| value.parse().ok()).flatten()
}

impl GradientExchange for RingExchange<'_> {
    async fn exchange(&mut self, a: &proto::TrainAssignment, mut local: Computed) -> anyhow::Result<Exchanged> {
        let p = a.ring.as_ref().ok_or_else(|| anyhow::anyhow!("a ring exchange without a ring plan"))?;
        let plan = RingMembership::from_plan(p, self.worker_id)?;
        let dtype = GradDtype::from_proto(a.grad_dtype)?;
        anyhow::ensure!(a.global_batch > 0 && a.shard_size <= a.global_batch, "shard {} of a batch of {}", a.shard_size, a.global_batch);
        let spec = RingSpec {
            n: plan.members.len(),
            rank: plan.rank,
            total: local.grad.len(),
            chunk_elements: a.chunk_elements.max(1) as usize,
            dtype,
            // The coordinator's weight for a member, computed the same way.
            weight: (a.shard_size as f64 / a.global_batch as f64) as f32,
            peer_timeout: plan.timeout,
            shm: p.shm,
        };
        if let (Some(value), Some(first)) = (fault_value("DDPM_FAULT_GRAD_POISON", a.step, a.attempt), local.grad.first_mut()) {
            tracing::warn!(step = a.step, "fault injection: this worker's gradient starts with {value}");
            *first = value;
        }
        let header = proto::GradientHeader {
            worker_id: self.worker_id,
            step: a.step,
            attempt: a.attempt,
            elements: local.grad.len() as u64,
            dtype: dtype.to_proto() as i32,
            loss: local.loss,
            samples: a.shard_size,
            compute_s: local.compute_s,
            // One read of the gradient (memory-bound, a few percent of the
            // ring's own passes over it).
            chunk_norms: ddpm::wire::chunk_norms(&local.grad, spec.chunk_elements),
        };
        if let (Some(value), Some(first)) = (fault_value("DDPM_FAULT_RING_LIE", a.step, a.attempt), local.grad.first_mut()) {
            tracing::warn!(
                step = a.step,
                "fault injection: this worker's header describes its gradient, but the ring gets {value} as its first element"
            );
            *first = value;
        }
        let msg = |kind| proto::GradientMessage { kind: Some(kind) };
        let (tx, rx) = mpsc::channel(16);
        tx.send(msg(gradient_message::Kind::Header(header))).await.map_err(|_| anyhow::anyhow!("upload queue closed"))?;
        let context = format!("the all-reduce of step {} failed", a.step);
        let mut inbound = match self.client.reduce_gradients(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return ended(CallError::from_status(&s, &context)),
        };
        // This member's segment goes up as its chunks become final.
        let (owned_tx, mut owned_rx) = mpsc::unbounded_channel::<(u32, bytes::Bytes)>();
        let upload = {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some((index, data)) = owned_rx.recv().await {
                    let chunk = proto::GradientChunk { index, data };
                    if tx.send(msg(gradient_message::Kind::Chunk(chunk))).await.is_err() {
                        return;
                    }
                }
            })
        };
        let started = Instant::now();
        let freeze = freeze_at(a.step, a.attempt);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let mut first_bytes = freeze.map(|_| first_rx);
        let ring = plan.all_reduce(self.peers, spec, local.grad, owned_tx, Some(first_tx));
        tokio::pin!(ring);
        // None while the ring runs; then its result.
        let mut reduced: Option<Result<Vec<f32>, RingFault>> = None;
        let mut outcome: Option<proto::StepOutcome> = None;
        let result = loop {
            if let (Some(done), Some(o)) = (&reduced, &outcome) {
                break match done {
                    Ok(_) => {
                        let Some(Ok(grad)) = reduced.take() else { unreachable!() };
                        let outcome = Outcome { apply: o.apply, grad_norm: o.grad_norm, clip_scale: o.clip_scale };
                        Ok(Exchanged::Reduced { grad, outcome })
                    }
                    // Committed without this replica's copy complete: the
                    // coordinator sends it the state again (it is behind).
                    Err(why) => Ok(Exchanged::Abandoned(format!("step {} was committed but this replica's ring failed ({why})", a.step))),
                };
            }
            tokio::select! {
                arrived = async { first_bytes.as_mut().expect("guarded").await }, if first_bytes.is_some() => {
                    first_bytes = None;
                    if arrived.is_ok() {
                        let secs = freeze.expect("set with first_bytes");
                        tracing::warn!(step = a.step, "fault injection: freezing the ring for {:.1} s", secs.as_secs_f64());
                        tokio::time::sleep(secs).await;
                    }
                }
                r = &mut ring, if reduced.is_none() => {
                    self.ring_s = started.elapsed().as_secs_f64();
                    match r {
                        Ok(grad) => reduced = Some(Ok(grad)),
                        Err(fault) => {
                            tracing::warn!(step = a.step, suspect = fault.suspect, kind = ?fault.kind, "the ring broke: {fault}; reporting it");
                            let _ = tx.send(msg(gradient_message::Kind::Fault(fault.to_proto()))).await;
                            reduced = Some(Err(fault));
                        }
                    }
                }
                // After the outcome the coordinator ends the stream: not read again.
                m = inbound.next(), if outcome.is_none() => match m {
                    Some(Ok(proto::ReducedMessage { kind: Some(reduced_message::Kind::Outcome(o)) })) => outcome = Some(o),
                    Some(Ok(other)) => break Err(anyhow::anyhow!("unexpected message on a ring step's stream: {other:?}").into()),
                    Some(Err(s)) => break Err(CallError::from_status(&s, &context)),
                    None => break Err(anyhow::anyhow!("the all-reduce of step {} ended without an outcome", a.step).into()),
                },
            }
        };
        upload.abort();
        match result {
            Ok(done) => Ok(done),
            Err(e) => ended(e),
        }
    }
}
