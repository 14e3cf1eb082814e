//! One membership of the run: register, build (or reuse) the model, report
//! ready, then the work loop (ask for work, dispatch it, repeat) with
//! heartbeats on the side, until the coordinator drops this worker or the
//! run ends. Every failed coordinator call ends up in [`on_error`], which
//! acts on its directive (`directive.rs`).
//!
//! Over 450 lines and still one concept: one membership's life, whose work
//! loop dispatches every kind of work message in one match; each arm
//! calls the file that does the work (`training.rs`, `upload.rs`,
//! `shard.rs`, `peer_state.rs`, `tasks/`), and what grows goes there.

use std::time::Duration;

use bytes::Bytes;
use ddpm::config::RunConfig;
use ddpm::proto::{self, work_message};
use ddpm::wire::{self, auth::Credentials, WorkerRole};
use tokio_stream::StreamExt;
use tonic::Streaming;

use crate::client::Client;
use crate::device::DeviceHandle;
use crate::directive::{CallError, CallResult, Directed, Flow};
use crate::exchange::CoordinatorExchange;
use crate::nccl_exchange::{NcclExchange, NcclLink};
use crate::options::WorkerOptions;
use crate::ring_exchange::RingExchange;
use crate::spares::Spares;
use crate::tasks::context::Tasks;
use crate::training::{self, StepEnd};

/// How a worker session ended.
#[derive(Debug, PartialEq)]
pub enum SessionEnd {
    /// The run is over.
    Shutdown,
    /// The coordinator dropped this worker: register again.
    Dropped(String),
    /// The connection to the coordinator broke (it died, or restarts):
    /// reconnect and register again.
    Lost(String),
    /// The connection broke before this worker had joined (a coordinator
    /// still starting, or one that refuses this worker's connection, such
    /// as a TLS client certificate it does not accept): retried, but only
    /// for `--connect-timeout`.
    NotJoined(String),
}

/// What the session does after a piece of work.
#[derive(Debug, PartialEq)]
enum Next {
    /// Ask for the next work.
    Work,
    End(SessionEnd),
}

/// Where a call failed: "next work" means something in the work loop only.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Registering, reporting ready, the first state download.
    Joining,
    Working,
}

/// What the session does after a failed call: the directive's flow, or the
/// fault the worker exits with.
fn on_error(e: CallError, phase: Phase) -> anyhow::Result<Next> {
    match e {
        CallError::Directed { flow: Flow::Rejoin, context, reason } => Ok(Next::End(SessionEnd::Dropped(format!("{context}: {reason}")))),
        CallError::Directed { flow: Flow::Stop, context, reason } => {
            tracing::info!("the run is over ({context}: {reason}); exiting");
            Ok(Next::End(SessionEnd::Shutdown))
        }
        CallError::Directed { flow: Flow::NextWork, context, reason } if phase == Phase::Working => {
            tracing::info!("{context}: no longer wanted ({reason}); asking for the next work");
            Ok(Next::Work)
        }
        CallError::Directed { flow: Flow::NextWork, context, reason } => {
            // Nothing to go on to before this worker has joined.
            anyhow::bail!("{context}: {reason} (the coordinator said to go on to the next work while this worker was joining)")
        }
        CallError::Lost { context, detail } if phase == Phase::Joining => {
            Ok(Next::End(SessionEnd::NotJoined(format!("{context}: {detail}"))))
        }
        CallError::Lost { context, detail } => Ok(Next::End(SessionEnd::Lost(format!("{context}: {detail}")))),
        CallError::Fault(e) => Err(e),
    }
}

