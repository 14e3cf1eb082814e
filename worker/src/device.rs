//! The thread that owns the worker's device: the model, Adam's moments and
//! every tensor live here and nowhere else (tch tensors are `Send` but not
//! `Sync`); the async side sends it bytes and gets bytes back.

use std::time::Instant;

use bytes::Bytes;
use ddpm::config::RunConfig;
use ddpm::diffusion::GaussianDiffusion;
use ddpm::eval::{add_images, images_bpd, BpdSums, ImageEvalSums, InceptionModel};
use ddpm::train::flat::{self, FlatModel};
use ddpm::train::optim::Adam;
use ddpm::train::analysis;
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
    /// Measures images (drawn or given) for an evaluation job; `weights` as
    /// for `Sample`.
    Eval { weights: Option<Vec<f32>>, task: EvalTask, reply: Reply<EvalOutput> },
    /// Draws an analysis task's images; `weights` as for `Sample`.
    Analysis { weights: Option<Vec<f32>>, task: AnalysisTask, reply: Reply<Vec<u8>> },
}

/// One analysis task (`ddpm::train::analysis`), as the device thread runs it.
pub enum AnalysisTask {
    /// Rows `first_row..first_row + rows` of a progressive generation.
    Progressive { seed: u64, first_row: u64, rows: usize, snapshots: usize, batch: usize },
    /// Two decoded images, uint8 `[3, R, R]` each.
    Interpolate { a: Vec<u8>, b: Vec<u8>, t: usize, lambdas: usize, seed: u64 },
}

/// Where an evaluation task's images come from.
pub enum EvalImages {
    /// Drawn with the job's weights.
    Sample(SampleRequest),
    /// Decoded dataset images uint8 `[n, 3, R, R]` with dataset indices
    /// `first..first + n`.
    Dataset { first: u64, pixels: Vec<u8> },
}

/// One evaluation task, as the device thread runs it.
pub struct EvalTask {
    pub images: EvalImages,
    /// Pool-feature sums (FID).
    pub features: bool,
    /// Inception Score sums: (splits, images in the whole job).
    pub inception_score: Option<(usize, u64)>,
    /// The bound, with this noise seed.
    pub bpd_seed: Option<u64>,
    /// The Inception TorchScript file.
    pub inception: String,
    /// Images per forward pass of the feature network or the bound.
    pub batch: usize,
}

/// What an evaluation task measured, in the wire forms of `ddpm::eval`.
#[derive(Default)]
pub struct EvalOutput {
    /// The drawn images (sample tasks).
    pub images: Option<Vec<u8>>,
    pub features: Vec<u8>,
    pub scores: Vec<u8>,
    pub bpd: Vec<u8>,
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
            // The feature network of the last evaluation task, by path.
            let mut inception: Option<InceptionModel> = None;
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
                        let r = load_weights(&mut ema, weights)
                            .and_then(|()| sample::sample_images(&ema.unet, &diffusion, &req, device, &mut |_, _| {}));
                        let _ = reply.send(r);
                    }
                    Cmd::Analysis { weights, task, reply } => {
                        let r = load_weights(&mut ema, weights).and_then(|()| analyse(&ema, &diffusion, task, device));
                        let _ = reply.send(r);
                    }
                    Cmd::Eval { weights, task, reply } => {
                        let r = load_weights(&mut ema, weights)
                            .and_then(|()| evaluate(&ema, &diffusion, &run, task, &mut inception, device));
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

    pub async fn eval(&self, weights: Option<Vec<f32>>, task: EvalTask) -> anyhow::Result<EvalOutput> {
        self.call(|reply| Cmd::Eval { weights, task, reply }).await
    }

    pub async fn analysis(&self, weights: Option<Vec<f32>>, task: AnalysisTask) -> anyhow::Result<Vec<u8>> {
        self.call(|reply| Cmd::Analysis { weights, task, reply }).await
    }
}

fn analyse(ema: &FlatModel, diffusion: &GaussianDiffusion, task: AnalysisTask, device: Device) -> Result<Vec<u8>, String> {
    match task {
        AnalysisTask::Progressive { seed, first_row, rows, snapshots, batch } => {
            let mut out = Vec::new();
            let mut start = 0;
            while start < rows {
                let n = batch.max(1).min(rows - start);
                out.extend(analysis::progressive(&ema.unet, diffusion, seed, first_row + start as u64, n, snapshots, device)?);
                start += n;
            }
            Ok(out)
        }
        AnalysisTask::Interpolate { a, b, t, lambdas, seed } => {
            analysis::interpolate(&ema.unet, diffusion, &a, &b, t, lambdas, seed, device)
        }
    }
}

/// Replaces the sampling model's weights (None: keep them).
fn load_weights(ema: &mut FlatModel, weights: Option<Vec<f32>>) -> Result<(), String> {
    match weights {
        Some(w) if w.len() != ema.layout.total => {
            Err(format!("the job's weights have {} elements, the model {}", w.len(), ema.layout.total))
        }
        Some(w) => {
            ema.load_flat(&Tensor::from_slice(&w));
            Ok(())
        }
        None => Ok(()),
    }
}

/// Runs an evaluation task: draws or takes the images, then their feature
/// and score sums and/or the bound. The feature network is loaded once per
/// path and kept.
fn evaluate(
    ema: &FlatModel,
    diffusion: &GaussianDiffusion,
    run: &RunConfig,
    task: EvalTask,
    inception: &mut Option<InceptionModel>,
    device: Device,
) -> Result<EvalOutput, String> {
    let r = run.train.model.image_size as usize;
    let (first, pixels, drawn) = match task.images {
        EvalImages::Sample(req) => {
            let first = req.first;
            let pixels = sample::sample_images(&ema.unet, diffusion, &req, device, &mut |_, _| {})?;
            (first, pixels, true)
        }
        EvalImages::Dataset { first, pixels } => (first, pixels, false),
    };
    let mut out = EvalOutput::default();
    if task.features || task.inception_score.is_some() {
        if inception.as_ref().map(|m| m.path()) != Some(std::path::Path::new(&task.inception)) {
            *inception = None;
            let model = InceptionModel::load(std::path::Path::new(&task.inception), device)
                .map_err(|e| format!("loading the Inception network: {e}"))?;
            *inception = Some(model);
        }
        let model = inception.as_ref().expect("loaded above");
        let (splits, total) = task.inception_score.map_or((None, 0), |(s, t)| (Some(s), t));
        let mut sums = ImageEvalSums::new(model, total, splits).map_err(|e| e.to_string())?;
        add_images(model, &pixels, r, r, first, task.batch, &mut sums).map_err(|e| e.to_string())?;
        if task.features {
            out.features = sums.features.to_bytes();
        }
        if let Some(scores) = &sums.scores {
            out.scores = scores.to_bytes();
        }
    }
    if let Some(seed) = task.bpd_seed {
        let per = 3 * r * r;
        let mut sums = BpdSums::new(diffusion.num_timesteps() as usize);
        for (b, chunk) in pixels.chunks(task.batch.max(1) * per).enumerate() {
            let start = first + (b * task.batch.max(1)) as u64;
            let indices: Vec<u64> = (start..start + (chunk.len() / per) as u64).collect();
            let batch = images_bpd(&ema.unet, diffusion, chunk, &indices, seed, true, device).map_err(|e| e.to_string())?;
            sums.add(&batch).map_err(|e| e.to_string())?;
        }
        out.bpd = sums.to_bytes();
    }
    if drawn {
        out.images = Some(pixels);
    }
    Ok(out)
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
