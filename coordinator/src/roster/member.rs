//! One member's record in the roster: who it is, what it was sent and
//! reported, and its mailbox. Only the roster (`mod.rs`) reads and changes
//! it, under its lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use ddpm::wire::WorkerRole;
use tokio::sync::{mpsc, Mutex as AsyncMutex};

use crate::work::Work;

/// A member's mailbox, for its NextWork call to wait on.
pub type Inbox = Arc<AsyncMutex<mpsc::UnboundedReceiver<Work>>>;

/// What the roster knows of a member that others may read.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub role: WorkerRole,
}

pub(super) struct Member {
    pub(super) name: String,
    pub(super) device: String,
    pub(super) role: WorkerRole,
    /// Built the run's model (passed the layout check).
    pub(super) ready: bool,
    pub(super) last_seen: Instant,
    /// Waiting in NextWork for its next assignment.
    pub(super) idle: bool,
    /// Work sent but not yet picked up by a NextWork call. A member that
    /// reports idle with work still queued is not idle: it reports before
    /// it reads its mailbox, and a report of the step it was at when an
    /// upload was asked must not hide the step assignment queued behind it.
    pub(super) queued: u32,
    /// The last training step whose update it applied, as it reported.
    pub(super) applied_step: u64,
    /// It asked for work at least once: it holds a training state.
    pub(super) reported: bool,
    /// Parameter checksums it reported, by step, and whether each was
    /// compared already.
    pub(super) checksums: BTreeMap<u64, (u64, bool)>,
    pub(super) mailbox: mpsc::UnboundedSender<Work>,
    pub(super) inbox: Inbox,
    /// The session secret its calls must carry (RegisterReply gave it).
    pub(super) secret: String,
    /// Its part in the last training step it computed: (step, compute
    /// seconds, shard size), for the status and the dashboard.
    pub(super) last_work: Option<(u64, f64, u32)>,
    /// Where it accepts ring neighbours (empty: no listener).
    pub(super) peer_endpoint: String,
    /// It computes on a GPU and loaded NCCL (its ReadyRequest said so).
    pub(super) nccl: bool,
}

impl Member {
    pub(super) fn info(&self, id: u64) -> MemberInfo {
        MemberInfo { id, name: self.name.clone(), role: self.role }
    }

    pub(super) fn is_trainer(&self) -> bool {
        self.ready && self.role == WorkerRole::Train
    }

    /// Hands the worker a piece of work (picked up by its NextWork call).
    pub(super) fn send(&mut self, work: Work) {
        self.idle = false;
        self.queued += 1;
        // The receiver lives as long as the member; a send can only fail
        // after removal, when nobody listens any more.
        let _ = self.mailbox.send(work);
    }
}
