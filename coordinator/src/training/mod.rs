//! The training loop of the coordinator, one step at a time:
//!
//! 1. gather the members that can compute the step (ready, idle, in sync);
//! 2. split the step's global batch into shards and hand them out;
//! 3. wait for the all-reduce to finish (or fail, and redo the step);
//! 4. queue the update on the coordinator's own copy; check checksums; log
//!    the step's [`StepMetrics`]; checkpoint as the policy says; periodic
//!    evaluations.
//!
//! At the end: final checksums, the last checkpoint, the sample grid (a job
//! through the scheduler), the evaluations still running, `summary.json`.
//!
//! Over 450 lines and still one concept: the step loop; each of its parts
//! with state of its own already lives in a file beside it.

mod checksums;
mod end_grid;
mod members;
mod metrics_log;
mod periodic;
mod progress;
mod saver;
pub mod start;
mod step_metrics;
mod stragglers;
mod summary;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ddpm::checkpoint::Uploader;
use ddpm::config::TrainConfig;
use ddpm::data::{order, Dataset};
use ddpm::proto;
use ddpm::store::RunStore;

pub use progress::eta_s;
pub use step_metrics::StepMetrics;
pub use summary::Summary;

use crate::jobs::JobQueue;
use crate::lifecycle::{Lifecycle, Phase};
use crate::roster::Roster;
use crate::round::{Round, RoundFailure, RoundResult, Screening};
use crate::round_slot::{self, RoundSlot};
use crate::run_status::RunStatus;
use crate::state::StateHandle;
use crate::telemetry::{RunHistory, Telemetry};
use crate::work::Work;
use checksums::ChecksumBook;
use metrics_log::MetricsLog;
use periodic::PeriodicEvals;
use progress::Progress;
use saver::Saver;
use stragglers::StragglerPolicy;

/// What the training loop drives.
pub struct Trainer {
    pub config: TrainConfig,
    /// How many workers to wait for before the first step, and how long.
    pub start: start::StartPolicy,
    /// The run's location as given (`--run`), for the metrics log.
    pub run: String,
    pub store: RunStore,
    pub dataset: Arc<dyn Dataset>,
    pub state: StateHandle,
    /// Steps skipped before this start (from the resumed checkpoint).
    pub start_skipped: u64,
    pub roster: Arc<Roster>,
    pub rounds: Arc<RoundSlot>,
    pub lifecycle: Arc<Lifecycle>,
    pub status: Arc<RunStatus>,
    pub queue: Arc<JobQueue>,
    /// The metrics (each step is recorded there and in `status`).
    pub telemetry: Arc<Telemetry>,
    /// What the dashboard draws: the metrics log's rows.
    pub history: Arc<RunHistory>,
}

type Prefetch = tokio::task::JoinHandle<anyhow::Result<Vec<proto::Sample>>>;

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

/// The summary of the run in `store` if it is finished: it completed all
/// of `config`'s steps without error, and its latest checkpoint (`resume`)
/// is of the last step. Restarting such a run must change nothing.
pub async fn finished_run(store: &RunStore, config: &TrainConfig, resume: Option<&ddpm::checkpoint::CheckpointData>) -> Option<Summary> {
    let total = config.train.steps;
    if resume.map(|r| r.step) != Some(total) {
        return None;
    }
    Summary::read(store).await.filter(|s| s.steps == total && !s.stopped && s.error.is_none())
}

/// The last checkpoint's location, or the error of its upload (which the
/// summary reports and the run exits with).
fn settled(flushed: anyhow::Result<Option<String>>) -> (Option<String>, Option<String>) {
    match flushed {
        Ok(at) => (at, None),
        Err(e) => (None, Some(format!("{e:#}"))),
    }
}

/// What to do after a step's round ended.
enum StepEnd {
    Done(Box<RoundResult>),
    /// Redo the step with these members (the rest were dropped), through
    /// the star if the ring's audit failed (`RoundFailure::needs_star`).
    Redo { left: BTreeSet<u64>, through_star: bool },
}

impl Trainer {
    /// Trains from the state's step to the config's last (or until a stop
    /// is requested), then finishes the run. Returns its summary, which is
    /// in the store in every case: a failed run's says why (`error`), and
    /// the run's error is returned after it is written.
    pub async fn train(&self, uploader: &Uploader) -> anyhow::Result<Summary> {
        let started = Instant::now();
        // The error itself is returned (not its text), so that callers can
        // tell its kind (a start timeout has its own exit code).
        let (summary, failure) = match self.train_steps(uploader).await {
            Ok(summary) => (summary, None),
            Err(e) => {
                let elapsed = started.elapsed().as_secs_f64();
                (Summary::failed(&self.status.get(), self.state.start_step, &self.store, elapsed, format!("{e:#}")), Some(e))
            }
        };
        let written = summary.write(&self.store).await;
        match (&summary.error, written) {
            (Some(error), written) => {
                if let Err(e) = written {
                    tracing::error!("summary.json could not be written either: {e:#}");
                }
                Err(failure.unwrap_or_else(|| anyhow::anyhow!("{error}")))
            }
            (None, Err(e)) => Err(e.context("the run finished but summary.json could not be written")),
            (None, Ok(())) => Ok(summary),
        }
    }

