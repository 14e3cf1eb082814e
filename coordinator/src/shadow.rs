//! The coordinator's own copy of the run state (parameters, Adam, EMA),
//! kept off the step's critical path: the shadow.
//!
//! A step commits on scalars (`round/`); its update reaches the shadow
//! afterwards. With the star the reduced gradient is in the coordinator's
//! hands already ([`Shadow::commit_reduced`]); with the ring each member
//! streams its reduced segment after the outcome, while the next step
//! computes ([`Shadow::expect_feed`], [`Shadow::offer`]). An applier task
//! hands complete steps, in order, to the state thread (`state.rs`), which
//! runs Adam and the EMA on its own thread. The training loop waits only
//! when the shadow is more than `[dist] shadow_lag` steps behind
//! ([`Shadow::wait_lag`]).
//!
//! What reads the state asks for it at a step ([`Shadow::at`]): a
//! checkpoint or a checksum of step `s` is taken right after the shadow
//! applied `s` (the state thread runs commands in order), so it is exactly
//! step `s`'s, however far the loop has gone meanwhile.
//!
//! Every replica holds the whole reduced gradient after the all-gather, so
//! each chunk has two feeders: its owner, which feeds it at once, and the
//! owner's predecessor in the ring, which keeps it as a spare and feeds it
//! only when asked (`shadow/spares.rs`: the owner left, or did not feed).
//! A member that leaves before it fed a committed step costs nothing while
//! the other feeder of each of its chunks is alive; when both are gone,
//! that step's update cannot be completed: the shadow is then broken from
//! that step on ([`Shadow::broken`]) and stays at the step before.
//!
//! One file for the queue of committed steps, the feed, the lag bound and
//! the hooks at a step: they share one lock and one notion of "applied";
//! split, each would need the others' internals.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use ddpm::checkpoint::CheckpointData;
use ddpm::config::{GradDtype, ShadowMode};
use ddpm::proto;
use ddpm::train::flat::Layout;
use ddpm::train::Outcome;
use ddpm::wire::{self, WireError};
use tokio::sync::{oneshot, Notify};

use crate::state::{Snapshot, SnapshotKind, StateHandle, Uploaded};
use upload::Upload;

mod spares;
mod upload;
pub use upload::UploadError;

/// Why a fed chunk was refused.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("no committed step {step} attempt {attempt} is waiting for its update (the shadow is at step {applied})")]
    NotExpected { step: u64, attempt: u32, applied: u64 },
    #[error("worker {worker} was not a member of step {step}")]
    NotMember { worker: u64, step: u64 },
    #[error("chunk {index} of step {step} is fed by rank {owner} and its predecessor, not by worker {worker}")]
    NotOwned { step: u64, index: u32, owner: usize, worker: u64 },
    #[error(transparent)]
    Malformed(#[from] WireError),
}

/// Why the shadow cannot give what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShadowError {
    #[error("the coordinator's copy of the state is broken since step {step}: {reason}")]
    Broken { step: u64, reason: String },
    #[error("the coordinator's copy of the state is at step {applied}, past step {step}")]
    Past { step: u64, applied: u64 },
    #[error("the state thread has stopped")]
    Stopped,
}

/// What to take from the state right after a step is applied.
pub enum Hook {
    Checksum(oneshot::Sender<u64>),
    Capture(oneshot::Sender<CheckpointData>),
    Snapshot(SnapshotKind, oneshot::Sender<Snapshot>),
}

impl Pending {
    /// Whether rank `r` feeds chunk `i`: its owner, or the owner's
    /// predecessor in the ring.
    fn feeds(&self, r: usize, i: usize) -> bool {
        let n = self.members.len();
        let owner = self.owners[i];
        owner == r || (owner + n - 1) % n == r
    }

    /// Whether rank `r` feeds a chunk still missing.
    fn owes(&self, r: usize) -> bool {
        self.filled.iter().enumerate().any(|(i, &f)| !f && self.feeds(r, i))
    }

    /// A missing chunk both of whose feeders are gone.
    fn orphan(&self) -> Option<usize> {
        (0..self.filled.len()).find(|&i| !self.filled[i] && (0..self.lost.len()).all(|r| !self.feeds(r, i) || self.lost[r]))
    }
}

