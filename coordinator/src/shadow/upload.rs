//! `[dist] shadow = "off"`: the shadow follows no step; the replicas are
//! the truth (they keep the EMA too), and the coordinator takes the whole
//! state from one of them when something reads it: a checkpoint, a
//! checksum, a job's weights, a joiner.
//!
//! Such a read is an entry in the shadow's queue like a step's update, but
//! filled by one replica's upload ([`Shadow::offer_state`]) instead of the
//! members' feed. It is either bound to a step (a checkpoint or a checksum
//! of that step) or takes whatever step the loop is at when a replica is
//! asked (a job's weights, a joiner's state). A replica idle at the run's
//! step is asked ([`Shadow::claim_upload`]): by the training loop before
//! it hands out the next step, and at other times (a pause, the end) by a
//! task beside it; a replica that leaves or sends something wrong is
//! forgotten and another is asked.

use std::collections::VecDeque;

use ddpm::train::Outcome;

use super::{Hook, Inner, Pending, Shadow, ShadowError};
use crate::state::Uploaded;

/// The upload that fills a queue entry.
pub(super) struct Upload {
    /// The replica asked for it, once one is.
    asked: Option<u64>,
    /// Whether the entry's step is fixed (else it is set when a replica is
    /// asked).
    bound: bool,
    /// Steps skipped up to the entry's step.
    pub(super) skipped: u64,
    state: Option<Box<Uploaded>>,
}

impl Upload {
    pub(super) fn into_state(self) -> Box<Uploaded> {
        self.state.expect("an entry is applied once its upload arrived")
    }
}

/// Why an uploaded state was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("worker {worker} was not asked for the state of step {step}")]
    NotAsked { worker: u64, step: u64 },
}

impl Shadow {
    /// Whether the shadow is off: the replicas keep the EMA and send the state.
    pub fn is_off(&self) -> bool {
        self.mode == ddpm::config::ShadowMode::Off
    }

    /// An entry waiting for a replica's state at `step` (bound) with `hook`.
    pub(super) fn load_entry(&self, inner: &Inner, step: u64, hook: Hook) -> Pending {
        let upload = Upload { asked: None, bound: true, skipped: inner.committed_skipped, state: None };
        let mut p = empty_entry(step, upload);
        p.hooks.push(hook);
        p
    }

    /// Step `step` committed (the shadow off: no update follows it).
    pub fn commit_outcome(&self, step: u64, outcome: Outcome) {
        let mut inner = self.lock();
        inner.committed = step;
        inner.committed_skipped += u64::from(!outcome.apply);
    }

    /// Runs `hook` on the state of the run's step when a replica is next
    /// asked for it (at once if the shadow holds that step already).
    pub(super) async fn at_latest(&self, hook: Hook) -> Result<(), ShadowError> {
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
                let upload = Upload { asked: None, bound: false, skipped: 0, state: None };
                let mut p = empty_entry(inner.committed, upload);
                p.hooks.push(hook);
                inner.pending.push_back(p);
                drop(inner);
                self.changed.notify_waiters();
                return Ok(());
            }
            inner.skipped
        };
        super::run_hook(&self.state, hook, skipped, self.dataset_len).await
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
                (p.step, u.bound, u.skipped) = (idle_step, true, skipped);
            }
        }
        merge_same_step(&mut inner.pending);
        let waiting = |p: &&mut Pending| p.step == idle_step && p.upload.as_ref().is_some_and(|u| u.asked.is_none() && u.state.is_none());
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
        remaining: 1,
        dtype: ddpm::config::GradDtype::F32,
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
            && [&pending[i], &pending[i - 1]].iter().all(|p| p.upload.as_ref().is_some_and(|u| u.asked.is_none() && u.state.is_none()));
        if same {
            let p = pending.remove(i).expect("index in range");
            pending[i - 1].hooks.extend(p.hooks);
        } else {
            i += 1;
        }
    }
}
