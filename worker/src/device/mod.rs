//! The thread that owns the worker's device: the model, Adam's moments and
//! every tensor live here and nowhere else (tch tensors are `Send` but not
//! `Sync`); the async side sends it bytes and gets bytes back.
//!
//! - `mod.rs`: the commands, the thread's loop and [`DeviceHandle`], the
//!   async side's way to send them
//! - `messages.rs`: what the commands carry to the thread and back
//! - `work.rs`: what each command does on the thread
//! - `nccl.rs`: what the NCCL backend's commands do on the thread
//! - `error.rs`: [`DeviceError`], why a command failed

pub mod error;
pub mod messages;
mod nccl;
mod work;

use bytes::Bytes;
use ddpm::config::RunConfig;
use ddpm::diffusion::GaussianDiffusion;
use ddpm::eval::InceptionModel;
use ddpm::nccl::{Comm, CommWatch, Nccl, UniqueId};
use ddpm::train::flat::{self, FlatModel};
use ddpm::train::sample::{self, SampleRequest};
use ddpm::train::{Outcome, TrainState};
use tch::{Device, Tensor};
use tokio::sync::{mpsc, oneshot};

use error::DeviceError;
use messages::{AnalysisTask, Computed, EvalOutput, EvalTask, TrainingState};

type Reply<T> = oneshot::Sender<Result<T, DeviceError>>;

enum Cmd {
    Load(TrainingState, Reply<()>),
    Compute {
        step: u64,
        samples: Vec<(u64, Bytes)>,
        reply: Reply<Computed>,
    },
    Apply {
        step: u64,
        grad: Vec<f32>,
        outcome: Outcome,
        reply: Reply<()>,
    },
    Checksum(Reply<u64>),
    /// The replica's whole state with its EMA on the host, and the
    /// parameters' checksum (a worker-to-worker backend).
    Export(Reply<(TrainingState, u64)>),
    /// Values `start..end` of the replica's state and EMA on the host
    /// (its shard of a sharded checkpoint), copied beside the next step.
    ExportRange {
        start: usize,
        end: usize,
        reply: Reply<TrainingState>,
    },
    /// Joins an NCCL communicator (replacing the last one).
    NcclJoin {
        nccl: Nccl,
        id: UniqueId,
        rank: usize,
        size: usize,
        reply: Reply<CommWatch>,
    },
    /// The NCCL all-reduce of a step's gradient, pre-scaled by `weight`.
    NcclAllReduce {
        grad: Vec<f32>,
        weight: f32,
        reply: Reply<Vec<f32>>,
    },
    /// Draws images; `weights` replaces the sampling weights (None: keep
    /// those of the previous task).
    Sample {
        weights: Option<Vec<f32>>,
        req: SampleRequest,
        reply: Reply<Vec<u8>>,
    },
    /// Measures images (drawn or given) for an evaluation job; `weights` as
    /// for `Sample`.
    Eval {
        weights: Option<Vec<f32>>,
        task: EvalTask,
        reply: Reply<EvalOutput>,
    },
    /// Draws an analysis task's images; `weights` as for `Sample`.
    Analysis {
        weights: Option<Vec<f32>>,
        task: AnalysisTask,
        reply: Reply<Vec<u8>>,
    },
}

/// Handle on the device thread.
pub struct DeviceHandle {
    tx: mpsc::Sender<Cmd>,
    pub param_count: u64,
    pub layout_hash: u64,
}

/// What the thread holds between commands.
struct Thread {
    run: RunConfig,
    device: Device,
    state: TrainState,
    /// The sampling model (a job's pinned weights, usually the EMA).
    ema: FlatModel,
    /// A worker-to-worker backend's replica: its own EMA of its
    /// parameters (the run's state without the coordinator's copy), and
    /// its work buffer.
    replica_ema: Option<(Tensor, Tensor)>,
    diffusion: GaussianDiffusion,
    /// The feature network of the last evaluation task, by path.
    inception: Option<InceptionModel>,
    /// The last applied gradient's host buffer, reused for the next
    /// computed one (no fresh 143 MB a step).
    spare: Vec<f32>,
    /// The NCCL backend's communicator of the current epoch.
    comm: Option<Comm>,
    /// A checkpoint shard's host copy running beside the next step: joined
    /// before anything writes the state.
    snapshot: Option<std::thread::JoinHandle<()>>,
}

