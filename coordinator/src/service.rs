//! The gRPC face of the coordinator (`ddpm.v1.Coordinator`). Handlers only
//! check what a peer sent and move bytes; decisions belong to the trainer.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use ddpm::proto::{self, coordinator_server::Coordinator, gradient_message, result_message, work_message};
use ddpm::wire;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::membership::{Role, Work};
use crate::reduce::RoundFailure;
use crate::state::{Snapshot, SnapshotKind};
use crate::{Coord, ResultPart};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Bytes of sample data per WorkMessage.
const SAMPLE_BATCH_BYTES: usize = 2 << 20;
/// Bytes of state per StateChunk.
const STATE_CHUNK_BYTES: usize = 4 << 20;

/// Errors a peer's request can cause, mapped to gRPC codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("unknown worker id {0}: it was dropped (silent too long, or refused); register again")]
    UnknownWorker(u64),
    #[error("worker {0} has not reported ready: call Ready after building the model")]
    NotReady(u64),
    #[error("protocol version {got}, but this coordinator speaks version {want}: run ddpm-worker and ddpm-coord from the same ddpm release (coordinator is {version})")]
    ProtocolVersion { got: u32, want: u32, version: &'static str },
    #[error("worker {worker} built a model with {got_params} parameters (layout hash {got_hash:#018x}), but the run's model has {want_params} (layout hash {want_hash:#018x}): the worker runs a different ddpm build or model config; use the coordinator's release")]
    LayoutMismatch { worker: u64, got_params: u64, got_hash: u64, want_params: u64, want_hash: u64 },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Internal(String),
}

impl From<RpcError> for Status {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::UnknownWorker(_) => Status::not_found(e.to_string()),
            RpcError::NotReady(_) | RpcError::ProtocolVersion { .. } | RpcError::LayoutMismatch { .. } => {
                Status::failed_precondition(e.to_string())
            }
            RpcError::BadRequest(_) => Status::invalid_argument(e.to_string()),
            RpcError::Internal(_) => Status::internal(e.to_string()),
        }
    }
}

pub struct CoordService {
    coord: Arc<Coord>,
}

impl CoordService {
    pub fn new(coord: Arc<Coord>) -> Self {
        Self { coord }
    }

    /// Marks a worker as alive; fails if it is not a member.
    fn touch(&self, worker_id: u64) -> Result<(), RpcError> {
        let mut ms = self.coord.members.lock().unwrap();
        let m = ms.get_mut(worker_id).ok_or(RpcError::UnknownWorker(worker_id))?;
        m.last_seen = Instant::now();
        Ok(())
    }
}

#[tonic::async_trait]
impl Coordinator for CoordService {
    async fn register(&self, req: Request<proto::RegisterRequest>) -> Result<Response<proto::RegisterReply>, Status> {
        let r = req.into_inner();
        if r.protocol_version != wire::PROTOCOL_VERSION {
            tracing::warn!(name = %r.name, got = r.protocol_version, "refused a worker speaking another protocol version");
            return Err(RpcError::ProtocolVersion {
                got: r.protocol_version,
                want: wire::PROTOCOL_VERSION,
                version: env!("CARGO_PKG_VERSION"),
            }
            .into());
        }
        if self.coord.is_shutting_down() {
            return Err(Status::unavailable("the run is over"));
        }
        let role = Role::parse(&r.role).map_err(|e| Status::invalid_argument(e))?;
        let id = self.coord.members.lock().unwrap().add(r.name.clone(), r.device.clone(), r.version.clone(), role);
        tracing::info!(worker = id, name = %r.name, device = %r.device, version = %r.version, ?role, "worker registered");
        Ok(Response::new(proto::RegisterReply {
            worker_id: id,
            run_config_json: self.coord.run_config_json.clone(),
            heartbeat_interval_s: self.coord.config.dist.heartbeat_interval_s,
        }))
    }

