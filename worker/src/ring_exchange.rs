//! The ring backend of [`GradientExchange`]: the gradient goes worker to
//! worker (`ddpm::ring`), and the coordinator's ReduceGradients stream
//! carries only scalars, what the control plane decides on: the header
//! (loss, shard, compute time), the norm of each chunk of this member's
//! own gradient once the ring has read it (the coordinator screens them
//! as it screens the star's chunks), the sum of squares and digest of
//! each chunk of this member's reduced segment as soon as it is final
//! (while the all-gather still runs), the digest of the whole reduced
//! gradient once this replica holds it, a fault report if the ring
//! breaks, and back the step's outcome, which commits the step. The ring
//! takes every one of these as it passes over the gradient
//! (`ddpm::ring::measure`): no separate pass over it holds the step back.
//!
//! The update is applied only after the outcome arrives, and the outcome
//! comes only when every replica holds the bits the owners measured. After
//! it, with the coordinator's shadow on, this member streams its reduced
//! segment to the coordinator's copy of the state (FeedShadow) in the
//! background while the next step computes. A broken ring is reported
//! (naming the neighbour at fault) and the worker waits for the
//! coordinator's verdict: the attempt is abandoned and redone without the
//! culprit.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ddpm::config::GradDtype;
use ddpm::proto::{self, gradient_message, reduced_message};
use ddpm::ring::{feed, Measured, PeerListener, Reduced, RingFault, RingMembership, RingSpec};
use ddpm::train::Outcome;
use ddpm::wire;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::client::Client;
use crate::device::messages::Computed;
use crate::directive::CallError;
use crate::exchange::{ended, Exchanged, GradientExchange};
use crate::spares::Spares;

/// The worker-to-worker all-reduce.
pub struct RingExchange<'a> {
    pub client: &'a mut Client,
    pub worker_id: u64,
    pub peers: &'a PeerListener,
    /// Seconds the last ring took (for the worker's metrics).
    pub ring_s: f64,
    /// The shadow's spares this member keeps.
    pub spares: &'a mut Spares,
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

/// Fault injection for the tests (`tests/ring_faults.rs`):
/// `DDPM_FAULT_SKIP_FEED=STEP` makes this worker feed nothing of step
/// STEP's update to the coordinator's copy of the state and keep no spare
/// of it, as if it had died right after the outcome.
fn feed_skipped(step: u64) -> bool {
    std::env::var("DDPM_FAULT_SKIP_FEED").ok().and_then(|v| v.parse::<u64>().ok()) == Some(step)
}

/// Fault injections for the tests (`tests/ring_faults.rs`), each setting
/// the first element of this worker's gradient to VALUE (`NaN`, `1e20`) in
/// step STEP's first ring attempt: `DDPM_FAULT_GRAD_POISON=STEP:VALUE`
/// before its chunk norms are taken, like a device that computed garbage;
/// `DDPM_FAULT_RING_LIE=STEP:VALUE` after, so that the norms it reports
/// describe another gradient than the one it sends the ring, like a
/// member that lies (it behaves when the redo goes through the star).
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
        poison(a, &mut local);
        let lie = lie(a, &mut local, spec.chunk_elements);
        // The norms come once the ring has read the gradient.
        let header = header(self.worker_id, a, &local, dtype, Vec::new());
        let (tx, rx) = mpsc::channel(16);
        tx.send(msg(gradient_message::Kind::Header(header.clone()))).await.map_err(|_| anyhow::anyhow!("upload queue closed"))?;
        let context = format!("the all-reduce of step {} failed", a.step);
        let inbound = match self.client.reduce_gradients(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return ended(CallError::from_status(&s, &context)),
        };
        let (rank, n, chunk) = (spec.rank, spec.n, spec.chunk_elements);
        let started = Instant::now();
        let freeze = freeze_at(a.step, a.attempt);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        // What the ring measures goes up as it comes, beside the ring.
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let ring = async {
            let ring = plan.all_reduce(self.peers, spec, local.grad, events_tx, Some(first_tx));
            tokio::join!(ring, report_measures(events_rx, tx.clone(), lie)).0
        };
        let steps = Steps { step: a.step, context: &context, tx: &tx, freeze, first_bytes: freeze.map(|_| first_rx) };
        let result = steps.run(ring, inbound, &mut self.ring_s, started).await;
        if let Ok(Exchanged::Reduced { grad, .. }) = &result {
            if a.feed_shadow {
                // Encoded from the applied gradient: the bits the owners measured.
                let own = feed::own_chunks(grad, rank, n, chunk, dtype);
                let spare = feed::successor_chunks(grad, rank, n, chunk, dtype);
                feed_and_keep(self.client, self.spares, header, own, spare);
            }
        }
        result.or_else(ended)
    }
}