impl Thread {
    fn init(run: RunConfig, device: Device) -> Result<Self, DeviceError> {
        let state = TrainState::init(&run.train, device).map_err(DeviceError::Model)?;
        let ema = FlatModel::new(&run.train.model, device).map_err(DeviceError::Model)?;
        let diffusion = GaussianDiffusion::new(&run.train.diffusion).map_err(DeviceError::Diffusion)?;
        Ok(Self { run, device, state, ema, replica_ema: None, diffusion, inception: None, spare: Vec::new(), comm: None, snapshot: None })
    }

    /// Waits for a shard's host copy still reading the state, before the
    /// state is written; says how long the step loop waited for it.
    fn settle_snapshot(&mut self) {
        let Some(copy) = self.snapshot.take() else { return };
        let started = std::time::Instant::now();
        let _ = copy.join();
        let waited_ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::info!(waited_ms, "the checkpoint shard's copy held this update {waited_ms:.1} ms");
    }

    fn serve(&mut self, mut rx: mpsc::Receiver<Cmd>) {
        // A dropped reply receiver is a caller that gave up: nothing to tell.
        while let Some(cmd) = rx.blocking_recv() {
            match cmd {
                Cmd::Load(mut s, reply) => {
                    self.settle_snapshot();
                    let ema = s.ema.take();
                    let r = work::load(&mut self.state, &self.run, s).and_then(|()| {
                        self.replica_ema = work::replica_ema(ema, &self.state)?;
                        Ok(())
                    });
                    let _ = reply.send(r);
                }
                Cmd::Compute { step, samples, reply } => {
                    let into = std::mem::take(&mut self.spare);
                    let _ = reply.send(work::compute(&mut self.state, &self.diffusion, &self.run, step, samples, into));
                }
                Cmd::Apply { step, grad, outcome, reply } => {
                    self.settle_snapshot();
                    let want = self.state.model.layout.total;
                    let r = if grad.len() != want {
                        Err(DeviceError::GradientSize { got: grad.len(), want })
                    } else {
                        let mut g = self.state.model.load_grad(&grad);
                        self.state.apply(&self.run.train, step, &mut g, &outcome);
                        work::alter_params_if_asked(&mut self.state, step);
                        if let (Some((ema, scratch)), true) = (self.replica_ema.as_mut(), outcome.apply) {
                            ddpm::train::optim::ema_update(ema, &self.state.model.flat, self.run.train.train.ema_decay, scratch);
                        }
                        self.spare = grad;
                        Ok(())
                    };
                    let _ = reply.send(r);
                }
                Cmd::NcclJoin { nccl, id, rank, size, reply } => {
                    let _ = reply.send(nccl::join(&mut self.comm, self.device, &nccl, &id, rank, size));
                }
                Cmd::NcclAllReduce { grad, weight, reply } => {
                    let _ = reply.send(nccl::all_reduce(self.comm.as_ref(), self.device, grad, weight));
                }
                Cmd::Checksum(reply) => {
                    let _ = reply.send(Ok(flat::checksum(&self.state.model.flat)));
                }
                Cmd::Export(reply) => {
                    let _ = reply.send(work::export(&self.state, self.replica_ema.as_ref().map(|(e, _)| e)));
                }
                Cmd::ExportRange { start, end, reply } => {
                    self.settle_snapshot();
                    match work::RangeViews::of(&self.state, self.replica_ema.as_ref().map(|(e, _)| e), start, end) {
                        Ok(views) => self.snapshot = Some(std::thread::spawn(move || drop(reply.send(Ok(views.copy()))))),
                        Err(e) => drop(reply.send(Err(e))),
                    }
                }
                Cmd::Sample { weights, req, reply } => {
                    let r = work::load_weights(&mut self.ema, weights).and_then(|()| {
                        sample::sample_images(&self.ema.unet, &self.diffusion, &req, self.device, &mut |_, _| {})
                            .map_err(DeviceError::Sample)
                    });
                    let _ = reply.send(r);
                }
                Cmd::Analysis { weights, task, reply } => {
                    let r = work::load_weights(&mut self.ema, weights)
                        .and_then(|()| work::analyse(&self.ema, &self.diffusion, task, self.device));
                    let _ = reply.send(r);
                }
                Cmd::Eval { weights, task, reply } => {
                    let r = work::load_weights(&mut self.ema, weights)
                        .and_then(|()| work::evaluate(&self.ema, &self.diffusion, &self.run, task, &mut self.inception, self.device));
                    let _ = reply.send(r);
                }
            }
        }
    }
}

