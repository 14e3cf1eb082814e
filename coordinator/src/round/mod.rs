//! One step's gradient all-reduce.
//!
//! Every member streams its mean shard gradient in chunks. Chunk i is summed
//! as soon as every member's copy of it has arrived, weighted by shard size
//! (`n_k / B`) and always in rank order, so the result does not depend on
//! arrival order; it is streamed back to every member at once while later
//! chunks are still coming in. After the last chunk the round decides the
//! step's outcome (skip if not finite, clipping factor) from a float64 norm
//! summed chunk by chunk in order.
//!
//! With the ring backend ([`Round::ring`]) the members sum among
//! themselves (`ddpm::ring`) and the round sees only scalars: for each
//! chunk of its own segment its owner reports the reduced chunk's float64
//! sum of squares and digest ([`Round::offer_segment`]), and every member,
//! once it holds the whole reduced gradient, one digest of it
//! ([`Round::offer_replica`]). The outcome is decided from the sums of
//! squares the same way as the star's, and goes out only when every
//! replica's digest is the one the owners' chunk digests give: every
//! replica then applies the bits the owners measured. The round never sees
//! a member's own gradient, so it screens the per-chunk norms each member
//! reports instead (in its header, or in a ChunkNorms message once its
//! ring has read its gradient: [`Round::offer_norms`]), once every
//! member's are in and before any outcome. Norms a member merely reports would let it send the ring
//! something else, so before the outcome the round also audits each
//! reduced chunk's sum of squares against them (`audit.rs`): a sum can be
//! no longer than its parts. No gradient byte reaches the coordinator on
//! the step's path; its own copy of the state is fed afterwards
//! (`shadow.rs`).
//! A member whose ring broke reports a fault naming a
//! neighbour and its kind; [`Round::ring_verdict`] names the culprit from
//! the reports (`verdict.rs`).
//!
//! A round fails in one place, [`Round::fail`]: every member still streaming
//! is told why (the culprit that it is refused, the others that the step is
//! abandoned and will be redone) and the training loop hears the failure.
//! Errors are [`RoundError`]s; the gRPC service maps them to statuses.
//!
//! Over 450 lines and still one concept: a step's round. The star and the
//! ring share its state (members, chunks, the outcome, the one failure path);
//! splitting the modes would duplicate that or open it to both files.

use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use ddpm::config::GradDtype;
use ddpm::proto::{self, reduced_message, ReducedMessage};
use ddpm::train::Outcome;
use ddpm::wire::{self, WireError};
use tokio::sync::{mpsc, oneshot};

mod audit;
pub mod screen;
pub mod verdict;
use screen::{loss_ok, Screening};
use verdict::FaultReport;

/// What a member sends back on its ReduceGradients stream.
pub type Outbound = mpsc::Sender<Result<ReducedMessage, RoundError>>;

/// Why a member's part in a round was refused or ended.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoundError {
    #[error("worker {worker} is not a member of step {step} attempt {attempt}")]
    NotMember { worker: u64, step: u64, attempt: u32 },
    #[error("gradient for step {got_step} attempt {got_attempt}, but the coordinator is reducing step {step} attempt {attempt}")]
    WrongStep { got_step: u64, got_attempt: u32, step: u64, attempt: u32 },
    #[error("gradient has {got} elements, the model has {want} parameters")]
    WrongElements { got: u64, want: usize },
    #[error("{0}")]
    BadDtype(WireError),
    #[error("gradient dtype {got} but the run uses {want}")]
    WrongDtype { got: &'static str, want: &'static str },
    #[error("step {step} attempt {attempt} is over")]
    Over { step: u64, attempt: u32 },
    #[error("worker {worker} already streams its gradient for step {step}")]
    AlreadyStreaming { worker: u64, step: u64 },
    #[error("no step is being reduced (worker {worker} sent step {step})")]
    NoRound { worker: u64, step: u64 },
    #[error("worker {worker} reported the loss {loss}, which no L_simple can be (it must be finite and non-negative)")]
    BadLoss { worker: u64, loss: f64 },
    /// Ring backend: the header's per-chunk norms cannot be screened.
    #[error("worker {worker} {why}")]
    BadNorms { worker: u64, why: String },
    /// This member is the round's culprit: why it was refused.
    #[error("{0}")]
    Refused(String),
    /// The round ended without a result through no fault of this member.
    #[error("step {step} attempt {attempt} abandoned ({reason}); it will be redone")]
    Abandoned { step: u64, attempt: u32, reason: String },
}