    /// [`Trainer::train`] up to its summary; a final checkpoint that could
    /// not be saved is the summary's `error`.
    async fn train_steps(&self, uploader: &Uploader) -> anyhow::Result<Summary> {
        let cfg = &self.config;
        let total = cfg.train.steps;
        let batch = cfg.train.batch_size;
        let params = self.state.layout.total;
        let step_timeout = Duration::from_secs_f64(cfg.dist.step_timeout_s);
        let started = Instant::now();

        let resumed_from = self.state.start_step;
        let mut step = resumed_from;
        let mut active: BTreeSet<u64> = BTreeSet::new();
        let mut resyncing: BTreeSet<u64> = BTreeSet::new();
        let mut checksums = ChecksumBook::default();
        let mut skipped = self.start_skipped;
        let mut attempt = 0u32;
        // The next attempt goes through the star whatever the backend:
        // the ring's last attempt caught a lie it could not pin on anyone.
        let mut star_redo = false;
        let mut progress = Progress::default();
        let mut last_loss = f64::NAN;
        let mut next: Option<(u64, Prefetch)> = (step < total).then(|| (step + 1, prefetch(cfg, &self.dataset, step + 1)));
        let mut saver = Saver::new(&self.state, uploader, self.store.clone(), self.dataset.len(), cfg, resumed_from);
        let mut metrics = MetricsLog::open(&self.store, &self.run, resumed_from, self.history.clone()).await?;
        let mut evals = PeriodicEvals::new(cfg).await?;
        if resumed_from > 0 {
            tracing::info!(step = resumed_from, total, "resumed: training continues after step {resumed_from}");
        }
        let (workers, min_workers) = (self.start.workers, self.start.min_workers);
        tracing::info!(workers, min_workers, "waiting for {workers} workers to join");
        // A stop while waiting is noticed by the loop's first gather.
        let first_min = start::await_start(&self.roster, &self.lifecycle, step, &self.start).await?.unwrap_or(self.start.workers);
        let stragglers = StragglerPolicy::new(&cfg.dist);
        // Per chunk, the members' median norm in the last applied step.
        let mut screen_reference: Option<Arc<Vec<f64>>> = None;
        let mut last_step_time: Option<Duration> = None;
                let mut started_training = false;
        let mut stopped = false;
        while step < total {
            let s = step + 1;
            // The start is awaited once; after that, whoever is left trains.
            let min = if started_training { 1 } else { first_min };
            // Members of the last step that are not back get the straggler
            // policy's grace (relative to that step's time), then the step
            // goes on without them; they rejoin when they return.
            let wait = match last_step_time {
                Some(took) => stragglers.grace(took).map_or(step_timeout, |g| g.min(step_timeout)),
                None => step_timeout,
            };
            let gathered = if self.lifecycle.stop_requested() {
                None
            } else {
                members::gather(&self.roster, &self.lifecycle, step, &active, &mut resyncing, min, wait).await
            };
            let Some(step_members) = gathered else {
                stopped = true;
                break;
            };
            if !started_training {
                started_training = true;
                self.lifecycle.set_phase(Phase::Training);
                tracing::info!(workers = step_members.len(), steps = total, batch, params, reduction = cfg.dist.backend.name(), "training starts");
            }
            let t0 = Instant::now();
            let samples = match next.take() {
                Some((n, handle)) if n == s => handle.await??,
                _ => prefetch(cfg, &self.dataset, s).await??,
            };
            if s < total {
                next = Some((s + 1, prefetch(cfg, &self.dataset, s + 1)));
            }

            let checksum_requested = checksums::due(s, total, cfg.dist.checksum_every);
            let screening = Screening { factor: cfg.dist.screen_factor, reference: screen_reference.clone() };
            // `auto` is the ring until the NCCL exchange exists (Backend::resolve);
            // `nccl` never trains: its workers refuse it when they register.
            let ring = cfg.dist.backend.may_use_ring() && !star_redo;
            let mut result = match self.run_step(s, attempt, &step_members, &samples, checksum_requested, screening, ring).await {
                StepEnd::Done(result) => *result,
                StepEnd::Redo { left, through_star } => {
                    self.telemetry.step_redone();
                    attempt += 1;
                    active = left;
                    star_redo = through_star;
                    continue;
                }
            };
            attempt = 0;
            star_redo = false;
            active = step_members.iter().copied().collect();
            let outcome = result.outcome;
            if outcome.apply {
                screen_reference = Some(Arc::new(std::mem::take(&mut result.chunk_medians)));
            }
            self.state.apply(s, result.reduced, outcome).await?;
            step = s;
            if !outcome.apply {
                skipped += 1;
                tracing::warn!(step = s, grad_norm = outcome.grad_norm, skipped, "non-finite gradient: every replica skipped this update");
            }
            if checksum_requested {
                let (at, sum) = self.state.checksum().await?;
                debug_assert_eq!(at, s);
                checksums.expect(s, sum);
            }
            checksums.verify(&self.roster, s);

            last_step_time = Some(t0.elapsed());
            let dt = t0.elapsed().as_secs_f64();
            let saved = self.status.get();
            let record = StepMetrics {
                step: s,
                loss: result.loss,
                grad_norm: outcome.grad_norm,
                applied: outcome.apply,
                lr: cfg.lr_at(s),
                workers: step_members.len(),
                step_s: dt,
                compute_s: result.compute_s,
                allreduce_s: result.allreduce_s,
                images_per_s: batch as f64 / dt,
                last_checkpoint: saved.last_checkpoint,
                unsaved_steps: s.saturating_sub(saved.last_checkpoint),
            };
            // The step's record, to each of its consumers.
            metrics.push_step(&record)?;
            progress.add(&record, batch);
            let member_bytes = params * cfg.dist.grad_dtype.bytes_per_element();
            // The star receives every member's gradient, the ring one in all.
            let copies = if ring { 1 } else { step_members.len() };
            let reduced_bytes = (member_bytes * copies) as u64;
            self.telemetry.record_step(&record, batch, reduced_bytes, skipped, progress.images_per_s());
            for &(id, compute_s, shard) in &result.per_member {
                self.roster.record_work(id, s, compute_s, shard);
            }
            last_loss = result.loss;
            if progress::line_due(s, resumed_from, total, cfg.train.log_every) {
                let eta = self.status.get().eta_s(total);
                progress.log_and_reset(s, total, step_members.len(), member_bytes, eta);
                metrics.flush().await;
            }
            if s < total {
                saver.after_step(s, skipped).await?;
            }
            evals.after_step(&self.queue, &self.roster, &self.lifecycle, s, &mut metrics).await?;
        }
        evals.log_finished(&self.queue, &mut metrics)?;
        metrics.flush_all().await;

        let elapsed = || started.elapsed().as_secs_f64();
        let images_per_s = |steps: u64| (steps * batch as u64) as f64 / elapsed();
        if stopped {
            saver.on_stop(step, skipped).await?;
            let (checkpoint, error) = settled(saver.flush().await);
            let checkpoint = checkpoint.or_else(|| self.saved_location());
            tracing::warn!(step, "stopped after step {step}; run the same command again to resume");
            let summary = Summary {
                steps: step,
                stopped: true,
                resumed_from,
                final_loss: last_loss,
                skipped_steps: skipped,
                coordinator_checksum: String::new(),
                replica_checksums: BTreeMap::new(),
                replicas_agree: false,
                checksum_mismatches: checksums.mismatches(),
                checksums_compared: checksums.compared(),
                checkpoint,
                grid: None,
                images_per_s: images_per_s(step - resumed_from),
                elapsed_s: elapsed(),
                error,
            };
            return Ok(summary);
        }

        // Final checksums: every replica reports after the last step.
        let final_ids = members::wait_idle(&self.roster, &active, total, step_timeout).await;
        checksums.verify(&self.roster, total);
        let (_, coord_sum) = self.state.checksum().await?;
        let replica_checksums: BTreeMap<u64, String> = final_ids
            .iter()
            .filter_map(|id| self.roster.checksum(*id, total).map(|c| (*id, format!("{c:016x}"))))
            .collect();
        let coordinator_checksum = format!("{coord_sum:016x}");
        let replicas_agree = !replica_checksums.is_empty() && replica_checksums.values().all(|c| *c == coordinator_checksum);
        if replicas_agree {
            tracing::info!(replicas = replica_checksums.len(), checksum = %coordinator_checksum, "every replica's parameters equal the coordinator's");
        } else {
            tracing::error!(?replica_checksums, coordinator = %coordinator_checksum, "replicas disagree with the coordinator");
        }

        saver.at_end(total, skipped).await?;
        let (checkpoint, error) = settled(saver.flush().await);
        let checkpoint = checkpoint.or_else(|| self.saved_location());
        if let Some(c) = &checkpoint {
            tracing::info!(checkpoint = %c, "final checkpoint saved (raw and EMA weights in the diffusers layout)");
        }

        let grid = if cfg.sample.at_end && !active.is_empty() {
            self.lifecycle.set_phase(Phase::Sampling);
            Some(end_grid::draw(self, total, &active).await?)
        } else {
            None
        };
        if evals.pending() {
            // The training workers are free now: they finish the evaluations.
            self.lifecycle.set_phase(Phase::Evaluating);
            self.lifecycle.end_training();
            evals.finish(&self.queue, &self.lifecycle, &mut metrics).await?;
        }
        self.lifecycle.set_phase(Phase::Done);
        let summary = Summary {
            steps: total,
            stopped: false,
            resumed_from,
            final_loss: last_loss,
            skipped_steps: skipped,
            coordinator_checksum,
            replica_checksums,
            replicas_agree,
            checksum_mismatches: checksums.mismatches(),
                checksums_compared: checksums.compared(),
            checkpoint,
            grid,
            images_per_s: images_per_s(total - resumed_from),
            elapsed_s: elapsed(),
            error,
        };
        Ok(summary)
    }