impl DeviceHandle {
    /// Builds the run's model on `device` in a new thread.
    pub fn start(run: RunConfig, device: Device) -> Result<Self, DeviceError> {
        let (tx, rx) = mpsc::channel::<Cmd>(4);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("device-{device:?}"))
            .spawn(move || match Thread::init(run, device) {
                Ok(mut thread) => {
                    let layout = &thread.state.model.layout;
                    let _ = ready_tx.send(Ok((layout.total as u64, layout.hash())));
                    thread.serve(rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(DeviceError::Spawn)?;
        let (param_count, layout_hash) = ready_rx.recv().map_err(|_| DeviceError::DiedStarting)??;
        Ok(Self { tx, param_count, layout_hash })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, DeviceError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| DeviceError::Stopped)?;
        rx.await.map_err(|_| DeviceError::Stopped)?
    }

    pub async fn load(&self, s: TrainingState) -> Result<(), DeviceError> {
        self.call(|r| Cmd::Load(s, r)).await
    }

    pub async fn compute(&self, step: u64, samples: Vec<(u64, Bytes)>) -> Result<Computed, DeviceError> {
        self.call(|reply| Cmd::Compute { step, samples, reply }).await
    }

    pub async fn apply(&self, step: u64, grad: Vec<f32>, outcome: Outcome) -> Result<(), DeviceError> {
        self.call(|reply| Cmd::Apply { step, grad, outcome, reply }).await
    }

    pub async fn nccl_join(&self, nccl: Nccl, id: UniqueId, rank: usize, size: usize) -> Result<CommWatch, DeviceError> {
        self.call(|reply| Cmd::NcclJoin { nccl, id, rank, size, reply }).await
    }

    pub async fn nccl_all_reduce(&self, grad: Vec<f32>, weight: f32) -> Result<Vec<f32>, DeviceError> {
        self.call(|reply| Cmd::NcclAllReduce { grad, weight, reply }).await
    }

    pub async fn checksum(&self) -> Result<u64, DeviceError> {
        self.call(Cmd::Checksum).await
    }

    /// The replica's state with its EMA, and its parameters' checksum.
    pub async fn export(&self) -> Result<(TrainingState, u64), DeviceError> {
        self.call(Cmd::Export).await
    }

    /// Values `start..end` of the replica's state with its EMA, copied to
    /// the host as of the last command before this one (the copy runs
    /// beside the next step's forward and backward; only the update after
    /// it waits for it).
    pub async fn export_range(&self, start: usize, end: usize) -> Result<TrainingState, DeviceError> {
        self.call(|reply| Cmd::ExportRange { start, end, reply }).await
    }

    pub async fn sample(&self, weights: Option<Vec<f32>>, req: SampleRequest) -> Result<Vec<u8>, DeviceError> {
        self.call(|reply| Cmd::Sample { weights, req, reply }).await
    }

    pub async fn eval(&self, weights: Option<Vec<f32>>, task: EvalTask) -> Result<EvalOutput, DeviceError> {
        self.call(|reply| Cmd::Eval { weights, task, reply }).await
    }

    pub async fn analysis(&self, weights: Option<Vec<f32>>, task: AnalysisTask) -> Result<Vec<u8>, DeviceError> {
        self.call(|reply| Cmd::Analysis { weights, task, reply }).await
    }
}