pub(crate) fn msg(kind: gradient_message::Kind) -> proto::GradientMessage {
    proto::GradientMessage { kind: Some(kind) }
}

/// The step's header, with this member's chunk norms taken of its own
/// gradient in one more read of it (NCCL's way), and the fault injections
/// around them.
pub(crate) fn header_with_faults(
    worker_id: u64,
    a: &proto::TrainAssignment,
    local: &mut Computed,
    dtype: GradDtype,
    chunk: usize,
) -> proto::GradientHeader {
    poison(a, local);
    let norms = wire::chunk_norms(&local.grad, chunk);
    lie(a, local, chunk);
    header(worker_id, a, local, dtype, norms)
}

fn header(worker_id: u64, a: &proto::TrainAssignment, local: &Computed, dtype: GradDtype, chunk_norms: Vec<f64>) -> proto::GradientHeader {
    proto::GradientHeader {
        worker_id,
        step: a.step,
        attempt: a.attempt,
        elements: local.grad.len() as u64,
        dtype: dtype.to_proto() as i32,
        loss: local.loss,
        samples: a.shard_size,
        compute_s: local.compute_s,
        chunk_norms,
    }
}

/// `DDPM_FAULT_GRAD_POISON` (see [`fault_value`]).
fn poison(a: &proto::TrainAssignment, local: &mut Computed) {
    if let (Some(value), Some(first)) = (fault_value("DDPM_FAULT_GRAD_POISON", a.step, a.attempt), local.grad.first_mut()) {
        tracing::warn!(step = a.step, "fault injection: this worker's gradient starts with {value}");
        *first = value;
    }
}

/// `DDPM_FAULT_RING_LIE` (see [`fault_value`]): where it applies, the
/// chunk norms of the gradient before the lie, which this member then
/// reports.
fn lie(a: &proto::TrainAssignment, local: &mut Computed, chunk: usize) -> Option<Vec<f64>> {
    let value = fault_value("DDPM_FAULT_RING_LIE", a.step, a.attempt)?;
    let honest = wire::chunk_norms(&local.grad, chunk);
    let first = local.grad.first_mut()?;
    tracing::warn!(
        step = a.step,
        "fault injection: this worker's header describes its gradient, but the ring gets {value} as its first element"
    );
    *first = value;
    Some(honest)
}

/// Sends the coordinator what the ring measured as it comes: this
/// member's chunk norms (or, lying, `lie`) and each final chunk's scalars.
async fn report_measures(
    mut events: mpsc::UnboundedReceiver<Measured>,
    tx: mpsc::Sender<proto::GradientMessage>,
    mut lie: Option<Vec<f64>>,
) {
    while let Some(e) = events.recv().await {
        let kind = match e {
            Measured::Norms(norms) => gradient_message::Kind::Norms(proto::ChunkNorms { norms: lie.take().unwrap_or(norms) }),
            Measured::Segment { index, sumsq, digest } => gradient_message::Kind::Segment(proto::SegmentDigest { index, sumsq, digest }),
        };
        if tx.send(msg(kind)).await.is_err() {
            return;
        }
    }
}

/// After a step's outcome with the shadow on: feeds this member's `own`
/// reduced chunks of the step `header` names to the coordinator's copy of
/// the state in the background, and keeps its successor's (`spare`) in
/// case the coordinator asks for them (`ddpm::ring::feed`).
pub(crate) fn feed_and_keep(
    client: &Client,
    spares: &mut Spares,
    header: proto::GradientHeader,
    own: Vec<(u32, Bytes)>,
    spare: Vec<(u32, Bytes)>,
) {
    if feed_skipped(header.step) {
        tracing::warn!(step = header.step, "fault injection: feeding nothing of this step to the coordinator's copy of the state");
        return;
    }
    spares.keep(header.clone(), spare);
    tokio::spawn(feed_shadow(client.clone(), header, own));
}

