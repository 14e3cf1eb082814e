//! Sampling jobs: the queue, the scheduler that runs one job at a time by
//! handing its tasks (whole forward batches of images) to eligible workers,
//! the outputs in the run's store, and the `Jobs` gRPC service.
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

use crate::membership::{Role, Work};
use crate::state::SnapshotKind;
use crate::Coord;

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
    spec: SampleJobSpec,
    state: JobState,
    done: u64,
    error: String,
    outputs: Vec<String>,
    weights_step: u64,
    submitted: Instant,
    updates: watch::Sender<proto::JobStatus>,
}

impl Job {
    fn status(&self, id: u64) -> proto::JobStatus {
        proto::JobStatus {
            job_id: id,
            kind: "sample".into(),
            state: self.state.as_str().into(),
            done: self.done,
            total: self.spec.count,
            error: self.error.clone(),
            outputs: self.outputs.clone(),
            weights_step: self.weights_step,
            spec_json: serde_json::to_string(&self.spec).unwrap_or_default(),
            age_s: self.submitted.elapsed().as_secs_f64(),
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

    fn next_queued(&self) -> Option<(u64, SampleJobSpec)> {
        self.jobs.lock().unwrap().iter().find(|(_, j)| j.state == JobState::Queued).map(|(id, j)| (*id, j.spec.clone()))
    }

    fn state_of(&self, id: u64) -> Option<JobState> {
        self.jobs.lock().unwrap().get(&id).map(|j| j.state)
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
        tracing::info!(job = id, images = spec.count, sampler = %spec.sampler, steps = spec.steps, "job started");
        let started = Instant::now();
        let result = run_job(&coord, id, &spec, started).await;
        coord.jobs.pinned.lock().unwrap().remove(&id);
        coord.results.lock().unwrap().remove(&id);
        match result {
            Ok(JobEnd::Done(outputs)) => {
                tracing::info!(job = id, seconds = started.elapsed().as_secs_f64(), "job done");
                coord.jobs.update(id, |j| {
                    j.state = JobState::Done;
                    j.outputs = outputs;
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
    Done(Vec<String>),
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

/// Whether member `m` may take job tasks now.
fn eligible(coord: &Coord, m: &crate::membership::Member) -> bool {
    m.ready && m.idle && (m.role == Role::Eval || coord.training_over.load(Ordering::SeqCst))
}

async fn run_job(coord: &Coord, id: u64, spec: &SampleJobSpec, started: Instant) -> anyhow::Result<JobEnd> {
    let pinned = pin_weights(coord, spec).await?;
    let weights_step = pinned.step;
    coord.jobs.pinned.lock().unwrap().insert(id, pinned);
    coord.jobs.update(id, |j| j.weights_step = weights_step);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    coord.results.lock().unwrap().insert(id, tx);

    let res = coord.config.model.image_size as usize;
    let per = 3 * res * res;
    let batch = spec.batch as u64;
    let mut pending: VecDeque<(u64, u64)> =
        (0..spec.count.div_ceil(batch)).map(|g| (g * batch, batch.min(spec.count - g * batch))).collect();
    let mut inflight: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut by_worker: BTreeMap<u64, u64> = BTreeMap::new();
    let mut images = vec![0u8; spec.count as usize * per];
    let mut done = 0u64;
    let mut last_wait_log = Instant::now();
    loop {
        if coord.jobs.state_of(id) == Some(JobState::Cancelled) {
            return Ok(JobEnd::Cancelled);
        }
        let notified = coord.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut ms = coord.members.lock().unwrap();
            // Tasks of workers that left go back to the front of the queue.
            inflight.retain(|w, task| {
                let alive = ms.get(*w).is_some();
                if !alive {
                    tracing::warn!(job = id, worker = *w, first = task.0, "worker left during a task: reassigning it");
                    pending.push_front(*task);
                }
                alive
            });
            for m in ms.iter_mut() {
                if pending.is_empty() {
                    break;
                }
                if inflight.contains_key(&m.id) || !eligible(coord, m) {
                    continue;
                }
                let (first, count) = pending.pop_front().expect("not empty");
                m.send(Work::Sample(proto::SampleAssignment {
                    job_id: id,
                    first,
                    count,
                    seed: spec.seed,
                    sampler: spec.sampler.clone(),
                    steps: spec.steps,
                    eta: spec.eta,
                    weights_step,
                    batch: spec.batch,
                }));
                inflight.insert(m.id, (first, count));
            }
        }
        if pending.is_empty() && inflight.is_empty() {
            break;
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
                    anyhow::bail!("worker {} failed on images {}..{}: {}", part.worker_id, part.first, part.first + part.count, part.error);
                }
                anyhow::ensure!(part.resolution as usize == res && part.data.len() == part.count as usize * per,
                    "worker {} sent images of the wrong size", part.worker_id);
                let start = part.first as usize * per;
                images[start..start + part.data.len()].copy_from_slice(&part.data);
                done += part.count;
                *by_worker.entry(part.worker_id).or_default() += part.count;
                coord.jobs.update(id, |j| j.done = done);
            }
            _ = &mut notified => {}
            _ = coord.jobs.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let outputs = write_outputs(coord, id, spec, weights_step, &images, res, &by_worker, seconds).await?;
    Ok(JobEnd::Done(outputs))
}

/// What `jobs/<id>/job.json` holds.
#[derive(Serialize)]
struct JobRecord<'a> {
    job_id: u64,
    kind: &'static str,
    spec: &'a SampleJobSpec,
    weights_step: u64,
    image_size: usize,
    /// Images drawn by each worker id.
    images_by_worker: &'a BTreeMap<u64, u64>,
    seconds: f64,
    images_per_s: f64,
    outputs: &'a [String],
}

#[allow(clippy::too_many_arguments)]
async fn write_outputs(
    coord: &Coord,
    id: u64,
    spec: &SampleJobSpec,
    weights_step: u64,
    images: &[u8],
    res: usize,
    by_worker: &BTreeMap<u64, u64>,
    seconds: f64,
) -> anyhow::Result<Vec<String>> {
    let dir = job_dir(id);
    let per = 3 * res * res;
    let refs: Vec<&[u8]> = images.chunks_exact(per).take(GRID_IMAGES).collect();
    let cols = (refs.len() as f64).sqrt().ceil() as usize;
    let (grid, gh, gw) = ddpm::imageio::grid_chw(&refs, 3, res, res, cols)?;
    let png = ddpm::imageio::encode_png(&grid, 3, gh, gw)?;
    let mut outputs = Vec::new();
    let grid_key = format!("{dir}/grid.png");
    coord.store.put(&grid_key, png.into()).await?;
    outputs.push(coord.location(&grid_key));

    // The .npz goes through a local temporary file (the writer streams to a path).
    let tmp = std::env::temp_dir().join(format!("ddpm-job-{}-{id}.npz", std::process::id()));
    let npz = {
        let (tmp, pixels) = (tmp.clone(), images.to_vec());
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
            ddpm::eval::write_samples_npz(&tmp, &pixels, res, res)?;
            let bytes = std::fs::read(&tmp)?;
            let _ = std::fs::remove_file(&tmp);
            Ok(bytes)
        })
        .await??
    };
    let npz_key = format!("{dir}/samples.npz");
    coord.store.put(&npz_key, npz.into()).await?;
    outputs.push(coord.location(&npz_key));

    if spec.individual_pngs {
        for (i, img) in images.chunks_exact(per).enumerate() {
            let key = format!("{dir}/images/{i:06}.png");
            coord.store.put(&key, ddpm::imageio::encode_png(img, 3, res, res)?.into()).await?;
        }
        outputs.push(coord.location(&format!("{dir}/images/")));
    }
    let json_key = format!("{dir}/job.json");
    outputs.push(coord.location(&json_key));
    let record = JobRecord {
        job_id: id,
        kind: "sample",
        spec,
        weights_step,
        image_size: res,
        images_by_worker: by_worker,
        seconds,
        images_per_s: spec.count as f64 / seconds.max(1e-9),
        outputs: &outputs,
    };
    coord.store.put(&json_key, serde_json::to_vec_pretty(&record)?.into()).await?;
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
        self.coord.jobs.jobs.lock().unwrap().get(&id).map(|j| j.status(id)).ok_or_else(|| unknown(id))
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
        if spec.checkpoint_step != 0 {
            let infos = ddpm::checkpoint::list(&self.coord.store)
                .await
                .map_err(|e| Status::unavailable(format!("listing the run's checkpoints: {e}")))?;
            if !infos.iter().any(|i| i.step == spec.checkpoint_step && i.complete) {
                let have: Vec<String> = infos.iter().filter(|i| i.complete).map(|i| i.step.to_string()).collect();
                return Err(Status::invalid_argument(format!(
                    "invalid sample job: the run has no complete checkpoint of step {} (complete ones: {})",
                    spec.checkpoint_step,
                    if have.is_empty() { "none".to_string() } else { have.join(", ") }
                )));
            }
        }
        let id = self.coord.next_job_id.fetch_add(1, Ordering::SeqCst);
        let (updates, _) = watch::channel(proto::JobStatus::default());
        let job = Job {
            spec,
            state: JobState::Queued,
            done: 0,
            error: String::new(),
            outputs: Vec::new(),
            weights_step: 0,
            submitted: Instant::now(),
            updates,
        };
        let status = job.status(id);
        job.publish(id);
        tracing::info!(job = id, spec = %status.spec_json, "sample job submitted");
        self.coord.jobs.jobs.lock().unwrap().insert(id, job);
        self.coord.jobs.wake.notify_one();
        Ok(Response::new(status))
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
        let status = {
            let mut jobs = self.coord.jobs.jobs.lock().unwrap();
            let job = jobs.get_mut(&id).ok_or_else(|| unknown(id))?;
            if !job.state.is_final() {
                job.state = JobState::Cancelled;
                job.error = "cancelled by a client".into();
                job.publish(id);
                tracing::info!(job = id, "job cancelled by a client");
            }
            job.status(id)
        };
        self.coord.jobs.wake.notify_waiters();
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
