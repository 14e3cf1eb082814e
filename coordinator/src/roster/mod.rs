//! Who takes part in the run: the membership roster. Workers join and leave
//! at any time: ids are never reused, silence beyond the heartbeat timeout
//! drops a member, and the training loop picks each step's members afresh
//! from those that are ready, idle and in sync with the coordinator's state.
//!
//! The roster owns every member's record and mailbox behind one lock that
//! no other module sees; every change that someone may be waiting for
//! (a join, a member going idle, a drop) wakes [`Roster::changed`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ddpm::proto;
use ddpm::ring::topology::{order_by_host, Placed};
use ddpm::wire::WorkerRole;
use tokio::sync::{mpsc, Mutex as AsyncMutex};

use crate::changes::Changes;
use crate::work::Work;
use member::Member;
pub use member::{Inbox, MemberInfo};

mod member;

/// Why the roster refused a worker's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RosterError {
    /// No member has this id (never registered, dropped, or refused).
    Unknown(u64),
    /// The member has not reported ready.
    NotReady(u64),
    /// The call did not carry the member's session secret.
    WrongSession(u64),
    /// The roster holds its cap of members.
    Full(usize),
}

#[derive(Default)]
struct Members {
    by_id: BTreeMap<u64, Member>,
    next_id: u64,
    /// Members dropped since the roster was made (removed or reaped).
    lost: u64,
    /// The start stopped looking for the replicas' step: a member that
    /// joins with a state of its own fetches the run's instead.
    held_closed: bool,
}

/// How many workers came and went, since the coordinator started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Churn {
    pub joined: u64,
    pub lost: u64,
}

/// The run's members.
pub struct Roster {
    inner: Mutex<Members>,
    changed: Changes,
    /// Members at most (registered, ready or not).
    limit: usize,
}

