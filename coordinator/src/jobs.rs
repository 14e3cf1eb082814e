//! Sampling and evaluation jobs: the queue, the scheduler that runs one job
//! at a time by handing its tasks (whole forward batches of images) to
//! eligible workers, the outputs in the run's store, and the `Jobs` gRPC
//! service.
//!
//! An evaluation job (FID, Inception Score, bits/dim) runs in phases, each a
//! set of tasks over index ranges: the reference statistics of a dataset
//! (unless a stats `.npz` is given; computed ones are kept for the life of
//! the coordinator), the generated samples (drawn exactly as a sample job
//! with the same settings, then measured on the worker), and the bound on
//! dataset images. Workers return float64 sums that the coordinator merges,
//! so the result does not depend on how the ranges were split.
//!
//! Policy. A job pins its weights when it starts (a copy of the live EMA or
//! raw parameters, or those of a checkpoint), so training can go on while
//! it runs and nothing a job does touches the training state. Its tasks go
//! to workers registered with `--role eval` at any time, and to training
//! workers once training is over (they never leave a training step for a
//! job). A job submitted during training with no eval worker waits for the
//! end of training; `ddpm-coord --serve` keeps the coordinator up for jobs
//! after the last step, and without it the coordinator finishes the jobs
//! already submitted before it exits.
//!
//! Image `i` of a job is drawn from noise keyed by `(seed, i)` and every
//! task is a whole forward batch starting at a multiple of `batch`, so a
//! job gives the same images whatever the number of workers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ddpm::proto::{self, jobs_server::Jobs as JobsRpc};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use ddpm::data::Dataset;
use ddpm::eval::{FeatureStats, FidStats};

use crate::membership::{Role, Work};
use crate::state::SnapshotKind;
use crate::{Coord, ResultPart};

/// Most images one job may ask for.
pub const MAX_IMAGES: u64 = 100_000;
/// Most images per forward pass.
pub const MAX_BATCH: u32 = 1024;
/// Images shown in a job's grid (the first ones).
pub const GRID_IMAGES: usize = 256;

/// A validated sample job, as recorded in its `job.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SampleJobSpec {
    pub count: u64,
    /// "ancestral" or "ddim".
    pub sampler: String,
    /// Network evaluations per image: T for ancestral, the DDIM steps.
    pub steps: u32,
    pub eta: f64,
    pub seed: u64,
    /// "ema" or "raw".
    pub weights: String,
    /// 0: the live state when the job starts.
    pub checkpoint_step: u64,
    pub batch: u32,
    pub individual_pngs: bool,
}

impl SampleJobSpec {
    /// Checks a request against the run; the error says what is wrong and
    /// what would be accepted.
    pub fn from_request(r: &proto::SampleJobRequest, num_timesteps: usize) -> Result<Self, String> {
        if r.count == 0 || r.count > MAX_IMAGES {
            return Err(format!("count must be between 1 and {MAX_IMAGES}, got {}", r.count));
        }
        let sampler = if r.sampler.is_empty() { "ancestral" } else { r.sampler.as_str() };
        let steps = match sampler {
            "ancestral" => {
                if r.steps != 0 && r.steps as usize != num_timesteps {
                    return Err(format!(
                        "the ancestral sampler runs all {num_timesteps} steps; leave steps at 0 or use sampler \"ddim\" for {} steps",
                        r.steps
                    ));
                }
                num_timesteps as u32
            }
            "ddim" => {
                let steps = if r.steps == 0 { 50 } else { r.steps };
                if steps as usize > num_timesteps {
                    return Err(format!("ddim steps must be at most the run's {num_timesteps} timesteps, got {steps}"));
                }
                steps
            }
            other => return Err(format!("unknown sampler {other:?}: use \"ancestral\" or \"ddim\"")),
        };
        if !(r.eta.is_finite() && (0.0..=1.0).contains(&r.eta)) {
            return Err(format!("eta must be between 0 and 1, got {}", r.eta));
        }
        if sampler == "ancestral" && r.eta != 0.0 {
            return Err("eta applies to the ddim sampler only".into());
        }
        let weights = match proto::Weights::try_from(r.weights) {
            Ok(proto::Weights::Ema) => "ema",
            Ok(proto::Weights::Raw) => "raw",
            Err(_) => return Err(format!("unknown weights {}: use EMA (0) or RAW (1)", r.weights)),
        };
        let batch = if r.batch == 0 { 16 } else { r.batch };
        if batch > MAX_BATCH {
            return Err(format!("batch must be at most {MAX_BATCH}, got {batch}"));
        }
        Ok(Self {
            count: r.count,
            sampler: sampler.into(),
            steps,
            eta: r.eta,
            seed: r.seed,
            weights: weights.into(),
            checkpoint_step: r.checkpoint_step,
            batch,
            individual_pngs: r.individual_pngs,
        })
    }

    #[cfg(test)]
    fn sampler(&self) -> ddpm::train::sample::Sampler {
        use ddpm::train::sample::Sampler;
        match self.sampler.as_str() {
            "ddim" => Sampler::Ddim { steps: self.steps as usize, eta: self.eta },
            _ => Sampler::Ancestral,
        }
    }
}

/// Images per forward pass of the feature network and the bound, by default.
pub const DEFAULT_EVAL_BATCH: u32 = 50;

/// A validated evaluation job, as recorded in its `metrics.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalJobSpec {
    /// Some of "fid", "is", "bpd", in that order.
    pub metrics: Vec<String>,
    /// How the samples are drawn (`count` 0 when neither FID nor IS is
    /// asked for; the weights are also the bound's).
    pub sample: SampleJobSpec,
    pub inception: String,
    pub reference_stats: String,
    pub reference_data: String,
    pub reference_images: u64,
    pub bpd_data: String,
    pub bpd_images: u64,
    pub is_splits: u32,
    pub eval_batch: u32,
}

