//! The paper's analysis as images (docs/ddpm.md section 5; paper sections 4.3 and 4.4).
//!
//! - Progressive generation: along ancestral trajectories, the model's
//!   estimate `x0_hat` of the final image at evenly spaced timesteps; coarse
//!   features appear first. Image i's trajectory is the one a sample job
//!   with the same seed draws for image i, so the last column is exactly
//!   that job's image i (at t = 0 the step's mean is `x0_hat`).
//! - Interpolation: two images encoded to `x_t` and `x'_t` by the forward
//!   process, mixed `(1 - lambda) x_t + lambda x'_t`, and decoded by the
//!   reverse process from t, with the same reverse noise for every lambda.

use tch::{Device, Kind, Tensor};

use super::sample::{reverse, to_uint8, SampleError, Sampler};
use crate::diffusion::GaussianDiffusion;
use crate::rng::{Purpose, Stream};
use crate::unet::UNet;

/// Which analysis a job runs; the words "progressive" and "interpolate" of
/// a request are parsed into this once, where they enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnalysisKind {
    /// `x0_hat` along ancestral trajectories (paper 4.3).
    Progressive,
    /// Two images encoded, mixed and decoded (paper 4.4).
    Interpolate,
}

impl AnalysisKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progressive => "progressive",
            Self::Interpolate => "interpolate",
        }
    }
}

/// A word that names no analysis.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown analysis {0:?}: use \"progressive\" or \"interpolate\"")]
pub struct UnknownAnalysis(pub String);

impl std::str::FromStr for AnalysisKind {
    type Err = UnknownAnalysis;

    fn from_str(s: &str) -> Result<Self, UnknownAnalysis> {
        match s {
            "progressive" => Ok(Self::Progressive),
            "interpolate" => Ok(Self::Interpolate),
            other => Err(UnknownAnalysis(other.to_string())),
        }
    }
}

/// The timesteps (0-based, decreasing) at which progressive generation shows
/// `x0_hat`: `snapshots` evenly spaced from T - 1 to 0, both included.
pub fn progressive_timesteps(num_timesteps: usize, snapshots: usize) -> Result<Vec<i64>, SampleError> {
    if snapshots < 2 || snapshots > num_timesteps {
        return Err(SampleError::Snapshots { snapshots, num_timesteps });
    }
    let last = (num_timesteps - 1) as f64;
    Ok((0..snapshots).map(|k| (last * (1.0 - k as f64 / (snapshots - 1) as f64)).round() as i64).collect())
}

/// Progressive generation of images `first..first + n` of `seed`: uint8
/// `[n * snapshots, C, H, W]`, row i (the `snapshots` images of image
/// `first + i`) from the noisiest estimate to the sample.
pub fn progressive(
    unet: &UNet,
    diffusion: &GaussianDiffusion,
    seed: u64,
    first: u64,
    n: usize,
    snapshots: usize,
    device: Device,
) -> Result<Vec<u8>, SampleError> {
    let ts = progressive_timesteps(diffusion.num_timesteps() as usize, snapshots)?;
    // Column k: the estimates of all n images at ts[k].
    let mut columns: Vec<Vec<u8>> = Vec::with_capacity(snapshots);
    let _final = reverse(unet, diffusion, seed, first, n, Sampler::Ancestral, None, device, &mut |t, pred_x0| {
        if ts.get(columns.len()) == Some(&t) {
            columns.push(to_uint8(pred_x0));
        }
    })?;
    if columns.len() != snapshots {
        return Err(SampleError::Trajectory { passed: columns.len(), snapshots });
    }
    let per = columns[0].len() / n.max(1);
    let mut out = Vec::with_capacity(n * snapshots * per);
    for i in 0..n {
        for col in &columns {
            out.extend_from_slice(&col[i * per..(i + 1) * per]);
        }
    }
    Ok(out)
}

/// The mixing weights: `count` evenly spaced from 0 to 1.
pub fn lambdas(count: usize) -> Vec<f64> {
    (0..count).map(|k| if count == 1 { 0.0 } else { k as f64 / (count - 1) as f64 }).collect()
}

/// Interpolation between uint8 images `a` and `b` (`[C, H, W]` each) at `t`
/// diffusion steps (1..=T; the paper uses 500) with `count` mixing weights:
/// uint8 `[count + 2, C, H, W]`, `a`, the decoded mixes from lambda = 0 to 1,
/// then `b`.
#[allow(clippy::too_many_arguments)]
pub fn interpolate(
    unet: &UNet,
    diffusion: &GaussianDiffusion,
    a: &[u8],
    b: &[u8],
    t: usize,
    count: usize,
    seed: u64,
    device: Device,
) -> Result<Vec<u8>, SampleError> {
    let cfg = unet.config();
    let (c, r) = (cfg.in_channels, cfg.image_size);
    let per = (c * r * r) as usize;
    let steps = diffusion.num_timesteps() as usize;
    if a.len() != per || b.len() != per {
        return Err(SampleError::InterpolationImages { c, r, a: a.len(), b: b.len() });
    }
    if t == 0 || t > steps {
        return Err(SampleError::InterpolationT { t, steps });
    }
    if count == 0 {
        return Err(SampleError::NoMixingWeights);
    }
    let _guard = tch::no_grad_guard();
    let image = |px: &[u8]| Tensor::from_slice(px).to_kind(Kind::Float).view([1, c, r, r]).to_device(device) / 127.5 - 1.0;
    let gaussian = |index: u64, key: u64| {
        let mut buf = vec![0f32; per];
        Stream::for_key(seed, Purpose::Interpolate, index, key).fill_normal(&mut buf);
        Tensor::from_slice(&buf).view([1, c, r, r]).to_device(device)
    };
    let t_index = (t - 1) as i64;
    let tt = Tensor::full([1], t_index, (Kind::Int64, device));
    let xa = diffusion.q_sample(&image(a), &tt, &gaussian(0, 0));
    let xb = diffusion.q_sample(&image(b), &tt, &gaussian(1, 0));
    let n = count as i64;
    let w = Tensor::from_slice(&lambdas(count).iter().map(|&l| l as f32).collect::<Vec<_>>()).view([n, 1, 1, 1]).to_device(device);
    let mut x = (1.0 - &w) * &xa + &w * &xb;
    for step in (0..=t_index).rev() {
        let ts = Tensor::full([n], step, (Kind::Int64, device));
        let out = unet.forward_t(&x, &ts, false);
        let z = if step > 0 { gaussian(2, step as u64 + 1).expand([n, c, r, r], false) } else { x.zeros_like() };
        x = diffusion.p_sample(&out, &x, &ts, &z, true).0;
    }
    let mut pixels = a.to_vec();
    pixels.extend(to_uint8(&x));
    pixels.extend_from_slice(b);
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_timesteps_span_the_trajectory() {
        assert_eq!(progressive_timesteps(1000, 2).unwrap(), [999, 0]);
        assert_eq!(progressive_timesteps(1000, 4).unwrap(), [999, 666, 333, 0]);
        assert_eq!(progressive_timesteps(10, 10).unwrap(), [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
        assert!(progressive_timesteps(1000, 1).unwrap_err().to_string().contains("between 2 and the 1000"));
        assert!(progressive_timesteps(10, 11).is_err());
        assert_eq!(lambdas(5), [0.0, 0.25, 0.5, 0.75, 1.0]);
    }
}
