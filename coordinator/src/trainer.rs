//! The training loop of the coordinator, one step at a time:
//!
//! 1. gather the members that can compute the step (ready, idle, in sync);
//! 2. split the step's global batch into shards and hand them out;
//! 3. wait for the all-reduce to finish (or fail, and redo the step);
//! 4. queue the update on the coordinator's own copy; check checksums; log.
//!
//! Checkpoints follow the run's policy (every N steps, every M minutes, at
//! the end, when asked to stop); uploads run in the background. At the end:
//! final checksums, the last checkpoint, a sample grid, shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ddpm::checkpoint::{self, CheckpointPolicy, Reason, UploadEvent, Uploader};
use ddpm::data::{order, Dataset};
use ddpm::store::{Location, RunStore};
use ddpm::proto;
use ddpm::train::local::batch_items;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::membership::Work;
use crate::reduce::{Round, RoundFailure, RoundResult};
use crate::{Coord, CoordOptions};

/// How a run ended; written to `RUN/summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Steps done (the run's total unless it was stopped).
    pub steps: u64,
    /// The run was stopped (SIGTERM/Ctrl-C) before its last step.
    pub stopped: bool,
    /// The step this start resumed from (0 for a new run).
    pub resumed_from: u64,
    pub final_loss: f64,
    pub skipped_steps: u64,
    /// Checksum of the coordinator's parameters after the last step.
    pub coordinator_checksum: String,
    /// Each replica's reported checksum after the last step, by worker id.
    pub replica_checksums: BTreeMap<u64, String>,
    /// Every replica that reported equals the coordinator.
    pub replicas_agree: bool,
    pub checksum_mismatches: u64,
    /// The last checkpoint saved (a location in the run's store).
    pub checkpoint: Option<String>,
    /// The sample grid drawn at the end (a location in the run's store).
    pub grid: Option<String>,
    /// Images per second over this start.
    pub images_per_s: f64,
    pub elapsed_s: f64,
}

/// Rolling numbers for the progress line.
#[derive(Default)]
struct Window {
    steps: u64,
    images: u64,
    seconds: f64,
    compute_s: f64,
    allreduce_s: f64,
    loss: f64,
}

type Prefetch = JoinHandle<anyhow::Result<Vec<proto::Sample>>>;

fn prefetch(config: &ddpm::config::TrainConfig, dataset: &Arc<dyn Dataset>, step: u64) -> Prefetch {
    let items = batch_items(config, dataset.len(), step);
    let dataset = dataset.clone();
    tokio::task::spawn_blocking(move || {
        items
            .into_iter()
            .map(|it| Ok(proto::Sample { position: it.position, data: dataset.encoded(it.index)? }))
            .collect::<anyhow::Result<Vec<_>>>()
    })
}

/// Checkpoint bookkeeping for the training loop.
struct Saver<'a> {
    coord: &'a Coord,
    uploader: &'a Uploader,
    policy: CheckpointPolicy,
    last_save: Instant,
    last_saved_step: Option<u64>,
}

impl Saver<'_> {
    /// Captures the state after `step` and hands it to the uploader (which
    /// never blocks training).
    async fn save(&mut self, step: u64, skipped: u64, reason: Reason) -> anyhow::Result<()> {
        let data = self.coord.state.capture(skipped, self.coord.dataset_len).await?;
        debug_assert_eq!(data.step, step);
        tracing::info!(step, %reason, "checkpoint captured; uploading in the background");
        self.uploader.submit(data, reason);
        self.last_save = Instant::now();
        self.last_saved_step = Some(step);
        Ok(())
    }

    /// Waits for the uploads; an error if the last one failed.
    async fn flush(&self) -> anyhow::Result<Option<String>> {
        match self.uploader.flush().await {
            Some(UploadEvent::Saved { step, .. }) => Ok(Some(self.coord.location(&checkpoint::step_dir(step)))),
            Some(UploadEvent::Failed { step, error, .. }) => {
                anyhow::bail!("the checkpoint of step {step} could not be saved: {error}")
            }
            _ => Ok(None),
        }
    }
}