/// One membership: register, build (or reuse) the model, work until
/// dropped or done. `held_step`: the training step whose state `device`
/// holds from earlier memberships (0: none), updated when this one ends.
pub async fn session(
    mut client: Client,
    credentials: &Credentials,
    opts: &WorkerOptions,
    device: &mut Option<(String, DeviceHandle)>,
    held_step: &mut u64,
) -> anyhow::Result<SessionEnd> {
    let joined = match join(&mut client, credentials, opts, device, *held_step).await {
        Ok(joined) => joined,
        Err(e) => return end(on_error(e, Phase::Joining)?),
    };
    let dev = &device.as_ref().expect("join builds the device").1;
    let heartbeat = tokio::spawn(heartbeats(client.clone(), joined.id, joined.heartbeat));
    let spares = Spares::new(joined.run.train.dist.shadow_lag);
    let mut work = Work {
        client,
        id: joined.id,
        run: joined.run,
        dev,
        role: opts.role,
        applied: 0,
        checksum: 0,
        loaded_job: None,
        stats: opts.stats.clone(),
        peers: opts.peers.clone(),
        nccl: joined.nccl.map(NcclLink::new),
        keep: joined.keep,
        spares,
    };
    let result = work.run().await;
    heartbeat.abort();
    *held_step = if opts.role == WorkerRole::Train { work.applied } else { 0 };
    result
}

/// A `Next` where only an end can be: joining either works or ends the session.
fn end(next: Next) -> anyhow::Result<SessionEnd> {
    match next {
        Next::End(end) => Ok(end),
        Next::Work => unreachable!("on_error goes on to the next work only while working"),
    }
}

struct Joined {
    id: u64,
    run: RunConfig,
    heartbeat: Duration,
    /// The NCCL this worker reduces with when a step's plan says so.
    nccl: Option<ddpm::nccl::Nccl>,
    /// The step of the device's state, kept instead of fetched: the
    /// coordinator said so (ReadyReply's keep_state).
    keep: Option<u64>,
}

/// Registers, builds the model (or reuses the device's, for the same run
/// config), and proves it is the run's model.
async fn join(
    client: &mut Client,
    credentials: &Credentials,
    opts: &WorkerOptions,
    device: &mut Option<(String, DeviceHandle)>,
    held_step: u64,
) -> CallResult<Joined> {
    let reply = client
        .register(proto::RegisterRequest {
            protocol_version: wire::PROTOCOL_VERSION,
            name: opts.name.clone(),
            device: format!("{:?}", opts.device),
            version: env!("CARGO_PKG_VERSION").into(),
            role: opts.role.as_str().into(),
            peer_endpoint: opts.peers.as_ref().map(|p| p.endpoint().to_string()).unwrap_or_default(),
        })
        .await
        .directed("registration refused")?
        .into_inner();
    let id = reply.worker_id;
    // Every later call of this membership proves it is worker `id`.
    credentials.set_session(&reply.session_secret);
    let run: RunConfig = serde_json::from_str(&reply.run_config_json)
        .map_err(|e| anyhow::anyhow!("the coordinator sent a run config this worker cannot read: {e}"))?;
    // Before the model is built or the worker counts as ready: the run's
    // backend may need what this worker lacks (a GPU, libnccl.so.2).
    let nccl = crate::nccl_check::check(run.train.dist.backend, opts.role, opts.device)?;
    // Same run config, run id included: the device's state is this run's.
    let reused = device.as_ref().is_some_and(|(json, _)| *json == reply.run_config_json);
    let offered = if reused && opts.role == WorkerRole::Train && run.train.dist.backend.replicas_keep_ema() { held_step } else { 0 };
    let dev = match device.take() {
        Some((json, handle)) if json == reply.run_config_json => (json, handle),
        _ => {
            tracing::info!(device = ?opts.device, params = run.param_count, "building the model");
            let handle = tokio::task::block_in_place(|| DeviceHandle::start(run.clone(), opts.device))?;
            (reply.run_config_json.clone(), handle)
        }
    };
    let dev = &device.insert(dev).1;
    let ready = proto::ReadyRequest {
        worker_id: id,
        layout_hash: dev.layout_hash,
        param_count: dev.param_count,
        held_step: offered,
        nccl: nccl.is_some(),
    };
    let answer = client.ready(ready).await.directed("the coordinator refused this worker")?.into_inner();
    tracing::info!(worker = id, coord = %opts.coord, "joined the run");
    opts.stats.set_member(Some(id)).await;
    let keep = (answer.keep_state && offered > 0).then_some(offered);
    Ok(Joined { id, run, heartbeat: Duration::from_secs_f64(reply.heartbeat_interval_s), nccl, keep })
}

