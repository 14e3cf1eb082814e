//! The gRPC face of the coordinator (`ddpm.v1.Coordinator`). Handlers check
//! what a peer sent and move bytes; decisions belong to the components they
//! call (the roster, the round, the state thread, the jobs' routers).
//! Errors map to statuses, with the worker's directive, in `errors.rs`.
//!
//! Over 450 lines and still one concept: tonic takes every RPC of the
//! service in one `impl Coordinator`, so the handlers stay here, each
//! short, and what grows goes into the submodules below.

pub mod access;
mod errors;
pub mod finished;
mod gradients;
pub mod incoming;
mod results;
mod streams;
mod uploads;

use std::sync::Arc;
use std::time::Duration;

use ddpm::config::RunConfig;
use ddpm::proto::{self, coordinator_server::Coordinator, gradient_message, result_message};
use ddpm::wire::{self, auth, WorkerRole};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::components::Components;
use crate::jobs::pinned::PinnedWeights;
use crate::jobs::results::{ResultPart, ResultRouter};
use crate::lifecycle::Lifecycle;
use crate::nccl_ids::NcclIds;
use crate::peer_syncs::PeerSyncs;
use crate::roster::Roster;
use crate::round::RoundError;
use crate::round_slot::RoundSlot;
use crate::run_status::RunStatus;
use crate::shadow::Shadow;
use crate::shard_book::ShardBook;
use crate::state::{Snapshot, SnapshotKind};
use crate::telemetry::metrics::Telemetry;
use errors::RpcError;
use streams::BoxStream;

/// How long a shadow feed may wait for its step to be registered (the
/// outcome goes out a moment before the loop records the commit).
const FEED_WAIT: Duration = Duration::from_secs(30);

/// The `Coordinator` service: built once per run by [`CoordService::new`].
pub struct CoordService {
    /// The resolved run config as JSON, and the facts workers check.
    run_config: RunConfig,
    run_config_json: String,
    shadow: Arc<Shadow>,
    roster: Arc<Roster>,
    rounds: Arc<RoundSlot>,
    nccl_ids: Arc<NcclIds>,
    shards: Arc<ShardBook>,
    peer_syncs: Arc<PeerSyncs>,
    pinned: Arc<PinnedWeights>,
    results: Arc<ResultRouter>,
    status: Arc<RunStatus>,
    lifecycle: Arc<Lifecycle>,
    telemetry: Arc<Telemetry>,
    /// The run's location and the workers it waits for, for GetStatus.
    run_url: String,
    workers_expected: usize,
}

impl CoordService {
    /// The service of a run whose workers receive `run_config`, waiting for
    /// `workers_expected` training workers, on the components it answers
    /// from.
    pub fn new(run_config: RunConfig, workers_expected: usize, parts: &Components) -> serde_json::Result<Self> {
        Ok(Self {
            run_config_json: serde_json::to_string(&run_config)?,
            run_config,
            shadow: parts.shadow.clone(),
            roster: parts.roster.clone(),
            rounds: parts.rounds.clone(),
            nccl_ids: parts.nccl_ids.clone(),
            shards: parts.shards.clone(),
            peer_syncs: parts.peer_syncs.clone(),
            pinned: parts.pinned.clone(),
            results: parts.results.clone(),
            status: parts.status.clone(),
            lifecycle: parts.lifecycle.clone(),
            telemetry: parts.telemetry.clone(),
            run_url: parts.store.url().to_string(),
            workers_expected,
        })
    }
}