impl EvalJobSpec {
    /// Checks a request against the run; the error says what is wrong.
    pub fn from_request(r: &proto::EvalJobRequest, num_timesteps: usize) -> Result<Self, String> {
        let mut metrics = Vec::new();
        for m in &r.metrics {
            let m = m.trim().to_ascii_lowercase();
            if !["fid", "is", "bpd"].contains(&m.as_str()) {
                return Err(format!("unknown metric {m:?}: use \"fid\", \"is\" (Inception Score) or \"bpd\" (bits/dim)"));
            }
            if !metrics.contains(&m) {
                metrics.push(m);
            }
        }
        if metrics.is_empty() {
            metrics.push("fid".into());
        }
        metrics.sort_by_key(|m| ["fid", "is", "bpd"].iter().position(|x| x == m));
        let has = |m: &str| metrics.iter().any(|x| x == m);
        let needs_samples = has("fid") || has("is");
        let mut req = r.sample.clone().unwrap_or_default();
        if !needs_samples {
            if req.count != 0 {
                return Err("sample.count applies to fid and is; a bits/dim-only job draws no samples".into());
            }
            req.count = 1;
        }
        let mut sample = SampleJobSpec::from_request(&req, num_timesteps).map_err(|e| format!("sample: {e}"))?;
        if !needs_samples {
            sample.count = 0;
        }
        if has("fid") && sample.count < 2 {
            return Err(format!(
                "fid needs at least 2 samples for a covariance (the paper uses 50000), got {}",
                sample.count
            ));
        }
        let is_splits = if r.is_splits == 0 { 10 } else { r.is_splits };
        if has("is") && sample.count < is_splits as u64 {
            return Err(format!("is: {} samples cannot fill {is_splits} splits; draw more or lower is_splits", sample.count));
        }
        if needs_samples && r.inception.trim().is_empty() {
            return Err(
                "fid and is need the Inception TorchScript file: set inception to its path on the workers \
                 (the inception-2015-12-05.pt of clean-fid / the StyleGAN metrics)"
                    .into(),
            );
        }
        if !r.reference_stats.is_empty() && !r.reference_data.is_empty() {
            return Err("give reference_stats (a .npz) or reference_data (a dataset spec), not both".into());
        }
        if !has("fid") && !(r.reference_stats.is_empty() && r.reference_data.is_empty() && r.reference_images == 0) {
            return Err("reference_stats, reference_data and reference_images apply to fid only".into());
        }
        if !has("bpd") && !(r.bpd_data.is_empty() && r.bpd_images == 0) {
            return Err("bpd_data and bpd_images apply to bpd only".into());
        }
        for (what, spec) in [("reference_data", &r.reference_data), ("bpd_data", &r.bpd_data)] {
            if !spec.is_empty() {
                spec.parse::<ddpm::data::DatasetSpec>().map_err(|e| format!("{what}: {e}"))?;
            }
        }
        let eval_batch = if r.eval_batch == 0 { DEFAULT_EVAL_BATCH } else { r.eval_batch };
        if eval_batch > MAX_BATCH {
            return Err(format!("eval_batch must be at most {MAX_BATCH}, got {eval_batch}"));
        }
        Ok(Self {
            metrics,
            sample,
            inception: r.inception.trim().to_string(),
            reference_stats: r.reference_stats.clone(),
            reference_data: r.reference_data.clone(),
            reference_images: r.reference_images,
            bpd_data: r.bpd_data.clone(),
            bpd_images: r.bpd_images,
            is_splits,
            eval_batch,
        })
    }

    fn has(&self, metric: &str) -> bool {
        self.metrics.iter().any(|m| m == metric)
    }
}

/// A validated analysis job (progressive generation or interpolation).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnalysisJobSpec {
    /// "progressive" or "interpolate".
    pub analysis: String,
    pub seed: u64,
    /// "ema" or "raw".
    pub weights: String,
    pub checkpoint_step: u64,
    pub rows: u32,
    pub snapshots: u32,
    pub batch: u32,
    pub data: String,
    pub index_a: u64,
    pub index_b: u64,
    pub t: u32,
    pub lambdas: u32,
}

/// Most rows of a progressive generation, and mixing weights of an interpolation.
pub const MAX_ANALYSIS_ROWS: u32 = 256;
/// Most snapshots per progressive row.
pub const MAX_SNAPSHOTS: u32 = 64;

impl AnalysisJobSpec {
    pub fn from_request(r: &proto::AnalysisJobRequest, num_timesteps: usize) -> Result<Self, String> {
        let weights = match proto::Weights::try_from(r.weights) {
            Ok(proto::Weights::Ema) => "ema",
            Ok(proto::Weights::Raw) => "raw",
            Err(_) => return Err(format!("unknown weights {}: use EMA (0) or RAW (1)", r.weights)),
        };
        let mut spec = Self {
            analysis: r.kind.clone(),
            seed: r.seed,
            weights: weights.into(),
            checkpoint_step: r.checkpoint_step,
            rows: 0,
            snapshots: 0,
            batch: 0,
            data: String::new(),
            index_a: 0,
            index_b: 0,
            t: 0,
            lambdas: 0,
        };
        let unused = |what: &str, set: bool| if set { Err(format!("{what} does not apply to {:?}", r.kind)) } else { Ok(()) };
        match r.kind.as_str() {
            "progressive" => {
                unused("data, index_a, index_b, t and lambdas", !r.data.is_empty() || r.index_a + r.index_b + (r.t + r.lambdas) as u64 > 0)?;
                spec.rows = if r.rows == 0 { 8 } else { r.rows };
                spec.snapshots = if r.snapshots == 0 { 10 } else { r.snapshots };
                spec.batch = if r.batch == 0 { 8 } else { r.batch };
                if spec.rows > MAX_ANALYSIS_ROWS {
                    return Err(format!("rows must be at most {MAX_ANALYSIS_ROWS}, got {}", spec.rows));
                }
                let most = MAX_SNAPSHOTS.min(num_timesteps as u32);
                if spec.snapshots < 2 || spec.snapshots > most {
                    return Err(format!("snapshots must be between 2 and {most}, got {}", spec.snapshots));
                }
                if spec.batch > MAX_BATCH {
                    return Err(format!("batch must be at most {MAX_BATCH}, got {}", spec.batch));
                }
            }
            "interpolate" => {
                unused("rows, snapshots and batch", r.rows + r.snapshots + r.batch > 0)?;
                spec.data = r.data.clone();
                if !spec.data.is_empty() {
                    spec.data.parse::<ddpm::data::DatasetSpec>().map_err(|e| format!("data: {e}"))?;
                }
                spec.index_a = r.index_a;
                spec.index_b = r.index_b;
                spec.t = if r.t == 0 { 500.min(num_timesteps as u32) } else { r.t };
                if spec.t as usize > num_timesteps {
                    return Err(format!("t must be between 1 and the run's {num_timesteps} timesteps, got {}", spec.t));
                }
                spec.lambdas = if r.lambdas == 0 { 11 } else { r.lambdas };
                if spec.lambdas > MAX_ANALYSIS_ROWS {
                    return Err(format!("lambdas must be at most {MAX_ANALYSIS_ROWS}, got {}", spec.lambdas));
                }
            }
            other => return Err(format!("unknown analysis {other:?}: use \"progressive\" or \"interpolate\"")),
        }
        Ok(spec)
    }

    /// Images of the output grid, and its columns.
    fn shape(&self) -> (u64, usize) {
        match self.analysis.as_str() {
            "progressive" => ((self.rows * self.snapshots) as u64, self.snapshots as usize),
            _ => (self.lambdas as u64 + 2, self.lambdas as usize + 2),
        }
    }

    /// The weights, as a sample job would pin them.
    fn weights_spec(&self) -> SampleJobSpec {
        SampleJobSpec {
            count: 0,
            sampler: "ancestral".into(),
            steps: 0,
            eta: 0.0,
            seed: self.seed,
            weights: self.weights.clone(),
            checkpoint_step: self.checkpoint_step,
            batch: 0,
            individual_pngs: false,
        }
    }
}

/// A job as submitted.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum JobSpec {
    Sample(SampleJobSpec),
    Eval(EvalJobSpec),
    Analysis(AnalysisJobSpec),
}