pub async fn train(
    coord: Arc<Coord>,
    dataset: Arc<dyn Dataset>,
    opts: &CoordOptions,
    uploader: &Uploader,
) -> anyhow::Result<Summary> {
    let cfg = coord.config.clone();
    let total = cfg.train.steps;
    let batch = cfg.train.batch_size;
    let params = coord.state.layout.total;
    let chunk_elements = (cfg.dist.chunk_kib * 1024 / cfg.dist.grad_dtype.bytes_per_element()).max(1);
    let step_timeout = Duration::from_secs_f64(cfg.dist.step_timeout_s);
    let started = Instant::now();

    let resumed_from = coord.state.start_step;
    let mut step = resumed_from;
    let mut active: BTreeSet<u64> = BTreeSet::new();
    let mut resyncing: BTreeSet<u64> = BTreeSet::new();
    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    let mut mismatches = 0u64;
    let mut skipped = coord.start_skipped;
    let mut attempt = 0u32;
    let mut window = Window::default();
    let mut last_loss = f64::NAN;
    let mut next: Option<(u64, Prefetch)> = (step < total).then(|| (step + 1, prefetch(&cfg, &dataset, step + 1)));
    let mut saver = Saver {
        coord: &coord,
        uploader,
        policy: CheckpointPolicy::new(&cfg.checkpoint),
        last_save: Instant::now(),
        last_saved_step: (resumed_from > 0).then_some(resumed_from),
    };
    let mut metrics = MetricsLog::open(&coord.store, &opts.run)?;
    let mut evals = PeriodicEvals::new(&coord).await?;
    if resumed_from > 0 {
        tracing::info!(step = resumed_from, total, "resumed: training continues after step {resumed_from}");
    }
    tracing::info!(workers = opts.workers, "waiting for {} workers to join", opts.workers);
    let mut started_training = false;
    let mut stopped = false;
    while step < total {
        let s = step + 1;
        // The world size is awaited once; after that, whoever is left trains.
        let min = if started_training { 1 } else { opts.workers };
        let gathered = if coord.stop_requested() {
            None
        } else {
            gather(&coord, step, &active, &mut resyncing, min, step_timeout).await?
        };
        let Some(members) = gathered else {
            stopped = true;
            break;
        };
        if !started_training {
            started_training = true;
            coord.set_phase("training");
            tracing::info!(workers = members.len(), steps = total, batch, params, "training starts");
        }
        let t0 = Instant::now();
        let samples = match next.take() {
            Some((n, handle)) if n == s => handle.await??,
            _ => prefetch(&cfg, &dataset, s).await??,
        };
        if s < total {
            next = Some((s + 1, prefetch(&cfg, &dataset, s + 1)));
        }

        let shards = order::shard_ranges(batch, members.len());
        let sizes: Vec<usize> = shards.iter().map(|r| r.len()).collect();
        let (round, done) = Round::new(
            s,
            attempt,
            members.clone(),
            &sizes,
            params,
            chunk_elements,
            cfg.dist.grad_dtype,
            cfg.optim.grad_clip,
        );
        let round = Arc::new(round);
        *coord.round.lock().unwrap() = Some(round.clone());
        let checksum_requested = s == total || (cfg.dist.checksum_every > 0 && s % cfg.dist.checksum_every == 0);
        {
            let mut ms = coord.members.lock().unwrap();
            for (id, range) in members.iter().zip(&shards) {
                if let Some(m) = ms.get_mut(*id) {
                    m.send(Work::Train {
                        assignment: proto::TrainAssignment {
                            step: s,
                            attempt,
                            global_batch: batch as u32,
                            shard_size: range.len() as u32,
                            lr: cfg.lr_at(s),
                            checksum_requested,
                            grad_dtype: cfg.dist.grad_dtype.to_proto() as i32,
                            chunk_elements: chunk_elements as u32,
                        },
                        samples: samples[range.clone()].to_vec(),
                    });
                }
            }
        }
        let outcome = tokio::time::timeout(step_timeout, done).await;
        *coord.round.lock().unwrap() = None;
        let result: RoundResult = match outcome {
            Ok(Ok(Ok(result))) => result,
            Ok(Ok(Err(failure))) => {
                if let Some(culprit) = failure.culprit {
                    coord.members.lock().unwrap().remove(culprit);
                }
                tracing::warn!(step = s, attempt, "step abandoned: {}; redoing it", failure.reason);
                attempt += 1;
                active = members.into_iter().filter(|m| Some(*m) != failure.culprit).collect();
                continue;
            }
            Ok(Err(_)) | Err(_) => {
                let reason = format!("step {s} did not finish within {:.0} s", step_timeout.as_secs_f64());
                let stuck = round.stragglers();
                for (out, status) in round.fail(RoundFailure { culprit: None, reason: reason.clone() }) {
                    let _ = out.send(Err(status)).await;
                }
                {
                    let mut ms = coord.members.lock().unwrap();
                    for id in &stuck {
                        ms.remove(*id);
                    }
                }
                tracing::warn!(step = s, attempt, dropped = ?stuck, "{reason}; dropping the members that did not deliver and redoing it");
                attempt += 1;
                active = members.into_iter().filter(|m| !stuck.contains(m)).collect();
                continue;
            }
        };
        attempt = 0;
        active = members.iter().copied().collect();
        let outcome = result.outcome;
        coord.state.apply(s, result.reduced, outcome).await?;
        step = s;
        if !outcome.apply {
            skipped += 1;
            tracing::warn!(step = s, grad_norm = outcome.grad_norm, skipped, "non-finite gradient: every replica skipped this update");
        }
        if checksum_requested {
            let (at, sum) = coord.state.checksum().await?;
            debug_assert_eq!(at, s);
            expected.insert(s, sum);
        }
        mismatches += verify_checksums(&coord, &mut expected, s);

        let dt = t0.elapsed().as_secs_f64();
        metrics.push(&serde_json::json!({
            "step": s,
            "loss": result.loss,
            "grad_norm": outcome.grad_norm,
            "applied": outcome.apply,
            "lr": cfg.lr_at(s),
            "workers": members.len(),
            "step_s": dt,
            "compute_s": result.compute_s,
            "allreduce_s": result.allreduce_s,
            "images_per_s": batch as f64 / dt,
        }))?;
        last_loss = result.loss;
        window.steps += 1;
        window.images += batch as u64;
        window.seconds += dt;
        window.compute_s += result.compute_s;
        window.allreduce_s += result.allreduce_s;
        window.loss += result.loss;
        {
            let mut st = coord.status.lock().unwrap();
            st.step = s;
            st.loss = result.loss;
            st.skipped_steps = skipped;
            st.images_per_s = window.images as f64 / window.seconds.max(1e-9);
        }
        if s == resumed_from + 1 || s == total || s % cfg.train.log_every.max(1) == 0 {
            log_progress(&window, s, total, members.len(), params, &cfg, started);
            window = Window::default();
            metrics.flush().await?;
        }
        if s < total {
            if let Some(reason) = saver.policy.should_save(s, Instant::now(), saver.last_save) {
                saver.save(s, skipped, reason).await?;
            }
        }
        evals.after_step(&coord, s, &mut metrics).await?;
    }
    evals.log_finished(&coord, &mut metrics)?;
    metrics.flush().await?;

    if stopped {
        if let Some(reason) = saver.policy.on_signal(step, saver.last_saved_step) {
            saver.save(step, skipped, reason).await?;
        }
        let checkpoint = saver.flush().await?;
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
            checksum_mismatches: mismatches,
            checkpoint,
            grid: None,
            images_per_s: ((step - resumed_from) * batch as u64) as f64 / started.elapsed().as_secs_f64(),
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        put_json(&coord.store, "summary.json", &summary).await?;
        return Ok(summary);
    }

    // Final checksums: every replica reports after the last step.
    let final_ids = wait_idle(&coord, &active, total, step_timeout).await;
    mismatches += verify_checksums(&coord, &mut expected, total);
    let (_, coord_sum) = coord.state.checksum().await?;
    let replica_checksums: BTreeMap<u64, String> = {
        let ms = coord.members.lock().unwrap();
        final_ids
            .iter()
            .filter_map(|id| ms.get(*id).and_then(|m| m.checksums.get(&total)).map(|c| (*id, format!("{c:016x}"))))
            .collect()
    };
    let coordinator_checksum = format!("{coord_sum:016x}");
    let replicas_agree = !replica_checksums.is_empty() && replica_checksums.values().all(|c| *c == coordinator_checksum);
    if replicas_agree {
        tracing::info!(replicas = replica_checksums.len(), checksum = %coordinator_checksum, "every replica's parameters equal the coordinator's");
    } else {
        tracing::error!(?replica_checksums, coordinator = %coordinator_checksum, "replicas disagree with the coordinator");
    }

    if let Some(reason) = saver.policy.at_end(total, saver.last_saved_step) {
        saver.save(total, skipped, reason).await?;
    }
    let checkpoint = saver.flush().await?;
    if let Some(c) = &checkpoint {
        tracing::info!(checkpoint = %c, "final checkpoint saved (raw and EMA weights in the diffusers layout)");
    }

    let grid = if cfg.sample.at_end && !active.is_empty() {
        coord.set_phase("sampling");
        Some(sample_grid(&coord, total, &active).await?)
    } else {
        None
    };
    if evals.pending() {
        // The training workers are free now: they finish the evaluations.
        coord.set_phase("evaluating");
        coord.training_over.store(true, std::sync::atomic::Ordering::SeqCst);
        coord.changed.notify_waiters();
        evals.finish(&coord, &mut metrics).await?;
    }
    coord.set_phase("done");
    let elapsed = started.elapsed().as_secs_f64();
    let summary = Summary {
        steps: total,
        stopped: false,
        resumed_from,
        final_loss: last_loss,
        skipped_steps: skipped,
        coordinator_checksum,
        replica_checksums,
        replicas_agree,
        checksum_mismatches: mismatches,
        checkpoint,
        grid,
        images_per_s: ((total - resumed_from) * batch as u64) as f64 / elapsed,
        elapsed_s: elapsed,
    };
    put_json(&coord.store, "summary.json", &summary).await?;
    Ok(summary)
}