/// Why an offered chunk ended the round, and whose fault it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OfferError {
    /// The offering member's chunk is malformed.
    #[error("{0}")]
    Malformed(#[from] WireError),
    /// Screening found member `culprit` (maybe another than the offerer) out.
    #[error("worker {culprit} {reason}")]
    Screened { culprit: u64, reason: String },
    /// Ring backend: the member sent a chunk of another member's segment.
    #[error("sent chunk {index}, which is in rank {owner}'s segment, not its own")]
    NotOwned { index: u32, owner: usize },
    /// Ring backend: gradient bytes, where only scalars belong.
    #[error("sent gradient chunk {index} on a ring step's stream, which carries only digests")]
    ChunkInRing { index: u32 },
    /// Ring backend: a segment's sum of squares no chunk can have.
    #[error("reported the sum of squares {sumsq} for chunk {index}, which no chunk can have")]
    BadSumsq { index: u32, sumsq: f64 },
    /// Ring backend: a second replica digest.
    #[error("sent a second replica digest")]
    SecondReplica,
    /// Ring backend: chunk norms that cannot be screened, or a second set.
    #[error("{0}")]
    BadNorms(String),
    /// Ring backend: a member's segment must arrive in order.
    #[error("sent chunk {index} where chunk {due} was due")]
    OutOfOrder { index: u32, due: u32 },
}

/// Statuses to deliver to members after a failure.
pub type FailureSends = Vec<(Outbound, RoundError)>;

/// Delivers what [`Round::fail`] returned.
pub async fn deliver(sends: FailureSends) {
    for (out, err) in sends {
        let _ = out.send(Err(err)).await;
    }
}

/// The result of a completed round.
pub struct RoundResult {
    /// The reduced gradient as every member decoded it, `[P]`; empty with
    /// the ring, whose bytes never reach the coordinator on the step's path.
    pub reduced: Vec<f32>,
    pub outcome: Outcome,
    /// Shard-size-weighted mean loss.
    pub loss: f64,
    /// The slowest member's compute time.
    pub compute_s: f64,
    /// Each member's (id, compute seconds, shard size), in rank order.
    pub per_member: Vec<(u64, f64, u32)>,
    /// Per chunk, the members' median norm: the next step's screening reference.
    pub chunk_medians: Vec<f64>,
    /// From the last member's header to the outcome: the communication the
    /// step waited for.
    pub allreduce_s: f64,
}

/// Why a round ended without a result.
#[derive(Debug, Clone)]
pub struct RoundFailure {
    /// The member to drop (if the failure is one member's fault).
    pub culprit: Option<u64>,
    pub reason: String,
    /// Ring backend: a member lied (the audit failed) and none can be
    /// named, so the redo must go through the star, which sees and screens
    /// each member's own gradient.
    pub needs_star: bool,
}

impl RoundFailure {
    /// A failure that the same backend can redo.
    pub fn new(culprit: Option<u64>, reason: String) -> Self {
        Self { culprit, reason, needs_star: false }
    }
}