/// A feed stream of one member for one step, open while this lives (see
/// [`Shadow::open_feed`]).
pub struct FeedStream<'a> {
    shadow: &'a Shadow,
    worker: u64,
    step: u64,
    attempt: u32,
}

impl Drop for FeedStream<'_> {
    fn drop(&mut self) {
        self.shadow.with_rank(self.worker, self.step, self.attempt, spares::RankFeed::closed);
    }
}

/// A committed step whose update has not reached the state thread.
struct Pending {
    step: u64,
    attempt: u32,
    outcome: Outcome,
    /// Member ids in rank order (the ring's owners), empty for the star.
    members: Vec<u64>,
    /// The owning rank of each chunk (empty: the update is complete).
    owners: Vec<usize>,
    /// Per chunk, whether it arrived.
    filled: Vec<bool>,
    /// Per rank, whether the member left.
    lost: Vec<bool>,
    /// Per rank, its feed streams and whether its spare was asked for.
    ranks: Vec<spares::RankFeed>,
    remaining: usize,
    dtype: GradDtype,
    chunk_elements: usize,
    grad: Vec<f32>,
    hooks: Vec<Hook>,
    /// `[dist] shadow = "off"`: this entry is a replica's whole state to
    /// load, not an update.
    upload: Option<Upload>,
}

struct Inner {
    pending: VecDeque<Pending>,
    /// The last step handed to the state thread.
    applied: u64,
    /// The last step committed.
    committed: u64,
    /// Steps skipped (non-finite gradients) up to `applied`.
    skipped: u64,
    /// Steps skipped up to `committed` (kept with the shadow off, where
    /// no update carries its outcome to the applier).
    committed_skipped: u64,
    broken: Option<ShadowError>,
}

/// The shadow: one per coordinator, shared by the loop, the services and
/// the jobs.
pub struct Shadow {
    state: StateHandle,
    mode: ShadowMode,
    /// Samples in the dataset (checkpoints record the data stream's shape).
    dataset_len: usize,
    inner: Mutex<Inner>,
    changed: Notify,
    /// Held while commands go to the state thread, so that what reads the
    /// state at a step is queued right behind that step's update.
    issuing: tokio::sync::Mutex<()>,
}

impl Shadow {
    /// The shadow over `state` (at its start step, with `skipped` steps
    /// skipped before) of a run on `dataset_len` samples, and its applier
    /// task.
    pub fn start(state: StateHandle, mode: ShadowMode, skipped: u64, dataset_len: usize) -> Arc<Self> {
        let step = state.start_step;
        let inner = Inner { pending: VecDeque::new(), applied: step, committed: step, skipped, committed_skipped: skipped, broken: None };
        let changed = Notify::new();
        let shadow = Arc::new(Self { state, mode, dataset_len, inner: Mutex::new(inner), changed, issuing: tokio::sync::Mutex::new(()) });
        tokio::spawn(apply_in_order(shadow.clone()));
        shadow
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn layout(&self) -> &Arc<Layout> {
        &self.state.layout
    }

    /// The step the state started at (0, or the resumed checkpoint's).
    pub fn start_step(&self) -> u64 {
        self.state.start_step
    }

    /// `(applied, committed)`: the shadow's step and the run's.
    pub fn steps(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.applied, inner.committed)
    }

    /// Why the shadow stopped following the run, if it did.
    pub fn broken(&self) -> Option<ShadowError> {
        self.lock().broken.clone()
    }

    /// A buffer for a star round's reduced gradient (the state thread's
    /// last one when it handed it back).
    pub fn gradient_buffer(&self) -> Vec<f32> {
        self.state.gradient_buffer(self.state.layout.total)
    }

    /// Step `step` committed with its reduced gradient in hand (the star).
    pub fn commit_reduced(&self, step: u64, grad: Vec<f32>, outcome: Outcome) {
        let p = Pending {
            step,
            attempt: 0,
            outcome,
            members: Vec::new(),
            owners: Vec::new(),
            filled: Vec::new(),
            lost: Vec::new(),
            ranks: Vec::new(),
            remaining: 0,
            dtype: GradDtype::F32,
            chunk_elements: 1,
            grad,
            hooks: Vec::new(),
            upload: None,
        };
        self.push(p);
    }