/// Evaluation every `eval.every_steps` steps (config `[eval]`): submits the
/// job, pauses training until it ends when no eval worker could run it, and
/// appends each finished one to the metrics log as
/// `{"step", "eval": {job_id, state, weights_step, fid, inception_score, grid}}`.
struct PeriodicEvals {
    spec: Option<crate::jobs::JobSpec>,
    every: u64,
    /// (step, job id) of the evaluations not yet logged.
    pending: Vec<(u64, u64)>,
}

impl PeriodicEvals {
    async fn new(coord: &Coord) -> anyhow::Result<Self> {
        let e = &coord.config.eval;
        if e.every_steps == 0 {
            return Ok(Self { spec: None, every: 0, pending: Vec::new() });
        }
        let spec = crate::jobs::periodic_spec(&coord.config).map_err(|err| anyhow::anyhow!("config [eval]: {err}"))?;
        if !e.reference_stats.is_empty() {
            let path = std::path::PathBuf::from(&e.reference_stats);
            tokio::task::spawn_blocking(move || ddpm::eval::read_stats_npz(&path))
                .await?
                .map_err(|err| anyhow::anyhow!("config [eval] reference_stats: {err}"))?;
        }
        Ok(Self { spec: Some(spec), every: e.every_steps, pending: Vec::new() })
    }

