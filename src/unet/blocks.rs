//! The U-Net's building blocks (docs/ddpm.md section 6), each creating its
//! parameters under the diffusers `UNet2DModel` names.
//!
//! Initialisation is the config's [`ModelInit`]. `paper` follows the
//! paper's code: weights Glorot-uniform (variance scaling 1, fan_avg,
//! uniform), biases zero, GroupNorm scale one; the last conv of each
//! ResBlock, the attention output projection and the output conv start at
//! zero, so every residual branch starts as identity. `pytorch` is what
//! diffusers' `UNet2DModel` gets from `torch.nn`'s defaults: every conv and
//! dense weight and bias `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (kaiming
//! uniform with `a = sqrt(5)`), nothing zero, GroupNorm scale one.

use tch::nn::{Init, Path};
use tch::{Kind, TchError, Tensor};

use super::config::ModelInit;

/// Glorot-uniform: `U(-l, l)` with `l = sqrt(6 / (fan_in + fan_out))`, the
/// TF `variance_scaling(1, 'fan_avg', 'uniform')` of the paper's code.
fn glorot(fan_in: i64, fan_out: i64) -> Init {
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform { lo: -limit, up: limit }
}

/// How one layer's weight and bias start.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightInit {
    /// Glorot-uniform weight, zero bias.
    Glorot,
    /// Zero weight and bias.
    Zero,
    /// `torch.nn.Conv2d` / `Linear` defaults: weight and bias
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
    PyTorch,
}

impl ModelInit {
    /// A layer the paper initialises Glorot-uniform.
    pub(crate) fn glorot(self) -> WeightInit {
        match self {
            ModelInit::Paper => WeightInit::Glorot,
            ModelInit::Pytorch => WeightInit::PyTorch,
        }
    }

    /// A layer the paper starts at zero (the end of a residual branch).
    pub(crate) fn zero(self) -> WeightInit {
        match self {
            ModelInit::Paper => WeightInit::Zero,
            ModelInit::Pytorch => WeightInit::PyTorch,
        }
    }
}

/// The `weight` (`dims`, output first) and `bias` of a layer.
fn weight_and_bias(p: &Path, dims: &[i64], fan_in: i64, fan_out: i64, init: WeightInit) -> Result<(Tensor, Tensor), TchError> {
    let (w, b) = match init {
        WeightInit::Glorot => (glorot(fan_in, fan_out), Init::Const(0.0)),
        WeightInit::Zero => (Init::Const(0.0), Init::Const(0.0)),
        WeightInit::PyTorch => {
            let bound = 1.0 / (fan_in as f64).sqrt();
            (Init::Uniform { lo: -bound, up: bound }, Init::Uniform { lo: -bound, up: bound })
        }
    };
    Ok((p.f_var("weight", dims, w)?, p.f_var("bias", &dims[..1], b)?))
}

/// A 2-d convolution with bias, `weight` [out, in, k, k].
pub(crate) struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    padding: i64,
}

impl Conv2d {
    /// A `k x k` conv, stride 1, padded to keep the size when `same`.
    pub fn new(p: &Path, cin: i64, cout: i64, k: i64, init: WeightInit) -> Result<Self, TchError> {
        let (weight, bias) = weight_and_bias(p, &[cout, cin, k, k], cin * k * k, cout * k * k, init)?;
        Ok(Self { weight, bias, padding: k / 2 })
    }

    /// [B, in, H, W] -> [B, out, H, W]
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, Some(&self.bias), [1, 1], [self.padding, self.padding], [1, 1], 1)
    }

    /// Stride-2 conv without padding: [B, C, H + 1, W + 1] -> [B, C, H/2, W/2].
    fn forward_stride2_unpadded(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, Some(&self.bias), [2, 2], [0, 0], [1, 1], 1)
    }
}

/// A dense layer with bias, `weight` [out, in] (diffusers/PyTorch layout).
pub(crate) struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn new(p: &Path, cin: i64, cout: i64, init: WeightInit) -> Result<Self, TchError> {
        let (weight, bias) = weight_and_bias(p, &[cout, cin], cin, cout, init)?;
        Ok(Self { weight, bias })
    }

    /// [..., in] -> [..., out]
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

