//! One attempt at a step: the global batch split into shards and handed
//! out, the round opened and waited for (its deadline, the straggler
//! policy, a broken ring), and how it ended: a result, or the step to redo
//! without the members that failed it.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use ddpm::config::DistConfig;
use ddpm::data::order;
use ddpm::proto;
use tokio::sync::oneshot;

use super::stragglers::StragglerPolicy;
use super::trainer::Trainer;
use crate::round::screen::Screening;
use crate::round::{Round, RoundFailure, RoundResult};
use crate::round_slot;
use crate::work::Work;

/// A step as the loop plans it.
pub struct StepPlan {
    pub step: u64,
    /// Its members, in rank order.
    pub members: Vec<u64>,
    /// The members report their parameters' checksum after it.
    pub checksum_requested: bool,
    /// Reduced worker to worker (the ring, or NCCL), committed on the
    /// scalars the members report; else through the star.
    pub ring: bool,
    /// Over NCCL (with `ring`: the same scalars commit it): the members
    /// get an NcclPlan instead of a RingPlan.
    pub nccl: bool,
}

/// What to do after a step's round ended.
pub enum StepEnd {
    Done(Box<RoundResult>),
    /// Redo the step with these members (the rest were dropped), through
    /// the star if the ring's audit failed (`RoundFailure::needs_star`).
    Redo {
        left: BTreeSet<u64>,
        through_star: bool,
    },
}

/// Elements per gradient chunk on the wire (`[dist] chunk_kib`).
pub fn chunk_elements(dist: &DistConfig) -> usize {
    (dist.chunk_kib * 1024 / dist.grad_dtype.bytes_per_element()).max(1)
}

/// Bytes of gradient data the coordinator receives on `plan`'s path, that
/// the step waits for: the star every member's whole gradient; the ring
/// only scalars, per member its header's chunk norms and its replica
/// digest, per chunk its owner's sum of squares and digest (the shadow's
/// feed comes after the step and is counted apart).
pub fn step_received_bytes(plan: &StepPlan, params: usize, dist: &DistConfig) -> u64 {
    let n = plan.members.len();
    if !plan.ring {
        return (n * params * dist.grad_dtype.bytes_per_element()) as u64;
    }
    let chunks = ddpm::wire::chunk_count(params, chunk_elements(dist));
    (n * (chunks * 8 + 8) + chunks * 16) as u64
}

/// How a round ended: its own result or failure, or (`Err`) the members
/// that did not deliver in time and why.
type Ended = Result<Result<RoundResult, RoundFailure>, (Vec<u64>, String)>;

impl Trainer {
    /// Runs attempt `attempt` of `plan`'s step on `samples` (the global
    /// batch): hands out the shards, opens the round and waits for it. A
    /// failed round drops its culprit (or, on the deadline, the members
    /// that did not deliver) and the step is redone by the rest.
    pub(super) async fn run_step(&self, plan: &StepPlan, attempt: u32, samples: &[proto::Sample], screening: Screening) -> StepEnd {
        let chunk_elements = chunk_elements(&self.config.dist);
        let shards = order::shard_ranges(self.config.train.batch_size, plan.members.len());
        let (round, done) = self.open_round(plan, attempt, &shards, chunk_elements, screening);
        let epoch = self.hand_out(plan, attempt, samples, &shards, chunk_elements);
        let ended = self.await_round(&round, done).await;
        self.rounds.close();
        let end = self.settle(plan, attempt, &round, ended).await;
        if let (Some(epoch), StepEnd::Redo { .. }) = (epoch, &end) {
            // A communicator whose attempt failed may have lost a rank: its
            // members abort it, and the redo's members get a new epoch.
            self.nccl_ids.end(epoch);
        }
        end
    }

    /// The round of the attempt, open for the members' gradients.
    fn open_round(
        &self,
        plan: &StepPlan,
        attempt: u32,
        shards: &[Range<usize>],
        chunk_elements: usize,
        screening: Screening,
    ) -> (Arc<Round>, oneshot::Receiver<Result<RoundResult, RoundFailure>>) {
        let cfg = &self.config;
        let sizes: Vec<usize> = shards.iter().map(|r| r.len()).collect();
        let total = self.shadow.layout().total;
        let (round, done) =
            Round::new(plan.step, attempt, plan.members.clone(), &sizes, total, chunk_elements, cfg.dist.grad_dtype, cfg.optim.grad_clip);
        // The star sums into a buffer and screens the members' chunks; the
        // ring takes digests only and screens the members' norms.
        let round = if plan.ring { round.ring() } else { round.with_buffer(self.shadow.gradient_buffer()) };
        let round = Arc::new(round.screened(screening));
        self.rounds.open(round.clone());
        (round, done)
    }

