//! The block structure a `UNetConfig` describes: which ResBlocks (with their
//! channels), attention blocks and resamplers each level has. `UNet::new`
//! builds from it, `UNetConfig::param_count` counts from it and `ddpm model`
//! prints it, so the three cannot disagree.

use serde::Serialize;

use super::config::UNetConfig;

/// One level of the down path (diffusers `down_blocks.{level}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DownLevel {
    /// Height and width of the feature maps at this level.
    pub resolution: i64,
    /// Output channels of every block of the level.
    pub channels: i64,
    /// `(in, out)` channels of each ResBlock.
    pub resnets: Vec<(i64, i64)>,
    /// Whether every ResBlock is followed by an attention block.
    pub attention: bool,
    /// Whether the level ends with a stride-2 downsampling conv.
    pub downsample: bool,
}

/// One level of the up path (diffusers `up_blocks.{index}`; index 0 is the
/// deepest level).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpLevel {
    /// Height and width of the feature maps at this level.
    pub resolution: i64,
    /// Output channels of every block of the level.
    pub channels: i64,
    /// `(in, out)` channels of each ResBlock, `in` counting the skip
    /// connection concatenated to its input.
    pub resnets: Vec<(i64, i64)>,
    /// Whether every ResBlock is followed by an attention block.
    pub attention: bool,
    /// Whether the level ends with a nearest x2 upsampling and a conv.
    pub upsample: bool,
}

/// The whole network: time embedding, conv_in, down path, middle, up path, out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layout {
    /// Input image channels.
    pub in_channels: i64,
    /// Output channels.
    pub out_channels: i64,
    /// Base width: conv_in output and sinusoidal embedding width.
    pub ch: i64,
    /// Width of the timestep embedding MLP (`4 * ch`).
    pub temb_channels: i64,
    /// Down path, from the input resolution down.
    pub down: Vec<DownLevel>,
    /// Channels of the middle ResBlock, attention, ResBlock.
    pub mid_channels: i64,
    /// Up path in execution order, from the deepest level up.
    pub up: Vec<UpLevel>,
}

/// Parameter counts per section of the network.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamCounts {
    /// The timestep embedding MLP.
    pub time_embedding: i64,
    /// The first 3x3 conv.
    pub conv_in: i64,
    /// Each down level, including its downsampler.
    pub down: Vec<i64>,
    /// The middle ResBlock, attention, ResBlock.
    pub mid: i64,
    /// Each up level in execution order, including its upsampler.
    pub up: Vec<i64>,
    /// The output GroupNorm and 3x3 conv.
    pub out: i64,
}

impl ParamCounts {
    /// The exact parameter count of the network.
    pub fn total(&self) -> i64 {
        self.time_embedding + self.conv_in + self.down.iter().sum::<i64>() + self.mid + self.up.iter().sum::<i64>() + self.out
    }
}

/// Parameters of a `k x k` conv with bias.
pub fn conv_params(cin: i64, cout: i64, k: i64) -> i64 {
    cin * cout * k * k + cout
}

/// Parameters of a dense layer with bias.
pub fn linear_params(cin: i64, cout: i64) -> i64 {
    cin * cout + cout
}

/// Parameters of a GroupNorm (scale and shift).
pub fn norm_params(c: i64) -> i64 {
    2 * c
}

/// Parameters of a ResBlock: two norms, two 3x3 convs, the timestep
/// projection and the 1x1 shortcut when the width changes.
pub fn resnet_params(cin: i64, cout: i64, temb: i64) -> i64 {
    let shortcut = if cin != cout { conv_params(cin, cout, 1) } else { 0 };
    norm_params(cin) + conv_params(cin, cout, 3) + linear_params(temb, cout) + norm_params(cout) + conv_params(cout, cout, 3) + shortcut
}

/// Parameters of an attention block: a norm and q, k, v, out projections.
pub fn attention_params(c: i64) -> i64 {
    norm_params(c) + 4 * linear_params(c, c)
}

impl Layout {
    /// The layout of `config`. Total for any config (no panics), meaningful
    /// for a valid one.
    pub fn new(config: &UNetConfig) -> Self {
        let ch = config.ch;
        let nrb = config.num_res_blocks.max(0) as usize;
        let levels = config.levels();
        let width = |level: usize| ch.saturating_mul(config.ch_mult[level]);
        // Channels of each skip connection, in the order the down path makes
        // them: conv_in, every down ResBlock (or its attention), every downsampler.
        let mut skips = vec![ch];
        let mut down = Vec::with_capacity(levels);
        let mut h = ch;
        for level in 0..levels {
            let out = width(level);
            let mut resnets = Vec::with_capacity(nrb);
            for _ in 0..nrb {
                resnets.push((h, out));
                h = out;
                skips.push(out);
            }
            let downsample = level + 1 < levels;
            if downsample {
                skips.push(out);
            }
            down.push(DownLevel {
                resolution: config.resolution(level),
                channels: out,
                resnets,
                attention: config.has_attention(level),
                downsample,
            });
        }
        let mid_channels = h;
        let mut up = Vec::with_capacity(levels);
        for level in (0..levels).rev() {
            let out = width(level);
            let mut resnets = Vec::with_capacity(nrb + 1);
            for _ in 0..=nrb {
                let skip = skips.pop().unwrap_or(0);
                resnets.push((h + skip, out));
                h = out;
            }
            up.push(UpLevel {
                resolution: config.resolution(level),
                channels: out,
                resnets,
                attention: config.has_attention(level),
                upsample: level > 0,
            });
        }
        Layout { in_channels: config.in_channels, out_channels: config.out_channels, ch, temb_channels: 4 * ch, down, mid_channels, up }
    }

    /// Parameter counts per section.
    pub fn params(&self) -> ParamCounts {
        let temb = self.temb_channels;
        let level = |resnets: &[(i64, i64)], channels: i64, attention: bool, resample: bool| {
            let mut n: i64 = resnets.iter().map(|&(i, o)| resnet_params(i, o, temb)).sum();
            if attention {
                n += resnets.len() as i64 * attention_params(channels);
            }
            if resample {
                n += conv_params(channels, channels, 3);
            }
            n
        };
        ParamCounts {
            time_embedding: linear_params(self.ch, temb) + linear_params(temb, temb),
            conv_in: conv_params(self.in_channels, self.ch, 3),
            down: self.down.iter().map(|l| level(&l.resnets, l.channels, l.attention, l.downsample)).collect(),
            mid: 2 * resnet_params(self.mid_channels, self.mid_channels, temb) + attention_params(self.mid_channels),
            up: self.up.iter().map(|l| level(&l.resnets, l.channels, l.attention, l.upsample)).collect(),
            out: norm_params(self.ch) + conv_params(self.ch, self.out_channels, 3),
        }
    }
}

// Here rather than in `config.rs`: the count comes from the layout, which
// is built from the config (the config knows nothing of it).
impl UNetConfig {
    /// The exact number of parameters of the network, counted from the
    /// architecture without building it (meaningful for a valid config).
    pub fn param_count(&self) -> i64 {
        Layout::new(self).params().total()
    }
}