/// Liveness, on the side of the work: one Attach call for the whole
/// membership, a beat every `every`. The coordinator drops this worker the
/// moment the call ends (the process died, the connection broke). A failed
/// call is not acted on here: the next work call finds out what the
/// coordinator thinks.
async fn heartbeats(mut client: Client, id: u64, every: Duration) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    if tx.send(proto::HeartbeatRequest { worker_id: id }).await.is_err() {
        return;
    }
    let mut replies = match client.attach(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return tracing::debug!("attach failed: {}", e.message()),
    };
    loop {
        match replies.next().await {
            Some(Ok(r)) if !r.member => return,
            Some(Ok(_)) => {}
            Some(Err(e)) => return tracing::debug!("attach ended: {}", e.message()),
            None => return,
        }
        tokio::time::sleep(every).await;
        if tx.send(proto::HeartbeatRequest { worker_id: id }).await.is_err() {
            return;
        }
    }
}

/// The work loop of a joined worker.
struct Work<'a> {
    client: Client,
    id: u64,
    run: RunConfig,
    dev: &'a DeviceHandle,
    role: WorkerRole,
    /// The last training step applied (0 before any).
    applied: u64,
    /// The parameter checksum to report with the next request (0: none asked).
    checksum: u64,
    /// The job whose pinned weights the device holds.
    loaded_job: Option<u64>,
    stats: std::sync::Arc<crate::telemetry::WorkerStats>,
    peers: Option<std::sync::Arc<ddpm::ring::PeerListener>>,
    /// The NCCL backend's library and communicator, kept from step to step.
    nccl: Option<NcclLink>,
    /// The step of the device's state to keep at the start, not fetch.
    keep: Option<u64>,
    /// The successor's reduced chunks of the last steps (the shadow on).
    spares: Spares,
}