    /// Sends each member its assignment and its shard of `samples`;
    /// returns the NCCL epoch of the attempt, if it is over NCCL.
    fn hand_out(
        &self,
        plan: &StepPlan,
        attempt: u32,
        samples: &[proto::Sample],
        shards: &[Range<usize>],
        chunk_elements: usize,
    ) -> Option<u64> {
        let cfg = &self.config;
        let nccl = plan.nccl.then(|| self.nccl_plan(&plan.members));
        let ring = (plan.ring && !plan.nccl).then(|| self.ring_plan(&plan.members));
        for (rank, (id, range)) in plan.members.iter().zip(shards).enumerate() {
            let assignment = proto::TrainAssignment {
                step: plan.step,
                attempt,
                global_batch: cfg.train.batch_size as u32,
                shard_size: range.len() as u32,
                lr: cfg.lr_at(plan.step),
                checksum_requested: plan.checksum_requested,
                grad_dtype: cfg.dist.grad_dtype.to_proto() as i32,
                chunk_elements: chunk_elements as u32,
                ring: ring.clone().map(|p| proto::RingPlan { rank: rank as u32, ..p }),
                feed_shadow: plan.ring && !self.shadow.is_off(),
                nccl: nccl.clone().map(|p| proto::NcclPlan { rank: rank as u32, ..p }),
            };
            self.roster.send(*id, Work::Train { assignment, samples: samples[range.clone()].to_vec() });
        }
        nccl.map(|p| p.epoch)
    }

    /// The NCCL communicator of `members` (rank order; the rank is set per
    /// member): the current epoch while they are the same, else a new one.
    fn nccl_plan(&self, members: &[u64]) -> proto::NcclPlan {
        proto::NcclPlan { epoch: self.nccl_ids.epoch_for(members), rank: 0, size: members.len() as u32, members: members.to_vec() }
    }

    /// A fresh ring for `members` (rank order; the rank is set per member):
    /// a new epoch and one-time key, each member's advertised endpoint.
    fn ring_plan(&self, members: &[u64]) -> proto::RingPlan {
        let mut key = [0u8; ddpm::ring::frame::KEY_BYTES];
        getrandom::fill(&mut key).expect("the OS random source");
        let mut epoch = [0u8; 8];
        getrandom::fill(&mut epoch).expect("the OS random source");
        proto::RingPlan {
            epoch: u64::from_le_bytes(epoch),
            key: key.to_vec().into(),
            rank: 0,
            members: members
                .iter()
                .map(|&id| proto::RingMember { worker_id: id, endpoint: self.roster.peer_endpoint(id).unwrap_or_default() })
                .collect(),
            peer_timeout_s: self.config.dist.ring_peer_timeout_s,
            shm: self.config.dist.ring_shm,
        }
    }

    /// Waits for `round` to end: its result or failure, the step's
    /// deadline, the straggler policy, or a ring a member reported broken.
    async fn await_round(&self, round: &Arc<Round>, done: oneshot::Receiver<Result<RoundResult, RoundFailure>>) -> Ended {
        let dist = &self.config.dist;
        let step_timeout = Duration::from_secs_f64(dist.step_timeout_s);
        let opened = tokio::time::Instant::now();
        let stragglers = StragglerPolicy::new(dist);
        tokio::select! {
            outcome = tokio::time::timeout(step_timeout, done) => match outcome {
                Ok(Ok(ended)) => Ok(ended),
                Ok(Err(_)) | Err(_) => {
                    Err((round.stragglers(), format!("step {} did not finish within {:.0} s", round.step, step_timeout.as_secs_f64())))
                }
            },
            (stuck, reason) = stragglers.expired(round, opened) => Err((stuck, reason)),
            failure = round.ring_verdict(Duration::from_secs_f64(dist.ring_peer_timeout_s)) => {
                round_slot::fail(round, failure.clone()).await;
                Ok(Err(failure))
            }
        }
    }

    /// What the loop does next after the round `ended`: go on with its
    /// result, or drop who failed it and redo the step.
    async fn settle(&self, plan: &StepPlan, attempt: u32, round: &Round, ended: Ended) -> StepEnd {
        let (s, members) = (plan.step, plan.members.iter().copied());
        match ended {
            Ok(Ok(result)) => StepEnd::Done(Box::new(result)),
            Ok(Err(failure)) => {
                if let Some(culprit) = failure.culprit {
                    self.roster.remove(culprit);
                }
                let how = if failure.needs_star { " through the coordinator's all-reduce (the star)" } else { "" };
                tracing::warn!(step = s, attempt, "step abandoned: {}; redoing it{how}", failure.reason);
                let left = members.filter(|m| Some(*m) != failure.culprit).collect();
                StepEnd::Redo { left, through_star: failure.needs_star }
            }
            Err((stuck, reason)) => {
                round_slot::fail(round, RoundFailure::new(None, reason.clone())).await;
                self.roster.remove_all(&stuck);
                tracing::warn!(step = s, attempt, dropped = ?stuck, "{reason}; dropping the members that did not deliver and redoing it");
                StepEnd::Redo { left: members.filter(|m| !stuck.contains(m)).collect(), through_star: false }
            }
        }
    }
}
