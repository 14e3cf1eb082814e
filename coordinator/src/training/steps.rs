//! The step loop: what it carries from one step to the next
//! ([`RunState`]), and each step in turn: gather the members that can
//! compute it, read its batch, run attempts until one ends with a result,
//! then apply the update and hand the step's record to every consumer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ddpm::checkpoint::Uploader;
use ddpm::config::{Backend, CheckpointWriters, TrainConfig};
use ddpm::data::{order, Dataset};
use ddpm::proto;
use tokio::sync::oneshot;

use super::attempt::{chunk_elements, step_received_bytes, StepEnd, StepPlan};
use super::checksums::{self, ChecksumBook};
use super::lost::StateLost;
use super::members::{self, Gathered, Wanted};
use super::metrics_log::MetricsLog;
use super::periodic::PeriodicEvals;
use super::progress::{self, Progress};
use super::saver::Saver;
use super::shard_writers::ShardWriters;
use super::stragglers::StragglerPolicy;
use super::trainer::Trainer;
use crate::lifecycle::Phase;
use crate::round::screen::Screening;
use crate::round::RoundResult;
use crate::step_record::StepMetrics;
use crate::work::Work;

type Prefetch = tokio::task::JoinHandle<anyhow::Result<Vec<proto::Sample>>>;

/// What the loop carries from one step to the next; the end of the run
/// reads it too.
pub struct RunState<'u> {
    /// The last step done.
    pub step: u64,
    /// The step this start resumed from (0: a new run).
    pub resumed_from: u64,
    pub started: Instant,
    /// The members of the last step done (or those left to redo the next).
    pub active: BTreeSet<u64>,
    pub checksums: ChecksumBook,
    pub skipped: u64,
    /// NaN until a step is done.
    pub last_loss: f64,
    pub saver: Saver<'u>,
    pub metrics: MetricsLog,
    pub evals: PeriodicEvals,
    /// Idle members told to fetch the state again, expected back.
    resyncing: BTreeSet<u64>,
    /// The attempt at the next step (0: the first).
    attempt: u32,
    /// The next attempt goes through the star whatever the backend: the
    /// ring's last attempt caught a lie it could not pin on anyone.
    star_redo: bool,
    progress: Progress,
    /// The next step's batch, being read.
    next: Option<(u64, Prefetch)>,
    /// Per chunk, the members' median norm in the last applied step.
    screen_reference: Option<Arc<Vec<f64>>>,
    /// The coordinator's checksums asked of the shadow, by step, until it
    /// reaches those steps.
    shadow_sums: Vec<(u64, oneshot::Receiver<u64>)>,
    last_step_time: Option<Duration>,
    started_training: bool,
}

/// Reads the encoded samples of step `step`'s global batch on a blocking thread.
fn prefetch(config: &TrainConfig, dataset: &Arc<dyn Dataset>, step: u64) -> Prefetch {
    let items = order::step_batch(config.train.seed, dataset.len(), config.train.batch_size, step);
    let dataset = dataset.clone();
    tokio::task::spawn_blocking(move || {
        items
            .into_iter()
            .map(|it| Ok(proto::Sample { position: it.position, data: dataset.encoded(it.index)? }))
            .collect::<anyhow::Result<Vec<_>>>()
    })
}

impl RunState<'_> {
    /// The coordinator's checksums the shadow has computed meanwhile, into
    /// the book (those of steps it never reaches are dropped).
    fn take_shadow_sums(&mut self) {
        let checksums = &mut self.checksums;
        self.shadow_sums.retain_mut(|(step, rx)| match rx.try_recv() {
            Ok(sum) => {
                checksums.expect(*step, sum);
                false
            }
            Err(oneshot::error::TryRecvError::Empty) => true,
            Err(oneshot::error::TryRecvError::Closed) => false,
        });
    }

    /// Every coordinator checksum asked of the shadow, once it computed
    /// them (those of steps it never reaches are dropped).
    pub(super) async fn await_shadow_sums(&mut self) {
        for (step, rx) in std::mem::take(&mut self.shadow_sums) {
            if let Ok(sum) = rx.await {
                self.checksums.expect(step, sum);
            }
        }
    }

    /// Step `s`'s global batch (read ahead during the step before), and the
    /// read of the next one started.
    async fn batch(&mut self, config: &TrainConfig, dataset: &Arc<dyn Dataset>, s: u64) -> anyhow::Result<Vec<proto::Sample>> {
        let samples = match self.next.take() {
            Some((n, handle)) if n == s => handle.await??,
            _ => prefetch(config, dataset, s).await??,
        };
        if s < config.train.steps {
            self.next = Some((s + 1, prefetch(config, dataset, s + 1)));
        }
        Ok(samples)
    }
}