#[tonic::async_trait]
impl Coordinator for CoordService {
    async fn register(&self, req: Request<proto::RegisterRequest>) -> Result<Response<proto::RegisterReply>, Status> {
        if access::caller_of(&req) == access::Caller::User {
            return Err(RpcError::NotAWorker.into());
        }
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
        if self.lifecycle.is_shutting_down() {
            return Err(ending(&self.lifecycle).into());
        }
        let role: WorkerRole = r.role.parse().map_err(RpcError::UnknownRole)?;
        for (what, text) in [("name", &r.name), ("device", &r.device), ("version", &r.version)] {
            let got = text.chars().count();
            if got > crate::limits::MAX_NAME_CHARS {
                return Err(RpcError::TooLong { what, got, max: crate::limits::MAX_NAME_CHARS }.into());
            }
        }
        let endpoint = r.peer_endpoint.trim().to_string();
        if !endpoint.is_empty() {
            let ok = endpoint.chars().count() <= crate::limits::MAX_NAME_CHARS
                && endpoint.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(RpcError::BadPeerEndpoint(endpoint.chars().take(crate::limits::MAX_NAME_CHARS).collect()).into());
            }
        }
        // `auto` falls back to the ring whenever a CPU worker is a member, so it needs the endpoint too.
        if self.run_config.train.dist.backend.may_use_ring() && role == WorkerRole::Train && endpoint.is_empty() {
            tracing::warn!(name = %r.name, "refused a training worker without a peer endpoint (the ring backend needs one)");
            return Err(RpcError::NoPeerEndpoint.into());
        }
        let id = self.roster.register(r.name.clone(), r.device.clone(), role, endpoint).map_err(|e| {
            tracing::warn!(name = %r.name, "refused a worker: {}", RpcError::from(e));
            RpcError::from(e)
        })?;
        tracing::info!(worker = id, name = %r.name, device = %r.device, version = %r.version, ?role, "worker registered");
        Ok(Response::new(proto::RegisterReply {
            worker_id: id,
            run_config_json: self.run_config_json.clone(),
            heartbeat_interval_s: self.run_config.train.dist.heartbeat_interval_s,
            session_secret: self.roster.session_secret(id).unwrap_or_default(),
        }))
    }

    async fn ready(&self, req: Request<proto::ReadyRequest>) -> Result<Response<proto::ReadyReply>, Status> {
        self.authorize(&req, req.get_ref().worker_id)?;
        let r = req.into_inner();
        let (want_params, want_hash) = (self.run_config.param_count, self.run_config.layout_hash);
        self.roster.touch(r.worker_id)?;
        if r.param_count != want_params || r.layout_hash != want_hash {
            self.roster.remove(r.worker_id);
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
        self.roster.set_nccl(r.worker_id, r.nccl);
        let member = self.roster.mark_ready(r.worker_id)?;
        // A starting coordinator looks for the step its replicas hold
        // (training/adopt.rs); once chosen, joiners fetch it.
        let keep_state = r.held_step > 0 && self.run_config.train.dist.backend.replicas_keep_ema() && self.roster.takes_held();
        tracing::info!(worker = r.worker_id, name = %member.name, held_step = r.held_step, keep_state, "worker ready");
        Ok(Response::new(proto::ReadyReply { keep_state }))
    }

    async fn heartbeat(&self, req: Request<proto::HeartbeatRequest>) -> Result<Response<proto::HeartbeatReply>, Status> {
        let id = req.get_ref().worker_id;
        match self.authorize(&req, id) {
            Err(RpcError::UnknownWorker(_)) | Ok(()) => {}
            Err(e) => return Err(e.into()),
        }
        let member = self.roster.touch(id).is_ok();
        Ok(Response::new(proto::HeartbeatReply { member, shutdown: self.lifecycle.is_shutting_down() }))
    }

    type AttachStream = BoxStream<proto::HeartbeatReply>;

    async fn attach(&self, req: Request<Streaming<proto::HeartbeatRequest>>) -> Result<Response<Self::AttachStream>, Status> {
        let session = self.worker_session(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or(RpcError::EmptyAttach)?;
        let id = first.worker_id;
        self.roster.check_session(id, session.as_deref())?;
        self.roster.touch(id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (roster, rounds, lifecycle) = (self.roster.clone(), self.rounds.clone(), self.lifecycle.clone());
        tokio::spawn(async move {
            let mut beat = Some(first);
            let why = loop {
                if let Some(b) = beat.take() {
                    if b.worker_id != id {
                        break format!("its Attach call named worker {} after worker {id}", b.worker_id);
                    }
                    let member = roster.touch(id).is_ok();
                    let reply = proto::HeartbeatReply { member, shutdown: lifecycle.is_shutting_down() };
                    if tx.send(Ok(reply)).await.is_err() {
                        break "its Attach call was closed".to_string();
                    }
                    if !member {
                        return;
                    }
                }
                match inbound.message().await {
                    Ok(Some(b)) => beat = Some(b),
                    Ok(None) => break "it ended its Attach call".to_string(),
                    Err(e) => break format!("its connection broke: {}", e.message()),
                }
            };
            if !lifecycle.is_shutting_down() {
                crate::liveness::attach_ended(&roster, &rounds, id, &why).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type FetchStateStream = BoxStream<proto::StateChunk>;

    async fn fetch_state(&self, req: Request<proto::FetchStateRequest>) -> Result<Response<Self::FetchStateStream>, Status> {
        self.authorize(&req, req.get_ref().worker_id)?;
        let r = req.into_inner();
        self.roster.touch(r.worker_id)?;
        let snap = match proto::StateKind::try_from(r.kind) {
            // With the EMA: the replicas keep it (all but the star).
            Ok(proto::StateKind::Training) if self.run_config.train.dist.backend.replicas_keep_ema() => {
                self.snapshot(SnapshotKind::Replica).await?
            }
            Ok(proto::StateKind::Training) => self.snapshot(SnapshotKind::Training).await?,
            Ok(proto::StateKind::Ema) => self.snapshot(SnapshotKind::Ema).await?,
            Ok(proto::StateKind::Job) => {
                let p = self.pinned.get(r.job_id).ok_or(RpcError::NoPinnedWeights(r.job_id))?;
                Snapshot { step: p.step, adam_step: 0, tensors: vec![("weights".into(), p.weights.to_vec())] }
            }
            _ => return Err(RpcError::UnknownStateKind(r.kind).into()),
        };
        let header = proto::StateHeader {
            step: snap.step,
            adam_step: snap.adam_step,
            tensors: snap.tensors.iter().map(|(n, _)| n.clone()).collect(),
            elements: self.shadow.layout().total as u64,
            layout_hash: self.shadow.layout().hash(),
            ..Default::default()
        };
        Ok(Response::new(Box::pin(ReceiverStream::new(streams::state_stream(snap, header)))))
    }

    type NextWorkStream = BoxStream<proto::WorkMessage>;

    async fn next_work(&self, req: Request<proto::NextWorkRequest>) -> Result<Response<Self::NextWorkStream>, Status> {
        self.authorize(&req, req.get_ref().worker_id)?;
        let r = req.into_inner();
        let inbox = self.roster.report_idle(r.worker_id, r.applied_step, r.param_checksum)?;
        let work = inbox.lock().await.recv().await.ok_or_else(|| ending(&self.lifecycle))?;
        self.roster.delivered(r.worker_id);
        let messages = streams::work_messages(work);
        Ok(Response::new(Box::pin(tokio_stream::iter(messages.into_iter().map(Ok)))))
    }

    type ReduceGradientsStream = BoxStream<proto::ReducedMessage>;

    async fn feed_shadow(&self, req: Request<Streaming<proto::GradientMessage>>) -> Result<Response<proto::FeedShadowReply>, Status> {
        let (header, mut inbound) = self.gradient_stream(req).await?;
        let (worker, step, attempt) = (header.worker_id, header.step, header.attempt);
        // The member had the outcome before the loop registered the step.
        self.shadow.expecting(step, attempt, FEED_WAIT).await.map_err(RpcError::Feed)?;
        // Whether it is still feeding decides when its spare is asked for.
        let _open = self.shadow.open_feed(worker, step, attempt);
        let mut chunks = 0u32;
        while let Some(m) = inbound.next().await {
            match m? {
                proto::GradientMessage { kind: Some(gradient_message::Kind::Chunk(c)) } => {
                    self.telemetry.received_state(c.data.len() as u64);
                    self.shadow.offer(worker, step, attempt, &c).map_err(|e| {
                        tracing::warn!(worker, step, "refusing a chunk fed to the coordinator's copy of the state: {e}");
                        RpcError::Feed(e)
                    })?;
                    chunks += 1;
                }
                _ => return Err(RpcError::BadGradientStream("a feed carries chunks after its header".into()).into()),
            }
        }
        Ok(Response::new(proto::FeedShadowReply { chunks }))
    }

    async fn push_state(&self, req: Request<Streaming<proto::StateChunk>>) -> Result<Response<proto::PushStateReply>, Status> {
        let session = self.worker_session(&req)?;
        let mut inbound = req.into_inner();
        let (header, data) = uploads::first(&mut inbound).await?;
        let worker = header.worker_id;
        self.roster.check_session(worker, session.as_deref())?;
        self.roster.touch(worker)?;
        let got = uploads::read(&header, data, &mut inbound, self.shadow.layout()).await;
        if let Ok(u) = &got {
            self.telemetry.received_state(4 * 4 * u.params.len() as u64);
        }
        let offered = got.and_then(|state| Ok(self.shadow.offer_state(worker, state)?));
        if let Err(e) = offered {
            tracing::warn!(worker, step = header.step, "refusing an uploaded state: {e}");
            self.shadow.upload_failed(worker);
            return Err(e.into());
        }
        tracing::info!(worker, step = header.step, "the state of step {} arrived from worker {worker}", header.step);
        Ok(Response::new(proto::PushStateReply {}))
    }

    async fn report_shard(&self, req: Request<proto::ShardReport>) -> Result<Response<proto::ShardReportReply>, Status> {
        self.authorize(&req, req.get_ref().worker_id)?;
        let mut r = req.into_inner();
        let worker = r.worker_id;
        self.roster.touch(worker)?;
        // A peer's words go into the log: bounded.
        let mut keep = r.error.len().min(crate::limits::MAX_REPORT_CHARS);
        while !r.error.is_char_boundary(keep) {
            keep -= 1;
        }
        r.error.truncate(keep);
        let (step, index) = (r.step, r.index);
        self.shards.report(worker, r).map_err(|e| {
            tracing::warn!(worker, step, shard = index, "refusing a shard report: {e}");
            RpcError::Shard(e)
        })?;
        Ok(Response::new(proto::ShardReportReply {}))
    }

    async fn sync_from_peer(&self, req: Request<proto::PeerSyncRequest>) -> Result<Response<proto::PeerSyncReply>, Status> {
        self.authorize(&req, req.get_ref().worker_id)?;
        let worker = req.into_inner().worker_id;
        self.roster.touch(worker)?;
        let dist = &self.run_config.train.dist;
        if !dist.backend.replicas_keep_ema() {
            return Err(RpcError::NoPeerSync("the replicas keep no EMA with [dist] backend = \"coordinator\"").into());
        }
        // At a start nobody holds a state yet: waiting would only delay it.
        if !self.roster.others_hold_state(worker) {
            return Err(RpcError::NoPeerSync("no other replica holds a state yet").into());
        }
        let endpoint = self.roster.peer_endpoint(worker).filter(|e| !e.is_empty());
        let endpoint = endpoint.ok_or(RpcError::NoPeerSync("this worker has no peer listener (--peer-listen off)"))?;
        let wait = dist.step_timeout_s.max(1.0);
        let assigned = self.peer_syncs.wait_for(worker, endpoint);
        let a = match tokio::time::timeout(Duration::from_secs_f64(wait), assigned).await {
            Ok(Ok(a)) => a,
            // Replaced by a newer call of the same worker.
            Ok(Err(_)) => return Err(RpcError::NoPeerSync("a newer request of this worker replaced this one").into()),
            Err(_) => return Err(RpcError::NoPeerIdle(wait).into()),
        };
        tracing::info!(
            worker,
            from = a.from,
            step = a.step,
            "worker {worker} takes the state of step {} from worker {}, peer to peer",
            a.step,
            a.from
        );
        Ok(Response::new(proto::PeerSyncReply {
            step: a.step,
            from_worker: a.from,
            epoch: a.epoch,
            key: a.key.to_vec().into(),
            param_checksum: a.param_checksum.unwrap_or(0),
            timeout_s: wait.max(60.0),
        }))
    }

    async fn nccl_unique_id(&self, req: Request<proto::NcclIdRequest>) -> Result<Response<proto::NcclIdReply>, Status> {
        self.authorize(&req, req.get_ref().worker_id)?;
        let r = req.into_inner();
        self.roster.touch(r.worker_id)?;
        // Rank 0 offers (the board checks that it is rank 0); the others wait.
        let unique_id = if r.unique_id.is_empty() {
            self.nccl_ids.wait(r.worker_id, r.epoch).await
        } else {
            self.nccl_ids.offer(r.worker_id, r.epoch, r.unique_id.clone()).map(|()| r.unique_id)
        }
        .map_err(|e| {
            tracing::warn!(worker = r.worker_id, epoch = r.epoch, "NCCL unique id: {e}");
            RpcError::NcclId(e)
        })?;
        Ok(Response::new(proto::NcclIdReply { epoch: r.epoch, unique_id }))
    }

    async fn reduce_gradients(
        &self,
        req: Request<Streaming<proto::GradientMessage>>,
    ) -> Result<Response<Self::ReduceGradientsStream>, Status> {
        let (header, inbound) = self.gradient_stream(req).await?;
        self.roster.touch(header.worker_id)?;
        let round = self.rounds.join_target(header.worker_id, header.step)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let rank = match round.join(&header, tx) {
            Ok(rank) => rank,
            // A lying loss or norm is the member's fault: the step is redone without it.
            Err(e @ (RoundError::BadLoss { .. } | RoundError::BadNorms { .. })) => {
                tracing::warn!(worker = header.worker_id, step = header.step, "rejecting gradient: {e}");
                let failure = crate::round::RoundFailure::new(Some(header.worker_id), e.to_string());
                crate::round_slot::fail(&round, failure).await;
                return Err(RpcError::Round(e).into());
            }
            Err(e) => return Err(RpcError::Round(e).into()),
        };
        // Ring backend: the last header in lets the round screen every
        // member's chunk norms, and may complete it (then audited); a
        // failure ends the attempt (this stream, like the others, carries
        // why).
        let sends = round.after_join();
        if let Some(failure) = round.pending_failure() {
            gradients::log_failure(&failure, header.step);
            crate::round_slot::fail(&round, failure).await;
        }
        for (out, msg) in sends {
            let _ = out.send(Ok(msg)).await;
        }
        tokio::spawn(gradients::pump(round, rank, header.worker_id, inbound));
        let out = ReceiverStream::new(rx).map(|m: Result<proto::ReducedMessage, RoundError>| m.map_err(Status::from));
        Ok(Response::new(Box::pin(out)))
    }

    async fn submit_result(&self, req: Request<Streaming<proto::ResultMessage>>) -> Result<Response<proto::SubmitResultReply>, Status> {
        let session = self.worker_session(&req)?;
        let mut inbound = req.into_inner();
        let header = match inbound.next().await {
            Some(Ok(proto::ResultMessage { kind: Some(result_message::Kind::Header(h)) })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(RpcError::BadResult("the first result message must be the header".into()).into()),
        };
        self.roster.check_session(header.worker_id, session.as_deref())?;
        self.roster.touch(header.worker_id)?;
        if !self.results.is_open(header.job_id) {
            return Err(RpcError::UnknownJob(header.job_id).into());
        }
        let part = if header.error.is_empty() {
            results::read_parts(&header, &mut inbound).await?
        } else {
            ResultPart { error: header.error.clone(), ..ResultPart::new(&header) }
        };
        self.results.deliver(header.job_id, part).map_err(|e| RpcError::NotCollecting(e.0))?;
        Ok(Response::new(proto::SubmitResultReply {}))
    }

    async fn get_status(&self, _req: Request<proto::StatusRequest>) -> Result<Response<proto::StatusReply>, Status> {
        let s = self.status.get();
        Ok(Response::new(proto::StatusReply {
            step: s.step,
            total_steps: self.run_config.train.train.steps,
            loss: s.loss,
            images_per_s: s.images_per_s,
            members: self.roster.status(),
            skipped_steps: s.skipped_steps,
            phase: self.lifecycle.phase().as_str().into(),
            last_checkpoint_step: s.last_checkpoint,
            unsaved_steps: s.unsaved_steps(),
            checkpoint_error: s.checkpoint_error.clone().unwrap_or_default(),
            resumed_from: s.resumed_from,
            elapsed_s: s.elapsed_s,
            eta_s: s.eta_s(self.run_config.train.train.steps).unwrap_or(-1.0),
            run: self.run_url.clone(),
            grad_norm: s.last.as_ref().map_or(0.0, |m| m.grad_norm),
            lr: s.last.as_ref().map_or(0.0, |m| m.lr),
            workers_expected: self.workers_expected as u32,
            checkpoint_steps: s.checkpoints.clone(),
            reduction: self.run_config.train.dist.backend.name().into(),
            shadow_step: self.shadow.steps().0,
            shadow_error: self.shadow.broken().map(|e| e.to_string()).unwrap_or_default(),
            shadow_off: self.shadow.is_off(),
        }))
    }
}

impl CoordService {
    /// The session secret of a worker's call (whose worker id is in a
    /// message still to be read); a user's call is refused.
    fn worker_session<T>(&self, req: &Request<T>) -> Result<Option<String>, RpcError> {
        if access::caller_of(req) == access::Caller::User {
            return Err(RpcError::NotAWorker);
        }
        Ok(auth::session(req).map(str::to_string))
    }

    /// A call of worker `id`: a worker's token (or an open run) and `id`'s session secret.
    fn authorize<T>(&self, req: &Request<T>, id: u64) -> Result<(), RpcError> {
        let session = self.worker_session(req)?;
        Ok(self.roster.check_session(id, session.as_deref())?)
    }

    /// A worker's gradient stream (`ReduceGradients`, `FeedShadow`): its
    /// header, from the worker whose session the call carries, and the rest.
    async fn gradient_stream(
        &self,
        req: Request<Streaming<proto::GradientMessage>>,
    ) -> Result<(proto::GradientHeader, Streaming<proto::GradientMessage>), Status> {
        let session = self.worker_session(&req)?;
        let mut inbound = req.into_inner();
        let header = match inbound.next().await {
            Some(Ok(proto::GradientMessage { kind: Some(gradient_message::Kind::Header(h)) })) => h,
            Some(Ok(_)) => return Err(RpcError::BadGradientStream("the first gradient message must be the header".into()).into()),
            Some(Err(e)) => return Err(e),
            None => return Err(RpcError::BadGradientStream("empty gradient stream".into()).into()),
        };
        self.roster.check_session(header.worker_id, session.as_deref())?;
        Ok((header, inbound))
    }

    /// A snapshot at the run's last committed step (the shadow catches up
    /// first; joiners and resyncs are waited for before the next step).
    async fn snapshot(&self, kind: SnapshotKind) -> Result<Snapshot, RpcError> {
        self.shadow.snapshot_latest(kind).await.map_err(|e| RpcError::Internal(e.to_string()))
    }
}

/// Why a worker's call finds the coordinator going: the run is over (the
/// worker exits), or the coordinator stops before its end (it reconnects).
fn ending(lifecycle: &crate::lifecycle::Lifecycle) -> RpcError {
    if lifecycle.run_finished() {
        RpcError::RunOver
    } else {
        RpcError::Stopping
    }
}
