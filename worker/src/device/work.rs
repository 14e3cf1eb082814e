//! What the device thread does for each command: load a training state,
//! compute a shard's gradient, swap in a job's weights, draw analysis
//! images and measure evaluation images. Everything here runs on the
//! device thread and may block for as long as the work takes.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use ddpm::config::RunConfig;
use ddpm::diffusion::GaussianDiffusion;
use ddpm::eval::{add_images, images_bpd, BpdSums, ImageEvalSums, InceptionModel};
use ddpm::train::analysis;
use ddpm::train::flat::{self, FlatModel};
use ddpm::train::optim::Adam;
use ddpm::train::sample;
use ddpm::train::step::{self, DecodedSample};
use ddpm::train::TrainState;
use tch::{Device, Tensor};

use super::error::DeviceError;
use super::messages::{AnalysisTask, Computed, EvalImages, EvalOutput, EvalTask, TrainingState};

/// Replaces the replica's parameters, Adam moments and step with `s`.
pub(super) fn load(state: &mut TrainState, run: &RunConfig, s: TrainingState) -> Result<(), DeviceError> {
    let n = state.model.layout.total;
    for (name, v) in [("params", &s.params), ("adam_m", &s.adam_m), ("adam_v", &s.adam_v)] {
        if v.len() != n {
            return Err(DeviceError::StateSize { name, got: v.len(), want: n });
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

/// The replica's own EMA from the `ema` a training state carried (with
/// its work buffer), on the state's device; `None` when it carried none.
pub(super) fn replica_ema(ema: Option<Vec<f32>>, state: &TrainState) -> Result<Option<(Tensor, Tensor)>, DeviceError> {
    let Some(ema) = ema else { return Ok(None) };
    let want = state.model.layout.total;
    if ema.len() != want {
        return Err(DeviceError::StateSize { name: "ema", got: ema.len(), want });
    }
    let ema = Tensor::from_slice(&ema).to_device(state.model.device());
    let scratch = ema.empty_like();
    Ok(Some((ema, scratch)))
}

/// Host copies of the replica's state and EMA, and its parameters' checksum.
pub(super) fn export(state: &TrainState, ema: Option<&Tensor>) -> Result<(TrainingState, u64), DeviceError> {
    let ema = ema.ok_or(DeviceError::NoReplicaEma)?;
    let exported = TrainingState {
        step: state.step,
        adam_step: state.adam.step,
        params: flat::to_vec_f32(&state.model.flat),
        adam_m: flat::to_vec_f32(&state.adam.m),
        adam_v: flat::to_vec_f32(&state.adam.v),
        ema: Some(flat::to_vec_f32(ema)),
    };
    Ok((exported, flat::checksum(&state.model.flat)))
}

/// Views (no copy) of values `start..end` of the replica's state and
/// EMA: its shard of a sharded checkpoint. [`RangeViews::copy`] reads them
/// to the host on another thread while the next step's forward and
/// backward read the same tensors; the device thread waits for that copy
/// only before it writes them (the next update, a load).
pub(super) struct RangeViews {
    step: u64,
    adam_step: u64,
    /// Parameters, Adam's moments, the EMA.
    views: [Tensor; 4],
}

impl RangeViews {
    pub(super) fn of(state: &TrainState, ema: Option<&Tensor>, start: usize, end: usize) -> Result<Self, DeviceError> {
        let ema = ema.ok_or(DeviceError::NoReplicaEma)?;
        let total = state.model.flat.numel();
        if start > end || end > total {
            return Err(DeviceError::ShardRange { start, end, total });
        }
        let cut = |t: &Tensor| t.narrow(0, start as i64, (end - start) as i64);
        let views = [cut(&state.model.flat), cut(&state.adam.m), cut(&state.adam.v), cut(ema)];
        Ok(Self { step: state.step, adam_step: state.adam.step, views })
    }

    /// The host copy.
    pub(super) fn copy(self) -> TrainingState {
        let [params, adam_m, adam_v, ema] = self.views.map(|t| flat::to_vec_f32(&t));
        TrainingState { step: self.step, adam_step: self.adam_step, params, adam_m, adam_v, ema: Some(ema) }
    }
}

/// The mean loss and gradient of one shard of step `step_no`: the same
/// batch construction as single-process training, keyed by the samples'
/// stream positions, so the reduced gradient does not depend on the split.
pub(super) fn compute(
    state: &mut TrainState,
    diffusion: &GaussianDiffusion,
    run: &RunConfig,
    step_no: u64,
    samples: Vec<(u64, Bytes)>,
    mut into: Vec<f32>,
) -> Result<Computed, DeviceError> {
    let started = Instant::now();
    if samples.is_empty() {
        return Err(DeviceError::EmptyShard);
    }
    let decoded = samples
        .iter()
        .map(|(position, bytes)| {
            run.decoder
                .decode(bytes)
                .map(|pixels| DecodedSample { position: *position, pixels })
                .map_err(|error| DeviceError::Decode { position: *position, error })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ctx = step::step_context(&run.train, &run.decoder, step_no);
    let device = state.model.device();
    let batch = step::build_batch(&decoded, &ctx, diffusion.num_timesteps() as u64, device);
    let (loss, grad) = step::loss_and_grad(&mut state.model, diffusion, &batch, &ctx, decoded[0].position);
    flat::copy_to_vec(&grad, &mut into);
    Ok(Computed { loss, grad: into, compute_s: started.elapsed().as_secs_f64() })
}

/// Replaces the sampling model's weights (None: keep them).
pub(super) fn load_weights(ema: &mut FlatModel, weights: Option<Vec<f32>>) -> Result<(), DeviceError> {
    match weights {
        Some(w) if w.len() != ema.layout.total => Err(DeviceError::WeightsSize { got: w.len(), want: ema.layout.total }),
        Some(w) => {
            ema.load_flat(&Tensor::from_slice(&w));
            Ok(())
        }
        None => Ok(()),
    }
}

/// Draws an analysis task's images with the sampling model.
pub(super) fn analyse(ema: &FlatModel, diffusion: &GaussianDiffusion, task: AnalysisTask, device: Device) -> Result<Vec<u8>, DeviceError> {
    match task {
        AnalysisTask::Progressive { seed, first_row, rows, snapshots, batch } => {
            // Rows in batches bound the memory of the trajectories; each
            // row's noise is keyed by its index, so batching changes nothing.
            let mut out = Vec::new();
            let mut start = 0;
            while start < rows {
                let n = batch.max(1).min(rows - start);
                let row = first_row + start as u64;
                let images = analysis::progressive(&ema.unet, diffusion, seed, row, n, snapshots, device).map_err(DeviceError::Analysis)?;
                out.extend(images);
                start += n;
            }
            Ok(out)
        }
        AnalysisTask::Interpolate { a, b, t, lambdas, seed } => {
            analysis::interpolate(&ema.unet, diffusion, &a, &b, t, lambdas, seed, device).map_err(DeviceError::Analysis)
        }
    }
}

/// Runs an evaluation task: draws or takes the images, then their feature
/// and score sums and/or the bound. The feature network is loaded once per
/// path and kept.
pub(super) fn evaluate(
    ema: &FlatModel,
    diffusion: &GaussianDiffusion,
    run: &RunConfig,
    task: EvalTask,
    inception: &mut Option<InceptionModel>,
    device: Device,
) -> Result<EvalOutput, DeviceError> {
    let r = run.train.model.image_size as usize;
    let (first, pixels, drawn) = match task.images {
        EvalImages::Sample(req) => {
            let first = req.first;
            let pixels = sample::sample_images(&ema.unet, diffusion, &req, device, &mut |_, _| {}).map_err(DeviceError::Sample)?;
            (first, pixels, true)
        }
        EvalImages::Dataset { first, pixels } => (first, pixels, false),
    };
    let mut out = EvalOutput::default();
    if task.features || task.inception_score.is_some() {
        let model = feature_network(inception, Path::new(&task.inception), device)?;
        let (splits, total) = task.inception_score.map_or((None, 0), |(s, t)| (Some(s), t));
        let mut sums = ImageEvalSums::new(model, total, splits).map_err(DeviceError::Features)?;
        add_images(model, &pixels, r, r, first, task.batch, &mut sums).map_err(DeviceError::Features)?;
        if task.features {
            out.features = Some(sums.features.to_bytes());
        }
        out.scores = sums.scores.as_ref().map(|s| s.to_bytes());
    }
    if let Some(seed) = task.bpd_seed {
        out.bpd = Some(bound_sums(ema, diffusion, &pixels, r, first, task.batch, seed, device)?);
    }
    if drawn {
        out.images = Some(pixels);
    }
    Ok(out)
}

/// The Inception network at `path`, loaded unless it is the one kept from
/// the previous task (loading takes seconds; a job's tasks share it).
fn feature_network<'a>(kept: &'a mut Option<InceptionModel>, path: &Path, device: Device) -> Result<&'a InceptionModel, DeviceError> {
    if kept.as_ref().map(|m| m.path()) != Some(path) {
        *kept = None;
        *kept = Some(InceptionModel::load(path, device).map_err(DeviceError::Inception)?);
    }
    Ok(kept.as_ref().expect("loaded above"))
}

/// The bound's sums over uint8 images `[n, 3, r, r]` with dataset (or job)
/// indices `first..first + n`, `batch` images per pass.
#[allow(clippy::too_many_arguments)]
fn bound_sums(
    ema: &FlatModel,
    diffusion: &GaussianDiffusion,
    pixels: &[u8],
    r: usize,
    first: u64,
    batch: usize,
    seed: u64,
    device: Device,
) -> Result<Vec<u8>, DeviceError> {
    let per = 3 * r * r;
    let batch = batch.max(1);
    let mut sums = BpdSums::new(diffusion.num_timesteps() as usize);
    for (b, chunk) in pixels.chunks(batch * per).enumerate() {
        let start = first + (b * batch) as u64;
        let indices: Vec<u64> = (start..start + (chunk.len() / per) as u64).collect();
        let terms = images_bpd(&ema.unet, diffusion, chunk, &indices, seed, true, device).map_err(DeviceError::Bound)?;
        sums.add(&terms).map_err(DeviceError::Bound)?;
    }
    Ok(sums.to_bytes())
}

/// Fault injection for the tests (`tests/ring_faults.rs`):
/// `DDPM_FAULT_ALTER_PARAMS=STEP` adds 1e-3 to this replica's first
/// parameter once it applied step STEP, like memory that went bad: its
/// checksum then differs from the other replicas'.
pub fn alter_params_if_asked(state: &mut TrainState, step: u64) {
    let asked = std::env::var("DDPM_FAULT_ALTER_PARAMS").ok().and_then(|v| v.parse::<u64>().ok()) == Some(step);
    if asked {
        tracing::warn!(step, "fault injection: altering this replica's parameters");
        tch::no_grad(|| {
            let _ = state.model.flat.narrow(0, 0, 1).f_add_scalar_(1e-3);
        });
    }
}