impl Trainer {
    /// The loop's state before the first step of this start: the saver,
    /// the metrics log and the periodic evaluations opened, the first
    /// batch being read.
    pub(super) async fn open_run<'a>(&'a self, uploader: &'a Uploader) -> anyhow::Result<RunState<'a>> {
        let cfg = &self.config;
        // The checkpoint's step, or the replicas' that the start went on from.
        let (step, total) = (self.shadow.steps().1, cfg.train.steps);
        let run = RunState {
            step,
            resumed_from: step,
            started: Instant::now(),
            active: BTreeSet::new(),
            checksums: ChecksumBook::default(),
            skipped: if step == self.shadow.start_step() { self.start_skipped } else { self.shadow.committed_skipped() },
            last_loss: f64::NAN,
            saver: self.saver(uploader, step),
            metrics: MetricsLog::open(&self.store, &self.run, step, self.history.clone()).await?,
            evals: PeriodicEvals::new(cfg).await?,
            resyncing: BTreeSet::new(),
            attempt: 0,
            star_redo: false,
            progress: Progress::default(),
            next: (step < total).then(|| (step + 1, prefetch(cfg, &self.dataset, step + 1))),
            screen_reference: None,
            shadow_sums: Vec::new(),
            last_step_time: None,
            started_training: false,
        };
        if step > 0 {
            tracing::info!(step, total, "resumed: training continues after step {step}");
        }
        Ok(run)
    }

    /// The run's saver: with the shadow off and `[checkpoint] writers =
    /// "replicas"`, periodic checkpoints are the replicas' shards.
    fn saver<'a>(&'a self, uploader: &'a Uploader, step: u64) -> Saver<'a> {
        let cfg = &self.config;
        let saver = Saver::new(&self.shadow, uploader, self.store.clone(), cfg, step);
        if !self.shadow.is_off() || cfg.checkpoint.writers != CheckpointWriters::Replicas {
            return saver;
        }
        let (layout, len) = (self.shadow.layout().clone(), self.dataset.len());
        let writers = ShardWriters::new(self.shards.clone(), self.roster.clone(), &self.store, cfg, layout, len);
        saver.with_shards(writers, Duration::from_secs_f64(cfg.dist.step_timeout_s))
    }

    /// Trains step after step: true after the config's last, false when a
    /// stop was requested first. `first_min`: the workers the first step
    /// needs (the start policy's); any will do after that.
    pub(super) async fn steps(&self, run: &mut RunState<'_>, first_min: usize) -> anyhow::Result<bool> {
        let cfg = &self.config;
        let total = cfg.train.steps;
        while run.step < total {
            let s = run.step + 1;
            let min = if run.started_training { 1 } else { first_min };
            let members = match self.gather(run, min).await {
                Gathered::Members(m) => m,
                Gathered::Stopped => return Ok(false),
                Gathered::StateLost => return Err(StateLost { step: run.step, checkpoint: self.status.get().last_checkpoint }.into()),
            };
            // Replicas compared among themselves (the shadow off): their
            // reports of the last step came with their requests for work, so
            // one that differs is resynced before it computes another
            // gradient, and the members are gathered again without it.
            let differ = run.checksums.verify_agreement(&self.roster, run.step);
            if differ > 0 {
                self.telemetry.checksum_mismatches(differ);
                continue;
            }
            // What wants this step's state gets it before the next step (with the
            // shadow off, a checkpoint or a job; in any mode, a joiner from a peer).
            self.ask_for_upload(run.step, &members);
            run.saver.send_shards(run.step, &members, run.last_step_time);
            self.training_starts(run, members.len());
            let t0 = Instant::now();
            let samples = run.batch(cfg, &self.dataset, s).await?;
            // `auto` is NCCL when every member can be an NCCL rank, else the ring
            // (Backend::resolve); a redo after a failed audit goes through the star.
            let backend = cfg.dist.backend.resolve(self.roster.every_nccl(&members));
            let nccl = backend == Backend::Nccl && !run.star_redo;
            let ring = (backend == Backend::Ring || nccl) && !run.star_redo;
            let plan = StepPlan {
                step: s,
                // Ranks (the ring's order, and whose shard is whose) by host:
                // each node's members are neighbours.
                members: if ring { self.roster.ring_order(&members) } else { members },
                checksum_requested: checksums::due(s, total, cfg.dist.checksum_every),
                ring,
                nccl,
            };
            let screening = Screening { factor: cfg.dist.screen_factor, reference: run.screen_reference.clone() };
            // A replicas' checkpoint whose last shard is reported during the
            // step is committed then, not after it.
            let attempt = run.attempt;
            match run.saver.commit_during(self.run_step(&plan, attempt, &samples, screening)).await {
                StepEnd::Done(result) => self.step_done(run, &plan, *result, t0).await?,
                StepEnd::Redo { left, through_star } => {
                    self.telemetry.step_redone();
                    run.attempt += 1;
                    run.active = left;
                    run.star_redo = through_star;
                }
            }
        }
        Ok(true)
    }