    /// Step `step` (attempt `attempt`) committed through the ring: its
    /// members (rank order) will feed their own segments' reduced chunks,
    /// and their successors' when asked.
    pub fn expect_feed(&self, step: u64, attempt: u32, members: Vec<u64>, dtype: GradDtype, chunk_elements: usize, outcome: Outcome) {
        let total = self.state.layout.total;
        let chunks = wire::chunk_count(total, chunk_elements);
        let p = Pending {
            step,
            attempt,
            outcome,
            filled: vec![false; chunks],
            lost: vec![false; members.len()],
            ranks: vec![spares::RankFeed::default(); members.len()],
            owners: ddpm::ring::plan::chunk_owners(chunks, members.len()),
            members,
            remaining: chunks,
            dtype,
            chunk_elements,
            grad: self.state.gradient_buffer(total),
            hooks: Vec::new(),
            upload: None,
        };
        self.push(p);
    }

    fn push(&self, p: Pending) {
        let mut inner = self.lock();
        inner.committed = p.step;
        inner.committed_skipped += u64::from(!p.outcome.apply);
        inner.pending.push_back(p);
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Chunk `chunk` of step `step`'s reduced gradient from `worker`.
    pub fn offer(&self, worker: u64, step: u64, attempt: u32, chunk: &proto::GradientChunk) -> Result<(), FeedError> {
        let mut inner = self.lock();
        let (applied, committed) = (inner.applied, inner.committed);
        let Some(p) = inner.pending.iter_mut().find(|p| p.step == step && p.attempt == attempt && !p.owners.is_empty()) else {
            // A second copy of a step already complete is late, not wrong.
            let other_attempt = inner.pending.iter().any(|p| p.step == step);
            return if step > committed || other_attempt { Err(FeedError::NotExpected { step, attempt, applied }) } else { Ok(()) };
        };
        let rank = p.members.iter().position(|&m| m == worker).ok_or(FeedError::NotMember { worker, step })?;
        let (index, i) = (chunk.index, chunk.index as usize);
        let owner = *p.owners.get(i).ok_or(WireError::BadIndex { index, chunks: p.owners.len() })?;
        if !p.feeds(rank, i) {
            return Err(FeedError::NotOwned { step, index, owner, worker });
        }
        if p.filled[i] {
            // The other feeder's copy came first (a spare asked for while
            // the owner's feed was slow): the same bits (every replica's
            // digest matched before the step committed).
            return Ok(());
        }
        let range = wire::chunk_ranges(p.grad.len(), p.chunk_elements).nth(i).expect("index < chunks");
        wire::decode_into(&chunk.data, p.dtype, index, &mut p.grad[range])?;
        p.filled[i] = true;
        p.remaining -= 1;
        let complete = p.remaining == 0;
        drop(inner);
        if complete {
            self.changed.notify_waiters();
        }
        Ok(())
    }

    /// `worker`'s feed of step `step` (attempt `attempt`) is open until the
    /// returned guard drops: whether an owner is still feeding decides
    /// when its spare is asked for (`shadow/spares.rs`).
    pub fn open_feed(&self, worker: u64, step: u64, attempt: u32) -> FeedStream<'_> {
        self.with_rank(worker, step, attempt, spares::RankFeed::opened);
        FeedStream { shadow: self, worker, step, attempt }
    }

    fn with_rank(&self, worker: u64, step: u64, attempt: u32, change: impl FnOnce(&mut spares::RankFeed)) {
        let mut inner = self.lock();
        let p = inner.pending.iter_mut().find(|p| p.step == step && p.attempt == attempt && !p.owners.is_empty());
        if let Some((p, r)) = p.and_then(|p| p.members.iter().position(|&m| m == worker).map(|r| (p, r))) {
            change(&mut p.ranks[r]);
        }
    }