/// GroupNorm with a learned per-channel scale and shift.
pub(crate) struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    pub fn new(p: &Path, channels: i64, groups: i64, eps: f64) -> Result<Self, TchError> {
        let weight = p.f_var("weight", &[channels], Init::Const(1.0))?;
        let bias = p.f_var("bias", &[channels], Init::Const(0.0))?;
        Ok(Self { weight, bias, groups, eps })
    }

    /// [B, C, H, W] -> [B, C, H, W]
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(self.groups, Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// Norm settings shared by every block.
#[derive(Clone, Copy)]
pub(crate) struct NormSpec {
    pub groups: i64,
    pub eps: f64,
}

/// Sinusoidal timestep embedding followed by Dense(ch, 4ch), swish,
/// Dense(4ch, 4ch) (diffusers `time_embedding.linear_{1,2}`).
pub(crate) struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    ch: i64,
}

impl TimestepEmbedding {
    pub fn new(p: &Path, ch: i64, init: ModelInit) -> Result<Self, TchError> {
        Ok(Self {
            linear_1: Linear::new(&p.sub("linear_1"), ch, 4 * ch, init.glorot())?,
            linear_2: Linear::new(&p.sub("linear_2"), 4 * ch, 4 * ch, init.glorot())?,
            ch,
        })
    }

    /// Timesteps [B] (0-based, any numeric kind, any device) -> embedding
    /// [B, 4ch] on the weights' device.
    pub fn forward(&self, t: &Tensor) -> Tensor {
        let half = self.ch / 2;
        // freq_i = exp(-ln(10000) i / (half - 1)), computed in float32 with the
        // same operations, in the same order, as diffusers' get_timestep_embedding
        // (freq_shift 1): at t ~ 1000 one float32 ulp of t * freq is ~6e-5, so a
        // different order of operations would show in the golden comparison.
        let t = t.to_device(self.linear_1.weight.device());
        let freqs = (Tensor::arange(half, (Kind::Float, t.device())) * -(10000f64.ln()) / (half - 1) as f64).exp();
        let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0); // [B, half]
                                                                             // [B, ch], layout [sin, cos], in the weights' kind (as diffusers casts to the model dtype).
        let emb = Tensor::cat(&[args.sin(), args.cos()], 1).to_kind(self.linear_1.weight.kind());
        self.linear_2.forward(&self.linear_1.forward(&emb).silu())
    }
}

/// ResBlock(in, out): `h = conv1(swish(GN(x)))`, `h += Dense(swish(temb))`,
/// `h = conv2(dropout(swish(GN(h))))`, return `shortcut(x) + h`.
pub(crate) struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    dropout: f64,
}

impl ResBlock {
    pub fn new(p: &Path, (cin, cout): (i64, i64), temb: i64, norm: NormSpec, dropout: f64, init: ModelInit) -> Result<Self, TchError> {
        let conv_shortcut = if cin != cout { Some(Conv2d::new(&p.sub("conv_shortcut"), cin, cout, 1, init.glorot())?) } else { None };
        Ok(Self {
            norm1: GroupNorm::new(&p.sub("norm1"), cin, norm.groups, norm.eps)?,
            conv1: Conv2d::new(&p.sub("conv1"), cin, cout, 3, init.glorot())?,
            time_emb_proj: Linear::new(&p.sub("time_emb_proj"), temb, cout, init.glorot())?,
            norm2: GroupNorm::new(&p.sub("norm2"), cout, norm.groups, norm.eps)?,
            conv2: Conv2d::new(&p.sub("conv2"), cout, cout, 3, init.zero())?,
            conv_shortcut,
            dropout,
        })
    }

