//! Negative log-likelihood bound in bits/dim on dataset images (docs/ddpm.md section 4):
//! all T terms plus the prior, [`GaussianDiffusion::calc_bpd_loop`], with a
//! U-Net.
//!
//! The `q_sample` noise of image `index` at timestep `t` is the stream
//! `rng::Stream::for_key(seed, Purpose::Bpd, index, t)`, so an image's
//! numbers do not depend on which worker evaluates it or with which others:
//! shards of a dataset give per-image results that simply concatenate, and
//! [`BpdSums`] that add.

use std::ops::Range;

use tch::{Device, Kind, Tensor};

use super::error::EvalError;
use super::images::decode_parallel;
use super::stats::to_vec_f64;
use crate::data::Dataset;
use crate::diffusion::GaussianDiffusion;
use crate::rng::{Purpose, Stream};
use crate::unet::UNet;

/// The bound for a batch of images, per image, in bits/dim.
#[derive(Clone, Debug, PartialEq)]
pub struct BpdBatch {
    /// The images' global indices (dataset indices), as given.
    pub indices: Vec<u64>,
    /// `T`.
    pub num_timesteps: usize,
    /// `L_T + sum_t L_{t-1} + L_0` per image, `[n]`.
    pub total: Vec<f64>,
    /// `L_T = KL(q(x_T | x0) || N(0, I))` per image, `[n]`.
    pub prior: Vec<f64>,
    /// `[n, T]` row-major: column t (0-based) is the decoder NLL `L_0` for
    /// t = 0 and the KL term for t > 0 (the paper's `L_{t}` with its t = ours + 1).
    pub terms: Vec<f64>,
    /// `[n, T]`: mean squared error of `pred_x0` from `x_t` against x0 (in
    /// [-1, 1] units; distortion RMSE on 0..255 is `127.5 sqrt(mse)`).
    pub x0_mse: Vec<f64>,
}

/// The noise of image `index` at timestep `t`: `out.len()` standard normals.
pub fn bpd_noise(seed: u64, index: u64, t: u64, out: &mut [f32]) {
    Stream::for_key(seed, Purpose::Bpd, index, t).fill_normal(out)
}

/// The full bound of uint8 images `[n, C, R, R]` (`C`, `R` the U-Net's
/// `in_channels` and `image_size`) with global `indices`, on `device`.
/// `clip_denoised` clips `pred_x0` to [-1, 1] as the official evaluation does.
pub fn images_bpd(
    unet: &UNet,
    diffusion: &GaussianDiffusion,
    pixels_nchw: &[u8],
    indices: &[u64],
    seed: u64,
    clip_denoised: bool,
    device: Device,
) -> Result<BpdBatch, EvalError> {
    let cfg = unet.config();
    let (c, r) = (cfg.in_channels, cfg.image_size);
    if cfg.out_channels != c {
        return Err(EvalError::InvalidArgument(format!(
            "the bound needs a U-Net that predicts one value per input channel ({c} in, {} out)",
            cfg.out_channels
        )));
    }
    let per = (c * r * r) as usize;
    if indices.is_empty() || pixels_nchw.len() != indices.len() * per {
        return Err(EvalError::shape(
            "images for the bound",
            format!("{} images of {c} x {r} x {r} bytes (the U-Net's image_size)", indices.len()),
            format!("{} bytes", pixels_nchw.len()),
        ));
    }
    let n = indices.len() as i64;
    let shape = [n, c, r, r];
    let x0 = (Tensor::from_slice(pixels_nchw).view(shape).to_kind(Kind::Float) / 127.5 - 1.0).to_device(device);
    let mut noise = |t: i64| {
        let mut buf = vec![0f32; indices.len() * per];
        for (chunk, &index) in buf.chunks_exact_mut(per).zip(indices) {
            bpd_noise(seed, index, t as u64, chunk);
        }
        Tensor::from_slice(&buf).view(shape).to_device(device)
    };
    let mut model = |xt: &Tensor, t: &Tensor| unet.forward_t(xt, t, false);
    let res = diffusion.calc_bpd_loop(&mut model, &x0, &mut noise, clip_denoised);
    Ok(BpdBatch {
        indices: indices.to_vec(),
        num_timesteps: diffusion.num_timesteps() as usize,
        total: to_vec_f64(&res.total_bpd)?,
        prior: to_vec_f64(&res.prior_bpd)?,
        terms: to_vec_f64(&res.terms_bpd)?,
        x0_mse: to_vec_f64(&res.x0_mse)?,
    })
}