impl JobSpec {
    fn kind(&self) -> &'static str {
        match self {
            Self::Sample(_) => "sample",
            Self::Eval(_) => "eval",
            Self::Analysis(_) => "analysis",
        }
    }

    /// The images of the job as far as known at submission.
    fn initial_total(&self) -> u64 {
        match self {
            Self::Sample(s) => s.count,
            Self::Eval(e) => e.sample.count,
            Self::Analysis(a) => a.shape().0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

struct Job {
    spec: JobSpec,
    state: JobState,
    done: u64,
    total: u64,
    error: String,
    outputs: Vec<String>,
    weights_step: u64,
    metrics_json: String,
    submitted: Instant,
    updates: watch::Sender<proto::JobStatus>,
}

impl Job {
    fn new(spec: JobSpec) -> Self {
        let (updates, _) = watch::channel(proto::JobStatus::default());
        Self {
            total: spec.initial_total(),
            spec,
            state: JobState::Queued,
            done: 0,
            error: String::new(),
            outputs: Vec::new(),
            weights_step: 0,
            metrics_json: String::new(),
            submitted: Instant::now(),
            updates,
        }
    }

    fn status(&self, id: u64) -> proto::JobStatus {
        proto::JobStatus {
            job_id: id,
            kind: self.spec.kind().into(),
            state: self.state.as_str().into(),
            done: self.done,
            total: self.total,
            error: self.error.clone(),
            outputs: self.outputs.clone(),
            weights_step: self.weights_step,
            spec_json: serde_json::to_string(&self.spec).unwrap_or_default(),
            age_s: self.submitted.elapsed().as_secs_f64(),
            metrics_json: self.metrics_json.clone(),
        }
    }

    fn publish(&self, id: u64) {
        self.updates.send_replace(self.status(id));
    }
}

/// Weights a job (or the end-of-training grid) pinned, for FetchState.
pub struct Pinned {
    pub step: u64,
    pub weights: Arc<Vec<f32>>,
}

/// The coordinator's jobs.
#[derive(Default)]
pub struct JobQueue {
    jobs: Mutex<BTreeMap<u64, Job>>,
    /// Woken when a job is submitted or cancelled.
    pub wake: Notify,
    /// Weights pinned by running jobs, by job id.
    pub pinned: Mutex<HashMap<u64, Pinned>>,
    /// Reference statistics computed by earlier evaluation jobs, by
    /// (dataset, images, Inception file).
    references: Mutex<HashMap<String, FidStats>>,
    /// Set while training pauses for a periodic evaluation: training
    /// workers take job tasks too.
    pub lend_trainers: std::sync::atomic::AtomicBool,
}

impl JobQueue {
    fn update(&self, id: u64, f: impl FnOnce(&mut Job)) {
        if let Some(job) = self.jobs.lock().unwrap().get_mut(&id) {
            f(job);
            job.publish(id);
        }
    }

    /// Whether every submitted job has ended.
    pub fn all_final(&self) -> bool {
        self.jobs.lock().unwrap().values().all(|j| j.state.is_final())
    }

    fn next_queued(&self) -> Option<(u64, JobSpec)> {
        self.jobs.lock().unwrap().iter().find(|(_, j)| j.state == JobState::Queued).map(|(id, j)| (*id, j.spec.clone()))
    }

    fn state_of(&self, id: u64) -> Option<JobState> {
        self.jobs.lock().unwrap().get(&id).map(|j| j.state)
    }

    /// Queues a validated job; returns its id and first status.
    pub fn submit(&self, id: u64, spec: JobSpec) -> proto::JobStatus {
        let job = Job::new(spec);
        let status = job.status(id);
        job.publish(id);
        self.jobs.lock().unwrap().insert(id, job);
        self.wake.notify_one();
        status
    }

    /// The status of job `id`, if it exists.
    pub fn status(&self, id: u64) -> Option<proto::JobStatus> {
        self.jobs.lock().unwrap().get(&id).map(|j| j.status(id))
    }

    /// Cancels job `id` unless it has ended; its status after, if it exists.
    pub fn cancel(&self, id: u64, reason: &str) -> Option<proto::JobStatus> {
        let status = {
            let mut jobs = self.jobs.lock().unwrap();
            let job = jobs.get_mut(&id)?;
            if !job.state.is_final() {
                job.state = JobState::Cancelled;
                job.error = reason.into();
                job.publish(id);
                tracing::info!(job = id, "job cancelled: {reason}");
            }
            job.status(id)
        };
        self.wake.notify_waiters();
        Some(status)
    }
}

/// Runs queued jobs one after another, for the life of the coordinator.
pub async fn run_scheduler(coord: Arc<Coord>) {
    loop {
        let Some((id, spec)) = coord.jobs.next_queued() else {
            tokio::select! {
                _ = coord.jobs.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        };
        coord.jobs.update(id, |j| j.state = JobState::Running);
        tracing::info!(job = id, kind = spec.kind(), spec = %serde_json::to_string(&spec).unwrap_or_default(), "job started");
        let started = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        coord.results.lock().unwrap().insert(id, tx);
        let result = match &spec {
            JobSpec::Sample(s) => run_sample_job(&coord, id, s, &mut rx, started).await,
            JobSpec::Eval(e) => run_eval_job(&coord, id, e, &mut rx, started).await,
            JobSpec::Analysis(a) => run_analysis_job(&coord, id, a, &mut rx, started).await,
        };
        coord.jobs.pinned.lock().unwrap().remove(&id);
        coord.results.lock().unwrap().remove(&id);
        match result {
            Ok(JobEnd::Done { outputs, metrics }) => {
                tracing::info!(job = id, seconds = started.elapsed().as_secs_f64(), metrics = %metrics, "job done");
                coord.jobs.update(id, |j| {
                    j.state = JobState::Done;
                    j.outputs = outputs;
                    j.metrics_json = metrics;
                });
            }
            Ok(JobEnd::Cancelled) => tracing::info!(job = id, "job cancelled"),
            Err(e) => {
                tracing::error!(job = id, "job failed: {e:#}");
                coord.jobs.update(id, |j| {
                    j.state = JobState::Failed;
                    j.error = format!("{e:#}");
                });
            }
        }
        coord.changed.notify_waiters();
    }
}

enum JobEnd {
    /// Where the outputs are, and the metrics as JSON (evaluation jobs).
    Done { outputs: Vec<String>, metrics: String },
    Cancelled,
}

/// Copies the weights the job asked for.
async fn pin_weights(coord: &Coord, spec: &SampleJobSpec) -> anyhow::Result<Pinned> {
    if spec.checkpoint_step == 0 {
        let kind = if spec.weights == "raw" { SnapshotKind::Params } else { SnapshotKind::Ema };
        let mut snap = coord.state.snapshot(kind).await?;
        let (_, weights) = snap.tensors.pop().ok_or_else(|| anyhow::anyhow!("empty snapshot"))?;
        return Ok(Pinned { step: snap.step, weights: Arc::new(weights) });
    }
    let data = ddpm::checkpoint::read(&coord.store, spec.checkpoint_step)
        .await
        .map_err(|e| anyhow::anyhow!("reading the checkpoint of step {}: {e}", spec.checkpoint_step))?;
    anyhow::ensure!(
        data.layout.total == coord.state.layout.total,
        "the checkpoint of step {} holds {} parameters, this run's model {}",
        spec.checkpoint_step,
        data.layout.total,
        coord.state.layout.total
    );
    let weights = if spec.weights == "raw" { data.params } else { data.ema };
    Ok(Pinned { step: data.step, weights: Arc::new(weights) })
}

/// Pins the job's weights for its tasks; returns their step.
async fn pin_for_job(coord: &Coord, id: u64, spec: &SampleJobSpec) -> anyhow::Result<u64> {
    let pinned = pin_weights(coord, spec).await?;
    let step = pinned.step;
    coord.jobs.pinned.lock().unwrap().insert(id, pinned);
    coord.jobs.update(id, |j| j.weights_step = step);
    Ok(step)
}

/// Whether member `m` may take job tasks now.
fn eligible(coord: &Coord, m: &crate::membership::Member) -> bool {
    m.ready
        && m.idle
        && (m.role == Role::Eval
            || coord.training_over.load(Ordering::SeqCst)
            || coord.jobs.lend_trainers.load(Ordering::SeqCst))
}

/// The job of a periodic evaluation (config `[eval]`): an evaluation job
/// when an Inception file is set, else a sample job (the grid only).
pub fn periodic_spec(config: &ddpm::config::TrainConfig) -> Result<JobSpec, String> {
    let e = &config.eval;
    let sample = proto::SampleJobRequest {
        count: e.samples,
        sampler: e.sampler.clone(),
        steps: if e.sampler == "ddim" { e.steps } else { 0 },
        seed: e.seed,
        batch: e.batch,
        ..Default::default()
    };
    let t = config.diffusion.num_timesteps;
    if e.inception.is_empty() {
        return SampleJobSpec::from_request(&sample, t).map(JobSpec::Sample);
    }
    let r = proto::EvalJobRequest {
        metrics: e.metrics.clone(),
        sample: Some(sample),
        inception: e.inception.clone(),
        reference_stats: e.reference_stats.clone(),
        reference_data: e.reference_data.clone(),
        reference_images: e.reference_images,
        is_splits: e.is_splits,
        ..Default::default()
    };
    EvalJobSpec::from_request(&r, t).map(JobSpec::Eval)
}

/// Queues a job on behalf of the coordinator (a periodic evaluation).
pub fn submit_internal(coord: &Coord, spec: JobSpec) -> u64 {
    let id = coord.next_job_id.fetch_add(1, Ordering::SeqCst);
    let status = coord.jobs.submit(id, spec);
    tracing::info!(job = id, kind = %status.kind, spec = %status.spec_json, "periodic evaluation submitted");
    id
}

/// The metrics-log row of a finished job: its state, weights step, metrics
/// and grid.
pub fn result_row(status: &proto::JobStatus) -> serde_json::Value {
    let mut row = serde_json::json!({
        "job_id": status.job_id,
        "state": status.state,
        "weights_step": status.weights_step,
    });
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(&status.metrics_json) {
        for key in ["fid", "inception_score"] {
            if let Some(v) = m.get(key) {
                row[key] = v.clone();
            }
        }
    }
    if let Some(grid) = status.outputs.iter().find(|o| o.ends_with("/grid.png")) {
        row["grid"] = grid.clone().into();
    }
    if !status.error.is_empty() {
        row["error"] = status.error.clone().into();
    }
    row
}

/// Index ranges `[first, first + count)` of `n` items in tasks of `batch`.
fn ranges(n: u64, batch: u64) -> VecDeque<(u64, u64)> {
    (0..n.div_ceil(batch)).map(|g| (g * batch, batch.min(n - g * batch))).collect()
}

/// Hands tasks over `ranges` to eligible workers (`make_work` builds a
/// task's work) and feeds every result to `on_part`, until all are done.
/// A task of a worker that leaves goes back to the queue. Returns false when
/// the job was cancelled meanwhile.
async fn run_tasks<F, Fut>(
    coord: &Coord,
    id: u64,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ResultPart>,
    mut pending: VecDeque<(u64, u64)>,
    make_work: F,
    on_part: &mut (dyn FnMut(ResultPart) -> anyhow::Result<()> + Send),
) -> anyhow::Result<bool>
where
    F: Fn(u64, u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Work>>,
{
    let mut inflight: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut last_wait_log = Instant::now();
    loop {
        if coord.jobs.state_of(id) == Some(JobState::Cancelled) {
            return Ok(false);
        }
        let notified = coord.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let free: Vec<u64> = {
            let ms = coord.members.lock().unwrap();
            // Tasks of workers that left go back to the front of the queue.
            inflight.retain(|w, task| {
                let alive = ms.get(*w).is_some();
                if !alive {
                    tracing::warn!(job = id, worker = *w, first = task.0, "worker left during a task: reassigning it");
                    pending.push_front(*task);
                }
                alive
            });
            ms.iter().filter(|m| !inflight.contains_key(&m.id) && eligible(coord, m)).map(|m| m.id).collect()
        };
        for w in free {
            let Some((first, count)) = pending.pop_front() else { break };
            let work = make_work(first, count).await?;
            let mut ms = coord.members.lock().unwrap();
            match ms.get_mut(w) {
                Some(m) if eligible(coord, m) => {
                    m.send(work);
                    inflight.insert(w, (first, count));
                }
                _ => pending.push_front((first, count)),
            }
        }
        if pending.is_empty() && inflight.is_empty() {
            return Ok(true);
        }
        if inflight.is_empty() && last_wait_log.elapsed() > Duration::from_secs(30) {
            tracing::info!(job = id, "waiting for a worker that can take job tasks (an eval worker, or the end of training)");
            last_wait_log = Instant::now();
        }
        tokio::select! {
            part = rx.recv() => {
                let Some(part) = part else { anyhow::bail!("the job's result channel closed") };
                if inflight.get(&part.worker_id) != Some(&(part.first, part.count)) {
                    tracing::warn!(job = id, worker = part.worker_id, first = part.first, "ignoring a result for a task the worker does not hold");
                    continue;
                }
                inflight.remove(&part.worker_id);
                if !part.error.is_empty() {
                    anyhow::bail!("worker {} failed on items {}..{}: {}", part.worker_id, part.first, part.first + part.count, part.error);
                }
                on_part(part)?;
            }
            _ = &mut notified => {}
            _ = coord.jobs.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The sample assignment of images `[first, first + count)` of a job.
fn sample_assignment(id: u64, s: &SampleJobSpec, weights_step: u64, first: u64, count: u64) -> proto::SampleAssignment {
    proto::SampleAssignment {
        job_id: id,
        first,
        count,
        seed: s.seed,
        sampler: s.sampler.clone(),
        steps: s.steps,
        eta: s.eta,
        weights_step,
        batch: s.batch,
    }
}

/// Generated images as they arrive: placed by index, counted per worker.
struct ImageSink {
    res: usize,
    images: Vec<u8>,
    by_worker: BTreeMap<u64, u64>,
}

impl ImageSink {
    fn new(count: u64, res: usize) -> Self {
        Self { res, images: vec![0u8; count as usize * 3 * res * res], by_worker: BTreeMap::new() }
    }

    fn put(&mut self, part: &ResultPart) -> anyhow::Result<()> {
        let per = 3 * self.res * self.res;
        anyhow::ensure!(
            part.resolution as usize == self.res && part.data.len() == part.count as usize * per,
            "worker {} sent images of the wrong size",
            part.worker_id
        );
        let start = part.first as usize * per;
        self.images[start..start + part.data.len()].copy_from_slice(&part.data);
        *self.by_worker.entry(part.worker_id).or_default() += part.count;
        Ok(())
    }
}

async fn run_sample_job(
    coord: &Coord,
    id: u64,
    spec: &SampleJobSpec,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ResultPart>,
    started: Instant,
) -> anyhow::Result<JobEnd> {
    let weights_step = pin_for_job(coord, id, spec).await?;
    let res = coord.config.model.image_size as usize;
    let mut sink = ImageSink::new(spec.count, res);
    let mut done = 0u64;
    let make = |first, count| async move { Ok::<_, anyhow::Error>(Work::Sample(sample_assignment(id, spec, weights_step, first, count))) };
    let mut on_part = |part: ResultPart| {
        sink.put(&part)?;
        done += part.count;
        coord.jobs.update(id, |j| j.done = done);
        Ok(())
    };
    if !run_tasks(coord, id, rx, ranges(spec.count, spec.batch as u64), make, &mut on_part).await? {
        return Ok(JobEnd::Cancelled);
    }
    let seconds = started.elapsed().as_secs_f64();
    let dir = job_dir(id);
    let mut outputs = write_images(coord, &dir, &sink.images, res, spec.individual_pngs).await?;
    let json_key = format!("{dir}/job.json");
    outputs.push(coord.location(&json_key));
    let record = JobRecord {
        job_id: id,
        kind: "sample",
        spec: &JobSpec::Sample(spec.clone()),
        weights_step,
        image_size: res,
        images_by_worker: &sink.by_worker,
        seconds,
        images_per_s: spec.count as f64 / seconds.max(1e-9),
        metrics: None,
        outputs: &outputs,
    };
    coord.store.put(&json_key, serde_json::to_vec_pretty(&record)?.into()).await?;
    Ok(JobEnd::Done { outputs, metrics: String::new() })
}

async fn run_analysis_job(
    coord: &Coord,
    id: u64,
    spec: &AnalysisJobSpec,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ResultPart>,
    started: Instant,
) -> anyhow::Result<JobEnd> {
    let (count, cols) = spec.shape();
    let base = proto::AnalysisAssignment {
        job_id: id,
        kind: spec.analysis.clone(),
        seed: spec.seed,
        snapshots: spec.snapshots,
        t: spec.t,
        lambdas: spec.lambdas,
        ..Default::default()
    };
    let (tasks, dataset) = if spec.analysis == "interpolate" {
        let (ds, name) = open_dataset(coord, &spec.data).await?;
        for i in [spec.index_a, spec.index_b] {
            anyhow::ensure!(i < ds.len() as u64, "image index {i} is outside the dataset {name} (0..{})", ds.len());
        }
        (VecDeque::from([(0, count)]), Some(ds))
    } else {
        (ranges(count, (spec.batch * spec.snapshots) as u64), None)
    };
    let weights_step = pin_for_job(coord, id, &spec.weights_spec()).await?;
    let res = coord.config.model.image_size as usize;
    let mut sink = ImageSink::new(count, res);
    let mut done = 0u64;
    let make = |first, count| {
        let mut a = proto::AnalysisAssignment { first, count, ..base.clone() };
        let ds = dataset.clone();
        let pair = [spec.index_a, spec.index_b];
        async move {
            let mut samples = Vec::new();
            if let Some(ds) = ds {
                a.decoder_json = serde_json::to_string(&ds.decoder())?;
                samples = tokio::task::spawn_blocking(move || {
                    pair.iter().map(|&i| ds.encoded(i as usize).map(|data| proto::Sample { position: i, data })).collect::<Result<Vec<_>, _>>()
                })
                .await??;
            }
            Ok::<_, anyhow::Error>(Work::Analysis { assignment: a, samples })
        }
    };
    let mut on_part = |part: ResultPart| {
        sink.put(&part)?;
        done += part.count;
        coord.jobs.update(id, |j| j.done = done);
        Ok(())
    };
    if !run_tasks(coord, id, rx, tasks, make, &mut on_part).await? {
        return Ok(JobEnd::Cancelled);
    }
    let seconds = started.elapsed().as_secs_f64();
    let dir = job_dir(id);
    let mut outputs = write_images_grid(coord, &dir, &sink.images, res, cols, count as usize, false).await?;
    let json_key = format!("{dir}/job.json");
    outputs.push(coord.location(&json_key));
    let record = JobRecord {
        job_id: id,
        kind: "analysis",
        spec: &JobSpec::Analysis(spec.clone()),
        weights_step,
        image_size: res,
        images_by_worker: &sink.by_worker,
        seconds,
        images_per_s: count as f64 / seconds.max(1e-9),
        metrics: None,
        outputs: &outputs,
    };
    coord.store.put(&json_key, serde_json::to_vec_pretty(&record)?.into()).await?;
    Ok(JobEnd::Done { outputs, metrics: String::new() })
}

/// A dataset an evaluation job reads: the run's (empty spec) or another.
async fn open_dataset(coord: &Coord, spec: &str) -> anyhow::Result<(Arc<dyn Dataset>, String)> {
    if spec.is_empty() {
        let name = coord.config.data.spec.as_ref().map_or_else(|| "the run's dataset".to_string(), |s| s.to_string());
        return Ok((coord.dataset.clone(), name));
    }
    let parsed: ddpm::data::DatasetSpec = spec.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let local = ddpm::data::fetch_remote(&parsed, &coord.store_options).await?;
    let resolution = coord.config.model.image_size as usize;
    let ds = tokio::task::spawn_blocking(move || {
        ddpm::data::open(&local, &ddpm::data::OpenOptions { resolution: Some(resolution) })
    })
    .await??;
    Ok((ds.into(), spec.to_string()))
}

/// The work of dataset images `[first, first + count)`: the assignment with
/// `dataset` set as the source, and their encoded bytes.
async fn dataset_work(ds: &Arc<dyn Dataset>, mut assignment: proto::EvalAssignment, first: u64, count: u64) -> anyhow::Result<Work> {
    let decoder_json = serde_json::to_string(&ds.decoder())?;
    let reader = ds.clone();
    let samples = tokio::task::spawn_blocking(move || {
        (first..first + count)
            .map(|i| reader.encoded(i as usize).map(|data| proto::Sample { position: i, data }))
            .collect::<Result<Vec<_>, _>>()
    })
    .await??;
    assignment.source = Some(proto::eval_assignment::Source::Dataset(proto::DatasetImages { first, count, decoder_json }));
    Ok(Work::Eval { assignment, samples })
}

/// Decodes a part's sums, naming the worker when they are bad.
fn part_sums<T>(part: &ResultPart, what: &str, bytes: &[u8], parse: fn(&[u8]) -> Result<T, ddpm::eval::EvalError>) -> anyhow::Result<T> {
    parse(bytes).map_err(|e| anyhow::anyhow!("worker {} sent unreadable {what} for items {}..{}: {e}", part.worker_id, part.first, part.first + part.count))
}

async fn run_eval_job(
    coord: &Coord,
    id: u64,
    spec: &EvalJobSpec,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ResultPart>,
    started: Instant,
) -> anyhow::Result<JobEnd> {
    let res = coord.config.model.image_size as usize;
    let (fid, is, bpd) = (spec.has("fid"), spec.has("is"), spec.has("bpd"));
    let batch = spec.eval_batch as u64;
    let base = proto::EvalAssignment { job_id: id, inception: spec.inception.clone(), batch: spec.eval_batch, ..Default::default() };
    let dir = job_dir(id);
    let mut outputs = Vec::new();
    let mut metrics = serde_json::Map::new();

    // Size the job: the datasets it reads decide how many images it measures.
    let mut reference_from: Option<(Arc<dyn Dataset>, String, u64, String)> = None;
    let mut reference: Option<FidStats> = None;
    if fid && !spec.reference_stats.is_empty() {
        let path = std::path::PathBuf::from(&spec.reference_stats);
        reference = Some(tokio::task::spawn_blocking(move || ddpm::eval::read_stats_npz(&path)).await??);
    } else if fid {
        let (ds, name) = open_dataset(coord, &spec.reference_data).await?;
        let n = if spec.reference_images == 0 { ds.len() as u64 } else { spec.reference_images.min(ds.len() as u64) };
        let key = format!("{name}|{n}|{}", spec.inception);
        reference = coord.jobs.references.lock().unwrap().get(&key).cloned();
        if reference.is_none() {
            reference_from = Some((ds, name, n, key));
        }
    }
    let bpd_from = if bpd {
        let (ds, name) = open_dataset(coord, &spec.bpd_data).await?;
        let n = if spec.bpd_images == 0 { ds.len() as u64 } else { spec.bpd_images.min(ds.len() as u64) };
        Some((ds, name, n))
    } else {
        None
    };
    let total = spec.sample.count + reference_from.as_ref().map_or(0, |r| r.2) + bpd_from.as_ref().map_or(0, |b| b.2);
    coord.jobs.update(id, |j| j.total = total);
    let mut done = 0u64;
    let progress = |done: u64| coord.jobs.update(id, |j| j.done = done);

    // 1. Reference statistics from a dataset.
    if let Some((ds, name, n, key)) = reference_from {
        tracing::info!(job = id, data = %name, images = n, "computing the FID reference statistics");
        let mut stats: Option<FeatureStats> = None;
        let assignment = proto::EvalAssignment { features: true, ..base.clone() };
        let make = |first, count| dataset_work(&ds, assignment.clone(), first, count);
        let mut on_part = |part: ResultPart| {
            let s = part_sums(&part, "feature statistics", &part.features, FeatureStats::from_bytes)?;
            match stats.as_mut() {
                Some(acc) => acc.merge(&s)?,
                None => stats = Some(s),
            }
            done += part.count;
            progress(done);
            Ok(())
        };
        if !run_tasks(coord, id, rx, ranges(n, batch), make, &mut on_part).await? {
            return Ok(JobEnd::Cancelled);
        }
        let stats = stats.ok_or_else(|| anyhow::anyhow!("no reference features came back"))?.to_fid_stats()?;
        let npz = stats_npz_bytes(&stats).await?;
        let key_npz = format!("{dir}/reference_stats.npz");
        coord.store.put(&key_npz, npz.into()).await?;
        outputs.push(coord.location(&key_npz));
        coord.jobs.references.lock().unwrap().insert(key, stats.clone());
        reference = Some(stats);
        metrics.insert("reference".into(), serde_json::json!({ "data": name, "images": n }));
    } else if fid {
        let source = if spec.reference_stats.is_empty() { "computed earlier by this coordinator" } else { spec.reference_stats.as_str() };
        metrics.insert("reference".into(), serde_json::json!({ "stats": source }));
    }

    // 2. Generated samples, drawn and measured on the workers.
    let needs_weights = fid || is || bpd;
    let weights_step = if needs_weights { pin_for_job(coord, id, &spec.sample).await? } else { 0 };
    let mut sink = ImageSink::new(spec.sample.count, res);
    if fid || is {
        let mut gen: Option<FeatureStats> = None;
        let mut scores: Option<ddpm::eval::ScoreStats> = None;
        let assignment = proto::EvalAssignment {
            features: fid,
            is_splits: if is { spec.is_splits } else { 0 },
            is_total: spec.sample.count,
            ..base.clone()
        };
        let make = |first, count| {
            let mut a = assignment.clone();
            a.source = Some(proto::eval_assignment::Source::Sample(sample_assignment(id, &spec.sample, weights_step, first, count)));
            async move { Ok::<_, anyhow::Error>(Work::Eval { assignment: a, samples: Vec::new() }) }
        };
        let mut on_part = |part: ResultPart| {
            sink.put(&part)?;
            if fid {
                let s = part_sums(&part, "feature statistics", &part.features, FeatureStats::from_bytes)?;
                match gen.as_mut() {
                    Some(acc) => acc.merge(&s)?,
                    None => gen = Some(s),
                }
            }
            if is {
                let s = part_sums(&part, "Inception Score sums", &part.scores, ddpm::eval::ScoreStats::from_bytes)?;
                match scores.as_mut() {
                    Some(acc) => acc.merge(&s)?,
                    None => scores = Some(s),
                }
            }
            done += part.count;
            progress(done);
            Ok(())
        };
        if !run_tasks(coord, id, rx, ranges(spec.sample.count, spec.sample.batch as u64), make, &mut on_part).await? {
            return Ok(JobEnd::Cancelled);
        }
        if fid {
            let gen = gen.ok_or_else(|| anyhow::anyhow!("no sample features came back"))?.to_fid_stats()?;
            let reference = reference.as_ref().expect("fid has reference statistics");
            let value = gen.fid(reference)?;
            let mut m = serde_json::json!({ "value": value, "samples": spec.sample.count });
            if let Some(r) = metrics.remove("reference") {
                m["reference"] = r;
            }
            metrics.insert("fid".into(), m);
        }
        if is {
            let (mean, std) = scores.ok_or_else(|| anyhow::anyhow!("no Inception Score sums came back"))?.score()?;
            metrics.insert(
                "inception_score".into(),
                serde_json::json!({ "mean": mean, "std": std, "splits": spec.is_splits, "samples": spec.sample.count }),
            );
        }
        metrics.insert(
            "features".into(),
            serde_json::json!(format!(
                "TorchScript {} on uint8 images as written to PNG, at the model's {res}x{res} (the file resizes as it was traced)",
                spec.inception
            )),
        );
        outputs.extend(write_images(coord, &dir, &sink.images, res, spec.sample.individual_pngs).await?);
    }

    // 3. The bound on dataset images.
    if let Some((ds, name, n)) = bpd_from {
        tracing::info!(job = id, data = %name, images = n, "computing the bound in bits/dim");
        let mut sums: Option<ddpm::eval::BpdSums> = None;
        let assignment = proto::EvalAssignment { bpd: true, bpd_seed: spec.sample.seed, ..base.clone() };
        let make = |first, count| dataset_work(&ds, assignment.clone(), first, count);
        let mut on_part = |part: ResultPart| {
            let s = part_sums(&part, "bits/dim sums", &part.bpd, ddpm::eval::BpdSums::from_bytes)?;
            match sums.as_mut() {
                Some(acc) => acc.merge(&s)?,
                None => sums = Some(s),
            }
            done += part.count;
            progress(done);
            Ok(())
        };
        if !run_tasks(coord, id, rx, ranges(n, batch), make, &mut on_part).await? {
            return Ok(JobEnd::Cancelled);
        }
        let sums = sums.ok_or_else(|| anyhow::anyhow!("no bound sums came back"))?;
        let count = sums.count as f64;
        anyhow::ensure!(sums.count == n, "the bound covered {} images, the job {n}", sums.count);
        metrics.insert(
            "bpd".into(),
            serde_json::json!({
                "bits_per_dim": sums.mean_total()?,
                "images": n,
                "data": name,
                "prior_bits_per_dim": sums.prior / count,
                "decoder_nll_bits_per_dim": sums.terms.first().copied().unwrap_or(0.0) / count,
                "timesteps": sums.terms.len(),
                "terms_bits_per_dim": sums.terms.iter().map(|v| v / count).collect::<Vec<_>>(),
                "x0_rmse_0_255": sums.x0_mse.iter().map(|v| 127.5 * (v / count).sqrt()).collect::<Vec<_>>(),
            }),
        );
    }

    let seconds = started.elapsed().as_secs_f64();
    let json_key = format!("{dir}/metrics.json");
    outputs.push(coord.location(&json_key));
    let metrics = serde_json::Value::Object(metrics);
    let record = JobRecord {
        job_id: id,
        kind: "eval",
        spec: &JobSpec::Eval(spec.clone()),
        weights_step,
        image_size: res,
        images_by_worker: &sink.by_worker,
        seconds,
        images_per_s: total as f64 / seconds.max(1e-9),
        metrics: Some(&metrics),
        outputs: &outputs,
    };
    coord.store.put(&json_key, serde_json::to_vec_pretty(&record)?.into()).await?;
    Ok(JobEnd::Done { outputs, metrics: serde_json::to_string(&metrics)? })
}

/// A stats `.npz` in memory (the writer streams to a path).
async fn stats_npz_bytes(stats: &FidStats) -> anyhow::Result<Vec<u8>> {
    let stats = stats.clone();
    let tmp = temp_path("stats");
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        ddpm::eval::write_stats_npz(&tmp, &stats)?;
        let bytes = std::fs::read(&tmp);
        let _ = std::fs::remove_file(&tmp);
        Ok(bytes?)
    })
    .await?
}

fn temp_path(what: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("ddpm-job-{}-{what}-{n}.npz", std::process::id()))
}

/// What `jobs/<id>/job.json` (sample jobs) or `metrics.json` (evaluation
/// jobs) holds.
#[derive(Serialize)]
struct JobRecord<'a> {
    job_id: u64,
    kind: &'static str,
    spec: &'a JobSpec,
    weights_step: u64,
    image_size: usize,
    /// Images drawn by each worker id.
    images_by_worker: &'a BTreeMap<u64, u64>,
    seconds: f64,
    images_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<&'a serde_json::Value>,
    outputs: &'a [String],
}

/// Writes generated images under `dir`: the grid of the first ones, the
/// `.npz`, and (`individual`) one PNG each. Returns their locations.
async fn write_images(coord: &Coord, dir: &str, images: &[u8], res: usize, individual: bool) -> anyhow::Result<Vec<String>> {
    let shown = (images.len() / (3 * res * res)).min(GRID_IMAGES);
    let cols = (shown as f64).sqrt().ceil() as usize;
    write_images_grid(coord, dir, images, res, cols.max(1), shown, individual).await
}

/// [`write_images`] with a grid of the first `shown` images in `cols` columns.
async fn write_images_grid(
    coord: &Coord,
    dir: &str,
    images: &[u8],
    res: usize,
    cols: usize,
    shown: usize,
    individual: bool,
) -> anyhow::Result<Vec<String>> {
    let per = 3 * res * res;
    let refs: Vec<&[u8]> = images.chunks_exact(per).take(shown).collect();
    let (grid, gh, gw) = ddpm::imageio::grid_chw(&refs, 3, res, res, cols)?;
    let png = ddpm::imageio::encode_png(&grid, 3, gh, gw)?;
    let mut outputs = Vec::new();
    let grid_key = format!("{dir}/grid.png");
    coord.store.put(&grid_key, png.into()).await?;
    outputs.push(coord.location(&grid_key));

    let tmp = temp_path("samples");
    let npz = {
        let pixels = images.to_vec();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
            ddpm::eval::write_samples_npz(&tmp, &pixels, res, res)?;
            let bytes = std::fs::read(&tmp);
            let _ = std::fs::remove_file(&tmp);
            Ok(bytes?)
        })
        .await??
    };
    let npz_key = format!("{dir}/samples.npz");
    coord.store.put(&npz_key, npz.into()).await?;
    outputs.push(coord.location(&npz_key));

    if individual {
        for (i, img) in images.chunks_exact(per).enumerate() {
            let key = format!("{dir}/images/{i:06}.png");
            coord.store.put(&key, ddpm::imageio::encode_png(img, 3, res, res)?.into()).await?;
        }
        outputs.push(coord.location(&format!("{dir}/images/")));
    }
    Ok(outputs)
}

/// Where job `id`'s outputs go in the run's store.
pub fn job_dir(id: u64) -> String {
    format!("jobs/{id:06}")
}

/// The `Jobs` gRPC service.
pub struct JobsService {
    coord: Arc<Coord>,
}

impl JobsService {
    pub fn new(coord: Arc<Coord>) -> Self {
        Self { coord }
    }

    fn status(&self, id: u64) -> Result<proto::JobStatus, Status> {
        self.coord.jobs.status(id).ok_or_else(|| unknown(id))
    }

    /// Refuses a job on a checkpoint the run does not have (complete).
    async fn check_checkpoint(&self, step: u64) -> Result<(), Status> {
        if step == 0 {
            return Ok(());
        }
        let infos = ddpm::checkpoint::list(&self.coord.store)
            .await
            .map_err(|e| Status::unavailable(format!("listing the run's checkpoints: {e}")))?;
        if !infos.iter().any(|i| i.step == step && i.complete) {
            let have: Vec<String> = infos.iter().filter(|i| i.complete).map(|i| i.step.to_string()).collect();
            return Err(Status::invalid_argument(format!(
                "the run has no complete checkpoint of step {step} (complete ones: {})",
                if have.is_empty() { "none".to_string() } else { have.join(", ") }
            )));
        }
        Ok(())
    }

    fn submit(&self, spec: JobSpec) -> proto::JobStatus {
        let id = self.coord.next_job_id.fetch_add(1, Ordering::SeqCst);
        let status = self.coord.jobs.submit(id, spec);
        tracing::info!(job = id, kind = %status.kind, spec = %status.spec_json, "job submitted");
        status
    }
}

fn unknown(id: u64) -> Status {
    Status::not_found(format!("unknown job id {id}: `ddpm jobs list` shows this coordinator's jobs"))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl JobsRpc for JobsService {
    async fn submit_sample_job(&self, req: Request<proto::SampleJobRequest>) -> Result<Response<proto::JobStatus>, Status> {
        let r = req.into_inner();
        let t = self.coord.config.diffusion.num_timesteps;
        let spec = SampleJobSpec::from_request(&r, t).map_err(|e| Status::invalid_argument(format!("invalid sample job: {e}")))?;
        self.check_checkpoint(spec.checkpoint_step)
            .await
            .map_err(|s| Status::new(s.code(), format!("invalid sample job: {}", s.message())))?;
        Ok(Response::new(self.submit(JobSpec::Sample(spec))))
    }

    async fn submit_eval_job(&self, req: Request<proto::EvalJobRequest>) -> Result<Response<proto::JobStatus>, Status> {
        let r = req.into_inner();
        let t = self.coord.config.diffusion.num_timesteps;
        let invalid = |e: String| Status::invalid_argument(format!("invalid evaluation job: {e}"));
        let spec = EvalJobSpec::from_request(&r, t).map_err(invalid)?;
        self.check_checkpoint(spec.sample.checkpoint_step)
            .await
            .map_err(|s| Status::new(s.code(), format!("invalid evaluation job: {}", s.message())))?;
        if !spec.reference_stats.is_empty() {
            // Read now, so that a wrong path or file is an error of the request.
            let path = std::path::PathBuf::from(&spec.reference_stats);
            let stats = tokio::task::spawn_blocking(move || ddpm::eval::read_stats_npz(&path))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| invalid(format!("reference_stats: {e}")))?;
            if stats.dim() < 2 {
                return Err(invalid(format!("reference_stats: {}-dimensional statistics", stats.dim())));
            }
        }
        Ok(Response::new(self.submit(JobSpec::Eval(spec))))
    }

    async fn submit_analysis_job(&self, req: Request<proto::AnalysisJobRequest>) -> Result<Response<proto::JobStatus>, Status> {
        let r = req.into_inner();
        let t = self.coord.config.diffusion.num_timesteps;
        let invalid = |e: String| Status::invalid_argument(format!("invalid analysis job: {e}"));
        let spec = AnalysisJobSpec::from_request(&r, t).map_err(invalid)?;
        self.check_checkpoint(spec.checkpoint_step)
            .await
            .map_err(|s| Status::new(s.code(), format!("invalid analysis job: {}", s.message())))?;
        if spec.analysis == "interpolate" && spec.data.is_empty() {
            let n = self.coord.dataset_len as u64;
            if let Some(i) = [spec.index_a, spec.index_b].into_iter().find(|&i| i >= n) {
                return Err(invalid(format!("image index {i} is outside the run's dataset (0..{n})")));
            }
        }
        Ok(Response::new(self.submit(JobSpec::Analysis(spec))))
    }

    async fn get_job(&self, req: Request<proto::JobRef>) -> Result<Response<proto::JobStatus>, Status> {
        Ok(Response::new(self.status(req.into_inner().job_id)?))
    }

    type WatchJobStream = BoxStream<proto::JobStatus>;

    async fn watch_job(&self, req: Request<proto::JobRef>) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = req.into_inner().job_id;
        let mut rx = {
            let jobs = self.coord.jobs.jobs.lock().unwrap();
            jobs.get(&id).ok_or_else(|| unknown(id))?.updates.subscribe()
        };
        let coord = self.coord.clone();
        let (tx, out) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                rx.borrow_and_update();
                let Some(status) = coord.jobs.jobs.lock().unwrap().get(&id).map(|j| (j.status(id), j.state)) else {
                    return;
                };
                let (status, state) = status;
                if tx.send(Ok(status)).await.is_err() || state.is_final() || rx.changed().await.is_err() {
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(out);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_jobs(&self, _req: Request<proto::ListJobsRequest>) -> Result<Response<proto::ListJobsReply>, Status> {
        let jobs = self.coord.jobs.jobs.lock().unwrap().iter().map(|(id, j)| j.status(*id)).collect();
        Ok(Response::new(proto::ListJobsReply { jobs }))
    }

    async fn cancel_job(&self, req: Request<proto::JobRef>) -> Result<Response<proto::JobStatus>, Status> {
        let id = req.into_inner().job_id;
        let status = self.coord.jobs.cancel(id, "cancelled by a client").ok_or_else(|| unknown(id))?;
        Ok(Response::new(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;


    fn req() -> proto::SampleJobRequest {
        proto::SampleJobRequest { count: 8, ..Default::default() }
    }

    #[test]
    fn defaults_are_ancestral_ema_batch_16() {
        let s = SampleJobSpec::from_request(&req(), 1000).unwrap();
        assert_eq!((s.sampler.as_str(), s.steps, s.weights.as_str(), s.batch), ("ancestral", 1000, "ema", 16));
        let d = SampleJobSpec::from_request(&proto::SampleJobRequest { sampler: "ddim".into(), ..req() }, 1000).unwrap();
        assert_eq!(d.steps, 50);
        assert_eq!(d.sampler(), ddpm::train::sample::Sampler::Ddim { steps: 50, eta: 0.0 });
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let err = |r: proto::SampleJobRequest| SampleJobSpec::from_request(&r, 1000).unwrap_err();
        assert!(err(proto::SampleJobRequest { count: 0, ..req() }).contains("count must be between 1"));
        assert!(err(proto::SampleJobRequest { count: MAX_IMAGES + 1, ..req() }).contains("count must be between 1"));
        assert!(err(proto::SampleJobRequest { sampler: "euler".into(), ..req() }).contains("unknown sampler \"euler\""));
        assert!(err(proto::SampleJobRequest { sampler: "ddim".into(), steps: 1001, ..req() }).contains("at most the run's 1000"));
        assert!(err(proto::SampleJobRequest { steps: 50, ..req() }).contains("runs all 1000 steps"));
        assert!(err(proto::SampleJobRequest { sampler: "ddim".into(), eta: f64::NAN, ..req() }).contains("eta must be"));
        assert!(err(proto::SampleJobRequest { eta: 0.5, ..req() }).contains("ddim sampler only"));
        assert!(err(proto::SampleJobRequest { weights: 7, ..req() }).contains("unknown weights 7"));
        assert!(err(proto::SampleJobRequest { batch: MAX_BATCH + 1, ..req() }).contains("batch must be at most"));
    }
}