/// Streams reduced chunks of the step `header` names to the coordinator's
/// copy of the state. In the background: nothing waits for it but the
/// coordinator, which asks for the spare, then breaks its copy, if it
/// never arrives.
pub(crate) async fn feed_shadow(mut client: Client, header: proto::GradientHeader, owned: Vec<(u32, Bytes)>) {
    let step = header.step;
    let messages = std::iter::once(msg(gradient_message::Kind::Header(header)))
        .chain(owned.into_iter().map(|(index, data)| msg(gradient_message::Kind::Chunk(proto::GradientChunk { index, data }))));
    if let Err(s) = client.feed_shadow(tokio_stream::iter(messages)).await {
        tracing::warn!(step, "feeding the coordinator's copy of the state failed: {}", s.message());
    }
}

/// One attempt's ring as it runs beside the coordinator's stream.
struct Steps<'a> {
    step: u64,
    context: &'a str,
    tx: &'a mpsc::Sender<proto::GradientMessage>,
    freeze: Option<Duration>,
    first_bytes: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Steps<'_> {
    /// Runs `ring` to its end, reporting this replica's digest (or the
    /// fault) to the coordinator, and waits for the outcome on `inbound`.
    async fn run(
        mut self,
        ring: impl std::future::Future<Output = Result<Reduced, RingFault>>,
        mut inbound: tonic::Streaming<proto::ReducedMessage>,
        ring_s: &mut f64,
        started: Instant,
    ) -> Result<Exchanged, CallError> {
        tokio::pin!(ring);
        let step = self.step;
        // None while the ring runs; then its result.
        let mut reduced: Option<Result<Reduced, RingFault>> = None;
        let mut outcome: Option<proto::StepOutcome> = None;
        loop {
            if let (Some(_), Some(o)) = (&reduced, &outcome) {
                return Ok(match reduced.take().expect("matched") {
                    Ok(r) => Exchanged::Reduced {
                        grad: r.grad,
                        outcome: Outcome { apply: o.apply, grad_norm: o.grad_norm, clip_scale: o.clip_scale },
                    },
                    // Committed without this replica's copy complete (the
                    // coordinator waits for every replica's digest, so this
                    // is a coordinator that did not): it is behind.
                    Err(why) => Exchanged::Abandoned(format!("step {step} was committed but this replica's ring failed ({why})")),
                });
            }
            tokio::select! {
                arrived = async { self.first_bytes.as_mut().expect("guarded").await }, if self.first_bytes.is_some() => {
                    self.first_bytes = None;
                    if arrived.is_ok() {
                        self.freeze().await;
                    }
                }
                r = &mut ring, if reduced.is_none() => {
                    *ring_s = started.elapsed().as_secs_f64();
                    // A small ring can end in the poll that brought its
                    // first bytes: the freeze due then comes before this
                    // replica reports, as it would have mid-ring.
                    if self.first_bytes.take().is_some_and(|mut rx| rx.try_recv().is_ok()) {
                        self.freeze().await;
                    }
                    reduced = Some(self.report(r).await);
                }
                // After the outcome the coordinator ends the stream: not read again.
                m = inbound.next(), if outcome.is_none() => match m {
                    Some(Ok(proto::ReducedMessage { kind: Some(reduced_message::Kind::Outcome(o)) })) => outcome = Some(o),
                    Some(Ok(other)) => return Err(anyhow::anyhow!("unexpected message on a ring step's stream: {other:?}").into()),
                    Some(Err(s)) => return Err(CallError::from_status(&s, self.context)),
                    None => return Err(anyhow::anyhow!("the all-reduce of step {step} ended without an outcome").into()),
                },
            }
        }
    }

    /// The fault injection's freeze: nothing of this step moves for its seconds.
    async fn freeze(&self) {
        let secs = self.freeze.expect("set with first_bytes");
        tracing::warn!(step = self.step, "fault injection: freezing the ring for {:.1} s", secs.as_secs_f64());
        tokio::time::sleep(secs).await;
    }

    /// Tells the coordinator how the ring ended here: this replica's
    /// digest of the whole reduced gradient, or the fault naming a
    /// neighbour.
    async fn report(&self, r: Result<Reduced, RingFault>) -> Result<Reduced, RingFault> {
        match &r {
            Ok(reduced) => {
                // Taken by the ring as the all-gather brought each chunk.
                let d = proto::ReplicaDigest { digest: reduced.digest };
                let _ = self.tx.send(msg(gradient_message::Kind::Replica(d))).await;
            }
            Err(fault) => {
                tracing::warn!(step = self.step, suspect = fault.suspect, kind = ?fault.kind, "the ring broke: {fault}; reporting it");
                let _ = self.tx.send(msg(gradient_message::Kind::Fault(fault.to_proto()))).await;
            }
        }
        r
    }
}
