//! The coordinator's copy of the run state, owned by one OS thread.
//!
//! The coordinator is the source of truth for the run: it applies every
//! reduced gradient to its own CPU copy of the parameters with the same
//! optimizer code as the workers (off the step's critical path), keeps the
//! EMA from it, answers checksums, snapshots for joining workers, and saves
//! weights. Tensors never leave this thread; async code talks to it through
//! a bounded channel, which also stops it from falling behind unboundedly.

use std::path::{Path, PathBuf};

use ddpm::config::TrainConfig;
use ddpm::train::flat::{self, FlatModel, Layout};
use ddpm::train::{optim, Outcome, TrainState};
use ddpm::unet::diffusers;
use tch::Device;
use tokio::sync::{mpsc, oneshot};

/// What a snapshot contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Parameters and Adam's moments: what a training replica needs.
    Training,
    /// The EMA parameters.
    Ema,
}

/// A copy of (part of) the state on the host.
pub struct Snapshot {
    pub step: u64,
    pub adam_step: u64,
    /// Named flat tensors, each `[P]`.
    pub tensors: Vec<(String, Vec<f32>)>,
}

enum Cmd {
    Apply { step: u64, grad: Vec<f32>, outcome: Outcome },
    Snapshot { kind: SnapshotKind, reply: oneshot::Sender<Snapshot> },
    Checksum { reply: oneshot::Sender<(u64, u64)> },
    Save { dir: PathBuf, reply: oneshot::Sender<Result<Vec<PathBuf>, String>> },
}

/// The async side's handle on the state thread.
#[derive(Clone)]
pub struct StateHandle {
    tx: mpsc::Sender<Cmd>,
    pub layout: std::sync::Arc<Layout>,
}

impl StateHandle {
    /// Builds the initial state of `config` (the paper's initialisation from
    /// the run seed) and starts the thread that owns it.
    pub fn start(config: TrainConfig) -> anyhow::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Cmd>(2);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("state".into()).spawn(move || {
            let init = (|| -> anyhow::Result<(TrainState, FlatModel)> {
                let state = TrainState::init(&config, Device::Cpu)?;
                let mut ema = FlatModel::new(&config.model, Device::Cpu)?;
                ema.load_flat(&state.model.flat);
                Ok((state, ema))
            })();
            let (mut state, mut ema) = match init {
                Ok(v) => {
                    let _ = ready_tx.send(Ok(v.0.model.layout.clone()));
                    v
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            // Work buffers allocated once (see optim::Adam).
            let mut grad_buf = state.model.flat.empty_like();
            let mut scratch = state.model.flat.empty_like();
            while let Some(cmd) = rx.blocking_recv() {
                match cmd {
                    Cmd::Apply { step, grad, outcome } => {
                        flat::copy_from_slice(&mut grad_buf, &grad);
                        state.apply(&config, step, &mut grad_buf, &outcome);
                        if outcome.apply {
                            optim::ema_update(&mut ema.flat, &state.model.flat, config.train.ema_decay, &mut scratch);
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
                        };
                        let _ = reply.send(Snapshot { step: state.step, adam_step: state.adam.step, tensors });
                    }
                    Cmd::Checksum { reply } => {
                        let _ = reply.send((state.step, flat::checksum(&state.model.flat)));
                    }
                    Cmd::Save { dir, reply } => {
                        let _ = reply.send(save(&dir, &config, &state, &ema).map_err(|e| format!("{e:#}")));
                    }
                }
            }
        })?;
        let layout = ready_rx.recv().map_err(|_| anyhow::anyhow!("the state thread died while starting"))??;
        Ok(Self { tx, layout: std::sync::Arc::new(layout) })
    }

    async fn send(&self, cmd: Cmd) -> anyhow::Result<()> {
        self.tx.send(cmd).await.map_err(|_| anyhow::anyhow!("the state thread has stopped"))
    }

    /// Queues step `step`'s update (waits if the thread is two steps behind).
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

    /// Writes the raw and EMA weights (diffusers layout) and the configs to `dir`.
    pub async fn save(&self, dir: PathBuf) -> anyhow::Result<Vec<PathBuf>> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Save { dir, reply }).await?;
        rx.await?.map_err(|e| anyhow::anyhow!(e))
    }
}

/// Writes into a temporary name, then renames: a reader never sees half a file.
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    write(&tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn save(dir: &Path, config: &TrainConfig, state: &TrainState, ema: &FlatModel) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let model_path = dir.join("model.safetensors");
    let ema_path = dir.join("ema.safetensors");
    let unet_config = dir.join("config.json");
    let train_config = dir.join("train_config.toml");
    write_atomic(&model_path, |p| Ok(diffusers::save_safetensors(&state.model.vs, p)?))?;
    write_atomic(&ema_path, |p| Ok(diffusers::save_safetensors(&ema.vs, p)?))?;
    write_atomic(&unet_config, |p| {
        Ok(std::fs::write(p, serde_json::to_string_pretty(&diffusers::config_json(&config.model))?)?)
    })?;
    write_atomic(&train_config, |p| Ok(std::fs::write(p, toml::to_string(config)?)?))?;
    Ok(vec![model_path, ema_path, unet_config, train_config])
}