    /// The newest checkpoint in the store, as a location (none yet: `None`).
    fn saved_location(&self) -> Option<String> {
        let step = self.status.get().last_checkpoint;
        (step > 0).then(|| self.store.location(&ddpm::checkpoint::step_dir(step)))
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

    /// Runs attempt `attempt` of step `s` with `step_members` (rank order):
    /// hands out the shards, opens the round and waits for it. A failed
    /// round drops its culprit (or, on the deadline, the members that did
    /// not deliver) and the step is redone by the rest. `ring`: through
    /// the ring backend, else the star.
    // One call per attempt: what it is (step, attempt, members, batch) and
    // how (checksum, screening, backend).
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        s: u64,
        attempt: u32,
        step_members: &[u64],
        samples: &[proto::Sample],
        checksum_requested: bool,
        screening: Screening,
        ring: bool,
    ) -> StepEnd {
        let cfg = &self.config;
        let step_timeout = Duration::from_secs_f64(cfg.dist.step_timeout_s);
        let batch = cfg.train.batch_size;
        let chunk_elements = (cfg.dist.chunk_kib * 1024 / cfg.dist.grad_dtype.bytes_per_element()).max(1);
        let shards = order::shard_ranges(batch, step_members.len());
        let sizes: Vec<usize> = shards.iter().map(|r| r.len()).collect();
        let (round, done) = Round::new(
            s,
            attempt,
            step_members.to_vec(),
            &sizes,
            self.state.layout.total,
            chunk_elements,
            cfg.dist.grad_dtype,
            cfg.optim.grad_clip,
        );
        let round = round.with_buffer(self.state.gradient_buffer(self.state.layout.total));
        // The star screens the members' chunks, the ring their norms.
        let round = if ring { round.ring() } else { round }.screened(screening);
        let round = Arc::new(round);
        let plan = ring.then(|| self.ring_plan(step_members));
        self.rounds.open(round.clone());
        for (rank, (id, range)) in step_members.iter().zip(&shards).enumerate() {
            let assignment = proto::TrainAssignment {
                step: s,
                attempt,
                global_batch: batch as u32,
                shard_size: range.len() as u32,
                lr: cfg.lr_at(s),
                checksum_requested,
                grad_dtype: cfg.dist.grad_dtype.to_proto() as i32,
                chunk_elements: chunk_elements as u32,
                ring: plan.clone().map(|p| proto::RingPlan { rank: rank as u32, ..p }),
            };
            self.roster.send(*id, Work::Train { assignment, samples: samples[range.clone()].to_vec() });
        }
        let opened = tokio::time::Instant::now();
        let stragglers = StragglerPolicy::new(&cfg.dist);
        let ended = tokio::select! {
            outcome = tokio::time::timeout(step_timeout, done) => match outcome {
                Ok(Ok(ended)) => Ok(ended),
                Ok(Err(_)) | Err(_) => {
                    Err((round.stragglers(), format!("step {s} did not finish within {:.0} s", step_timeout.as_secs_f64())))
                }
            },
            (stuck, reason) = stragglers.expired(&round, opened) => Err((stuck, reason)),
            failure = round.ring_verdict(Duration::from_secs_f64(cfg.dist.ring_peer_timeout_s)) => {
                round_slot::fail(&round, failure.clone()).await;
                Ok(Err(failure))
            }
        };
        self.rounds.close();
        let members = step_members.iter().copied();
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
                round_slot::fail(&round, RoundFailure::new(None, reason.clone())).await;
                self.roster.remove_all(&stuck);
                tracing::warn!(step = s, attempt, dropped = ?stuck, "{reason}; dropping the members that did not deliver and redoing it");
                StepEnd::Redo { left: members.filter(|m| !stuck.contains(m)).collect(), through_star: false }
            }
        }
    }
}
