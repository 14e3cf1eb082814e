//! The coordinator's copy of the run state, owned by one OS thread.
//!
//! The coordinator is the source of truth for the run: it applies every
//! reduced gradient to its own CPU copy of the parameters with the same
//! optimizer code as the workers (off the step's critical path), keeps the
//! EMA from it, answers checksums, snapshots for joining workers, and
//! captures checkpoints. Tensors never leave this thread; async code talks
//! to it through a bounded channel, which also stops it from falling behind
//! unboundedly.

use ddpm::checkpoint::CheckpointData;
use ddpm::config::TrainConfig;
use ddpm::train::flat::{self, FlatModel, Layout};
use ddpm::train::{optim, Outcome, TrainState};
use tch::Device;
use tokio::sync::{mpsc, oneshot};

/// What a snapshot contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Parameters and Adam's moments: what a training replica needs.
    Training,
    /// The EMA parameters.
    Ema,
    /// The parameters only.
    Params,
    /// Training and the EMA: what a replica keeps with `[dist] shadow = "off"`.
    Replica,
}

/// A copy of (part of) the state on the host.
pub struct Snapshot {
    pub step: u64,
    pub adam_step: u64,
    /// Named flat tensors, each `[P]`.
    pub tensors: Vec<(String, Vec<f32>)>,
}

/// A replica's training state on the host, as it uploaded it
/// (`[dist] shadow = "off"`): what the state thread loads in place of its own.
pub struct Uploaded {
    pub step: u64,
    pub adam_step: u64,
    pub params: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
    pub ema: Vec<f32>,
}

enum Cmd {
    Load(Box<Uploaded>),
    Apply { step: u64, grad: Vec<f32>, outcome: Outcome },
    Snapshot { kind: SnapshotKind, reply: oneshot::Sender<Snapshot> },
    Checksum { reply: oneshot::Sender<(u64, u64)> },
    Capture { skipped: u64, dataset_len: usize, reply: oneshot::Sender<CheckpointData> },
}

/// The async side's handle on the state thread.
#[derive(Clone)]
pub struct StateHandle {
    tx: mpsc::Sender<Cmd>,
    pub layout: std::sync::Arc<Layout>,
    /// The step the state started at (0, or the resumed checkpoint's).
    pub start_step: u64,
    /// The last applied gradient's buffer, handed back by the thread for
    /// the next round (143 MB of fresh pages a step otherwise).
    spare: Spare,
}

type Spare = std::sync::Arc<std::sync::Mutex<Option<Vec<f32>>>>;

