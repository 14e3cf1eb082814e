//! Drawing images from a trained U-Net: ancestral sampling (Algorithm 2) or
//! DDIM, in batches, with noise keyed by (seed, image index) so that the
//! same job gives the same images however it is split across workers.

use tch::{Device, Kind, Tensor};

use crate::diffusion::GaussianDiffusion;
use crate::rng::{Purpose, Stream};
use crate::unet::UNet;

pub use crate::diffusion::Sampler;

/// Why images could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error(transparent)]
    Diffusion(#[from] crate::diffusion::DiffusionError),
    #[error("snapshots must be between 2 and the {num_timesteps} timesteps, got {snapshots}")]
    Snapshots { snapshots: usize, num_timesteps: usize },
    #[error("the trajectory passed {passed} of the {snapshots} snapshot timesteps")]
    Trajectory { passed: usize, snapshots: usize },
    #[error("interpolation needs two {c}x{r}x{r} images, got {a} and {b} bytes")]
    InterpolationImages { c: i64, r: i64, a: usize, b: usize },
    #[error("t must be between 1 and {steps}, got {t}")]
    InterpolationT { t: usize, steps: usize },
    #[error("at least one mixing weight")]
    NoMixingWeights,
}

/// Images per forward pass of a sample job (and `ddpm sample`) by default.
pub const DEFAULT_BATCH: u32 = 16;

/// Images `[first, first + count)` of a sampling job.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    pub seed: u64,
    pub first: u64,
    pub count: u64,
    pub sampler: Sampler,
    /// Images per forward pass.
    pub batch: usize,
}

/// Gaussian noise for images `first..first+n` at reverse step `key`
/// (0 for x_T, t + 1 for the noise added when leaving step t).
fn noise(seed: u64, first: u64, n: usize, key: u64, per: usize, shape: [i64; 4], device: Device) -> Tensor {
    let mut buf = vec![0f32; n * per];
    for (i, chunk) in buf.chunks_exact_mut(per).enumerate() {
        Stream::for_key(seed, Purpose::Sample, first + i as u64, key).fill_normal(chunk);
    }
    Tensor::from_slice(&buf).view(shape).to_device(device)
}

/// Runs the reverse process for a batch; returns x_0 in [-1, 1].
/// `progress` is called after each network evaluation.
#[allow(clippy::too_many_arguments)]
pub fn sample_batch(
    unet: &UNet,
    diffusion: &GaussianDiffusion,
    seed: u64,
    first: u64,
    n: usize,
    sampler: Sampler,
    device: Device,
    progress: &mut dyn FnMut(),
) -> Result<Tensor, SampleError> {
    reverse(unet, diffusion, seed, first, n, sampler, None, device, &mut |_, _| progress())
}

/// The reverse process of [`sample_batch`], stopped after `max_evals`
/// network evaluations (all of them with `None`: then it returns x_0,
/// otherwise the intermediate x_t of the same trajectory); `observe(t,
/// pred_x0)` after each evaluation. The sampling benchmark times a prefix;
/// progressive generation keeps `pred_x0`.
#[allow(clippy::too_many_arguments)]
pub fn reverse(
    unet: &UNet,
    diffusion: &GaussianDiffusion,
    seed: u64,
    first: u64,
    n: usize,
    sampler: Sampler,
    max_evals: Option<usize>,
    device: Device,
    observe: &mut dyn FnMut(i64, &Tensor),
) -> Result<Tensor, SampleError> {
    let limit = max_evals.unwrap_or(usize::MAX);
    let cfg = unet.config();
    let (c, r) = (cfg.out_channels, cfg.image_size);
    let shape = [n as i64, c, r, r];
    let per = (c * r * r) as usize;
    let _guard = tch::no_grad_guard();
    let mut x = noise(seed, first, n, 0, per, shape, device);
    match sampler {
        Sampler::Ancestral => {
            for t in (0..diffusion.num_timesteps()).rev().take(limit) {
                let tt = Tensor::full([n as i64], t, (Kind::Int64, device));
                let out = unet.forward_t(&x, &tt, false);
                let z = if t > 0 { noise(seed, first, n, t as u64 + 1, per, shape, device) } else { x.zeros_like() };
                let (next, pred_x0) = diffusion.p_sample(&out, &x, &tt, &z, true);
                x = next;
                observe(t, &pred_x0);
            }
        }
        Sampler::Ddim { steps, eta } => {
            let ts = diffusion.ddim_timesteps(steps)?;
            for (k, &t) in ts.iter().enumerate().take(limit) {
                let tt = Tensor::full([n as i64], t, (Kind::Int64, device));
                let out = unet.forward_t(&x, &tt, false);
                let t_prev = ts.get(k + 1).copied();
                let z =
                    if eta > 0.0 && t_prev.is_some() { noise(seed, first, n, t as u64 + 1, per, shape, device) } else { x.zeros_like() };
                let (next, pred_x0) = diffusion.ddim_step(&out, &x, t, t_prev, eta, &z, true);
                x = next;
                observe(t, &pred_x0);
            }
        }
    }
    Ok(x)
}

/// Quantizes images in [-1, 1] to uint8 as when written to PNG:
/// `round((x + 1) * 127.5)` clamped to [0, 255]. Returns the bytes in
/// `[n, C, H, W]` order.
pub fn to_uint8(x: &Tensor) -> Vec<u8> {
    let q = ((x.to_device(Device::Cpu).to_kind(Kind::Float) + 1.0) * 127.5).round().clamp(0.0, 255.0).to_kind(Kind::Uint8).contiguous();
    let n = q.numel();
    let mut out = vec![0u8; n];
    q.copy_data(&mut out, n);
    out
}

/// Draws the images of `req` in batches; returns `[count, C, H, W]` uint8.
pub fn sample_images(
    unet: &UNet,
    diffusion: &GaussianDiffusion,
    req: &SampleRequest,
    device: Device,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<u8>, SampleError> {
    let mut out = Vec::new();
    let total = req.count * req.sampler.evaluations(diffusion.num_timesteps() as usize) as u64;
    let mut done = 0u64;
    let mut start = 0u64;
    while start < req.count {
        let n = (req.count - start).min(req.batch.max(1) as u64) as usize;
        let x = sample_batch(unet, diffusion, req.seed, req.first + start, n, req.sampler, device, &mut || {
            done += n as u64;
            progress(done, total);
        })?;
        out.extend(to_uint8(&x));
        start += n as u64;
    }
    Ok(out)
}
