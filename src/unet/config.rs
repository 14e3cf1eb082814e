//! `UNetConfig`: the shape of the paper's U-Net, its presets and validation.

use serde::{Deserialize, Serialize};

use super::error::UNetError;

/// The hyper-parameters of the paper's U-Net (docs/ddpm.md section 6).
///
/// `Default` is the CIFAR-10 model of the paper. Level `i` of the U-Net runs
/// at resolution `image_size / 2^i` with `ch * ch_mult[i]` channels; a level
/// has attention blocks when its resolution is listed in `attn_resolutions`.
/// The middle of the network always has one attention block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNetConfig {
    /// Height and width of the (square) training images; decides which
    /// levels get attention. Must be divisible by `2^(levels - 1)`.
    pub image_size: i64,
    /// Channels of the input images (3 for RGB).
    pub in_channels: i64,
    /// Channels of the output (3: the predicted noise of an RGB image).
    pub out_channels: i64,
    /// Base width: the channels of `conv_in` and of level 0, and the width of
    /// the sinusoidal timestep embedding (the MLP after it has `4 * ch`).
    pub ch: i64,
    /// Width multiplier per level; `ch_mult[0]` must be 1 (level 0 has `ch`
    /// channels, as in every paper config and in diffusers' UNet2DModel).
    pub ch_mult: Vec<i64>,
    /// ResBlocks per level on the way down (the way up has one more).
    pub num_res_blocks: i64,
    /// Resolutions (e.g. 16 for 16x16) whose levels get attention blocks.
    pub attn_resolutions: Vec<i64>,
    /// Dropout probability inside every ResBlock, applied only in training.
    pub dropout: f64,
    /// Groups of every GroupNorm (32 in the paper).
    pub num_groups: i64,
    /// Epsilon of every GroupNorm (1e-6 in the paper's code).
    pub norm_eps: f64,
    /// How the weights start (`paper` or `pytorch`, see [`ModelInit`]);
    /// matters only for a run's first step, a checkpoint carries weights.
    pub init: ModelInit,
}

/// The initial weights of a new run (blocks.rs has the distributions).
///
/// `paper` (the default) is the official code's: Glorot-uniform, zero
/// biases, and every residual branch's last layer and the output conv at
/// zero. `pytorch` is `torch.nn`'s default initialisation, which a diffusers
/// `UNet2DModel` trainer gets: nothing at zero. docs/correctness.md ("Sample
/// quality against PyTorch") has what each does at small scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelInit {
    #[default]
    Paper,
    Pytorch,
}

impl Default for UNetConfig {
    /// The paper's CIFAR-10 model, [`UNetConfig::cifar10`].
    fn default() -> Self {
        Self::cifar10()
    }
}