    async fn ready(&self, req: Request<proto::ReadyRequest>) -> Result<Response<proto::ReadyReply>, Status> {
        let r = req.into_inner();
        let layout = &self.coord.state.layout;
        let (want_params, want_hash) = (layout.total as u64, layout.hash());
        let mut ms = self.coord.members.lock().unwrap();
        let m = ms.get_mut(r.worker_id).ok_or(RpcError::UnknownWorker(r.worker_id))?;
        if r.param_count != want_params || r.layout_hash != want_hash {
            ms.remove(r.worker_id);
            let e = RpcError::LayoutMismatch {
                worker: r.worker_id,
                got_params: r.param_count,
                got_hash: r.layout_hash,
                want_params,
                want_hash,
            };
            tracing::warn!(worker = r.worker_id, "refused: {e}");
            return Err(e.into());
        }
        m.ready = true;
        m.last_seen = Instant::now();
        tracing::info!(worker = r.worker_id, name = %m.name, "worker ready");
        drop(ms);
        self.coord.changed.notify_waiters();
        Ok(Response::new(proto::ReadyReply {}))
    }

    async fn heartbeat(&self, req: Request<proto::HeartbeatRequest>) -> Result<Response<proto::HeartbeatReply>, Status> {
        let id = req.into_inner().worker_id;
        let member = self.touch(id).is_ok();
        Ok(Response::new(proto::HeartbeatReply { member, shutdown: self.coord.is_shutting_down() }))
    }

    type FetchStateStream = BoxStream<proto::StateChunk>;