    /// x [B, in, H, W], `temb_act` = swish(temb) [B, temb] -> [B, out, H, W].
    /// Every ResBlock applies swish to the same embedding, so the caller
    /// computes it once.
    pub fn forward(&self, x: &Tensor, temb_act: &Tensor, train: bool) -> Tensor {
        // [B, out, H, W]; the in-place add is safe: conv backward needs its input, not its output.
        let mut h = self.conv1.forward(&self.norm1.forward(x).silu());
        h += self.time_emb_proj.forward(temb_act).unsqueeze(-1).unsqueeze(-1); // + [B, out, 1, 1]
        let mut h = self.norm2.forward(&h).silu();
        if train && self.dropout > 0.0 {
            h = h.dropout(self.dropout, true);
        }
        let mut h = self.conv2.forward(&h);
        match &self.conv_shortcut {
            Some(shortcut) => h += shortcut.forward(x),
            None => h += x,
        }
        h
    }
}

/// Single-head self-attention over all H*W positions with a residual:
/// `x + proj_out(softmax(q^T k / sqrt(C)) v)`, q, k, v from GN(x). The 1x1
/// convs of the paper are dense layers over channels (diffusers `to_q`,
/// `to_k`, `to_v`, `to_out.0`, each [C, C]).
pub(crate) struct Attention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    channels: i64,
}

impl Attention {
    pub fn new(p: &Path, c: i64, norm: NormSpec, init: ModelInit) -> Result<Self, TchError> {
        Ok(Self {
            group_norm: GroupNorm::new(&p.sub("group_norm"), c, norm.groups, norm.eps)?,
            to_q: Linear::new(&p.sub("to_q"), c, c, init.glorot())?,
            to_k: Linear::new(&p.sub("to_k"), c, c, init.glorot())?,
            to_v: Linear::new(&p.sub("to_v"), c, c, init.glorot())?,
            to_out: Linear::new(&p.sub("to_out").sub(0), c, c, init.zero())?,
            channels: c,
        })
    }

    /// [B, C, H, W] -> [B, C, H, W]
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let c = self.channels;
        // One GEMM for q, k and v: the weights are small next to the activations.
        let w_qkv = Tensor::cat(&[&self.to_q.weight, &self.to_k.weight, &self.to_v.weight], 0); // [3C, C]
        let b_qkv = Tensor::cat(&[&self.to_q.bias, &self.to_k.bias, &self.to_v.bias], 0); // [3C]
        let hn = self.group_norm.forward(x).flatten(2, -1).transpose(1, 2).contiguous(); // [B, HW, C]
        let qkv = hn.linear(&w_qkv, Some(&b_qkv)); // [B, HW, 3C]
        let head = |i: i64| qkv.narrow(2, i * c, c).unsqueeze(1); // [B, 1, HW, C]
        let scale = 1.0 / (c as f64).sqrt();
        let a = Tensor::scaled_dot_product_attention(&head(0), &head(1), &head(2), None::<Tensor>, 0.0, false, scale, false); // [B, 1, HW, C]
        let out = self.to_out.forward(&a.squeeze_dim(1)); // [B, HW, C]
        x + out.transpose(1, 2).reshape(x.size()) // [B, C, HW] viewed as [B, C, H, W]
    }
}

/// Stride-2 3x3 conv that pads only right and bottom by one (TF "SAME",
/// diffusers `downsample_padding=0`): [B, C, H, W] -> [B, C, H/2, W/2].
pub(crate) struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    pub fn new(p: &Path, c: i64, init: ModelInit) -> Result<Self, TchError> {
        Ok(Self { conv: Conv2d::new(&p.sub("conv"), c, c, 3, init.glorot())? })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward_stride2_unpadded(&x.constant_pad_nd([0, 1, 0, 1]))
    }
}

/// Nearest-neighbour x2 then a 3x3 conv: [B, C, H, W] -> [B, C, 2H, 2W].
pub(crate) struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(p: &Path, c: i64, init: ModelInit) -> Result<Self, TchError> {
        Ok(Self { conv: Conv2d::new(&p.sub("conv"), c, c, 3, init.glorot())? })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let size = x.size(); // [B, C, H, W]
        let (h, w) = (size[2], size[3]);
        self.conv.forward(&x.upsample_nearest2d([2 * h, 2 * w], 2.0, 2.0))
    }
}
