//! Who takes part in the run. Workers join and leave at any time: ids are
//! never reused, silence beyond the heartbeat timeout drops a member, and the
//! trainer picks each step's members afresh from those that are ready, idle
//! and in sync with the coordinator's state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ddpm::proto;
use tokio::sync::{mpsc, Mutex as AsyncMutex};

/// A piece of work for one worker.
#[derive(Debug, Clone)]
pub enum Work {
    /// A training step and the encoded samples of the worker's shard.
    Train { assignment: proto::TrainAssignment, samples: Vec<proto::Sample> },
    /// Draw images.
    Sample(proto::SampleAssignment),
    /// An evaluation task and, for dataset images, their encoded samples.
    Eval { assignment: proto::EvalAssignment, samples: Vec<proto::Sample> },
    /// An analysis task and, for interpolation, the two encoded images.
    Analysis { assignment: proto::AnalysisAssignment, samples: Vec<proto::Sample> },
    /// Fetch the training state again.
    Resync(String),
    /// The run is over.
    Shutdown(String),
}

/// What a worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Training steps; job tasks once training is over.
    Train,
    /// Job tasks only, at any time.
    Eval,
}

impl Role {
    /// From RegisterRequest.role ("" means train).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" | "train" => Ok(Self::Train),
            "eval" => Ok(Self::Eval),
            other => Err(format!("unknown worker role {other:?}: use \"train\" or \"eval\"")),
        }
    }
}

/// One worker.
pub struct Member {
    pub id: u64,
    pub name: String,
    pub device: String,
    pub version: String,
    pub role: Role,
    /// Built the run's model (passed the layout check).
    pub ready: bool,
    pub last_seen: Instant,
    /// Waiting in NextWork for its next assignment.
    pub idle: bool,
    /// The last training step whose update it applied, as it reported.
    pub applied_step: u64,
    /// Parameter checksums it reported, by step.
    pub checksums: BTreeMap<u64, u64>,
    mailbox: mpsc::UnboundedSender<Work>,
    inbox: Arc<AsyncMutex<mpsc::UnboundedReceiver<Work>>>,
}

impl Member {
    /// Hands the worker a piece of work (picked up by its NextWork call).
    pub fn send(&mut self, work: Work) {
        self.idle = false;
        // The receiver lives as long as the member; a send can only fail
        // after removal, when nobody listens any more.
        let _ = self.mailbox.send(work);
    }

    /// The worker's mailbox, for its NextWork call to wait on.
    pub fn inbox(&self) -> Arc<AsyncMutex<mpsc::UnboundedReceiver<Work>>> {
        self.inbox.clone()
    }
}

/// All members of the run.
#[derive(Default)]
pub struct Membership {
    members: BTreeMap<u64, Member>,
    next_id: u64,
}

impl Membership {
    /// Adds a worker; returns its new id.
    pub fn add(&mut self, name: String, device: String, version: String, role: Role) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let (mailbox, inbox) = mpsc::unbounded_channel();
        self.members.insert(
            id,
            Member {
                id,
                name,
                device,
                version,
                role,
                ready: false,
                last_seen: Instant::now(),
                idle: false,
                applied_step: 0,
                checksums: BTreeMap::new(),
                mailbox,
                inbox: Arc::new(AsyncMutex::new(inbox)),
            },
        );
        id
    }

    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Member> {
        self.members.get_mut(&id)
    }

    pub fn remove(&mut self, id: u64) -> Option<Member> {
        self.members.remove(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Member> {
        self.members.values_mut()
    }

    /// Ready training members, by id.
    pub fn ready_ids(&self) -> Vec<u64> {
        self.members.values().filter(|m| m.ready && m.role == Role::Train).map(|m| m.id).collect()
    }

    /// Ready, idle training members whose replicas are at `step` (they can
    /// compute step `step + 1`), by id.
    pub fn in_sync(&self, step: u64) -> Vec<u64> {
        self.members
            .values()
            .filter(|m| m.ready && m.idle && m.role == Role::Train && m.applied_step == step)
            .map(|m| m.id)
            .collect()
    }

    /// Removes members silent for longer than `timeout`; returns them.
    pub fn reap(&mut self, timeout: Duration) -> Vec<Member> {
        let now = Instant::now();
        let dead: Vec<u64> =
            self.members.values().filter(|m| now.duration_since(m.last_seen) > timeout).map(|m| m.id).collect();
        dead.into_iter().filter_map(|id| self.members.remove(&id)).collect()
    }

    /// The status rows of every member.
    pub fn status(&self) -> Vec<proto::MemberStatus> {
        self.members
            .values()
            .map(|m| proto::MemberStatus { worker_id: m.id, name: m.name.clone(), device: m.device.clone(), ready: m.ready })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_and_sync_is_by_step() {
        let mut ms = Membership::default();
        let a = ms.add("a".into(), "cpu".into(), "0".into(), Role::Train);
        let b = ms.add("b".into(), "cpu".into(), "0".into(), Role::Train);
        ms.remove(a);
        let c = ms.add("c".into(), "cpu".into(), "0".into(), Role::Train);
        assert!(c > b && b > a);
        for id in [b, c] {
            let m = ms.get_mut(id).unwrap();
            m.ready = true;
            m.idle = true;
        }
        ms.get_mut(c).unwrap().applied_step = 4;
        assert_eq!(ms.in_sync(0), vec![b]);
        assert_eq!(ms.in_sync(4), vec![c]);
        ms.get_mut(b).unwrap().send(Work::Resync("x".into()));
        assert!(!ms.get(b).unwrap().idle);
    }

    #[test]
    fn silent_members_are_reaped() {
        let mut ms = Membership::default();
        let a = ms.add("a".into(), "cpu".into(), "0".into(), Role::Train);
        let b = ms.add("b".into(), "cpu".into(), "0".into(), Role::Train);
        ms.get_mut(a).unwrap().last_seen = Instant::now() - Duration::from_secs(60);
        let gone: Vec<u64> = ms.reap(Duration::from_secs(30)).iter().map(|m| m.id).collect();
        assert_eq!(gone, vec![a]);
        assert!(ms.get(b).is_some());
    }
}