    fn pending(&self) -> bool {
        !self.pending.is_empty()
    }

    async fn after_step(&mut self, coord: &Coord, step: u64, metrics: &mut MetricsLog) -> anyhow::Result<()> {
        self.log_finished(coord, metrics)?;
        let Some(spec) = &self.spec else { return Ok(()) };
        if step % self.every != 0 || coord.stop_requested() {
            return Ok(());
        }
        let id = crate::jobs::submit_internal(coord, spec.clone());
        self.pending.push((step, id));
        let eval_workers = coord.members.lock().unwrap().iter().any(|m| m.ready && m.role == crate::membership::Role::Eval);
        if eval_workers {
            return Ok(());
        }
        // No eval worker: the training workers run it between two steps.
        tracing::info!(step, job = id, "pausing training for the periodic evaluation (no eval worker)");
        coord.set_phase("evaluating");
        coord.jobs.lend_trainers.store(true, std::sync::atomic::Ordering::SeqCst);
        coord.jobs.wake.notify_waiters();
        coord.changed.notify_waiters();
        while !self.ended(coord, id) {
            if coord.stop_requested() {
                coord.jobs.cancel(id, "the run was asked to stop");
                break;
            }
            let notified = coord.changed.notified();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        coord.jobs.lend_trainers.store(false, std::sync::atomic::Ordering::SeqCst);
        coord.set_phase("training");
        self.log_finished(coord, metrics)?;
        metrics.flush().await
    }

    fn ended(&self, coord: &Coord, id: u64) -> bool {
        coord.jobs.status(id).map_or(true, |s| matches!(s.state.as_str(), "done" | "failed" | "cancelled"))
    }

    /// Appends the evaluations that have ended to the log.
    fn log_finished(&mut self, coord: &Coord, metrics: &mut MetricsLog) -> anyhow::Result<()> {
        let mut still = Vec::new();
        for (step, id) in std::mem::take(&mut self.pending) {
            if !self.ended(coord, id) {
                still.push((step, id));
                continue;
            }
            let Some(status) = coord.jobs.status(id) else { continue };
            let row = crate::jobs::result_row(&status);
            tracing::info!(step, job = id, result = %row, "periodic evaluation");
            metrics.push(&serde_json::json!({ "step": step, "eval": row }))?;
        }
        self.pending = still;
        Ok(())
    }

    /// Waits for the evaluations still running and logs them.
    async fn finish(&mut self, coord: &Coord, metrics: &mut MetricsLog) -> anyhow::Result<()> {
        while self.pending() && !coord.stop_requested() {
            self.log_finished(coord, metrics)?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.log_finished(coord, metrics)?;
        metrics.flush().await
    }
}

async fn put_json(store: &RunStore, key: &str, value: &impl Serialize) -> anyhow::Result<()> {
    store.put(key, serde_json::to_vec_pretty(value)?.into()).await?;
    Ok(())
}

/// The per-step metrics log: one JSON object per step. A local run appends
/// to `RUN/metrics.jsonl` as steps finish (`tail -f` works); an object
/// store cannot append, so there the lines go up in segments,
/// `metrics/step_<first step>.jsonl`, one per logging interval.
enum MetricsLog {
    Local(std::io::BufWriter<std::fs::File>),
    Remote { store: RunStore, lines: Vec<String>, first: Option<u64> },
}

impl MetricsLog {
    fn open(store: &RunStore, run: &str) -> anyhow::Result<Self> {
        match Location::parse(run)? {
            Location::Local(dir) => {
                std::fs::create_dir_all(&dir)?;
                let path = dir.join("metrics.jsonl");
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| anyhow::anyhow!("cannot open the metrics log {}: {e}", path.display()))?;
                Ok(Self::Local(std::io::BufWriter::new(file)))
            }
            _ => Ok(Self::Remote { store: store.clone(), lines: Vec::new(), first: None }),
        }
    }

    fn push(&mut self, row: &serde_json::Value) -> anyhow::Result<()> {
        match self {
            Self::Local(file) => {
                use std::io::Write;
                writeln!(file, "{row}")?;
            }
            Self::Remote { lines, first, .. } => {
                first.get_or_insert(row["step"].as_u64().unwrap_or(0));
                lines.push(row.to_string());
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Local(file) => {
                use std::io::Write;
                file.flush()?;
            }
            Self::Remote { store, lines, first } => {
                if let Some(f) = first.take() {
                    let body = lines.join("\n") + "\n";
                    lines.clear();
                    if let Err(e) = store.put(&format!("metrics/step_{f:010}.jsonl"), body.into()).await {
                        tracing::warn!("could not write metrics from step {f}: {e}");
                    }
                }
            }
        }
        Ok(())
    }
}

fn log_progress(
    w: &Window,
    step: u64,
    total: u64,
    workers: usize,
    params: usize,
    cfg: &ddpm::config::TrainConfig,
    started: Instant,
) {
    let n = w.steps.max(1) as f64;
    let imgs = w.images as f64 / w.seconds.max(1e-9);
    let allreduce_ms = 1e3 * w.allreduce_s / n;
    let bytes = (params * cfg.dist.grad_dtype.bytes_per_element()) as f64;
    let mb_s = if w.allreduce_s > 0.0 { bytes * n / w.allreduce_s / 1e6 } else { 0.0 };
    let elapsed = started.elapsed().as_secs_f64();
    let eta = elapsed / step as f64 * (total - step) as f64;
    // One line a person can follow; the same numbers per step are in metrics.jsonl.
    tracing::info!(
        "step {step}/{total}  loss {:.4}  {imgs:.1} img/s  compute {:.0} ms  all-reduce {allreduce_ms:.1} ms ({mb_s:.0} MB/s per worker)  workers {workers}  eta {}",
        w.loss / n,
        1e3 * w.compute_s / n,
        format_duration(eta),
    );
}

fn format_duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Waits until the members that can compute step `step + 1` are known:
/// every live member of the previous step and every resyncing joiner is
/// idle and in sync (or `timeout` passed), and at least `min` are.
/// Idle members that are out of sync are told to fetch the state again.
/// `None` when a stop was requested while waiting.
async fn gather(
    coord: &Coord,
    step: u64,
    previous: &BTreeSet<u64>,
    resyncing: &mut BTreeSet<u64>,
    min: usize,
    timeout: Duration,
) -> anyhow::Result<Option<Vec<u64>>> {
    let started = Instant::now();
    let mut last_log = Instant::now();
    loop {
        let notified = coord.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut ms = coord.members.lock().unwrap();
            for m in ms.iter_mut() {
                if m.ready && m.idle && m.role == crate::membership::Role::Train && m.applied_step != step {
                    tracing::info!(worker = m.id, at = m.applied_step, step, "worker is out of sync: sending it the current state");
                    m.send(Work::Resync(format!("the run is at step {step}, the worker at {}", m.applied_step)));
                    resyncing.insert(m.id);
                }
            }
            resyncing.retain(|id| ms.get(*id).is_some());
            let in_sync = ms.in_sync(step);
            for id in &in_sync {
                resyncing.remove(id);
            }
            let missing: Vec<u64> = previous
                .iter()
                .chain(resyncing.iter())
                .filter(|id| ms.get(**id).is_some() && !in_sync.contains(id))
                .copied()
                .collect();
            if in_sync.len() >= min && (missing.is_empty() || started.elapsed() > timeout) {
                if !missing.is_empty() {
                    tracing::warn!(step = step + 1, ?missing, "going on without members that did not come back in time");
                }
                return Ok(Some(in_sync));
            }
            if last_log.elapsed() > Duration::from_secs(10) {
                tracing::info!(have = in_sync.len(), need = min, ?missing, "waiting for workers");
                last_log = Instant::now();
            }
        }
        if coord.stop_requested() {
            return Ok(None);
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Waits (up to `timeout`) until `ids` are idle after `step`; returns those that are.
async fn wait_idle(coord: &Coord, ids: &BTreeSet<u64>, step: u64, timeout: Duration) -> Vec<u64> {
    let started = Instant::now();
    loop {
        let notified = coord.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let done: Vec<u64> = {
            let ms = coord.members.lock().unwrap();
            ids.iter().filter(|id| ms.get(**id).is_some_and(|m| m.idle && m.applied_step == step)).copied().collect()
        };
        let live = {
            let ms = coord.members.lock().unwrap();
            ids.iter().filter(|id| ms.get(**id).is_some()).count()
        };
        if done.len() == live || started.elapsed() > timeout {
            return done;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Compares the checksums replicas reported with the coordinator's; a
/// mismatching replica is sent the coordinator's state. Returns the number
/// of mismatches found.
fn verify_checksums(coord: &Coord, expected: &mut BTreeMap<u64, u64>, step: u64) -> u64 {
    let mut mismatches = 0;
    let mut ms = coord.members.lock().unwrap();
    for m in ms.iter_mut() {
        let reported: Vec<(u64, u64)> =
            m.checksums.iter().filter(|(s, _)| expected.contains_key(s)).map(|(s, c)| (*s, *c)).collect();
        for (s, c) in reported {
            let want = expected[&s];
            if c == want {
                tracing::debug!(worker = m.id, step = s, "replica checksum matches");
            } else {
                mismatches += 1;
                tracing::error!(worker = m.id, step = s, got = %format!("{c:016x}"), want = %format!("{want:016x}"),
                    "replica's parameters differ from the coordinator's: resending the state");
                if m.idle {
                    m.send(Work::Resync(format!("parameter checksum mismatch at step {s}")));
                }
            }
            if s != step {
                m.checksums.remove(&s);
            }
        }
    }
    expected.retain(|s, _| *s + 1000 > step);
    mismatches
}

/// Has the members draw `sample.count` images from the EMA weights after
/// `step` and writes them as a grid PNG.
async fn sample_grid(coord: &Coord, step: u64, members: &BTreeSet<u64>) -> anyhow::Result<String> {
    let cfg = &coord.config;
    let ids = wait_idle(coord, members, step, Duration::from_secs_f64(cfg.dist.step_timeout_s)).await;
    anyhow::ensure!(!ids.is_empty(), "no worker is left to draw the sample grid");
    // The grid is a job of its own: its EMA weights are pinned for the
    // workers to fetch (FetchState, STATE_KIND_JOB).
    let job_id = coord.next_job_id.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut snap = coord.state.snapshot(crate::state::SnapshotKind::Ema).await?;
    let (_, ema) = snap.tensors.pop().ok_or_else(|| anyhow::anyhow!("empty EMA snapshot"))?;
    coord.jobs.pinned.lock().unwrap().insert(job_id, crate::jobs::Pinned { step: snap.step, weights: Arc::new(ema) });
    let result = draw_grid(coord, step, job_id, &ids).await;
    coord.jobs.pinned.lock().unwrap().remove(&job_id);
    coord.results.lock().unwrap().remove(&job_id);
    result
}

async fn draw_grid(coord: &Coord, step: u64, job_id: u64, ids: &[u64]) -> anyhow::Result<String> {
    let cfg = &coord.config;
    let count = cfg.sample.count;
    let per_batch = 16u64.min(count.max(1));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    coord.results.lock().unwrap().insert(job_id, tx);
    // Whole forward batches per worker, contiguous, so the images do not
    // depend on the split.
    let groups = count.div_ceil(per_batch) as usize;
    let ranges = order::shard_ranges(groups, ids.len().min(groups));
    {
        let mut ms = coord.members.lock().unwrap();
        for (id, r) in ids.iter().zip(&ranges) {
            let first = r.start as u64 * per_batch;
            let last = (r.end as u64 * per_batch).min(count);
            if let Some(m) = ms.get_mut(*id) {
                m.send(Work::Sample(proto::SampleAssignment {
                    job_id,
                    first,
                    count: last - first,
                    seed: cfg.sample.seed,
                    sampler: cfg.sample.sampler.clone(),
                    steps: cfg.sample.steps,
                    eta: 0.0,
                    weights_step: step,
                    batch: per_batch as u32,
                }));
            }
        }
    }
    tracing::info!(images = count, sampler = %cfg.sample.sampler, workers = ranges.len(), "drawing the sample grid from the EMA weights");
    let res = cfg.model.image_size as usize;
    let per = 3 * res * res;
    let mut images = vec![0u8; count as usize * per];
    let mut received = 0u64;
    let deadline = Duration::from_secs_f64(cfg.dist.step_timeout_s.max(600.0) * 4.0);
    let started = Instant::now();
    while received < count {
        let left = deadline.saturating_sub(started.elapsed());
        let part = tokio::time::timeout(left, rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("sampling did not finish within {:.0} s", deadline.as_secs_f64()))?
            .ok_or_else(|| anyhow::anyhow!("sampling results channel closed"))?;
        anyhow::ensure!(part.error.is_empty(), "worker {} could not draw its images: {}", part.worker_id, part.error);
        anyhow::ensure!(
            part.resolution as usize == res && part.first + part.count <= count,
            "worker {} sent images outside the job",
            part.worker_id
        );
        let start = part.first as usize * per;
        images[start..start + part.data.len()].copy_from_slice(&part.data);
        received += part.count;
    }
    let refs: Vec<&[u8]> = images.chunks_exact(per).collect();
    let cols = (count as f64).sqrt().ceil() as usize;
    let (grid, gh, gw) = ddpm::imageio::grid_chw(&refs, 3, res, res, cols)?;
    let png = ddpm::imageio::encode_png(&grid, 3, gh, gw)?;
    let key = format!("samples/step_{step:08}.png");
    coord.store.put(&key, png.into()).await?;
    let location = coord.location(&key);
    tracing::info!(grid = %location, "sample grid written");
    Ok(location)
}

/// Tells every member the run is over.
pub fn shutdown_workers(coord: &Coord, reason: &str) {
    let mut ms = coord.members.lock().unwrap();
    for m in ms.iter_mut() {
        m.send(Work::Shutdown(reason.to_string()));
    }
}

/// Drops members that stopped sending heartbeats, failing the step they
/// were part of so that the others redo it.
pub async fn reap_silent_members(coord: Arc<Coord>) {
    let timeout = Duration::from_secs_f64(coord.config.dist.heartbeat_timeout_s);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let dead = coord.members.lock().unwrap().reap(timeout);
        if dead.is_empty() {
            continue;
        }
        for m in &dead {
            tracing::warn!(worker = m.id, name = %m.name, "worker silent for {:.0} s: dropped", timeout.as_secs_f64());
            let round = coord.round.lock().unwrap().clone();
            if let Some(round) = round {
                if round.rank_of(m.id).is_some() {
                    let reason = format!("worker {} stopped answering", m.id);
                    for (out, status) in round.fail(RoundFailure { culprit: Some(m.id), reason }) {
                        let _ = out.send(Err(status)).await;
                    }
                }
            }
        }
        coord.changed.notify_waiters();
    }
}