/// A step's all-reduce among a fixed set of members.
pub struct Round {
    pub step: u64,
    pub attempt: u32,
    /// Member ids in rank order.
    pub members: Vec<u64>,
    weights: Vec<f32>,
    total: usize,
    chunk_elements: usize,
    chunks: usize,
    dtype: GradDtype,
    max_norm: f64,
    screening: Screening,
    /// Ring backend: the owning rank of every chunk (`None`: the star).
    owners: Option<Vec<usize>>,
    /// Ring backend: a member's fault report arrived.
    fault_reported: tokio::sync::Notify,
    inner: Mutex<Inner>,
}

struct Inner {
    /// [chunk][rank]: the members' encoded chunks until the chunk is reduced.
    pending: Vec<Vec<Option<Bytes>>>,
    arrived: Vec<usize>,
    /// Next chunk index each member must send (chunks arrive in order).
    next_index: Vec<u32>,
    reduced: Vec<f32>,
    /// Per chunk, the float64 sum of squares of the reduced values.
    sumsq: Vec<f64>,
    /// Ring backend: per chunk, its owner's digest of the reduced values.
    digests: Vec<u64>,
    /// Ring backend: per rank, the digest of the whole reduced gradient it holds.
    replicas: Vec<Option<u64>>,
    /// Per chunk, the members' median norm (screening's output).
    medians: Vec<f64>,
    reduced_chunks: usize,
    outbound: Vec<Option<Outbound>>,
    losses: Vec<Option<(f64, u32, f64)>>,
    last_header: Option<Instant>,
    /// Ring backend: per rank, the neighbour it reported, the kind and why.
    faults: Vec<Option<FaultReport>>,
    /// Ring backend: per rank, the norms of its own gradient's chunks.
    norms: Vec<Option<Vec<f64>>>,
    /// Ring backend: every member's norms were screened and passed (the
    /// round cannot finish before).
    screened: bool,
    /// Ring backend: the member screening refused, or the audit's
    /// failure, until the service fails the round with it.
    pending_failure: Option<RoundFailure>,
    /// Ring backend: the audit ran (once, when the round was complete).
    audited: bool,
    finished: bool,
    done: Option<oneshot::Sender<Result<RoundResult, RoundFailure>>>,
}