impl StateHandle {
    /// Builds the initial state of `config` (the paper's initialisation from
    /// the run seed), or restores `resume`, and starts the thread that owns it.
    /// A checkpoint must come from this run: same model, seed, batch size
    /// and dataset length (`dataset_len`), or the start fails saying which.
    pub fn start(config: TrainConfig, resume: Option<CheckpointData>, dataset_len: usize) -> anyhow::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Cmd>(2);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let spare = Spare::default();
        let give_back = spare.clone();
        std::thread::Builder::new().name("state".into()).spawn(move || {
            let init = (|| -> anyhow::Result<(TrainState, FlatModel)> {
                let mut ema = FlatModel::new(&config.model, Device::Cpu)?;
                let state = match &resume {
                    Some(data) => {
                        data.check_resume(&config, &ema.layout, dataset_len)?;
                        let (state, ema_flat) = data.restore(&config, Device::Cpu)?;
                        ema.load_flat(&ema_flat);
                        state
                    }
                    None => {
                        let state = TrainState::init(&config, Device::Cpu)?;
                        ema.load_flat(&state.model.flat);
                        state
                    }
                };
                Ok((state, ema))
            })();
            drop(resume);
            let (mut state, mut ema) = match init {
                Ok(v) => {
                    let _ = ready_tx.send(Ok((v.0.model.layout.clone(), v.0.step)));
                    v
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            // Work buffers allocated once (see optim::Adam).
            let mut scratch = state.model.flat.empty_like();
            while let Some(cmd) = rx.blocking_recv() {
                match cmd {
                    Cmd::Load(u) => {
                        let device = state.model.device();
                        state.model.load_flat(&tch::Tensor::from_slice(&u.params));
                        let (m, v) =
                            (tch::Tensor::from_slice(&u.adam_m).to_device(device), tch::Tensor::from_slice(&u.adam_v).to_device(device));
                        state.adam = optim::Adam::from_state(&config.optim, m, v, u.adam_step);
                        state.step = u.step;
                        ema.load_flat(&tch::Tensor::from_slice(&u.ema));
                    }
                    Cmd::Apply { step, mut grad, outcome } => {
                        // Adam reads the round's buffer where it lies (clipping scales it in place).
                        flat::with_tensor_view(&mut grad, |g| state.apply(&config, step, g, &outcome));
                        if outcome.apply {
                            optim::ema_update(&mut ema.flat, &state.model.flat, config.train.ema_decay, &mut scratch);
                        }
                        if let Ok(mut slot) = give_back.lock() {
                            *slot = Some(grad);
                        }
                    }
                    Cmd::Snapshot { kind, reply } => {
                        let tensors = match kind {
                            SnapshotKind::Training => vec![
                                ("params".to_string(), flat::to_vec_f32(&state.model.flat)),
                                ("adam_m".to_string(), flat::to_vec_f32(&state.adam.m)),
                                ("adam_v".to_string(), flat::to_vec_f32(&state.adam.v)),
                            ],
                            SnapshotKind::Ema => vec![("ema".to_string(), flat::to_vec_f32(&ema.flat))],
                            SnapshotKind::Replica => vec![
                                ("params".to_string(), flat::to_vec_f32(&state.model.flat)),
                                ("adam_m".to_string(), flat::to_vec_f32(&state.adam.m)),
                                ("adam_v".to_string(), flat::to_vec_f32(&state.adam.v)),
                                ("ema".to_string(), flat::to_vec_f32(&ema.flat)),
                            ],
                            SnapshotKind::Params => vec![("params".to_string(), flat::to_vec_f32(&state.model.flat))],
                        };
                        let _ = reply.send(Snapshot { step: state.step, adam_step: state.adam.step, tensors });
                    }
                    Cmd::Checksum { reply } => {
                        let _ = reply.send((state.step, flat::checksum(&state.model.flat)));
                    }
                    Cmd::Capture { skipped, dataset_len, reply } => {
                        let _ = reply.send(CheckpointData::capture(&config, &state, &ema.flat, skipped, dataset_len));
                    }
                }
            }
        })?;
        let (layout, start_step) = ready_rx.recv().map_err(|_| anyhow::anyhow!("the state thread died while starting"))??;
        Ok(Self { tx, layout: std::sync::Arc::new(layout), start_step, spare })
    }

    async fn send(&self, cmd: Cmd) -> anyhow::Result<()> {
        self.tx.send(cmd).await.map_err(|_| anyhow::anyhow!("the state thread has stopped"))
    }

    /// Queues step `step`'s update (waits if the thread is two steps behind).
    /// A buffer of `len` values for a round's reduced gradient: the last
    /// applied one's memory when the thread has handed it back, as it is
    /// (not zeroed: a round writes every chunk before it reads it, the
    /// star's sum starting each chunk at zero, the ring's segments decoded).
    pub fn gradient_buffer(&self, len: usize) -> Vec<f32> {
        let mut buf = self.spare.lock().ok().and_then(|mut s| s.take()).unwrap_or_default();
        buf.resize(len, 0.0);
        buf
    }

    /// Replaces the whole state by a replica's (lengths checked by the caller).
    pub async fn load(&self, uploaded: Box<Uploaded>) -> anyhow::Result<()> {
        self.send(Cmd::Load(uploaded)).await
    }

    pub async fn apply(&self, step: u64, grad: Vec<f32>, outcome: Outcome) -> anyhow::Result<()> {
        self.send(Cmd::Apply { step, grad, outcome }).await
    }

    /// A snapshot after every update queued so far.
    pub async fn snapshot(&self, kind: SnapshotKind) -> anyhow::Result<Snapshot> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Snapshot { kind, reply }).await?;
        Ok(rx.await?)
    }

    /// `(step, checksum of the parameters)` after every update queued so far.
    pub async fn checksum(&self) -> anyhow::Result<(u64, u64)> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Checksum { reply }).await?;
        Ok(rx.await?)
    }

    /// Host copies of everything a checkpoint holds, after every update
    /// queued so far.
    pub async fn capture(&self, skipped: u64, dataset_len: usize) -> anyhow::Result<CheckpointData> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Capture { skipped, dataset_len, reply }).await?;
        Ok(rx.await?)
    }
}