    /// The members of the next step; `None` when a stop was requested.
    /// Members of the last step that are not back get the straggler
    /// policy's grace (relative to that step's time), then the step goes on
    /// without them; they rejoin when they return.
    async fn gather(&self, run: &mut RunState<'_>, min: usize) -> Gathered {
        if self.lifecycle.stop_requested() {
            return Gathered::Stopped;
        }
        let step_timeout = Duration::from_secs_f64(self.config.dist.step_timeout_s);
        let wait = match run.last_step_time {
            Some(took) => StragglerPolicy::new(&self.config.dist).grace(took).map_or(step_timeout, |g| g.min(step_timeout)),
            None => step_timeout,
        };
        let replicas_only = self.shadow.replicas_only();
        let want = Wanted { step: run.step, previous: &run.active, min, timeout: wait, replicas_only };
        // Shards reported while the loop waits are committed then too.
        run.saver.commit_during(members::gather(&self.roster, &self.lifecycle, &self.peer_syncs, want, &mut run.resyncing)).await
    }

    /// Before the first step of this start: the phase changes and the log
    /// says so, once.
    fn training_starts(&self, run: &mut RunState<'_>, workers: usize) {
        if run.started_training {
            return;
        }
        run.started_training = true;
        self.lifecycle.set_phase(Phase::Training);
        let cfg = &self.config;
        let (steps, batch, params) = (cfg.train.steps, cfg.train.batch_size, self.shadow.layout().total);
        tracing::info!(workers, steps, batch, params, reduction = cfg.dist.backend.name(), "training starts");
    }

    /// `plan`'s step, begun at `t0`, ended with `result`: the update
    /// applied, the checksums checked, the step recorded, a checkpoint and
    /// an evaluation if due.
    async fn step_done(&self, run: &mut RunState<'_>, plan: &StepPlan, result: RoundResult, t0: Instant) -> anyhow::Result<()> {
        let (s, cfg) = (plan.step, &self.config);
        let attempt = std::mem::take(&mut run.attempt);
        run.star_redo = false;
        run.active = plan.members.iter().copied().collect();
        let RoundResult { reduced, outcome, loss, compute_s, allreduce_s, per_member, chunk_medians, .. } = result;
        if outcome.apply {
            run.screen_reference = Some(Arc::new(chunk_medians));
        }
        // The step is committed: its update reaches the shadow from here
        // (the star's in hand, the ring's fed by its members meanwhile).
        // With the shadow off nothing follows (a star redo's gradient too:
        // the coordinator's copy is of an older step).
        if self.shadow.is_off() {
            self.shadow.commit_outcome(s, outcome);
        } else if plan.ring {
            let dist = &cfg.dist;
            self.shadow.expect_feed(s, attempt, plan.members.clone(), dist.grad_dtype, chunk_elements(dist), outcome);
        } else {
            self.shadow.commit_reduced(s, reduced, outcome);
        }
        run.step = s;
        if !outcome.apply {
            run.skipped += 1;
            let skipped = run.skipped;
            tracing::warn!(step = s, grad_norm = outcome.grad_norm, skipped, "non-finite gradient: every replica skipped this update");
        }
        if plan.checksum_requested && self.shadow.is_off() {
            // No copy to compare with: the replicas are compared among themselves.
            run.checksums.expect_agreement(s);
        } else if plan.checksum_requested {
            run.shadow_sums.push((s, self.shadow.request_checksum(s).await?));
        }
        run.take_shadow_sums();
        self.telemetry.checksum_mismatches(run.checksums.verify(&self.roster, s));
        let took = t0.elapsed();
        run.last_step_time = Some(took);
        let saved = self.status.get();
        let dt = took.as_secs_f64();
        let record = StepMetrics {
            step: s,
            loss,
            grad_norm: outcome.grad_norm,
            applied: outcome.apply,
            lr: cfg.lr_at(s),
            workers: plan.members.len(),
            step_s: dt,
            compute_s,
            allreduce_s,
            images_per_s: cfg.train.batch_size as f64 / dt,
            last_checkpoint: saved.last_checkpoint,
            unsaved_steps: s.saturating_sub(saved.last_checkpoint),
            // Filled in when the step is recorded.
            coordinator_received_bytes: 0,
        };
        self.record(run, plan, &record).await?;
        for &(id, compute_s, shard) in &per_member {
            self.roster.record_work(id, s, compute_s, shard);
        }
        run.last_loss = loss;
        if s < cfg.train.steps {
            run.saver.after_step(s).await?;
        }
        run.evals.after_step(&self.queue, &self.roster, &self.lifecycle, s, &mut run.metrics).await?;
        self.keep_shadow_close().await
    }

