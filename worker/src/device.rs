//! The thread that owns the worker's device: the model, Adam's moments and
//! every tensor live here and nowhere else (tch tensors are `Send` but not
//! `Sync`); the async side sends it bytes and gets bytes back.

use std::time::Instant;

use bytes::Bytes;
use ddpm::config::RunConfig;
use ddpm::diffusion::GaussianDiffusion;
use ddpm::train::flat::{self, FlatModel};
use ddpm::train::optim::Adam;
use ddpm::train::sample::{self, SampleRequest};
use ddpm::train::step::{self, DecodedSample, StepContext};
use ddpm::train::{local, Outcome, TrainState};
use tch::{Device, Tensor};
use tokio::sync::{mpsc, oneshot};

/// A training replica's state as sent by the coordinator.
pub struct TrainingState {
    pub step: u64,
    pub adam_step: u64,
    pub params: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
}

/// The gradient of one shard.
pub struct Computed {
    pub loss: f64,
    pub grad: Vec<f32>,
    pub compute_s: f64,
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Cmd {
    Load(TrainingState, Reply<()>),
    Compute { step: u64, samples: Vec<(u64, Bytes)>, reply: Reply<Computed> },
    Apply { step: u64, grad: Vec<f32>, outcome: Outcome, reply: Reply<()> },
    Checksum(Reply<u64>),
    /// Draws images; `weights` replaces the sampling weights (None: keep
    /// those of the previous task).
    Sample { weights: Option<Vec<f32>>, req: SampleRequest, reply: Reply<Vec<u8>> },
}

/// Handle on the device thread.
pub struct DeviceHandle {
    tx: mpsc::Sender<Cmd>,
    pub param_count: u64,
    pub layout_hash: u64,
}

impl DeviceHandle {
    /// Builds the run's model on `device` in a new thread.
    pub fn start(run: RunConfig, device: Device) -> anyhow::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Cmd>(4);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name(format!("device-{device:?}")).spawn(move || {
            let init = (|| -> anyhow::Result<(TrainState, FlatModel, GaussianDiffusion)> {
                let state = TrainState::init(&run.train, device)?;
                let ema = FlatModel::new(&run.train.model, device)?;
                let diffusion = GaussianDiffusion::new(&run.train.diffusion)?;
                Ok((state, ema, diffusion))
            })();
            let (mut state, mut ema, diffusion) = match init {
                Ok(v) => {
                    let _ = ready_tx.send(Ok((v.0.model.layout.total as u64, v.0.model.layout.hash())));
                    v
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while let Some(cmd) = rx.blocking_recv() {
                match cmd {
                    Cmd::Load(s, reply) => {
                        let r = load(&mut state, &run, s);
                        let _ = reply.send(r);
                    }
                    Cmd::Compute { step, samples, reply } => {
                        let _ = reply.send(compute(&mut state, &diffusion, &run, step, samples));
                    }
                    Cmd::Apply { step, grad, outcome, reply } => {
                        if grad.len() != state.model.layout.total {
                            let _ = reply.send(Err(format!("reduced gradient has {} elements", grad.len())));
                            continue;
                        }
                        state.apply(&run.train, step, &mut Tensor::from_slice(&grad), &outcome);
                        let _ = reply.send(Ok(()));
                    }
                    Cmd::Checksum(reply) => {
                        let _ = reply.send(Ok(flat::checksum(&state.model.flat)));
                    }
                    Cmd::Sample { weights, req, reply } => {
                        let r = match weights {
                            Some(w) if w.len() != ema.layout.total => {
                                Err(format!("sampling weights have {} elements, the model {}", w.len(), ema.layout.total))
                            }
                            Some(w) => {
                                ema.load_flat(&Tensor::from_slice(&w));
                                Ok(())
                            }
                            None => Ok(()),
                        };
                        let r = r.and_then(|()| sample::sample_images(&ema.unet, &diffusion, &req, device, &mut |_, _| {}));
                        let _ = reply.send(r);
                    }
                }
            }
        })?;
        let (param_count, layout_hash) =
            ready_rx.recv().map_err(|_| anyhow::anyhow!("the device thread died while starting"))??;
        Ok(Self { tx, param_count, layout_hash })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> anyhow::Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| anyhow::anyhow!("the device thread has stopped"))?;
        rx.await.map_err(|_| anyhow::anyhow!("the device thread has stopped"))?.map_err(|e| anyhow::anyhow!(e))
    }

    pub async fn load(&self, s: TrainingState) -> anyhow::Result<()> {
        self.call(|r| Cmd::Load(s, r)).await
    }

    pub async fn compute(&self, step: u64, samples: Vec<(u64, Bytes)>) -> anyhow::Result<Computed> {
        self.call(|reply| Cmd::Compute { step, samples, reply }).await
    }

    pub async fn apply(&self, step: u64, grad: Vec<f32>, outcome: Outcome) -> anyhow::Result<()> {
        self.call(|reply| Cmd::Apply { step, grad, outcome, reply }).await
    }

    pub async fn checksum(&self) -> anyhow::Result<u64> {
        self.call(Cmd::Checksum).await
    }

    pub async fn sample(&self, weights: Option<Vec<f32>>, req: SampleRequest) -> anyhow::Result<Vec<u8>> {
        self.call(|reply| Cmd::Sample { weights, req, reply }).await
    }
}

fn load(state: &mut TrainState, run: &RunConfig, s: TrainingState) -> Result<(), String> {
    let n = state.model.layout.total;
    for (name, v) in [("params", &s.params), ("adam_m", &s.adam_m), ("adam_v", &s.adam_v)] {
        if v.len() != n {
            return Err(format!("state tensor {name} has {} elements, the model {n}", v.len()));
        }
    }
    let device = state.model.device();
    state.model.load_flat(&Tensor::from_slice(&s.params));
    state.adam = Adam::from_state(
        &run.train.optim,
        Tensor::from_slice(&s.adam_m).to_device(device),
        Tensor::from_slice(&s.adam_v).to_device(device),
        s.adam_step,
    );
    state.step = s.step;
    Ok(())
}

fn compute(
    state: &mut TrainState,
    diffusion: &GaussianDiffusion,
    run: &RunConfig,
    step_no: u64,
    samples: Vec<(u64, Bytes)>,
) -> Result<Computed, String> {
    let started = Instant::now();
    if samples.is_empty() {
        return Err("empty shard".into());
    }
    let decoded = samples
        .iter()
        .map(|(position, bytes)| {
            run.decoder
                .decode(bytes)
                .map(|pixels| DecodedSample { position: *position, pixels })
                .map_err(|e| format!("sample at position {position}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let ctx: StepContext = local::step_context(&run.train, &run.decoder, step_no);
    let device = state.model.device();
    let batch = step::build_batch(&decoded, &ctx, diffusion.num_timesteps() as u64, device);
    let (loss, grad) = step::loss_and_grad(&mut state.model, diffusion, &batch, &ctx, decoded[0].position);
    let grad = flat::to_vec_f32(&grad);
    Ok(Computed { loss, grad, compute_s: started.elapsed().as_secs_f64() })
}