impl Work<'_> {
    async fn run(&mut self) -> anyhow::Result<SessionEnd> {
        // An eval worker never trains: it needs no training state.
        if let Some(step) = self.keep.take() {
            // Its step and checksum go with the first NextWork: the
            // coordinator goes on from it, or resyncs this worker.
            self.applied = step;
            self.checksum = self.dev.checksum().await?;
            tracing::info!(step, "keeping the training state of step {step} this device holds, as the coordinator asked");
        } else if self.role == WorkerRole::Train {
            match training::fetch_training_state(&mut self.client, self.id, self.dev, self.peers.as_deref()).await {
                Ok(step) => self.applied = step,
                Err(e) => return end(on_error(e, Phase::Joining)?),
            }
        }
        loop {
            let next = match self.next().await {
                Ok(next) => next,
                Err(e) => on_error(e, Phase::Working)?,
            };
            if let Next::End(end) = next {
                return Ok(end);
            }
        }
    }

    /// Asks for the next work and does it.
    async fn next(&mut self) -> CallResult<Next> {
        let req = proto::NextWorkRequest { worker_id: self.id, applied_step: self.applied, param_checksum: self.checksum };
        // A checksum is reported once, right after the step that asked for it.
        self.checksum = 0;
        let mut stream = self.client.next_work(req).await.directed("asking for work")?.into_inner();
        let first = match stream.next().await {
            Some(m) => m.directed("receiving work")?.kind,
            None => return Err(anyhow::anyhow!("the coordinator sent an empty work stream").into()),
        };
        match first {
            Some(work_message::Kind::Train(a)) => {
                let samples: Vec<(u64, Bytes)> =
                    samples(&mut stream, "a training assignment").await?.into_iter().map(|s| (s.position, s.data)).collect();
                if samples.len() != a.shard_size as usize {
                    return Err(anyhow::anyhow!(
                        "shard of step {} has {} samples, the assignment says {}",
                        a.step,
                        samples.len(),
                        a.shard_size
                    )
                    .into());
                }
                self.train(&a, samples).await
            }
            Some(work_message::Kind::Sample(a)) => {
                self.tasks().sample(&a).await?;
                self.stats.task_done();
                Ok(Next::Work)
            }
            Some(work_message::Kind::Eval(a)) => {
                let encoded = samples(&mut stream, "an evaluation task").await?;
                self.tasks().eval(&a, encoded).await?;
                self.stats.task_done();
                Ok(Next::Work)
            }
            Some(work_message::Kind::Analysis(a)) => {
                let encoded = samples(&mut stream, "an analysis task").await?;
                self.tasks().analysis(&a, encoded).await?;
                self.stats.task_done();
                Ok(Next::Work)
            }
            Some(work_message::Kind::Resync(r)) if self.role == WorkerRole::Eval => {
                tracing::warn!(reason = %r.reason, "an eval worker holds no training state; ignoring a resync");
                Ok(Next::Work)
            }
            Some(work_message::Kind::Resync(r)) => {
                tracing::info!(reason = %r.reason, "fetching the training state again");
                self.applied = training::fetch_training_state(&mut self.client, self.id, self.dev, self.peers.as_deref()).await?;
                Ok(Next::Work)
            }
            Some(work_message::Kind::UploadState(u)) => {
                crate::upload::upload_state(&self.client, self.id, self.dev, u.step).await?;
                Ok(Next::Work)
            }
            Some(work_message::Kind::SendState(s)) => {
                crate::peer_state::send_state(self.id, self.dev, s).await?;
                Ok(Next::Work)
            }
            Some(work_message::Kind::FeedSpare(f)) => {
                self.feed_spare(f);
                Ok(Next::Work)
            }
            Some(work_message::Kind::WriteShard(w)) => {
                crate::shard::write_shard(&self.client, self.id, self.dev, w).await?;
                Ok(Next::Work)
            }
            Some(work_message::Kind::Shutdown(s)) if s.finished => {
                tracing::info!(reason = %s.reason, "the coordinator ended the run");
                Ok(Next::End(SessionEnd::Shutdown))
            }
            Some(work_message::Kind::Shutdown(s)) => Ok(Next::End(SessionEnd::Lost(format!("the coordinator stops: {}", s.reason)))),
            Some(work_message::Kind::Samples(_)) | None => Err(anyhow::anyhow!("work stream did not start with an assignment").into()),
        }
    }

    /// One training step through the backend the assignment names: the
    /// coordinator's all-reduce, the ring its plan describes, or NCCL.
    async fn train(&mut self, a: &proto::TrainAssignment, samples: Vec<(u64, Bytes)>) -> CallResult<Next> {
        let started = std::time::Instant::now();
        let ended = match (&a.ring, &self.peers) {
            _ if a.nccl.is_some() => {
                let link = self.nccl.as_mut().ok_or_else(|| {
                    anyhow::anyhow!("the coordinator sent an NCCL plan, but this worker loaded no NCCL when it joined (a CPU worker)")
                })?;
                let spares = &mut self.spares;
                let mut exchange = NcclExchange { client: &mut self.client, worker_id: self.id, dev: self.dev, link, spares };
                let ended = training::train_step(&mut exchange, self.dev, a, samples).await?;
                self.stats.reduced_by("nccl", None);
                ended
            }
            (None, _) => {
                let mut exchange = CoordinatorExchange { client: &mut self.client, worker_id: self.id };
                let ended = training::train_step(&mut exchange, self.dev, a, samples).await?;
                self.stats.reduced_by("coordinator", None);
                ended
            }
            (Some(_), Some(peers)) => {
                let spares = &mut self.spares;
                let mut exchange = RingExchange { client: &mut self.client, worker_id: self.id, peers, ring_s: 0.0, spares };
                let ended = training::train_step(&mut exchange, self.dev, a, samples).await?;
                self.stats.reduced_by("ring", Some((exchange.ring_s, peers.last_links())));
                ended
            }
            (Some(_), None) => {
                return Err(
                    anyhow::anyhow!("the coordinator sent a ring plan, but this worker has no peer listener (--peer-listen off)").into()
                )
            }
        };
        match ended {
            StepEnd::Applied { compute_s } => {
                let bytes =
                    self.dev.param_count * ddpm::config::GradDtype::from_proto(a.grad_dtype).map_or(4, |d| d.bytes_per_element() as u64);
                self.stats.step_applied(a.step, compute_s, started.elapsed().as_secs_f64(), bytes);
                self.applied = a.step;
                // Conservative, as before: a job task after training
                // fetches its job's weights afresh (one download).
                self.loaded_job = None;
                if a.checksum_requested {
                    self.checksum = self.dev.checksum().await?;
                }
                Ok(Next::Work)
            }
            StepEnd::Abandoned(reason) => {
                self.stats.step_abandoned();
                tracing::info!(step = a.step, "step abandoned: {reason}");
                Ok(Next::Work)
            }
            StepEnd::Rejected(reason) => {
                tracing::error!("the coordinator rejected this worker's gradient: {reason}");
                Ok(Next::End(SessionEnd::Dropped(reason)))
            }
            StepEnd::RunOver(reason) => {
                tracing::info!(step = a.step, "the run is over ({reason}); exiting");
                Ok(Next::End(SessionEnd::Shutdown))
            }
            StepEnd::Lost(reason) => Ok(Next::End(SessionEnd::Lost(reason))),
        }
    }

    /// Feeds the coordinator's copy the spare it asked for, in the
    /// background; one no longer kept is not an error here: the
    /// coordinator gives the step up after its timeout.
    fn feed_spare(&mut self, f: proto::FeedSpare) {
        match self.spares.take(f.step, f.attempt) {
            Some((header, chunks)) => {
                tracing::info!(step = f.step, "feeding the coordinator's copy the successor's part of step {} (asked for)", f.step);
                tokio::spawn(crate::ring_exchange::feed_shadow(self.client.clone(), header, chunks));
            }
            None => tracing::warn!(
                step = f.step,
                attempt = f.attempt,
                "asked for the spare of step {}, which this worker no longer keeps",
                f.step
            ),
        }
    }

    fn tasks(&mut self) -> Tasks<'_> {
        Tasks { client: &mut self.client, worker_id: self.id, run: &self.run, dev: self.dev, loaded_job: &mut self.loaded_job }
    }
}

