//! `UNet`: the network itself, built from a `Layout`.

use tch::nn::Path;
use tch::Tensor;

use super::blocks::{Attention, Conv2d, Downsample, GroupNorm, NormSpec, ResBlock, TimestepEmbedding, Upsample};
use super::config::ModelInit;
use super::config::UNetConfig;
use super::error::UNetError;
use super::layout::Layout;

/// One level of the down or up path: ResBlocks, each followed by an
/// attention block when the level has attention, then a resampler.
struct Level<R> {
    resnets: Vec<ResBlock>,
    attentions: Vec<Attention>,
    resample: Option<R>,
}

/// The paper's U-Net (docs/ddpm.md section 6): predicts the noise in `x_t` given
/// `t`. Single-device code; the network knows nothing of diffusion.
///
/// Parameters are named exactly as the state dict of diffusers'
/// `UNet2DModel` (`conv_in.weight`, `down_blocks.1.attentions.0.to_q.weight`,
/// `up_blocks.0.upsamplers.0.conv.bias`, ...) with the same shapes, so
/// [`super::diffusers`] maps weights one to one when the U-Net is built at the
/// root of its var store.
pub struct UNet {
    config: UNetConfig,
    time_embedding: TimestepEmbedding,
    conv_in: Conv2d,
    down: Vec<Level<Downsample>>,
    mid: (ResBlock, Attention, ResBlock),
    up: Vec<Level<Upsample>>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet {
    /// Builds the network for `config` under `vs`, initialised as
    /// `config.init` says (blocks.rs): by default as in the paper,
    /// Glorot-uniform (fan_avg) weights, zero biases, unit GroupNorm scales,
    /// and zero weights for each ResBlock's `conv2`, each attention's
    /// `to_out.0` and `conv_out`. Validates the config first; refuses a path
    /// that already holds a U-Net (tch would rename the clashing variables).
    pub fn new(vs: &Path, config: &UNetConfig) -> Result<UNet, UNetError> {
        config.validate()?;
        if vs.sub("conv_in").get("weight").is_some() {
            let path = vs.components().collect::<Vec<_>>().join(".");
            let existing = if path.is_empty() { "conv_in.weight".to_string() } else { format!("{path}.conv_in.weight") };
            return Err(UNetError::PathInUse { path, existing });
        }
        let layout = Layout::new(config);
        let norm = NormSpec { groups: config.num_groups, eps: config.norm_eps };
        let temb = layout.temb_channels;
        let init = config.init;
        let res = |p: &Path, io: (i64, i64)| ResBlock::new(p, io, temb, norm, config.dropout, init);

        let time_embedding = TimestepEmbedding::new(&vs.sub("time_embedding"), layout.ch, init)?;
        let conv_in = Conv2d::new(&vs.sub("conv_in"), layout.in_channels, layout.ch, 3, init.glorot())?;
        let mut down = Vec::with_capacity(layout.down.len());
        for (i, spec) in layout.down.iter().enumerate() {
            let p = vs.sub("down_blocks").sub(i);
            down.push(Level {
                resnets: resnets(&p, &spec.resnets, &res)?,
                attentions: attentions(&p, spec.attention, spec.resnets.len(), spec.channels, norm, init)?,
                resample: spec.downsample.then(|| Downsample::new(&p.sub("downsamplers").sub(0), spec.channels, init)).transpose()?,
            });
        }
        let p = vs.sub("mid_block");
        let c = layout.mid_channels;
        let mid = (
            res(&p.sub("resnets").sub(0), (c, c))?,
            Attention::new(&p.sub("attentions").sub(0), c, norm, init)?,
            res(&p.sub("resnets").sub(1), (c, c))?,
        );
        let mut up = Vec::with_capacity(layout.up.len());
        for (i, spec) in layout.up.iter().enumerate() {
            let p = vs.sub("up_blocks").sub(i);
            up.push(Level {
                resnets: resnets(&p, &spec.resnets, &res)?,
                attentions: attentions(&p, spec.attention, spec.resnets.len(), spec.channels, norm, init)?,
                resample: spec.upsample.then(|| Upsample::new(&p.sub("upsamplers").sub(0), spec.channels, init)).transpose()?,
            });
        }
        let conv_norm_out = GroupNorm::new(&vs.sub("conv_norm_out"), layout.ch, norm.groups, norm.eps)?;
        let conv_out = Conv2d::new(&vs.sub("conv_out"), layout.ch, layout.out_channels, 3, init.zero())?;
        Ok(UNet { config: config.clone(), time_embedding, conv_in, down, mid, up, conv_norm_out, conv_out })
    }

    /// The config the network was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// `eps_theta(x_t, t)`: x [B, in_channels, H, W] float, t [B] integer
    /// timesteps counted from 0 -> [B, out_channels, H, W]. Dropout is active
    /// only when `train`. H and W need not equal `image_size` but must be
    /// divisible by `2^(levels - 1)`.
    ///
    /// # Panics
    /// When x is not 4-d with `in_channels` channels and such H and W, or t
    /// is not [B]: both come from the caller's code, not from a user.
    pub fn forward_t(&self, x: &Tensor, t: &Tensor, train: bool) -> Tensor {
        self.check_inputs(x, t);
        let temb_act = self.time_embedding.forward(t).silu(); // [B, 4ch]
        let mut h = self.conv_in.forward(x); // [B, ch, H, W]
        let mut skips = Vec::with_capacity(1 + self.down.len() * (self.config.num_res_blocks as usize + 1));
        skips.push(h.shallow_clone());
        for level in &self.down {
            for (j, resnet) in level.resnets.iter().enumerate() {
                h = resnet.forward(&h, &temb_act, train);
                if let Some(attn) = level.attentions.get(j) {
                    h = attn.forward(&h);
                }
                skips.push(h.shallow_clone());
            }
            if let Some(down) = &level.resample {
                h = down.forward(&h); // [B, C, H/2, W/2]
                skips.push(h.shallow_clone());
            }
        }
        h = self.mid.0.forward(&h, &temb_act, train);
        h = self.mid.1.forward(&h);
        h = self.mid.2.forward(&h, &temb_act, train);
        for level in &self.up {
            for (j, resnet) in level.resnets.iter().enumerate() {
                let skip = skips.pop().expect("the layout pairs every up ResBlock with one skip");
                h = resnet.forward(&Tensor::cat(&[&h, &skip], 1), &temb_act, train); // on [B, C + C_skip, H, W]
                if let Some(attn) = level.attentions.get(j) {
                    h = attn.forward(&h);
                }
            }
            if let Some(up) = &level.resample {
                h = up.forward(&h); // [B, C, 2H, 2W]
            }
        }
        self.conv_out.forward(&self.conv_norm_out.forward(&h).silu())
    }

    fn check_inputs(&self, x: &Tensor, t: &Tensor) {
        let size = x.size();
        let factor = 1i64 << (self.config.levels() - 1);
        assert!(
            size.len() == 4 && size[1] == self.config.in_channels && size[2] % factor == 0 && size[3] % factor == 0,
            "UNet::forward_t: x must be [B, {}, H, W] with H and W divisible by {factor}, got {size:?}",
            self.config.in_channels
        );
        assert!(t.size() == [size[0]], "UNet::forward_t: t must be [B] = [{}], got {:?}", size[0], t.size());
    }
}

/// The level's ResBlocks `resnets.{j}` with `(in, out)` channels `io[j]`.
fn resnets(
    p: &Path,
    io: &[(i64, i64)],
    res: &impl Fn(&Path, (i64, i64)) -> Result<ResBlock, tch::TchError>,
) -> Result<Vec<ResBlock>, tch::TchError> {
    io.iter().enumerate().map(|(j, &io)| res(&p.sub("resnets").sub(j), io)).collect()
}

/// `count` attention blocks `attentions.{j}` when the level has attention.
fn attentions(
    p: &Path,
    has_attention: bool,
    count: usize,
    c: i64,
    norm: NormSpec,
    init: ModelInit,
) -> Result<Vec<Attention>, tch::TchError> {
    if !has_attention {
        return Ok(Vec::new());
    }
    (0..count).map(|j| Attention::new(&p.sub("attentions").sub(j), c, norm, init)).collect()
}