    /// The spares to ask for now, `waited` into a wait at the lag bound:
    /// (the holder, what to ask it). Each is returned once.
    pub fn spares_wanted(&self, waited: std::time::Duration) -> Vec<(u64, proto::FeedSpare)> {
        let mut inner = self.lock();
        let mut wanted = Vec::new();
        for p in inner.pending.iter_mut() {
            let n = p.members.len();
            for r in spares::to_ask(&p.owners, &p.filled, &p.lost, &mut p.ranks, waited) {
                wanted.push((p.members[(r + n - 1) % n], proto::FeedSpare { step: p.step, attempt: p.attempt }));
            }
        }
        wanted
    }

    /// Members that still owe chunks of a committed step.
    pub fn owing(&self) -> Vec<u64> {
        let inner = self.lock();
        let mut ids: Vec<u64> =
            inner.pending.iter().flat_map(|p| p.members.iter().enumerate().filter(|(r, _)| p.owes(*r))).map(|(_, &m)| m).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Member `worker` left: a committed step with a chunk that neither of
    /// its feeders can send any more can never complete, and the shadow
    /// breaks there.
    pub fn member_lost(&self, worker: u64) {
        let orphan = {
            let mut inner = self.lock();
            for p in inner.pending.iter_mut() {
                if let Some(r) = p.members.iter().position(|&m| m == worker) {
                    p.lost[r] = true;
                }
            }
            inner.pending.iter().find_map(|p| p.orphan().map(|i| (p.step, i)))
        };
        if let Some((step, chunk)) = orphan {
            self.break_at(
                step,
                format!("worker {worker} left, and with it the last member that could feed chunk {chunk} of step {step}'s update"),
            );
        }
    }

    /// Waits until committed step `step` (attempt `attempt`) expects its
    /// feed: a member may start feeding as soon as it has the outcome,
    /// before the training loop has registered the step.
    pub async fn expecting(&self, step: u64, attempt: u32, within: std::time::Duration) -> Result<(), FeedError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let inner = self.lock();
                if inner.pending.iter().any(|p| p.step == step && p.attempt == attempt && !p.owners.is_empty()) {
                    return Ok(());
                }
                if inner.broken.is_some() {
                    return Err(FeedError::NotExpected { step, attempt, applied: inner.applied });
                }
                if inner.committed >= step {
                    // Complete already (the other feeder was faster) or
                    // another attempt's: [`Shadow::offer`] tells which.
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(FeedError::NotExpected { step, attempt, applied: self.lock().applied });
            }
        }
    }

    /// The oldest committed step's update will not arrive (`why`): the
    /// shadow breaks there.
    pub fn give_up(&self, why: String) {
        let step = self.lock().pending.front().map(|p| p.step);
        if let Some(step) = step {
            self.break_at(step, format!("step {step}'s update: {why}"));
        }
    }

    fn break_at(&self, step: u64, reason: String) {
        let mut inner = self.lock();
        if inner.broken.is_some() {
            return;
        }
        tracing::error!(step, "the coordinator's copy of the state stops following the run: {reason}");
        inner.broken = Some(ShadowError::Broken { step, reason });
        drop(inner);
        self.changed.notify_waiters();
    }

    /// The state of the last step the shadow applied, as a checkpoint: what
    /// a broken shadow still holds whole (the steps after it never had
    /// their whole update).
    pub async fn capture_applied(&self) -> Result<CheckpointData, ShadowError> {
        // Behind an update being applied, not in the middle of it.
        let _issuing = self.issuing.lock().await;
        let skipped = self.lock().skipped;
        self.state.capture(skipped, self.dataset_len).await.map_err(|_| ShadowError::Stopped)
    }

    /// Waits until the shadow is at most `lag` steps behind the run (or
    /// broken, which is returned).
    pub async fn wait_lag(&self, lag: u64) -> Result<(), ShadowError> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let inner = self.lock();
                if let Some(e) = &inner.broken {
                    return Err(e.clone());
                }
                // Off: nothing follows the run step by step, nothing to wait for.
                if self.mode == ShadowMode::Off || inner.committed - inner.applied <= lag {
                    return Ok(());
                }
            }
            changed.await;
        }
    }

    /// Runs `hook` on the state right after step `step` is applied (at
    /// once if it is the shadow's step and nothing is queued after it).
    pub async fn at(&self, step: u64, hook: Hook) -> Result<(), ShadowError> {
        let _issuing = self.issuing.lock().await;
        let now = {
            let mut inner = self.lock();
            if let Some(e) = &inner.broken {
                return Err(e.clone());
            }
            if let Some(p) = inner.pending.iter_mut().find(|p| p.step == step) {
                p.hooks.push(hook);
                return Ok(());
            }
            if self.mode == ShadowMode::Off && step == inner.committed && step > inner.applied {
                // Off: the state of the run's step comes from a replica.
                let p = self.load_entry(&inner, step, hook);
                inner.pending.push_back(p);
                return Ok(());
            }
            if step != inner.applied {
                return Err(ShadowError::Past { step, applied: inner.applied });
            }
            (hook, inner.skipped)
        };
        run_hook(&self.state, now.0, now.1, self.dataset_len).await
    }

    /// The parameters' checksum after step `step`, when the shadow gets
    /// there (the receiver closes if it never does).
    pub async fn request_checksum(&self, step: u64) -> Result<oneshot::Receiver<u64>, ShadowError> {
        let (tx, rx) = oneshot::channel();
        self.at(step, Hook::Checksum(tx)).await?;
        Ok(rx)
    }

    /// [`Shadow::request_checksum`], awaited.
    pub async fn checksum_at(&self, step: u64) -> Result<u64, ShadowError> {
        let rx = self.request_checksum(step).await?;
        rx.await.map_err(|_| self.broken().unwrap_or(ShadowError::Stopped))
    }

    /// Everything a checkpoint of step `step` holds, when the shadow gets
    /// there (the receiver closes if it never does).
    pub async fn request_capture(&self, step: u64) -> Result<oneshot::Receiver<CheckpointData>, ShadowError> {
        let (tx, rx) = oneshot::channel();
        self.at(step, Hook::Capture(tx)).await?;
        Ok(rx)
    }

    /// [`Shadow::request_capture`], awaited.
    pub async fn capture_at(&self, step: u64) -> Result<CheckpointData, ShadowError> {
        let rx = self.request_capture(step).await?;
        rx.await.map_err(|_| self.broken().unwrap_or(ShadowError::Stopped))
    }

    /// A snapshot at the run's last committed step (waiting for the
    /// shadow to get there).
    /// With the shadow off, the state of whatever step the loop is at
    /// when a replica is next asked for it.
    pub async fn snapshot_latest(&self, kind: SnapshotKind) -> Result<Snapshot, ShadowError> {
        let (tx, rx) = oneshot::channel();
        let hook = Hook::Snapshot(kind, tx);
        if self.mode == ShadowMode::Off {
            self.at_latest(hook).await?;
        } else {
            let step = self.lock().committed;
            self.at(step, hook).await?;
        }
        rx.await.map_err(|_| self.broken().unwrap_or(ShadowError::Stopped))
    }
}

