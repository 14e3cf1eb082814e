//! `ddpm-worker`: one device's share of a training run.
//!
//! It registers with the coordinator, builds the run's model on its device,
//! fetches the current state, then loops: take the next piece of work,
//! compute (a training step's gradient, or images), all-reduce, apply the
//! same update as every other replica. `main` parses flags and calls [`run`].

pub mod device;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ddpm::config::{GradDtype, RunConfig};
use ddpm::proto::{self, coordinator_client::CoordinatorClient, reduced_message, result_message, work_message};
use ddpm::train::sample::{SampleRequest, Sampler};
use ddpm::train::Outcome;
use ddpm::wire;
use tch::Device;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use device::{DeviceHandle, EvalImages, EvalTask, TrainingState};

/// What `ddpm-worker` was asked to do.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// `host:port` of the coordinator.
    pub coord: String,
    pub device: Device,
    /// Name shown in the coordinator's logs and status.
    pub name: String,
    /// How long to keep trying to reach the coordinator.
    pub connect_timeout: Duration,
    /// "train" (training steps, and job tasks after training) or "eval"
    /// (job tasks only, also while the run trains).
    pub role: String,
}

type Client = CoordinatorClient<Channel>;

/// Connects, retrying until `timeout`.
async fn connect(addr: &str, timeout: Duration) -> anyhow::Result<Client> {
    let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| anyhow::anyhow!("bad coordinator address {addr:?}: {e}"))?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(wire::MAX_FRAME_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let started = Instant::now();
    loop {
        match endpoint.connect().await {
            Ok(ch) => {
                return Ok(CoordinatorClient::new(ch)
                    .max_decoding_message_size(wire::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(wire::MAX_MESSAGE_BYTES))
            }
            Err(e) if started.elapsed() < timeout => {
                tracing::debug!("coordinator at {addr} not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => anyhow::bail!("cannot reach the coordinator at {addr} within {:.0} s: {e}", timeout.as_secs_f64()),
        }
    }
}

/// How a worker session ended.
enum SessionEnd {
    /// The run is over.
    Shutdown,
    /// The coordinator dropped this worker: register again.
    Dropped(String),
}

/// Runs the worker until the run ends or `shutdown` resolves.
pub async fn run(opts: WorkerOptions, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let mut device: Option<(String, DeviceHandle)> = None;
    loop {
        let client = connect(&opts.coord, opts.connect_timeout).await?;
        let end = tokio::select! {
            r = session(client, &opts, &mut device) => r?,
            _ = &mut shutdown => {
                tracing::info!("shutdown requested");
                return Ok(());
            }
        };
        match end {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Dropped(reason) => {
                tracing::warn!("the coordinator dropped this worker ({reason}); registering again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// One membership: register, build (or reuse) the model, work until dropped or done.
async fn session(
    mut client: Client,
    opts: &WorkerOptions,
    device: &mut Option<(String, DeviceHandle)>,
) -> anyhow::Result<SessionEnd> {
    let reply = client
        .register(proto::RegisterRequest {
            protocol_version: wire::PROTOCOL_VERSION,
            name: opts.name.clone(),
            device: format!("{:?}", opts.device),
            version: env!("CARGO_PKG_VERSION").into(),
            role: opts.role.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("registration refused: {}", s.message()))?
        .into_inner();
    let id = reply.worker_id;
    let run: RunConfig = serde_json::from_str(&reply.run_config_json)
        .map_err(|e| anyhow::anyhow!("the coordinator sent a run config this worker cannot read: {e}"))?;
    let dev = match device.take() {
        Some((json, handle)) if json == reply.run_config_json => (json, handle),
        _ => {
            tracing::info!(device = ?opts.device, params = run.param_count, "building the model");
            let handle = tokio::task::block_in_place(|| DeviceHandle::start(run.clone(), opts.device))?;
            (reply.run_config_json.clone(), handle)
        }
    };
    let dev = &device.insert(dev).1;
    client
        .ready(proto::ReadyRequest { worker_id: id, layout_hash: dev.layout_hash, param_count: dev.param_count })
        .await
        .map_err(|s| anyhow::anyhow!("the coordinator refused this worker: {}", s.message()))?;
    tracing::info!(worker = id, coord = %opts.coord, "joined the run");

    let heartbeat = tokio::spawn(heartbeats(client.clone(), id, Duration::from_secs_f64(reply.heartbeat_interval_s)));
    let result = work_loop(&mut client, id, &run, dev, opts.role == "eval").await;
    heartbeat.abort();
    result
}

async fn heartbeats(mut client: Client, id: u64, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match client.heartbeat(proto::HeartbeatRequest { worker_id: id }).await {
            Ok(r) if !r.get_ref().member => return,
            Ok(_) => {}
            Err(e) => tracing::debug!("heartbeat failed: {}", e.message()),
        }
    }
}

fn dropped_or(e: tonic::Status, what: &str) -> anyhow::Result<SessionEnd> {
    match e.code() {
        Code::NotFound | Code::FailedPrecondition => Ok(SessionEnd::Dropped(e.message().to_string())),
        Code::Unavailable if e.message().contains("shutting down") || e.message().contains("run is over") => {
            Ok(SessionEnd::Shutdown)
        }
        _ => Err(anyhow::anyhow!("{what}: {}", e.message())),
    }
}

async fn work_loop(
    client: &mut Client,
    id: u64,
    run: &RunConfig,
    dev: &DeviceHandle,
    eval_only: bool,
) -> anyhow::Result<SessionEnd> {
    // An eval worker never trains: it needs no training state.
    let mut applied = if eval_only { 0 } else { fetch_training_state(client, id, dev).await? };
    let mut checksum = 0u64;
    // The job whose pinned weights the device holds.
    let mut loaded_job: Option<u64> = None;
    loop {
        let req = proto::NextWorkRequest { worker_id: id, applied_step: applied, param_checksum: checksum };
        checksum = 0;
        let mut stream = match client.next_work(req).await {
            Ok(s) => s.into_inner(),
            Err(e) => return dropped_or(e, "asking for work"),
        };
        let first = match stream.next().await {
            Some(Ok(m)) => m.kind,
            Some(Err(e)) => return dropped_or(e, "receiving work"),
            None => anyhow::bail!("the coordinator sent an empty work stream"),
        };
        match first {
            Some(work_message::Kind::Train(a)) => {
                let mut samples = Vec::with_capacity(a.shard_size as usize);
                while let Some(m) = stream.next().await {
                    match m?.kind {
                        Some(work_message::Kind::Samples(b)) => {
                            samples.extend(b.samples.into_iter().map(|s| (s.position, s.data)))
                        }
                        other => anyhow::bail!("unexpected message in a training assignment: {other:?}"),
                    }
                }
                anyhow::ensure!(
                    samples.len() == a.shard_size as usize,
                    "shard of step {} has {} samples, the assignment says {}",
                    a.step,
                    samples.len(),
                    a.shard_size
                );
                match train_step(client, id, dev, &a, samples).await? {
                    StepEnd::Applied => {
                        applied = a.step;
                        loaded_job = None;
                        if a.checksum_requested {
                            checksum = dev.checksum().await?;
                        }
                    }
                    StepEnd::Abandoned(reason) => tracing::info!(step = a.step, "step abandoned: {reason}"),
                    StepEnd::Rejected(reason) => return Ok(SessionEnd::Dropped(reason)),
                }
            }
            Some(work_message::Kind::Sample(a)) => {
                sample_task(client, id, run, dev, &a, &mut loaded_job).await?;
            }
            Some(work_message::Kind::Eval(a)) => {
                let mut encoded = Vec::new();
                while let Some(m) = stream.next().await {
                    match m?.kind {
                        Some(work_message::Kind::Samples(b)) => encoded.extend(b.samples),
                        other => anyhow::bail!("unexpected message in an evaluation task: {other:?}"),
                    }
                }
                eval_task(client, id, run, dev, &a, encoded, &mut loaded_job).await?;
            }
            Some(work_message::Kind::Analysis(a)) => {
                let mut encoded = Vec::new();
                while let Some(m) = stream.next().await {
                    match m?.kind {
                        Some(work_message::Kind::Samples(b)) => encoded.extend(b.samples),
                        other => anyhow::bail!("unexpected message in an analysis task: {other:?}"),
                    }
                }
                analysis_task(client, id, run, dev, &a, encoded, &mut loaded_job).await?;
            }
            Some(work_message::Kind::Resync(r)) if eval_only => {
                tracing::warn!(reason = %r.reason, "an eval worker holds no training state; ignoring a resync");
            }
            Some(work_message::Kind::Resync(r)) => {
                tracing::info!(reason = %r.reason, "fetching the training state again");
                applied = fetch_training_state(client, id, dev).await?;
            }
            Some(work_message::Kind::Shutdown(s)) => {
                tracing::info!(reason = %s.reason, "the coordinator ended the run");
                return Ok(SessionEnd::Shutdown);
            }
            Some(work_message::Kind::Samples(_)) | None => anyhow::bail!("work stream did not start with an assignment"),
        }
    }
}

/// Downloads a state stream into named flat tensors.
async fn fetch_state(
    client: &mut Client,
    id: u64,
    kind: proto::StateKind,
) -> anyhow::Result<(proto::StateHeader, Vec<Vec<f32>>)> {
    fetch_state_for(client, id, kind, 0).await
}

/// [`fetch_state`] of a job's pinned weights (`job_id`; 0 for other kinds).
async fn fetch_state_for(
    client: &mut Client,
    id: u64,
    kind: proto::StateKind,
    job_id: u64,
) -> anyhow::Result<(proto::StateHeader, Vec<Vec<f32>>)> {
    let mut stream = client
        .fetch_state(proto::FetchStateRequest { worker_id: id, kind: kind as i32, job_id })
        .await
        .map_err(|s| anyhow::anyhow!("fetching the state: {}", s.message()))?
        .into_inner();
    let mut header = None;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| anyhow::anyhow!("fetching the state: {}", s.message()))?;
        if let Some(h) = chunk.header {
            bytes.reserve(h.tensors.len() * h.elements as usize * 4);
            header = Some(h);
        }
        bytes.extend_from_slice(&chunk.data);
    }
    let header = header.ok_or_else(|| anyhow::anyhow!("state stream without a header"))?;
    let n = header.elements as usize;
    anyhow::ensure!(
        bytes.len() == header.tensors.len() * n * 4,
        "state stream has {} bytes, expected {}",
        bytes.len(),
        header.tensors.len() * n * 4
    );
    let tensors = bytes
        .chunks_exact(n * 4)
        .map(|b| {
            let mut v = vec![0f32; n];
            wire::decode_into(b, GradDtype::F32, 0, &mut v).expect("length checked");
            v
        })
        .collect();
    Ok((header, tensors))
}

async fn fetch_training_state(client: &mut Client, id: u64, dev: &DeviceHandle) -> anyhow::Result<u64> {
    let (h, mut t) = fetch_state(client, id, proto::StateKind::Training).await?;
    anyhow::ensure!(h.tensors == ["params", "adam_m", "adam_v"], "unexpected training state tensors {:?}", h.tensors);
    let adam_v = t.pop().expect("3 tensors");
    let adam_m = t.pop().expect("3 tensors");
    let params = t.pop().expect("3 tensors");
    dev.load(TrainingState { step: h.step, adam_step: h.adam_step, params, adam_m, adam_v }).await?;
    tracing::info!(step = h.step, "training state loaded");
    Ok(h.step)
}

enum StepEnd {
    Applied,
    Abandoned(String),
    Rejected(String),
}

/// Compute the shard's gradient, all-reduce it, apply the outcome.
async fn train_step(
    client: &mut Client,
    id: u64,
    dev: &DeviceHandle,
    a: &proto::TrainAssignment,
    samples: Vec<(u64, Bytes)>,
) -> anyhow::Result<StepEnd> {
    let computed = dev.compute(a.step, samples).await?;
    let dtype = GradDtype::from_proto(a.grad_dtype)?;
    let total = computed.grad.len();
    let chunk = a.chunk_elements.max(1) as usize;
    let grad = Arc::new(computed.grad);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let header = proto::GradientHeader {
        worker_id: id,
        step: a.step,
        attempt: a.attempt,
        elements: total as u64,
        dtype: dtype.to_proto() as i32,
        loss: computed.loss,
        samples: a.shard_size,
        compute_s: computed.compute_s,
    };
    let sender = {
        let grad = grad.clone();
        tokio::spawn(async move {
            let msg = |kind| proto::GradientMessage { kind: Some(kind) };
            if tx.send(msg(proto::gradient_message::Kind::Header(header))).await.is_err() {
                return;
            }
            for (i, range) in wire::chunk_ranges(total, chunk).enumerate() {
                let data = wire::encode(&grad[range], dtype);
                let c = proto::GradientChunk { index: i as u32, data };
                if tx.send(msg(proto::gradient_message::Kind::Chunk(c))).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut inbound = match client.reduce_gradients(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Ok(s) => s.into_inner(),
        Err(e) => return step_error(e),
    };
    let mut reduced = vec![0f32; total];
    let ranges: Vec<_> = wire::chunk_ranges(total, chunk).collect();
    let mut got = 0usize;
    let outcome = loop {
        match inbound.next().await {
            Some(Ok(proto::ReducedMessage { kind: Some(reduced_message::Kind::Chunk(c)) })) => {
                let range = ranges
                    .get(c.index as usize)
                    .ok_or_else(|| anyhow::anyhow!("reduced chunk index {} out of range", c.index))?
                    .clone();
                wire::decode_into(&c.data, dtype, c.index, &mut reduced[range])?;
                got += 1;
            }
            Some(Ok(proto::ReducedMessage { kind: Some(reduced_message::Kind::Outcome(o)) })) => break o,
            Some(Ok(_)) => anyhow::bail!("empty reduced message"),
            Some(Err(e)) => {
                sender.abort();
                return step_error(e);
            }
            None => anyhow::bail!("the all-reduce of step {} ended without an outcome", a.step),
        }
    };
    anyhow::ensure!(got == ranges.len(), "received {got} of {} reduced chunks", ranges.len());
    let outcome = Outcome { apply: outcome.apply, grad_norm: outcome.grad_norm, clip_scale: outcome.clip_scale };
    if !outcome.apply {
        tracing::warn!(step = a.step, "non-finite gradient: skipping this update, as every replica does");
    }
    dev.apply(a.step, reduced, outcome).await?;
    Ok(StepEnd::Applied)
}

fn step_error(e: tonic::Status) -> anyhow::Result<StepEnd> {
    match e.code() {
        Code::Aborted => Ok(StepEnd::Abandoned(e.message().to_string())),
        Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound => {
            tracing::error!("the coordinator rejected this worker's gradient: {}", e.message());
            Ok(StepEnd::Rejected(e.message().to_string()))
        }
        _ => Err(anyhow::anyhow!("all-reduce failed: {}", e.message())),
    }
}

/// Draws a job task's images from the job's pinned weights (fetched once
/// per job) and sends them back; a failure is reported to the coordinator
/// as the task's result, which fails the job, not this worker.
async fn sample_task(
    client: &mut Client,
    id: u64,
    run: &RunConfig,
    dev: &DeviceHandle,
    a: &proto::SampleAssignment,
    loaded_job: &mut Option<u64>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    tracing::info!(job = a.job_id, first = a.first, count = a.count, sampler = %a.sampler, "sampling");
    let drawn = async {
        let weights = job_weights(client, id, a.job_id, loaded_job).await?;
        let sampler = Sampler::parse(&a.sampler, a.steps as usize, a.eta).map_err(|e| anyhow::anyhow!(e))?;
        let req = SampleRequest { seed: a.seed, first: a.first, count: a.count, sampler, batch: a.batch.max(1) as usize };
        let images = dev.sample(weights, req).await?;
        *loaded_job = Some(a.job_id);
        anyhow::Ok(images)
    }
    .await;
    let images = match drawn {
        Ok(images) => {
            tracing::info!(job = a.job_id, seconds = started.elapsed().as_secs_f64(), "images drawn");
            Ok(device::EvalOutput { images: Some(images), ..Default::default() })
        }
        Err(e) => {
            *loaded_job = None;
            Err(e)
        }
    };
    let header = result_header(id, run, a.job_id, a.first, a.count);
    send_result(client, header, images).await
}

fn result_header(id: u64, run: &RunConfig, job_id: u64, first: u64, count: u64) -> proto::ResultHeader {
    proto::ResultHeader {
        worker_id: id,
        job_id,
        first,
        count,
        resolution: run.train.model.image_size as u32,
        ..Default::default()
    }
}

/// Sends a task's result (or why it failed) to the coordinator.
async fn send_result(
    client: &mut Client,
    mut header: proto::ResultHeader,
    result: anyhow::Result<device::EvalOutput>,
) -> anyhow::Result<()> {
    let job_id = header.job_id;
    let mut data = Vec::new();
    match result {
        Ok(out) => {
            header.no_images = out.images.is_none();
            header.feature_bytes = out.features.len() as u64;
            header.score_bytes = out.scores.len() as u64;
            header.bpd_bytes = out.bpd.len() as u64;
            for part in [out.images.unwrap_or_default(), out.features, out.scores, out.bpd] {
                data.extend(part);
            }
        }
        Err(e) => {
            tracing::error!(job = job_id, "task failed: {e:#}");
            header.error = format!("{e:#}");
        }
    }
    let mut msgs = vec![proto::ResultMessage { kind: Some(result_message::Kind::Header(header)) }];
    for chunk in data.chunks(4 << 20) {
        msgs.push(proto::ResultMessage { kind: Some(result_message::Kind::Data(Bytes::copy_from_slice(chunk))) });
    }
    match client.submit_result(tokio_stream::iter(msgs)).await {
        Ok(_) => Ok(()),
        // The job was cancelled (or failed elsewhere) meanwhile.
        Err(s) if s.code() == Code::NotFound => {
            tracing::info!(job = job_id, "the job no longer wants this result: {}", s.message());
            Ok(())
        }
        Err(s) => Err(anyhow::anyhow!("sending a job result: {}", s.message())),
    }
}

/// The job's pinned weights, unless the device already holds them.
async fn job_weights(
    client: &mut Client,
    id: u64,
    job_id: u64,
    loaded_job: &mut Option<u64>,
) -> anyhow::Result<Option<Vec<f32>>> {
    if *loaded_job == Some(job_id) {
        return Ok(None);
    }
    *loaded_job = None;
    let (_, mut t) = fetch_state_for(client, id, proto::StateKind::Job, job_id).await?;
    Ok(Some(t.pop().ok_or_else(|| anyhow::anyhow!("the job's weights stream had no tensor"))?))
}

/// Measures an evaluation task's images (drawn from the job's weights, or
/// dataset images sent with the task) and sends the sums back; a failure
/// fails the job, not this worker.
async fn eval_task(
    client: &mut Client,
    id: u64,
    run: &RunConfig,
    dev: &DeviceHandle,
    a: &proto::EvalAssignment,
    encoded: Vec<proto::Sample>,
    loaded_job: &mut Option<u64>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let (first, count) = match &a.source {
        Some(proto::eval_assignment::Source::Sample(s)) => (s.first, s.count),
        Some(proto::eval_assignment::Source::Dataset(d)) => (d.first, d.count),
        None => (0, 0),
    };
    tracing::info!(job = a.job_id, first, count, features = a.features, bpd = a.bpd, "evaluating");
    let measured = async {
        let needs_weights = a.bpd || matches!(a.source, Some(proto::eval_assignment::Source::Sample(_)));
        let images = match &a.source {
            Some(proto::eval_assignment::Source::Sample(s)) => {
                let sampler = Sampler::parse(&s.sampler, s.steps as usize, s.eta).map_err(|e| anyhow::anyhow!(e))?;
                EvalImages::Sample(SampleRequest {
                    seed: s.seed,
                    first: s.first,
                    count: s.count,
                    sampler,
                    batch: s.batch.max(1) as usize,
                })
            }
            Some(proto::eval_assignment::Source::Dataset(d)) => {
                let pixels = tokio::task::block_in_place(|| decode_dataset_images(d, &encoded))?;
                EvalImages::Dataset { first: d.first, pixels }
            }
            None => anyhow::bail!("an evaluation task without images"),
        };
        let weights = if needs_weights { job_weights(client, id, a.job_id, loaded_job).await? } else { None };
        let task = EvalTask {
            images,
            features: a.features,
            inception_score: (a.is_splits > 0).then_some((a.is_splits as usize, a.is_total)),
            bpd_seed: a.bpd.then_some(a.bpd_seed),
            inception: a.inception.clone(),
            batch: a.batch.max(1) as usize,
        };
        let out = dev.eval(weights, task).await;
        if needs_weights && out.is_ok() {
            *loaded_job = Some(a.job_id);
        }
        out
    }
    .await;
    if measured.is_ok() {
        tracing::info!(job = a.job_id, seconds = started.elapsed().as_secs_f64(), "task measured");
    } else {
        *loaded_job = None;
    }
    send_result(client, result_header(id, run, a.job_id, first, count), measured).await
}

/// Draws an analysis task's images (progressive rows, or an interpolation
/// of the two dataset images sent with it) and sends them back.
async fn analysis_task(
    client: &mut Client,
    id: u64,
    run: &RunConfig,
    dev: &DeviceHandle,
    a: &proto::AnalysisAssignment,
    encoded: Vec<proto::Sample>,
    loaded_job: &mut Option<u64>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    tracing::info!(job = a.job_id, kind = %a.kind, first = a.first, count = a.count, "analysis task");
    let drawn = async {
        let task = match a.kind.as_str() {
            "progressive" => {
                let snapshots = a.snapshots.max(1) as u64;
                anyhow::ensure!(a.first % snapshots == 0 && a.count % snapshots == 0, "a progressive task must cover whole rows");
                device::AnalysisTask::Progressive {
                    seed: a.seed,
                    first_row: a.first / snapshots,
                    rows: (a.count / snapshots) as usize,
                    snapshots: snapshots as usize,
                    batch: 8,
                }
            }
            "interpolate" => {
                anyhow::ensure!(encoded.len() == 2, "an interpolation needs 2 images, the task has {}", encoded.len());
                let decoder: ddpm::data::Decoder = serde_json::from_str(&a.decoder_json)
                    .map_err(|e| anyhow::anyhow!("the task's dataset decoder is unreadable: {e}"))?;
                let decode = |s: &proto::Sample| {
                    decoder.decode(&s.data).map_err(|e| anyhow::anyhow!("dataset image {}: {e}", s.position))
                };
                device::AnalysisTask::Interpolate {
                    a: decode(&encoded[0])?,
                    b: decode(&encoded[1])?,
                    t: a.t as usize,
                    lambdas: a.lambdas as usize,
                    seed: a.seed,
                }
            }
            other => anyhow::bail!("unknown analysis {other:?}"),
        };
        let weights = job_weights(client, id, a.job_id, loaded_job).await?;
        let images = dev.analysis(weights, task).await?;
        *loaded_job = Some(a.job_id);
        anyhow::Ok(device::EvalOutput { images: Some(images), ..Default::default() })
    }
    .await;
    match &drawn {
        Ok(_) => tracing::info!(job = a.job_id, seconds = started.elapsed().as_secs_f64(), "analysis images drawn"),
        Err(_) => *loaded_job = None,
    }
    send_result(client, result_header(id, run, a.job_id, a.first, a.count), drawn).await
}

/// Decodes the dataset images of a task, in index order.
fn decode_dataset_images(d: &proto::DatasetImages, encoded: &[proto::Sample]) -> anyhow::Result<Vec<u8>> {
    let decoder: ddpm::data::Decoder = serde_json::from_str(&d.decoder_json)
        .map_err(|e| anyhow::anyhow!("the task's dataset decoder is unreadable: {e}"))?;
    anyhow::ensure!(
        encoded.len() as u64 == d.count,
        "the task has {} dataset images, its assignment says {}",
        encoded.len(),
        d.count
    );
    let mut pixels = Vec::new();
    for (k, s) in encoded.iter().enumerate() {
        anyhow::ensure!(s.position == d.first + k as u64, "dataset images arrived out of order");
        let img = decoder.decode(&s.data).map_err(|e| anyhow::anyhow!("dataset image {}: {e}", s.position))?;
        pixels.extend(img);
    }
    Ok(pixels)
}