/// Float64 sums of the bound over images: shards add with [`merge`](Self::merge).
#[derive(Clone, Debug, PartialEq)]
pub struct BpdSums {
    /// Images added.
    pub count: u64,
    /// Sum of the per-image totals.
    pub total: f64,
    /// Sum of the per-image prior terms.
    pub prior: f64,
    /// Per timestep, the sum of the per-image terms, `[T]`.
    pub terms: Vec<f64>,
    /// Per timestep, the sum of the per-image `pred_x0` MSEs, `[T]`.
    pub x0_mse: Vec<f64>,
}

impl BpdSums {
    /// Empty sums for a diffusion of `num_timesteps` steps.
    pub fn new(num_timesteps: usize) -> Self {
        Self { count: 0, total: 0.0, prior: 0.0, terms: vec![0.0; num_timesteps], x0_mse: vec![0.0; num_timesteps] }
    }

    /// Adds a batch's per-image numbers.
    pub fn add(&mut self, b: &BpdBatch) -> Result<(), EvalError> {
        let t = self.terms.len();
        if b.num_timesteps != t {
            return Err(EvalError::InvalidArgument(format!("a bound over {} steps added to sums over {t}", b.num_timesteps)));
        }
        self.count += b.indices.len() as u64;
        self.total += b.total.iter().sum::<f64>();
        self.prior += b.prior.iter().sum::<f64>();
        for (row, mse) in b.terms.chunks_exact(t).zip(b.x0_mse.chunks_exact(t)) {
            self.terms.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            self.x0_mse.iter_mut().zip(mse).for_each(|(a, v)| *a += v);
        }
        Ok(())
    }

    /// Adds another shard's sums.
    pub fn merge(&mut self, other: &BpdSums) -> Result<(), EvalError> {
        if other.terms.len() != self.terms.len() {
            return Err(EvalError::InvalidArgument(format!(
                "bound sums over {} steps merged into sums over {}",
                other.terms.len(),
                self.terms.len()
            )));
        }
        self.count += other.count;
        self.total += other.total;
        self.prior += other.prior;
        self.terms.iter_mut().zip(&other.terms).for_each(|(a, v)| *a += v);
        self.x0_mse.iter_mut().zip(&other.x0_mse).for_each(|(a, v)| *a += v);
        Ok(())
    }

    /// The mean bound in bits/dim (the paper's NLL figure, e.g. <= 3.75 on CIFAR-10 test).
    pub fn mean_total(&self) -> Result<f64, EvalError> {
        if self.count == 0 {
            return Err(EvalError::Stats("no images were added to the bound".into()));
        }
        Ok(self.total / self.count as f64)
    }
}

/// The bound over dataset images `range`, `batch` images per pass, keyed
/// by dataset index; `progress(done, total)` after each batch.
#[allow(clippy::too_many_arguments)]
pub fn dataset_bpd(
    ds: &dyn Dataset,
    unet: &UNet,
    diffusion: &GaussianDiffusion,
    range: Range<usize>,
    batch: usize,
    seed: u64,
    clip_denoised: bool,
    device: Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<BpdSums, EvalError> {
    if range.start >= range.end || range.end > ds.len() || batch == 0 {
        return Err(EvalError::InvalidArgument(format!(
            "bound over images {}..{} of a {}-image dataset in batches of {batch}: need a non-empty range \
             inside the dataset and batch >= 1",
            range.start,
            range.end,
            ds.len()
        )));
    }
    let mut sums = BpdSums::new(diffusion.num_timesteps() as usize);
    let mut start = range.start;
    while start < range.end {
        let end = (start + batch).min(range.end);
        let pixels = decode_parallel(ds, start..end)?;
        let indices: Vec<u64> = (start as u64..end as u64).collect();
        sums.add(&images_bpd(unet, diffusion, &pixels, &indices, seed, clip_denoised, device)?)?;
        progress(end - range.start, range.len());
        start = end;
    }
    Ok(sums)
}