/// Issues `hook`'s command to the state thread; `skipped`: the steps
/// skipped up to the state's step.
async fn run_hook(state: &StateHandle, hook: Hook, skipped: u64, dataset_len: usize) -> Result<(), ShadowError> {
    let stopped = |_| ShadowError::Stopped;
    match hook {
        Hook::Checksum(tx) => {
            let _ = tx.send(state.checksum().await.map_err(stopped)?.1);
        }
        Hook::Capture(tx) => {
            let _ = tx.send(state.capture(skipped, dataset_len).await.map_err(stopped)?);
        }
        Hook::Snapshot(kind, tx) => {
            let _ = tx.send(state.snapshot(kind).await.map_err(stopped)?);
        }
    }
    Ok(())
}

/// The applier: hands each complete step to the state thread in order,
/// then its hooks. Ends when the state thread stops.
async fn apply_in_order(shadow: Arc<Shadow>) {
    loop {
        let changed = shadow.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // Taken before the step leaves the queue: a hook asked for between
        // the two would find the step neither queued nor applied.
        let issuing = shadow.issuing.lock().await;
        let ready = {
            let mut inner = shadow.lock();
            let complete = inner.broken.is_none() && inner.pending.front().is_some_and(|p| p.remaining == 0);
            complete.then(|| inner.pending.pop_front().expect("front is complete"))
        };
        let Some(p) = ready else {
            drop(issuing);
            changed.await;
            continue;
        };
        // A replica's state carries the skipped count of its step.
        let (done, loaded_skipped) = match p.upload {
            Some(upload) => {
                let (state, skipped) = upload.into_state();
                (shadow.state.load(state).await, Some(skipped))
            }
            None => (shadow.state.apply(p.step, p.grad, p.outcome).await, None),
        };
        if done.is_err() {
            return;
        }
        let skipped = {
            let mut inner = shadow.lock();
            inner.applied = p.step;
            inner.skipped = loaded_skipped.unwrap_or(inner.skipped + u64::from(!p.outcome.apply));
            if inner.committed == p.step {
                // The same count (an adopted step's is known only now).
                inner.committed_skipped = inner.skipped;
            }
            inner.skipped
        };
        for hook in p.hooks {
            if run_hook(&shadow.state, hook, skipped, shadow.dataset_len).await.is_err() {
                return;
            }
        }
        drop(issuing);
        shadow.changed.notify_waiters();
    }
}

