//! `[checkpoint] writers = "replicas"` with the shadow off: a periodic
//! checkpoint is written by the replicas, each a 1/N shard straight to the
//! run's store, instead of one replica sending the whole state through the
//! coordinator. The saver asks for one ([`ShardWriters::want`]); the loop
//! hands each replica idle at that step its shard before the next step
//! ([`ShardWriters::send`]), so the replica's copy is of exactly that step
//! (it runs beside the next step's forward and backward; only that step's
//! update waits for what is left of it);
//! once every shard is reported the saver (woken by the last report, in
//! the middle of a step if need be) checks them and hands the commit
//! (manifest last) to the uploader ([`ShardWriters::poll`]); between steps
//! it polls, to give up on a set that is late.
//!
//! Anything wrong (a replica's error, a replica gone, no report within
//! the step timeout, shards that do not add up to the replicas' digest)
//! gives the checkpoint up: no manifest is written, and the saver takes
//! it the whole way instead. A replica that cannot write to the store at
//! all turns the sharded path off for the rest of this start, with a
//! warning that says how to fix it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ddpm::checkpoint::sharded::{self, ShardedCommit, WrittenShard};
use ddpm::checkpoint::Reason;
use ddpm::config::TrainConfig;
use ddpm::data::OrderState;
use ddpm::proto;
use ddpm::train::flat::Layout;
use ddpm::train::param_digest;

use crate::roster::Roster;
use crate::shard_book::{Asked, ShardBook, ShardState};
use crate::work::Work;

/// A sharded checkpoint asked for and not yet over.
struct InFlight {
    step: u64,
    reason: Reason,
    /// When its shards were handed out, the digest of the replicas'
    /// parameters at its step (if they reported one) and that step's time.
    sent: Option<(Instant, Option<u64>, Option<Duration>)>,
}

/// What [`ShardWriters::poll`] found.
pub enum Polled {
    /// Nothing asked, or shards still being written.
    Pending,
    /// Every shard written and checked: commit it.
    Done(Box<ShardedCommit>, Reason),
    /// Given up: save the run's step the whole way instead (the step the
    /// shards were of may be gone from every replica).
    Failed { reason: Reason },
}

/// See the module documentation.
pub struct ShardWriters {
    book: Arc<ShardBook>,
    roster: Arc<Roster>,
    location: proto::StoreLocation,
    config: TrainConfig,
    layout: Arc<Layout>,
    dataset_len: usize,
    in_flight: Option<InFlight>,
    /// Why the sharded path is off for the rest of this start.
    off: Option<String>,
}

impl ShardWriters {
    pub fn new(
        book: Arc<ShardBook>,
        roster: Arc<Roster>,
        store: &ddpm::store::RunStore,
        config: &TrainConfig,
        layout: Arc<Layout>,
        dataset_len: usize,
    ) -> Self {
        let peer = store.peer_location();
        let location = proto::StoreLocation {
            url: peer.url.clone(),
            s3_endpoint: peer.s3_endpoint.clone().unwrap_or_default(),
            s3_region: peer.s3_region.clone().unwrap_or_default(),
            s3_allow_http: peer.s3_allow_http,
        };
        Self { book, roster, location, config: config.clone(), layout, dataset_len, in_flight: None, off: None }
    }

    /// Whether a save for `reason` goes through the replicas: a periodic
    /// one, while the path is on (the last save of a start, which no step
    /// waits for, goes the whole way).
    pub fn takes(&self, reason: Reason) -> bool {
        self.off.is_none() && matches!(reason, Reason::Steps | Reason::Time)
    }