/// The samples that follow an assignment in its work stream (`what`, for
/// the error of a stream that carries anything else).
async fn samples(stream: &mut Streaming<proto::WorkMessage>, what: &str) -> CallResult<Vec<proto::Sample>> {
    let mut out = Vec::new();
    while let Some(m) = stream.next().await {
        match m.directed("receiving work")?.kind {
            Some(work_message::Kind::Samples(b)) => out.extend(b.samples),
            other => return Err(anyhow::anyhow!("unexpected message in {what}: {other:?}").into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directed(flow: Flow) -> CallError {
        CallError::Directed { flow, context: "asking for work".into(), reason: "unknown worker id 3".into() }
    }

    #[test]
    fn directives_end_or_continue_the_session() {
        for phase in [Phase::Joining, Phase::Working] {
            assert_eq!(
                on_error(directed(Flow::Rejoin), phase).unwrap(),
                Next::End(SessionEnd::Dropped("asking for work: unknown worker id 3".into()))
            );
            assert_eq!(on_error(directed(Flow::Stop), phase).unwrap(), Next::End(SessionEnd::Shutdown));
        }
        assert_eq!(on_error(directed(Flow::NextWork), Phase::Working).unwrap(), Next::Work);
        assert!(on_error(directed(Flow::NextWork), Phase::Joining).is_err());
        let fault = on_error(CallError::Fault(anyhow::anyhow!("registration refused: wrong version")), Phase::Joining);
        assert_eq!(fault.unwrap_err().to_string(), "registration refused: wrong version");
    }

    #[test]
    fn a_registration_refused_because_the_run_is_over_ends_cleanly() {
        let s = ddpm::wire::directive::status(tonic::Code::Unavailable, "the run is over", proto::WorkerAction::Stop);
        let s = tonic::Status::with_details(s.code(), s.message(), s.details().to_vec().into());
        let r: Result<(), _> = Err(s);
        let e = r.directed("registration refused").unwrap_err();
        assert_eq!(end(on_error(e, Phase::Joining).unwrap()).unwrap(), SessionEnd::Shutdown);
    }
}