/// `[dist] shadow = "off"` (`shadow/upload.rs` says how it works).
impl Shadow {
    /// Whether the shadow is off: the replicas keep the EMA and send the state.
    pub fn is_off(&self) -> bool {
        self.mode == ddpm::config::ShadowMode::Off
    }

    /// Whether only the replicas hold the state of the committed step:
    /// the shadow is off and its copy is of an earlier step (it holds the
    /// committed step at a start, and after an upload of that step).
    pub fn replicas_only(&self) -> bool {
        let inner = self.lock();
        self.is_off() && inner.applied != inner.committed
    }

    /// An entry waiting for a replica's state at `step` (bound) with `hook`.
    fn load_entry(&self, inner: &Inner, step: u64, hook: Hook) -> Pending {
        let upload = Upload { asked: None, bound: true, skipped: Some(inner.committed_skipped), state: None };
        let mut p = empty_entry(step, upload);
        p.hooks.push(hook);
        p
    }

    /// A start goes on from step `step`, which the replicas hold: the run
    /// is at it, and the shadow's copy once one of them uploaded it.
    pub fn adopt(&self, step: u64) {
        let mut inner = self.lock();
        let upload = Upload { asked: None, bound: true, skipped: None, state: None };
        inner.pending.push_back(empty_entry(step, upload));
        inner.committed = step;
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Steps skipped up to the committed step.
    pub fn committed_skipped(&self) -> u64 {
        self.lock().committed_skipped
    }

    /// Step `step` committed (the shadow off: no update follows it).
    pub fn commit_outcome(&self, step: u64, outcome: Outcome) {
        let mut inner = self.lock();
        inner.committed = step;
        inner.committed_skipped += u64::from(!outcome.apply);
    }

    /// Runs `hook` on the state of the run's step when a replica is next
    /// asked for it (at once if the shadow holds that step already).
    async fn at_latest(&self, hook: Hook) -> Result<(), ShadowError> {
        let _issuing = self.issuing.lock().await;
        let skipped = {
            let mut inner = self.lock();
            if let Some(e) = &inner.broken {
                return Err(e.clone());
            }
            let waiting = inner.pending.iter_mut().rev().find(|p| p.upload.as_ref().is_some_and(|u| u.asked.is_none()));
            if let Some(p) = waiting {
                p.hooks.push(hook);
                return Ok(());
            }
            if !inner.pending.is_empty() || inner.applied != inner.committed {
                let upload = Upload { asked: None, bound: false, skipped: Some(0), state: None };
                let mut p = empty_entry(inner.committed, upload);
                p.hooks.push(hook);
                inner.pending.push_back(p);
                drop(inner);
                self.changed.notify_waiters();
                return Ok(());
            }
            inner.skipped
        };
        run_hook(&self.state, hook, skipped, self.dataset_len).await
    }

    /// Asks replica `worker`, idle at `idle_step`, for the state the
    /// shadow wants, if it wants one: returns the step to upload (always
    /// `idle_step`), the entry marked as asked of `worker`. Unbound entries
    /// take `idle_step`; an entry bound to an earlier step that no replica
    /// can send any more (the run moved on) takes it too, less its
    /// checksum hooks, which belong to their step.
    pub fn claim_upload(&self, idle_step: u64, worker: u64) -> Option<u64> {
        let mut inner = self.lock();
        let skipped = inner.committed_skipped;
        for p in inner.pending.iter_mut() {
            let Some(u) = p.upload.as_mut() else { continue };
            if u.asked.is_some() || u.state.is_some() {
                continue;
            }
            if !u.bound || p.step < idle_step {
                if p.step != idle_step {
                    if u.bound {
                        tracing::warn!(step = p.step, "no replica sent the state of step {}; taking step {idle_step}'s", p.step);
                    }
                    p.hooks.retain(|h| !matches!(h, Hook::Checksum(_)));
                }
                (p.step, u.bound, u.skipped) = (idle_step, true, Some(skipped));
            }
        }
        merge_same_step(&mut inner.pending);
        let waiting = |p: &&mut Pending| p.step == idle_step && p.upload.as_ref().is_some_and(|u| u.waiting());
        let p = inner.pending.iter_mut().find(waiting)?;
        p.upload.as_mut().expect("found by its upload").asked = Some(worker);
        Some(idle_step)
    }

    /// The replicas asked for uploads that have not arrived.
    pub fn uploads_owed(&self) -> Vec<u64> {
        let inner = self.lock();
        inner.pending.iter().filter_map(|p| p.upload.as_ref().filter(|u| u.state.is_none()).and_then(|u| u.asked)).collect()
    }

    /// Replica `worker` will not send what it was asked for (it left, or
    /// its upload was refused): another is asked.
    pub fn upload_failed(&self, worker: u64) {
        let mut inner = self.lock();
        for p in inner.pending.iter_mut() {
            if let Some(u) = p.upload.as_mut().filter(|u| u.asked == Some(worker) && u.state.is_none()) {
                tracing::warn!(worker, step = p.step, "worker {worker} did not send the state of step {}; asking another replica", p.step);
                u.asked = None;
            }
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Replica `worker`'s state of `state.step`, as it was asked for.
    pub fn offer_state(&self, worker: u64, state: Uploaded) -> Result<(), UploadError> {
        let mut inner = self.lock();
        let step = state.step;
        let entry = inner.pending.iter_mut().find(|p| p.step == step && p.upload.as_ref().is_some_and(|u| u.asked == Some(worker)));
        let Some(p) = entry else { return Err(UploadError::NotAsked { worker, step }) };
        let u = p.upload.as_mut().expect("found by its upload");
        if u.state.is_none() {
            u.state = Some(Box::new(state));
            p.remaining = 0;
        }
        drop(inner);
        self.changed.notify_waiters();
        Ok(())
    }
}

/// A queue entry filled by `upload`, with no update.
fn empty_entry(step: u64, upload: Upload) -> Pending {
    Pending {
        step,
        attempt: 0,
        outcome: Outcome::from_norm(0.0, 0.0),
        members: Vec::new(),
        owners: Vec::new(),
        filled: Vec::new(),
        lost: Vec::new(),
        ranks: Vec::new(),
        remaining: 1,
        dtype: GradDtype::F32,
        chunk_elements: 1,
        grad: Vec::new(),
        hooks: Vec::new(),
        upload: Some(upload),
    }
}

/// Entries of one step that wait for the same upload become one (their
/// hooks in order): the state of a step is sent once.
fn merge_same_step(pending: &mut VecDeque<Pending>) {
    let mut i = 1;
    while i < pending.len() {
        let same = pending[i].step == pending[i - 1].step
            && [&pending[i], &pending[i - 1]].iter().all(|p| p.upload.as_ref().is_some_and(Upload::waiting));
        if same {
            let p = pending.remove(i).expect("index in range");
            pending[i - 1].hooks.extend(p.hooks);
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests;