    /// Waits while the shadow is more than `[dist] shadow_lag` steps
    /// behind: the one place training waits for the coordinator's copy.
    /// A part whose owner did not feed it is asked of the member keeping
    /// its spare; a part whose two feeders are gone, or none of it
    /// arriving within the step timeout, breaks the shadow.
    async fn keep_shadow_close(&self) -> anyhow::Result<()> {
        let dist = &self.config.dist;
        let started = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_millis(200), self.shadow.wait_lag(dist.shadow_lag)).await {
                Ok(done) => {
                    let (applied, committed) = self.shadow.steps();
                    self.telemetry.shadow(committed - applied, done.is_err());
                    return Ok(done?);
                }
                Err(_) => {
                    for id in self.shadow.owing() {
                        if !self.roster.contains(id) {
                            self.shadow.member_lost(id);
                        }
                    }
                    self.ask_for_spares(started.elapsed());
                    if started.elapsed().as_secs_f64() > dist.step_timeout_s {
                        self.shadow.give_up(format!("no part of its update arrived for {:.0} s", dist.step_timeout_s));
                    }
                }
            }
        }
    }

    /// Asks the members keeping the spares the shadow wants for them.
    fn ask_for_spares(&self, waited: Duration) {
        for (holder, ask) in self.shadow.spares_wanted(waited) {
            let step = ask.step;
            if self.roster.send(holder, Work::FeedSpare(ask)) {
                tracing::warn!(
                    worker = holder,
                    step,
                    "part of step {step}'s update did not come from its owner: asking worker {holder} for its spare"
                );
            } else {
                self.shadow.member_lost(holder);
            }
        }
    }

    /// The step's record, to each of its consumers: the metrics log, the
    /// progress line (logged when due), the metrics and the status.
    async fn record(&self, run: &mut RunState<'_>, plan: &StepPlan, record: &StepMetrics) -> anyhow::Result<()> {
        let cfg = &self.config;
        let (s, total, batch) = (plan.step, cfg.train.steps, cfg.train.batch_size);
        let params = self.shadow.layout().total;
        let member_bytes = params * cfg.dist.grad_dtype.bytes_per_element();
        let received = step_received_bytes(plan, params, &cfg.dist);
        let record = &StepMetrics { coordinator_received_bytes: self.telemetry.received_bytes() + received, ..record.clone() };
        run.metrics.push_step(record)?;
        run.progress.add(record, batch);
        self.telemetry.record_step(record, batch, received, run.skipped, run.progress.images_per_s());
        if progress::line_due(s, run.resumed_from, total, cfg.train.log_every) {
            let eta = self.status.get().eta_s(total);
            run.progress.log_and_reset(s, total, plan.members.len(), member_bytes, eta);
            run.metrics.flush().await;
        }
        Ok(())
    }
}