    /// Whether a checkpoint is asked for and not over.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether the shards handed out are all reported (poll takes them).
    pub fn reported(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| f.sent.is_some()) && self.book.is_complete()
    }

    /// The book the reports arrive in (to wait for the last one).
    pub fn book(&self) -> Arc<ShardBook> {
        self.book.clone()
    }

    /// Gives up whatever is in flight (the state it was of is gone).
    pub fn abandon(&mut self) {
        self.book.close();
        self.in_flight = None;
    }

    /// A checkpoint of `step` is wanted; its shards go out before the next step.
    pub fn want(&mut self, step: u64, reason: Reason) {
        tracing::info!(step, %reason, "checkpoint of step {step} asked of the replicas, a shard each");
        self.in_flight = Some(InFlight { step, reason, sent: None });
    }

    /// Gives up a checkpoint whose shards were not handed out: the step it
    /// is of, to save the whole way.
    pub fn take_unsent(&mut self) -> Option<(u64, Reason)> {
        let f = self.in_flight.take_if(|f| f.sent.is_none())?;
        Some((f.step, f.reason))
    }

    /// Before the loop hands out step `step + 1` to `members` (every one
    /// idle at `step`): each gets its shard of the wanted checkpoint of
    /// `step`, if one is. `step_time`: how long `step` took (for the log).
    pub fn send(&mut self, step: u64, members: &[u64], step_time: Option<Duration>) {
        let Some(f) = self.in_flight.as_mut().filter(|f| f.step == step && f.sent.is_none()) else { return };
        if members.is_empty() {
            return;
        }
        let count = members.len() as u32;
        let total = self.layout.total as u64;
        let asked: Vec<Asked> = members
            .iter()
            .enumerate()
            .map(|(i, &worker)| {
                let (start, end) = sharded::shard_range(total, i as u32, count);
                Asked { worker, index: i as u32, start, end }
            })
            .collect();
        let digest = self.roster.checksum(members[0], step);
        self.book.open(step, asked.clone());
        for a in asked {
            let w = proto::WriteShard { step, index: a.index, count, start: a.start, end: a.end, store: Some(self.location.clone()) };
            self.roster.send(a.worker, Work::WriteShard(w));
        }
        f.sent = Some((Instant::now(), digest, step_time));
    }

    /// Where the checkpoint in flight stands; `timeout` bounds the wait
    /// for its reports.
    pub fn poll(&mut self, timeout: Duration) -> Polled {
        let Some(f) = self.in_flight.as_ref() else { return Polled::Pending };
        let Some((sent, digest, step_time)) = f.sent else { return Polled::Pending };
        let (step, reason) = (f.step, f.reason);
        let failed = |me: &mut Self, why: String, off: bool| {
            tracing::warn!(step, "the replicas' checkpoint of step {step} is given up ({why}); saving it through the coordinator");
            if off {
                tracing::warn!(
                    "checkpoints go through the coordinator for the rest of this start: give the workers the run store's \
                     credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the same path or bucket, or set \
                     [checkpoint] writers = \"coordinator\""
                );
                me.off = Some(why);
            }
            me.book.close();
            me.in_flight = None;
            Polled::Failed { reason }
        };
        match self.book.take() {
            ShardState::Idle => failed(self, "its shard set was closed".into(), false),
            ShardState::Waiting(owed) => {
                if let Some(gone) = owed.iter().find(|&&w| !self.roster.contains(w)) {
                    return failed(self, format!("worker {gone} left before it reported its shard"), false);
                }
                if sent.elapsed() > timeout {
                    return failed(
                        self,
                        format!("workers {owed:?} did not report their shards within {:.0} s", timeout.as_secs_f64()),
                        false,
                    );
                }
                Polled::Pending
            }
            ShardState::Reported { asked, reports, .. } => match self.check(step, digest, &asked, &reports) {
                Ok(commit) => {
                    let copy_s = reports.iter().map(|r| r.copy_s).fold(0.0, f64::max);
                    let share = step_time.map(|t| format!(" ({:.1}% of the step before)", 100.0 * copy_s / t.as_secs_f64().max(1e-9)));
                    tracing::info!(
                        step,
                        shards = reports.len(),
                        copy_s,
                        "every shard of the checkpoint of step {step} is written; the replicas' host copies took {:.1} ms{}, \
                         beside their next step",
                        copy_s * 1e3,
                        share.unwrap_or_default()
                    );
                    self.in_flight = None;
                    Polled::Done(Box::new(commit), reason)
                }
                Err((why, store_fault)) => failed(self, why, store_fault),
            },
        }
    }

    /// The commit of `reports`, checked: each shard written where and as
    /// asked, one Adam count, and the parts of the parameters' digest
    /// adding up to the one the replicas reported of `step`. The error
    /// says whether a replica could not write to the store at all.
    fn check(
        &self,
        step: u64,
        digest: Option<u64>,
        asked: &[Asked],
        reports: &[proto::ShardReport],
    ) -> Result<ShardedCommit, (String, bool)> {
        if let Some(r) = reports.iter().find(|r| !r.error.is_empty()) {
            return Err((format!("worker {} could not write shard {}: {}", r.worker_id, r.index, r.error), true));
        }
        let count = asked.len() as u32;
        let mut shards = Vec::with_capacity(reports.len());
        for (a, r) in asked.iter().zip(reports) {
            let well_formed = r.sha256.len() == 64 && r.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
            if r.name != sharded::shard_file(a.index, count) || !well_formed {
                return Err((format!("worker {} reported shard {} as {:?} with sha256 {:?}", a.worker, a.index, r.name, r.sha256), false));
            }
            shards.push(WrittenShard {
                index: a.index,
                start: a.start,
                end: a.end,
                name: r.name.clone(),
                bytes: r.bytes,
                sha256: r.sha256.clone(),
            });
        }
        let adam_step = reports[0].adam_step;
        if reports.iter().any(|r| r.adam_step != adam_step) || adam_step > step {
            return Err((format!("the shards' Adam counts differ or exceed step {step}"), false));
        }
        let sum = reports.iter().fold(0u64, |s, r| s.wrapping_add(r.digest_part));
        let got = param_digest::finish(sum, self.layout.total as u64);
        match digest {
            Some(want) if want != got => {
                return Err((
                    format!("the shards' parameters have digest {got:#018x}, the replicas reported {want:#018x} for step {step}"),
                    false,
                ));
            }
            Some(_) => {}
            None => tracing::info!(step, "no replica digest of step {step} to check the shards against ([dist] checksum_every)"),
        }
        let cfg = &self.config;
        Ok(ShardedCommit {
            step,
            adam_step,
            skipped_steps: step - adam_step,
            order: OrderState { seed: cfg.train.seed, dataset_len: self.dataset_len, batch_size: cfg.train.batch_size, step },
            config: cfg.clone(),
            layout: (*self.layout).clone(),
            shards,
        })
    }
}