impl Round {
    /// A round for `members` (rank order) with their shard sizes.
    // The round's shape (members, shards, size, chunking, dtype, clipping)
    // is fixed at creation; one call sets it all.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        step: u64,
        attempt: u32,
        members: Vec<u64>,
        shard_sizes: &[usize],
        total: usize,
        chunk_elements: usize,
        dtype: GradDtype,
        max_norm: f64,
    ) -> (Self, oneshot::Receiver<Result<RoundResult, RoundFailure>>) {
        let batch: usize = shard_sizes.iter().sum();
        let weights = shard_sizes.iter().map(|&n| (n as f64 / batch as f64) as f32).collect();
        let chunks = wire::chunk_count(total, chunk_elements);
        let n = members.len();
        let (tx, rx) = oneshot::channel();
        let inner = Inner {
            pending: vec![vec![None; n]; chunks],
            arrived: vec![0; chunks],
            next_index: vec![0; n],
            reduced: vec![0.0; total],
            sumsq: vec![0.0; chunks],
            digests: vec![0; chunks],
            replicas: vec![None; n],
            medians: vec![0.0; chunks],
            reduced_chunks: 0,
            outbound: vec![None; n],
            losses: vec![None; n],
            last_header: None,
            faults: vec![None; n],
            norms: vec![None; n],
            screened: false,
            pending_failure: None,
            audited: false,
            finished: false,
            done: Some(tx),
        };
        let round = Self {
            step,
            attempt,
            members,
            weights,
            total,
            chunk_elements,
            chunks,
            dtype,
            max_norm,
            screening: Screening::default(),
            owners: None,
            fault_reported: tokio::sync::Notify::new(),
            inner: Mutex::new(inner),
        };
        (round, rx)
    }

    /// The round with `screening` for its members' chunks (default: only
    /// a lone non-finite chunk is refused).
    pub fn screened(mut self, screening: Screening) -> Self {
        self.screening = screening;
        self
    }

    /// The round of a ring all-reduce: each member reports the digests of
    /// its own segment's reduced chunks (`ddpm::ring::plan`), in order, then
    /// the digest of the whole reduced gradient it holds.
    pub fn ring(mut self) -> Self {
        let n = self.members.len();
        let owners = ddpm::ring::plan::chunk_owners(self.chunks, n);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // No gradient bytes come in: no buffer for them.
        inner.reduced = Vec::new();
        for (rank, seg) in ddpm::ring::plan::segments(self.chunks, n).into_iter().enumerate() {
            inner.next_index[rank] = seg.start as u32;
        }
        drop(inner);
        self.owners = Some(owners);
        self
    }

    pub fn is_ring(&self) -> bool {
        self.owners.is_some()
    }

    /// The first chunk after member `rank`'s share: all chunks for the
    /// star, the end of its segment for the ring.
    fn share_end(&self, rank: usize) -> u32 {
        match &self.owners {
            None => self.chunks as u32,
            Some(_) => ddpm::ring::plan::segments(self.chunks, self.members.len())[rank].end as u32,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn rank_of(&self, worker_id: u64) -> Option<usize> {
        self.members.iter().position(|&m| m == worker_id)
    }

    /// Validates a member's header and registers its outbound stream.
    pub fn join(&self, header: &proto::GradientHeader, out: Outbound) -> Result<usize, RoundError> {
        let rank = self.rank_of(header.worker_id).ok_or(RoundError::NotMember {
            worker: header.worker_id,
            step: self.step,
            attempt: self.attempt,
        })?;
        if header.step != self.step || header.attempt != self.attempt {
            return Err(RoundError::WrongStep {
                got_step: header.step,
                got_attempt: header.attempt,
                step: self.step,
                attempt: self.attempt,
            });
        }
        if header.elements as usize != self.total {
            return Err(RoundError::WrongElements { got: header.elements, want: self.total });
        }
        let dtype = GradDtype::from_proto(header.dtype).map_err(RoundError::BadDtype)?;
        if dtype != self.dtype {
            return Err(RoundError::WrongDtype { got: dtype.name(), want: self.dtype.name() });
        }
        if !loss_ok(header.loss) {
            return Err(RoundError::BadLoss { worker: header.worker_id, loss: header.loss });
        }
        // A ring member's norms come here or later (`offer_norms`).
        let norms = self.owners.is_some() && !header.chunk_norms.is_empty();
        if norms {
            self.check_norms(&header.chunk_norms).map_err(|why| RoundError::BadNorms { worker: header.worker_id, why })?;
        }
        let mut inner = self.lock();
        if inner.finished {
            return Err(RoundError::Over { step: self.step, attempt: self.attempt });
        }
        if inner.outbound[rank].is_some() {
            return Err(RoundError::AlreadyStreaming { worker: header.worker_id, step: self.step });
        }
        inner.outbound[rank] = Some(out);
        inner.losses[rank] = Some((header.loss, header.samples, header.compute_s));
        inner.last_header = Some(Instant::now());
        if norms {
            inner.norms[rank] = Some(header.chunk_norms.clone());
            self.screen_members(&mut inner);
        }
        Ok(rank)
    }

    /// Ring backend: member `rank`'s chunk norms, sent after a header
    /// without them. Returns the outcome to send if this completed the
    /// round; a failed screening waits in [`Round::pending_failure`].
    pub fn offer_norms(&self, rank: usize, norms: Vec<f64>) -> Result<Vec<(Outbound, ReducedMessage)>, OfferError> {
        if self.owners.is_none() {
            return Err(OfferError::BadNorms("sent chunk norms on a step reduced by the coordinator, which screens the chunks".into()));
        }
        self.check_norms(&norms).map_err(OfferError::BadNorms)?;
        let mut inner = self.lock();
        if inner.finished {
            return Ok(Vec::new());
        }
        if inner.norms[rank].is_some() {
            return Err(OfferError::BadNorms("sent its chunk norms a second time".into()));
        }
        inner.norms[rank] = Some(norms);
        self.screen_members(&mut inner);
        Ok(self.finish_ring_if_complete(&mut inner))
    }

    /// Ring backend: a member's norms must be one per chunk, each a norm
    /// (non-negative) or not finite (a NaN or infinity in the chunk).
    fn check_norms(&self, norms: &[f64]) -> Result<(), String> {
        if norms.len() != self.chunks {
            return Err(format!("sent {} chunk norms, but the ring round has {} chunks", norms.len(), self.chunks));
        }
        if let Some(i) = norms.iter().position(|&x| x < 0.0) {
            return Err(format!("sent the norm {} for chunk {i}, which no norm can be", norms[i]));
        }
        Ok(())
    }

    /// Ring backend: once every member's norms are in, screens each chunk
    /// as the star screens the chunks themselves (`screen.rs`); the medians
    /// are the next step's reference. A culprit is kept for
    /// [`Round::pending_failure`] and the round can then never finish.
    fn screen_members(&self, inner: &mut Inner) {
        if inner.screened || inner.pending_failure.is_some() || inner.norms.iter().any(Option::is_none) {
            return;
        }
        for i in 0..self.chunks {
            let stats: Vec<(bool, f64)> = inner.norms.iter().flatten().map(|n| (n[i].is_finite(), n[i])).collect();
            match self.screening.judge(i, &stats) {
                Ok(median) => inner.medians[i] = median,
                Err((rank, reason)) => {
                    let culprit = self.members[rank];
                    let reason = format!("worker {culprit} {reason} (by the chunk norms it reported)");
                    inner.pending_failure = Some(RoundFailure::new(Some(culprit), reason));
                    return;
                }
            }
        }
        inner.screened = true;
    }

    /// Ring backend: the failure screening (after the last header, see
    /// [`Round::join`]) or the audit (when the round is complete) found,
    /// once; the caller fails the round with it.
    pub fn pending_failure(&self) -> Option<RoundFailure> {
        self.lock().pending_failure.take()
    }

    /// Takes chunk `index` from member `rank`. Returns the reduced messages
    /// to send (to every member) if this completed a chunk. A malformed
    /// chunk is the member's fault: the error names it.
    pub fn offer(&self, rank: usize, chunk: proto::GradientChunk) -> Result<Vec<(Outbound, ReducedMessage)>, OfferError> {
        let index = chunk.index;
        let i = index as usize;
        if i >= self.chunks {
            return Err(WireError::BadIndex { index, chunks: self.chunks }.into());
        }
        let range = wire::chunk_ranges(self.total, self.chunk_elements).nth(i).expect("index < chunks");
        let want = range.len() * self.dtype.bytes_per_element();
        if chunk.data.len() != want {
            return Err(WireError::WrongSize { index, got: chunk.data.len(), want, elements: range.len(), dtype: self.dtype.name() }.into());
        }
        if self.owners.is_some() {
            return Err(OfferError::ChunkInRing { index });
        }
        let mut inner = self.lock();
        if inner.finished {
            return Ok(Vec::new());
        }
        if inner.pending[i][rank].is_some() || inner.next_index[rank] > index {
            return Err(WireError::Duplicate { index }.into());
        }
        inner.next_index[rank] = index + 1;
        inner.pending[i][rank] = Some(chunk.data);
        inner.arrived[i] += 1;
        if inner.arrived[i] < self.members.len() {
            return Ok(Vec::new());
        }
        // Every member's copy is here: sum in rank order, screening each.
        let parts: Vec<Bytes> = inner.pending[i].iter_mut().map(|p| p.take().expect("all arrived")).collect();
        // One decode per part: summed and measured together; a refused
        // chunk's sum is never sent (the round fails instead).
        let acc = &mut inner.reduced[range.clone()];
        acc.fill(0.0);
        let mut stats = Vec::with_capacity(parts.len());
        for (part, &w) in parts.iter().zip(&self.weights) {
            let (finite, sumsq) = wire::accumulate_screened(part, self.dtype, index, w, acc)?;
            stats.push((finite, sumsq.sqrt()));
        }
        let median =
            self.screening.judge(i, &stats).map_err(|(culprit, reason)| OfferError::Screened { culprit: self.members[culprit], reason })?;
        wire::round_trip(acc, self.dtype);
        let encoded = wire::encode(acc, self.dtype);
        inner.sumsq[i] = ddpm::sumsq::sum_squares(acc);
        inner.medians[i] = median;
        inner.reduced_chunks += 1;
        let msg = ReducedMessage { kind: Some(reduced_message::Kind::Chunk(proto::GradientChunk { index, data: encoded })) };
        let mut sends: Vec<(Outbound, ReducedMessage)> = inner.outbound.iter().flatten().map(|o| (o.clone(), msg.clone())).collect();
        if inner.reduced_chunks == self.chunks {
            sends.extend(self.finish(&mut inner));
        }
        Ok(sends)
    }

    /// Ring backend: member `rank` owns reduced chunk `d.index`, whose sum
    /// of squares and digest are the step's. Returns the outcome to send if
    /// this completed the round.
    pub fn offer_segment(&self, rank: usize, d: &proto::SegmentDigest) -> Result<Vec<(Outbound, ReducedMessage)>, OfferError> {
        let (index, i) = (d.index, d.index as usize);
        let owners = self.owners.as_ref().ok_or(OfferError::Malformed(WireError::BadIndex { index, chunks: 0 }))?;
        if i >= self.chunks {
            return Err(WireError::BadIndex { index, chunks: self.chunks }.into());
        }
        if owners[i] != rank {
            return Err(OfferError::NotOwned { index, owner: owners[i] });
        }
        // A sum of squares is never negative; NaN or infinity says the
        // chunk is not finite (the step is then skipped).
        if d.sumsq < 0.0 {
            return Err(OfferError::BadSumsq { index, sumsq: d.sumsq });
        }
        let mut inner = self.lock();
        if inner.finished {
            return Ok(Vec::new());
        }
        if inner.next_index[rank] > index {
            return Err(WireError::Duplicate { index }.into());
        }
        if index != inner.next_index[rank] {
            return Err(OfferError::OutOfOrder { index, due: inner.next_index[rank] });
        }
        inner.sumsq[i] = d.sumsq;
        inner.digests[i] = d.digest;
        inner.next_index[rank] = index + 1;
        inner.reduced_chunks += 1;
        Ok(self.finish_ring_if_complete(&mut inner))
    }

    /// Ring backend: member `rank` holds the whole reduced gradient, whose
    /// digest is `digest`. Returns the outcome to send if this completed
    /// the round.
    pub fn offer_replica(&self, rank: usize, digest: u64) -> Result<Vec<(Outbound, ReducedMessage)>, OfferError> {
        let mut inner = self.lock();
        if inner.finished {
            return Ok(Vec::new());
        }
        if inner.replicas[rank].replace(digest).is_some() {
            return Err(OfferError::SecondReplica);
        }
        Ok(self.finish_ring_if_complete(&mut inner))
    }

    /// Ring backend: the round is complete once every chunk's digest is in,
    /// every member has joined (a member whose segment is empty, with
    /// fewer chunks than members, still owes its header: its loss, and its
    /// stream for the outcome) and every member reported its replica's
    /// digest. It then finishes if the reduced chunks pass the audit
    /// against the members' norms and every replica holds what the owners
    /// measured; if not, the failure waits in [`Round::pending_failure`] and
    /// no outcome goes out.
    fn finish_ring_if_complete(&self, inner: &mut Inner) -> Vec<(Outbound, ReducedMessage)> {
        if inner.finished
            || inner.audited
            || !inner.screened
            || inner.reduced_chunks < self.chunks
            || inner.losses.iter().any(Option::is_none)
            || inner.replicas.iter().any(Option::is_none)
        {
            return Vec::new();
        }
        inner.audited = true;
        let norms: Vec<&[f64]> = inner.norms.iter().flatten().map(Vec::as_slice).collect();
        let audit = audit::Audit { weights: &self.weights, norms: &norms, dtype: self.dtype };
        if let Err(why) = audit.check(&inner.sumsq) {
            let reason = format!(
                "step {} attempt {}: {why}; a member sent the ring another gradient than the one its header describes, \
                 and the reduced gradient cannot tell which, so the step is redone through the coordinator, which screens each member's own gradient",
                self.step, self.attempt
            );
            inner.pending_failure = Some(RoundFailure { culprit: None, reason, needs_star: true });
            return Vec::new();
        }
        let expected = wire::digest::replica_digest(inner.digests.iter().copied());
        let differ: Vec<u64> = inner.replicas.iter().zip(&self.members).filter(|(d, _)| **d != Some(expected)).map(|(_, &m)| m).collect();
        if !differ.is_empty() {
            // A replica whose copy differs got other bytes in the
            // all-gather than its chunks' owners measured (a member that
            // forwards something else, or a corrupted copy), or lies about
            // it: which one the digests cannot say, so the star redoes the
            // step and hands every replica the same reduced gradient.
            let reason = format!(
                "step {} attempt {}: the reduced gradient held by worker(s) {differ:?} is not the one its chunks' owners measured; \
                 the step is redone through the coordinator, which sends every replica the same reduced gradient",
                self.step, self.attempt
            );
            inner.pending_failure = Some(RoundFailure { culprit: None, reason, needs_star: true });
            return Vec::new();
        }
        self.finish(inner)
    }

    /// Reduces into `buf` (zeroed, `[P]`) instead of a fresh allocation;
    /// a buffer of another length is ignored.
    pub fn with_buffer(self, buf: Vec<f32>) -> Self {
        {
            let mut inner = self.lock();
            if buf.len() == inner.reduced.len() {
                inner.reduced = buf;
            }
        }
        self
    }

    /// After a member joined: the outcome to send if that completed a
    /// ring round (nothing for the star, which completes on chunks only).
    pub fn after_join(&self) -> Vec<(Outbound, ReducedMessage)> {
        if self.owners.is_none() {
            return Vec::new();
        }
        self.finish_ring_if_complete(&mut self.lock())
    }

    /// Ring backend: member `rank` reports that its ring broke, naming
    /// neighbour `report.suspect`. False if the suspect is not another
    /// member (the report itself is then the reporter's fault).
    pub fn report_fault(&self, rank: usize, report: FaultReport) -> bool {
        if self.rank_of(report.suspect).is_none() || self.members[rank] == report.suspect {
            return false;
        }
        self.lock().faults[rank] = Some(report);
        self.fault_reported.notify_waiters();
        true
    }

    /// Ring backend: resolves once members reported a broken ring, with
    /// the failure to end the round with; `verdict.rs` has the rules. It
    /// waits for every member but one to report, or `window` after the
    /// first. Never resolves for the star.
    pub async fn ring_verdict(&self, window: std::time::Duration) -> RoundFailure {
        if self.owners.is_none() {
            return std::future::pending().await;
        }
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let reported = self.fault_reported.notified();
            tokio::pin!(reported);
            reported.as_mut().enable();
            let faults = self.lock().faults.clone();
            let count = faults.iter().flatten().count();
            if count > 0 {
                let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + window);
                if count + 1 >= self.members.len() || tokio::time::Instant::now() >= deadline {
                    return self.culprit_of(&faults);
                }
                let _ = tokio::time::timeout_at(deadline, reported).await;
            } else {
                reported.await;
            }
        }
    }

    fn culprit_of(&self, faults: &[Option<FaultReport>]) -> RoundFailure {
        let (by, f) = verdict::culprit(&self.members, faults).expect("called with at least one report");
        let reason = format!(
            "worker {} broke the ring of step {} attempt {}: worker {by} reported that {}",
            f.suspect, self.step, self.attempt, f.reason
        );
        RoundFailure::new(Some(f.suspect), reason)
    }

    /// All chunks reduced: decide the outcome, hand the result over.
    fn finish(&self, inner: &mut Inner) -> Vec<(Outbound, ReducedMessage)> {
        inner.finished = true;
        let norm = inner.sumsq.iter().sum::<f64>().sqrt();
        let outcome = Outcome::from_norm(norm, self.max_norm);
        let (mut loss, mut compute_s) = (0.0, 0.0f64);
        let mut per_member = Vec::with_capacity(self.members.len());
        for ((l, &w), &id) in inner.losses.iter().zip(&self.weights).zip(&self.members) {
            if let Some((value, samples, c)) = l {
                loss += w as f64 * value;
                compute_s = compute_s.max(*c);
                per_member.push((id, *c, *samples));
            }
        }
        let allreduce_s = inner.last_header.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        let msg = ReducedMessage {
            kind: Some(reduced_message::Kind::Outcome(proto::StepOutcome {
                apply: outcome.apply,
                grad_norm: outcome.grad_norm,
                clip_scale: outcome.clip_scale,
            })),
        };
        let sends = inner.outbound.iter_mut().filter_map(|o| o.take()).map(|o| (o, msg.clone())).collect();
        let reduced = std::mem::take(&mut inner.reduced);
        let chunk_medians = std::mem::take(&mut inner.medians);
        if let Some(done) = inner.done.take() {
            let _ = done.send(Ok(RoundResult { reduced, outcome, loss, compute_s, per_member, chunk_medians, allreduce_s }));
        }
        sends
    }

    /// Ends the round without a result: the culprit (if any) is told it is
    /// refused, every other member still streaming that the step is
    /// abandoned; the trainer hears `failure`. Returns what to deliver
    /// ([`deliver`]); nothing if the round had ended already.
    pub fn fail(&self, failure: RoundFailure) -> FailureSends {
        let mut inner = self.lock();
        if inner.finished {
            return Vec::new();
        }
        inner.finished = true;
        let sends = inner
            .outbound
            .iter_mut()
            .enumerate()
            .filter_map(|(rank, o)| {
                o.take().map(|o| {
                    let err = if failure.culprit == Some(self.members[rank]) {
                        RoundError::Refused(failure.reason.clone())
                    } else {
                        RoundError::Abandoned { step: self.step, attempt: self.attempt, reason: failure.reason.clone() }
                    };
                    (o, err)
                })
            })
            .collect();
        if let Some(done) = inner.done.take() {
            let _ = done.send(Err(failure));
        }
        sends
    }

    /// If member `rank` has not sent all its chunks (with the ring: the
    /// digests of its segment and of its replica), and the round is still
    /// open, how many chunks it sent.
    pub fn owes(&self, rank: usize) -> Option<u32> {
        let inner = self.lock();
        let sent = inner.next_index[rank];
        let replica_due = self.is_ring() && inner.replicas[rank].is_none();
        (!inner.finished && (sent < self.share_end(rank) || replica_due)).then_some(sent)
    }

    /// Members that have not delivered their whole gradient.
    pub fn stragglers(&self) -> Vec<u64> {
        let inner = self.lock();
        self.members
            .iter()
            .zip(&inner.next_index)
            .enumerate()
            .filter(|(rank, (_, &sent))| {
                let ring_due = self.is_ring() && (inner.losses[*rank].is_none() || inner.replicas[*rank].is_none());
                sent < self.share_end(*rank) || ring_due
            })
            .map(|(_, (&id, _))| id)
            .collect()
    }

    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }
}

#[cfg(test)]
mod tests;