impl UNetConfig {
    /// Names accepted by [`UNetConfig::preset`].
    pub const PRESETS: &'static [&'static str] = &["cifar10", "lsun256", "tiny"];

    /// The preset called `name` (one of [`UNetConfig::PRESETS`]).
    pub fn preset(name: &str) -> Result<Self, UNetError> {
        match name {
            "cifar10" => Ok(Self::cifar10()),
            "lsun256" => Ok(Self::lsun256()),
            "tiny" => Ok(Self::tiny()),
            _ => Err(UNetError::UnknownPreset { name: name.to_string(), valid: Self::PRESETS.to_vec() }),
        }
    }

    /// The paper's CIFAR-10 model: 32x32, ch 128, ch_mult 1,2,2,2, two
    /// ResBlocks per level, attention at 16x16, dropout 0.1;
    /// 35,746,307 parameters.
    pub fn cifar10() -> Self {
        Self {
            image_size: 32,
            in_channels: 3,
            out_channels: 3,
            ch: 128,
            ch_mult: vec![1, 2, 2, 2],
            num_res_blocks: 2,
            attn_resolutions: vec![16],
            dropout: 0.1,
            num_groups: 32,
            norm_eps: 1e-6,
            init: ModelInit::Paper,
        }
    }

    /// The paper's 256x256 model (LSUN, CelebA-HQ): ch 128, ch_mult
    /// 1,1,2,2,4,4, two ResBlocks per level, attention at 16x16, no dropout;
    /// 113,673,219 parameters.
    pub fn lsun256() -> Self {
        Self { image_size: 256, ch_mult: vec![1, 1, 2, 2, 4, 4], dropout: 0.0, ..Self::cifar10() }
    }

    /// A small model of the same design for tests and CPU demos: 32x32,
    /// ch 32, ch_mult 1,1,2, one ResBlock per level, attention at 16x16, no
    /// dropout; 774,531 parameters. A forward and backward pass at batch 16
    /// takes about 0.3 s on one CPU core (ch_mult 1,2,2 would take 0.5 s).
    pub fn tiny() -> Self {
        Self {
            image_size: 32,
            ch: 32,
            ch_mult: vec![1, 1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![16],
            dropout: 0.0,
            ..Self::cifar10()
        }
    }

    /// Number of levels (resolutions) of the U-Net.
    pub fn levels(&self) -> usize {
        self.ch_mult.len()
    }

    /// Resolution of level `level`: `image_size / 2^level`.
    pub fn resolution(&self, level: usize) -> i64 {
        self.image_size >> level.min(62)
    }

    /// Checks that a network can be built from this config; the error names
    /// the field and what would be accepted.
    pub fn validate(&self) -> Result<(), UNetError> {
        let bad = |field: &'static str, reason: String| Err(UNetError::InvalidConfig { field, reason });
        for (field, value) in [("image_size", self.image_size), ("in_channels", self.in_channels), ("out_channels", self.out_channels)] {
            if value < 1 {
                return bad(field, format!("must be at least 1, got {value}"));
            }
        }
        if self.ch < 4 || self.ch % 2 != 0 {
            return bad(
                "ch",
                format!(
                    "must be even and at least 4 (the timestep embedding has ch/2 frequencies spaced by ln(10000)/(ch/2 - 1)), got {}",
                    self.ch
                ),
            );
        }
        if self.ch_mult.is_empty() {
            return bad("ch_mult", "must list at least one level".into());
        }
        if let Some(m) = self.ch_mult.iter().find(|&&m| m < 1) {
            return bad("ch_mult", format!("multipliers must be at least 1, got {m} in {:?}", self.ch_mult));
        }
        if self.ch_mult[0] != 1 {
            return bad(
                "ch_mult",
                format!(
                    "the first multiplier must be 1 (level 0 has the `ch` channels of conv_in, as in diffusers' UNet2DModel); \
                 got {:?}: scale `ch` instead",
                    self.ch_mult
                ),
            );
        }
        if self.ch_mult.len() > 16 {
            return bad("ch_mult", format!("at most 16 levels, got {}", self.ch_mult.len()));
        }
        if self.num_res_blocks < 1 {
            return bad("num_res_blocks", format!("must be at least 1, got {}", self.num_res_blocks));
        }
        if self.num_groups < 1 {
            return bad("num_groups", format!("must be at least 1, got {}", self.num_groups));
        }
        for (level, &m) in self.ch_mult.iter().enumerate() {
            let channels = self.ch.saturating_mul(m);
            if channels % self.num_groups != 0 {
                return bad(
                    "num_groups",
                    format!(
                        "level {level} has ch * ch_mult[{level}] = {channels} channels, not divisible by num_groups = {}",
                        self.num_groups
                    ),
                );
            }
        }
        let factor = 1i64 << (self.levels() - 1);
        if self.image_size % factor != 0 {
            return bad(
                "image_size",
                format!(
                    "{} levels halve the resolution {} times, so image_size must be divisible by {factor}, got {}",
                    self.levels(),
                    self.levels() - 1,
                    self.image_size
                ),
            );
        }
        let reachable: Vec<i64> = (0..self.levels()).map(|l| self.resolution(l)).collect();
        if let Some(r) = self.attn_resolutions.iter().find(|r| !reachable.contains(r)) {
            return bad("attn_resolutions", format!("resolution {r} is not a level of this U-Net; its levels run at {reachable:?}"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("must be in [0, 1), got {}", self.dropout));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return bad("norm_eps", format!("must be positive and finite, got {}", self.norm_eps));
        }
        Ok(())
    }

    /// Whether level `level` has attention blocks.
    pub fn has_attention(&self, level: usize) -> bool {
        self.attn_resolutions.contains(&self.resolution(level))
    }
}