impl Default for Roster {
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

impl Roster {
    /// An empty roster that admits at most `limit` members at once.
    pub fn with_limit(limit: usize) -> Self {
        Self { inner: Mutex::default(), changed: Changes::default(), limit }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Members> {
        // A panic while holding the lock cannot leave a member half-updated
        // in a way later calls would misread, so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes everyone waiting for a change.
    pub fn notify(&self) {
        self.changed.notify();
    }

    /// A future that resolves at the next change (armed when created).
    pub fn next_change(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.changed.next()
    }

    /// Adds a worker; returns its new id (ids are never reused).
    pub fn register(&self, name: String, device: String, role: WorkerRole, peer_endpoint: String) -> Result<u64, RosterError> {
        let mut m = self.lock();
        if m.by_id.len() >= self.limit {
            return Err(RosterError::Full(self.limit));
        }
        m.next_id += 1;
        let id = m.next_id;
        let (mailbox, inbox) = mpsc::unbounded_channel();
        m.by_id.insert(
            id,
            Member {
                name,
                device,
                role,
                ready: false,
                last_seen: Instant::now(),
                idle: false,
                queued: 0,
                applied_step: 0,
                reported: false,
                checksums: BTreeMap::new(),
                mailbox,
                inbox: Arc::new(AsyncMutex::new(inbox)),
                secret: ddpm::wire::auth::new_secret(),
                last_work: None,
                peer_endpoint,
                nccl: false,
            },
        );
        drop(m);
        self.notify();
        Ok(id)
    }

    /// Marks a member ready (it built the run's model).
    pub fn mark_ready(&self, id: u64) -> Result<MemberInfo, RosterError> {
        let mut m = self.lock();
        let member = m.by_id.get_mut(&id).ok_or(RosterError::Unknown(id))?;
        member.ready = true;
        member.last_seen = Instant::now();
        let info = member.info(id);
        drop(m);
        self.notify();
        Ok(info)
    }

    /// Whether a member joining with the state of an earlier membership
    /// may keep it (only until the start has chosen the run's step).
    pub fn takes_held(&self) -> bool {
        !self.lock().held_closed
    }

    /// Stops taking held states; returns the idle training members as
    /// `(id, step, checksum)`: the step they reported and the parameter
    /// checksum they reported with it (0: none).
    pub fn close_held(&self) -> Vec<(u64, u64, u64)> {
        let mut m = self.lock();
        m.held_closed = true;
        let idle = m.by_id.iter().filter(|(_, x)| x.is_trainer() && x.idle);
        idle.map(|(id, x)| (*id, x.applied_step, x.checksums.get(&x.applied_step).map_or(0, |(c, _)| *c))).collect()
    }

    /// Ready, idle training members, at any step.
    pub fn idle_trainers(&self) -> usize {
        self.lock().by_id.values().filter(|x| x.is_trainer() && x.idle).count()
    }

    /// Drops a member; its info if it was one.
    pub fn remove(&self, id: u64) -> Option<MemberInfo> {
        let mut m = self.lock();
        let removed = m.by_id.remove(&id).map(|x| x.info(id));
        if removed.is_some() {
            m.lost += 1;
            drop(m);
            self.notify();
        }
        removed
    }

    /// Workers registered and dropped so far (ids are never reused, so the
    /// highest id is the number of joins).
    pub fn churn(&self) -> Churn {
        let m = self.lock();
        Churn { joined: m.next_id, lost: m.lost }
    }

    /// Member `id` computed its shard of `step` (`shard` images) in `compute_s`.
    pub fn record_work(&self, id: u64, step: u64, compute_s: f64, shard: u32) {
        if let Some(x) = self.lock().by_id.get_mut(&id) {
            x.last_work = Some((step, compute_s, shard));
        }
    }

    /// Drops every member in `ids`.
    pub fn remove_all(&self, ids: &[u64]) {
        for id in ids {
            self.remove(*id);
        }
    }

    /// Where member `id` accepts ring neighbours (empty: nowhere), if it is one.
    pub fn peer_endpoint(&self, id: u64) -> Option<String> {
        self.lock().by_id.get(&id).map(|m| m.peer_endpoint.clone())
    }

    /// Whether every one of `members` can be an NCCL rank (a GPU worker
    /// that loaded NCCL, as its ReadyRequest said): what `[dist] backend =
    /// "auto"` needs to pick NCCL. An unknown id counts as unable.
    pub fn every_nccl(&self, members: &[u64]) -> bool {
        let roster = self.lock();
        !members.is_empty() && members.iter().all(|id| roster.by_id.get(id).is_some_and(|m| m.nccl))
    }

    /// Records whether member `id` can be an NCCL rank.
    pub fn set_nccl(&self, id: u64, nccl: bool) {
        if let Some(m) = self.lock().by_id.get_mut(&id) {
            m.nccl = nccl;
        }
    }

    /// `members` (rank order so far: by id, which is join order) in ring
    /// order: grouped by the host of their peer endpoints, so that a ring
    /// over H hosts crosses the network H times ([`ddpm::ring::topology`]).
    pub fn ring_order(&self, members: &[u64]) -> Vec<u64> {
        let endpoints: Vec<String> = members.iter().map(|&id| self.peer_endpoint(id).unwrap_or_default()).collect();
        let placed: Vec<Placed<'_>> = members.iter().zip(&endpoints).map(|(&id, e)| Placed { id, endpoint: e, host: None }).collect();
        order_by_host(&placed)
    }

    /// The session secret of member `id`, for its RegisterReply.
    pub fn session_secret(&self, id: u64) -> Option<String> {
        self.lock().by_id.get(&id).map(|m| m.secret.clone())
    }

    /// Whether a call for member `id` carries its session secret.
    pub fn check_session(&self, id: u64, secret: Option<&str>) -> Result<(), RosterError> {
        let m = self.lock();
        let member = m.by_id.get(&id).ok_or(RosterError::Unknown(id))?;
        match secret {
            Some(s) if ddpm::wire::auth::same_secret(s, &member.secret) => Ok(()),
            _ => Err(RosterError::WrongSession(id)),
        }
    }

    /// Marks a member as alive.
    pub fn touch(&self, id: u64) -> Result<(), RosterError> {
        let mut m = self.lock();
        let member = m.by_id.get_mut(&id).ok_or(RosterError::Unknown(id))?;
        member.last_seen = Instant::now();
        Ok(())
    }

    pub fn contains(&self, id: u64) -> bool {
        self.lock().by_id.contains_key(&id)
    }

    /// A ready member asks for work: it is idle after `applied_step`, with
    /// the parameter checksum it reports (0: none). Returns its mailbox.
    pub fn report_idle(&self, id: u64, applied_step: u64, checksum: u64) -> Result<Inbox, RosterError> {
        let mut m = self.lock();
        let member = m.by_id.get_mut(&id).ok_or(RosterError::Unknown(id))?;
        if !member.ready {
            return Err(RosterError::NotReady(id));
        }
        member.last_seen = Instant::now();
        member.applied_step = applied_step;
        member.reported = true;
        if checksum != 0 {
            member.checksums.insert(applied_step, (checksum, false));
        }
        member.idle = member.queued == 0;
        let inbox = member.inbox.clone();
        drop(m);
        self.notify();
        Ok(inbox)
    }

    /// Member `id`'s NextWork call took one piece of work from its mailbox.
    pub fn delivered(&self, id: u64) {
        if let Some(member) = self.lock().by_id.get_mut(&id) {
            member.queued = member.queued.saturating_sub(1);
        }
    }

    /// Hands `work` to member `id`; false if it is not a member.
    pub fn send(&self, id: u64, work: Work) -> bool {
        match self.lock().by_id.get_mut(&id) {
            Some(member) => {
                member.send(work);
                true
            }
            None => false,
        }
    }

    /// Hands `work` to member `id` if it is still ready, idle and `allowed`
    /// by the caller's policy; false otherwise (the work is not sent).
    pub fn send_if_idle(&self, id: u64, work: Work, allowed: impl Fn(WorkerRole) -> bool) -> bool {
        match self.lock().by_id.get_mut(&id) {
            Some(member) if member.ready && member.idle && allowed(member.role) => {
                member.send(work);
                true
            }
            _ => false,
        }
    }

    /// Tells every member the coordinator stops, and whether the run is
    /// `finished` (else they reconnect and rejoin its next start).
    pub fn shutdown_all(&self, reason: &str, finished: bool) {
        for member in self.lock().by_id.values_mut() {
            member.send(Work::Shutdown { reason: reason.to_string(), finished });
        }
    }

    /// Removes members silent for longer than `timeout`; returns them.
    pub fn reap(&self, timeout: Duration) -> Vec<MemberInfo> {
        let now = Instant::now();
        let mut m = self.lock();
        let dead: Vec<u64> = m.by_id.iter().filter(|(_, x)| now.duration_since(x.last_seen) > timeout).map(|(id, _)| *id).collect();
        let gone: Vec<MemberInfo> = dead.into_iter().filter_map(|id| m.by_id.remove(&id).map(|x| x.info(id))).collect();
        m.lost += gone.len() as u64;
        drop(m);
        if !gone.is_empty() {
            self.notify();
        }
        gone
    }

    /// Ready, idle training members whose replicas are at `step` (they can
    /// compute step `step + 1`), by id.
    pub fn in_sync(&self, step: u64) -> Vec<u64> {
        let m = self.lock();
        m.by_id.iter().filter(|(_, x)| x.is_trainer() && x.idle && x.applied_step == step).map(|(id, _)| *id).collect()
    }

    /// Whether a training member other than `id` holds a state (it asked
    /// for work since it joined): one that can send `id` its state.
    pub fn others_hold_state(&self, id: u64) -> bool {
        self.lock().by_id.iter().any(|(&other, x)| other != id && x.is_trainer() && x.reported)
    }

    /// Ready training members whose last report was after `step`, idle or
    /// not: the replicas known to hold that step's state.
    pub fn at_step(&self, step: u64) -> Vec<u64> {
        let m = self.lock();
        m.by_id.iter().filter(|(_, x)| x.is_trainer() && x.applied_step == step).map(|(id, _)| *id).collect()
    }

    /// Sends every ready, idle training member that is not at `step` the
    /// order to fetch the state again; returns their ids.
    pub fn resync_out_of_sync(&self, step: u64) -> Vec<u64> {
        let mut sent = Vec::new();
        for (id, x) in self.lock().by_id.iter_mut() {
            if x.is_trainer() && x.idle && x.applied_step != step {
                tracing::info!(worker = id, at = x.applied_step, step, "worker is out of sync: sending it the current state");
                x.send(Work::Resync(format!("the run is at step {step}, the worker at {}", x.applied_step)));
                sent.push(*id);
            }
        }
        sent
    }

    /// Of `ids`, those still members.
    pub fn live(&self, ids: &BTreeSet<u64>) -> BTreeSet<u64> {
        let m = self.lock();
        ids.iter().filter(|id| m.by_id.contains_key(id)).copied().collect()
    }

    /// Of `ids`, those idle after `step`.
    pub fn idle_at(&self, ids: &BTreeSet<u64>, step: u64) -> Vec<u64> {
        let m = self.lock();
        ids.iter().filter(|id| m.by_id.get(id).is_some_and(|x| x.idle && x.applied_step == step)).copied().collect()
    }

    /// Ready, idle members `allowed` by the caller's policy, by id.
    pub fn idle_members(&self, allowed: impl Fn(WorkerRole) -> bool) -> Vec<u64> {
        let m = self.lock();
        m.by_id.iter().filter(|(_, x)| x.ready && x.idle && allowed(x.role)).map(|(id, _)| *id).collect()
    }

    /// Whether a ready eval worker is connected.
    pub fn has_eval_worker(&self) -> bool {
        self.lock().by_id.values().any(|x| x.ready && x.role == WorkerRole::Eval)
    }

    /// The checksum member `id` reported after `step`.
    pub fn checksum(&self, id: u64, step: u64) -> Option<u64> {
        self.lock().by_id.get(&id).and_then(|x| x.checksums.get(&step).map(|(c, _)| *c))
    }

    /// Every member's reported checksums of the steps `wanted` selects that
    /// were not read before, as `(member, step, checksum)`: each report is
    /// read once. Read reports of steps other than `keep` are forgotten
    /// ([`Roster::checksum`] still answers for `keep`).
    pub fn take_checksums(&self, wanted: impl Fn(u64) -> bool, keep: u64) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        for (id, x) in self.lock().by_id.iter_mut() {
            for (s, (c, read)) in x.checksums.iter_mut() {
                if !*read && wanted(*s) {
                    out.push((*id, *s, *c));
                    *read = true;
                }
            }
            x.checksums.retain(|s, (_, read)| !*read || *s == keep);
        }
        out
    }

    /// Sends member `id` the order to fetch the state again, if it is idle.
    pub fn resync_if_idle(&self, id: u64, reason: String) {
        if let Some(x) = self.lock().by_id.get_mut(&id) {
            if x.idle {
                x.send(Work::Resync(reason));
            }
        }
    }

    /// The status rows of every member.
    pub fn status(&self) -> Vec<proto::MemberStatus> {
        let now = Instant::now();
        self.lock()
            .by_id
            .iter()
            .map(|(id, x)| {
                let state = match (x.ready, x.idle) {
                    (false, _) => "joining",
                    (true, true) => "idle",
                    (true, false) => "busy",
                };
                let (last_step, compute_s, shard_size) = x.last_work.unwrap_or((0, 0.0, 0));
                proto::MemberStatus {
                    worker_id: *id,
                    name: x.name.clone(),
                    device: x.device.clone(),
                    ready: x.ready,
                    role: x.role.as_str().into(),
                    state: state.into(),
                    last_step,
                    compute_s,
                    shard_size,
                    silent_s: now.duration_since(x.last_seen).as_secs_f64(),
                    peer_endpoint: x.peer_endpoint.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