    async fn fetch_state(&self, req: Request<proto::FetchStateRequest>) -> Result<Response<Self::FetchStateStream>, Status> {
        let r = req.into_inner();
        self.touch(r.worker_id)?;
        let kind = match proto::StateKind::try_from(r.kind) {
            Ok(proto::StateKind::Training) => Some(SnapshotKind::Training),
            Ok(proto::StateKind::Ema) => Some(SnapshotKind::Ema),
            Ok(proto::StateKind::Job) => None,
            _ => return Err(RpcError::BadRequest(format!("unknown state kind {}", r.kind)).into()),
        };
        let snap = match kind {
            Some(kind) => self.coord.state.snapshot(kind).await.map_err(|e| RpcError::Internal(e.to_string()))?,
            None => {
                let pinned = self.coord.jobs.pinned.lock().unwrap();
                let p = pinned.get(&r.job_id).ok_or_else(|| {
                    Status::not_found(format!("job {} has no pinned weights: it ended, was cancelled, or never existed", r.job_id))
                })?;
                Snapshot { step: p.step, adam_step: 0, tensors: vec![("weights".into(), p.weights.to_vec())] }
            }
        };
        let header = proto::StateHeader {
            step: snap.step,
            adam_step: snap.adam_step,
            tensors: snap.tensors.iter().map(|(n, _)| n.clone()).collect(),
            elements: self.coord.state.layout.total as u64,
            layout_hash: self.coord.state.layout.hash(),
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let per = STATE_CHUNK_BYTES / 4;
            let mut first = Some(header);
            for (_, values) in &snap.tensors {
                for range in wire::chunk_ranges(values.len(), per) {
                    let chunk = proto::StateChunk { header: first.take(), data: wire::f32_bytes(&values[range]).into() };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type NextWorkStream = BoxStream<proto::WorkMessage>;

    async fn next_work(&self, req: Request<proto::NextWorkRequest>) -> Result<Response<Self::NextWorkStream>, Status> {
        let r = req.into_inner();
        let inbox = {
            let mut ms = self.coord.members.lock().unwrap();
            let m = ms.get_mut(r.worker_id).ok_or(RpcError::UnknownWorker(r.worker_id))?;
            if !m.ready {
                return Err(RpcError::NotReady(r.worker_id).into());
            }
            m.last_seen = Instant::now();
            m.applied_step = r.applied_step;
            if r.param_checksum != 0 {
                m.checksums.insert(r.applied_step, r.param_checksum);
            }
            m.idle = true;
            m.inbox()
        };
        self.coord.changed.notify_waiters();
        let work = inbox.lock().await.recv().await;
        let messages = match work {
            None => return Err(Status::unavailable("the coordinator is shutting down")),
            Some(work) => work_messages(work),
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(messages.into_iter().map(Ok)))))
    }

    type ReduceGradientsStream = BoxStream<proto::ReducedMessage>;

    async fn reduce_gradients(
        &self,
        req: Request<Streaming<proto::GradientMessage>>,
    ) -> Result<Response<Self::ReduceGradientsStream>, Status> {
        let mut inbound = req.into_inner();
        let header = match inbound.next().await {
            Some(Ok(proto::GradientMessage { kind: Some(gradient_message::Kind::Header(h)) })) => h,
            Some(Ok(_)) => return Err(RpcError::BadRequest("the first gradient message must be the header".into()).into()),
            Some(Err(e)) => return Err(e),
            None => return Err(RpcError::BadRequest("empty gradient stream".into()).into()),
        };
        self.touch(header.worker_id)?;
        let round = self.coord.round.lock().unwrap().clone().ok_or_else(|| {
            Status::aborted(format!("no step is being reduced (worker {} sent step {})", header.worker_id, header.step))
        })?;
        let (tx, rx) = mpsc::channel(64);
        let rank = round.join(&header, tx)?;
        let worker = header.worker_id;
        tokio::spawn(async move {
            let fail = |reason: String| {
                tracing::warn!(worker, step = round.step, "rejecting gradient: {reason}");
                round.fail(RoundFailure { culprit: Some(worker), reason })
            };
            let mut failures = Vec::new();
            loop {
                match inbound.next().await {
                    Some(Ok(proto::GradientMessage { kind: Some(gradient_message::Kind::Chunk(c)) })) => {
                        match round.offer(rank, c) {
                            Ok(sends) => {
                                for (out, msg) in sends {
                                    let _ = out.send(Ok(msg)).await;
                                }
                            }
                            Err(e) => {
                                failures = fail(format!("worker {worker} sent a bad gradient chunk: {e}"));
                                break;
                            }
                        }
                    }
                    Some(Ok(_)) => {
                        failures = fail(format!("worker {worker} sent a second header or an empty message"));
                        break;
                    }
                    Some(Err(e)) => {
                        failures = fail(format!("worker {worker}'s gradient stream failed: {}", e.message()));
                        break;
                    }
                    None => {
                        if let Some(sent) = round.owes(rank) {
                            failures = fail(format!("worker {worker}'s gradient stream ended after {sent} chunks"));
                        }
                        break;
                    }
                }
            }
            for (out, status) in failures {
                let _ = out.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn submit_result(
        &self,
        req: Request<Streaming<proto::ResultMessage>>,
    ) -> Result<Response<proto::SubmitResultReply>, Status> {
        let mut inbound = req.into_inner();
        let header = match inbound.next().await {
            Some(Ok(proto::ResultMessage { kind: Some(result_message::Kind::Header(h)) })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(RpcError::BadRequest("the first result message must be the header".into()).into()),
        };
        self.touch(header.worker_id)?;
        let sink = self.coord.results.lock().unwrap().get(&header.job_id).cloned().ok_or_else(|| {
            Status::not_found(format!("unknown job id {}: it finished, was cancelled, or never existed", header.job_id))
        })?;
        if !header.error.is_empty() {
            let part = ResultPart { error: header.error.clone(), ..ResultPart::new(&header) };
            let _ = sink.send(part);
            return Ok(Response::new(proto::SubmitResultReply {}));
        }
        let res = header.resolution as u64;
        let image_bytes = if header.no_images { Some(0) } else { header.count.checked_mul(3 * res * res) };
        // Sums are at most a few tens of MB (2048-d features: 16.8 MB).
        let sums = [header.feature_bytes, header.score_bytes, header.bpd_bytes];
        let image_bytes = image_bytes.filter(|&n| n <= 1 << 34 && sums.iter().all(|&b| b <= 1 << 30)).ok_or_else(|| {
            RpcError::BadRequest(format!("result of {} images at {res}px with {sums:?} bytes of sums is too large", header.count))
        })?;
        let want = (image_bytes + sums.iter().sum::<u64>()) as usize;
        let mut data = Vec::with_capacity(want.min(1 << 28));
        while let Some(msg) = inbound.next().await {
            match msg?.kind {
                Some(result_message::Kind::Data(d)) => {
                    if data.len() + d.len() > want {
                        return Err(RpcError::BadRequest(format!(
                            "result has more than the {want} bytes its header announces ({} images at {res}px and sums)",
                            header.count
                        ))
                        .into());
                    }
                    data.extend_from_slice(&d);
                }
                _ => return Err(RpcError::BadRequest("a result stream has one header, then data".into()).into()),
            }
        }
        if data.len() != want {
            return Err(RpcError::BadRequest(format!("result has {} bytes, expected {want}", data.len())).into());
        }
        let mut part = ResultPart::new(&header);
        let mut rest = data.split_off(image_bytes as usize);
        part.data = data;
        let scores_and_bpd = rest.split_off(header.feature_bytes as usize);
        part.features = rest;
        let mut scores = scores_and_bpd;
        part.bpd = scores.split_off(header.score_bytes as usize);
        part.scores = scores;
        sink.send(part).map_err(|_| Status::not_found(format!("job {} is no longer collecting results", header.job_id)))?;
        Ok(Response::new(proto::SubmitResultReply {}))
    }

    async fn get_status(&self, _req: Request<proto::StatusRequest>) -> Result<Response<proto::StatusReply>, Status> {
        let s = self.coord.status.lock().unwrap().clone();
        let members = self.coord.members.lock().unwrap().status();
        Ok(Response::new(proto::StatusReply {
            step: s.step,
            total_steps: self.coord.config.train.steps,
            loss: s.loss,
            images_per_s: s.images_per_s,
            members,
            skipped_steps: s.skipped_steps,
            phase: s.phase,
        }))
    }
}

/// The messages of one piece of work: the assignment, then for a training
/// step the shard's samples in batches of about SAMPLE_BATCH_BYTES.
fn work_messages(work: Work) -> Vec<proto::WorkMessage> {
    let msg = |kind| proto::WorkMessage { kind: Some(kind) };
    match work {
        Work::Train { assignment, samples } => with_samples(msg(work_message::Kind::Train(assignment)), samples),
        Work::Eval { assignment, samples } => with_samples(msg(work_message::Kind::Eval(assignment)), samples),
        Work::Analysis { assignment, samples } => with_samples(msg(work_message::Kind::Analysis(assignment)), samples),
        Work::Sample(a) => vec![msg(work_message::Kind::Sample(a))],
        Work::Resync(reason) => vec![msg(work_message::Kind::Resync(proto::Resync { reason }))],
        Work::Shutdown(reason) => vec![msg(work_message::Kind::Shutdown(proto::Shutdown { reason }))],
    }
}

/// An assignment followed by its samples in batches of about SAMPLE_BATCH_BYTES.
fn with_samples(first: proto::WorkMessage, samples: Vec<proto::Sample>) -> Vec<proto::WorkMessage> {
    let msg = |kind| proto::WorkMessage { kind: Some(kind) };
    {
        {
            let mut out = vec![first];
            let mut batch = Vec::new();
            let mut bytes = 0;
            for s in samples {
                bytes += s.data.len();
                batch.push(s);
                if bytes >= SAMPLE_BATCH_BYTES {
                    out.push(msg(work_message::Kind::Samples(proto::SampleBatch { samples: std::mem::take(&mut batch) })));
                    bytes = 0;
                }
            }
            if !batch.is_empty() {
                out.push(msg(work_message::Kind::Samples(proto::SampleBatch { samples: batch })));
            }
            out
        }
    }
}
