//! `config.json` of diffusers' `UNet2DModel`, to and from `UNetConfig`.

use serde_json::{json, Map, Value};

use crate::unet::config::UNetConfig;
use crate::unet::error::UNetError;

/// The diffusers version whose `UNet2DModel` layout and config this module
/// was checked against (tests/golden/gen_unet.py).
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// The diffusers `UNet2DModel` `config.json` of the network `config`
/// describes (`UNet2DModel.from_pretrained(dir)` then builds the same
/// network): single-head attention (`attention_head_dim: null`), `[sin, cos]`
/// embedding (`flip_sin_to_cos: false`, `freq_shift: 1`), right/bottom padded
/// downsampling (`downsample_padding: 0`).
pub fn config_json(config: &UNetConfig) -> Value {
    let levels = config.levels();
    let down: Vec<&str> = (0..levels).map(|l| if config.has_attention(l) { "AttnDownBlock2D" } else { "DownBlock2D" }).collect();
    let up: Vec<&str> = (0..levels).rev().map(|l| if config.has_attention(l) { "AttnUpBlock2D" } else { "UpBlock2D" }).collect();
    let block_out_channels: Vec<i64> = config.ch_mult.iter().map(|m| config.ch * m).collect();
    json!({
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "add_attention": true,
        "attention_head_dim": null,
        "attn_norm_num_groups": null,
        "block_out_channels": block_out_channels,
        "center_input_sample": false,
        "class_embed_type": null,
        "down_block_types": down,
        "downsample_padding": 0,
        "downsample_type": "conv",
        "dropout": config.dropout,
        "flip_sin_to_cos": false,
        "freq_shift": 1,
        "in_channels": config.in_channels,
        "layers_per_block": config.num_res_blocks,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2D",
        "norm_eps": config.norm_eps,
        "norm_num_groups": config.num_groups,
        "num_class_embeds": null,
        "num_train_timesteps": null,
        "out_channels": config.out_channels,
        "resnet_time_scale_shift": "default",
        "sample_size": config.image_size,
        "time_embedding_dim": null,
        "time_embedding_type": "positional",
        "up_block_types": up,
        "upsample_type": "conv"
    })
}

/// A key of a diffusers config, read with the class default when absent.
struct Reader<'a> {
    map: &'a Map<String, Value>,
}

fn unsupported(key: &str, reason: impl Into<String>) -> UNetError {
    UNetError::UnsupportedDiffusersConfig { key: key.to_string(), reason: reason.into() }
}

impl Reader<'_> {
    fn get<'v>(&'v self, key: &str, default: &'v Value) -> &'v Value {
        self.map.get(key).unwrap_or(default)
    }

    fn int(&self, key: &str, default: i64) -> Result<i64, UNetError> {
        match self.map.get(key) {
            None => Ok(default),
            Some(v) => v.as_i64().ok_or_else(|| unsupported(key, format!("expected an integer, got {v}"))),
        }
    }

    /// A key whose null (or absence) means "derived from other keys".
    fn opt_int(&self, key: &str) -> Result<Option<i64>, UNetError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| unsupported(key, format!("expected null or an integer, got {v}"))),
        }
    }

    fn float(&self, key: &str, default: f64) -> Result<f64, UNetError> {
        match self.map.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| unsupported(key, format!("expected a number, got {v}"))),
        }
    }

    fn ints(&self, key: &str) -> Result<Vec<i64>, UNetError> {
        let v = self.map.get(key).ok_or_else(|| unsupported(key, "missing"))?;
        v.as_array()
            .and_then(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| unsupported(key, format!("expected a list of integers, got {v}")))
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, UNetError> {
        let v = self.map.get(key).ok_or_else(|| unsupported(key, "missing"))?;
        v.as_array()
            .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| unsupported(key, format!("expected a list of strings, got {v}")))
    }

    /// The key must be absent or equal one of `allowed`.
    fn require(&self, key: &str, allowed: &[Value], why: &str) -> Result<(), UNetError> {
        match self.map.get(key) {
            Some(v) if !allowed.contains(v) => Err(unsupported(key, format!("{v} is not supported: {why}"))),
            _ => Ok(()),
        }
    }
}

/// Keys of `UNet2DModel` that this reader understands; any other key (other
/// than `_`-prefixed bookkeeping) is refused rather than silently ignored.
const KNOWN_KEYS: &[&str] = &[
    "act_fn",
    "add_attention",
    "attention_head_dim",
    "attn_norm_num_groups",
    "block_out_channels",
    "center_input_sample",
    "class_embed_type",
    "down_block_types",
    "downsample_padding",
    "downsample_type",
    "dropout",
    "flip_sin_to_cos",
    "freq_shift",
    "in_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "mid_block_type",
    "norm_eps",
    "norm_num_groups",
    "num_class_embeds",
    "num_train_timesteps",
    "out_channels",
    "resnet_time_scale_shift",
    "sample_size",
    "time_embedding_dim",
    "time_embedding_type",
    "up_block_types",
    "upsample_type",
];

/// Reads a diffusers `UNet2DModel` `config.json` (google/ddpm-cifar10-32
/// style). Absent keys take `UNet2DModel`'s defaults, except
/// `attention_head_dim`: the converted DDPM checkpoints predate the key and
/// were trained with single-head attention, which is what this U-Net runs
/// (diffusers' own default of 8 would split them into heads of 8 channels).
/// Configs this U-Net cannot represent are refused with the key and reason.
pub fn config_from_json(value: &Value) -> Result<UNetConfig, UNetError> {
    let map = value.as_object().ok_or_else(|| unsupported("(root)", "a config.json must be a JSON object"))?;
    if let Some(key) = map.keys().find(|k| !k.starts_with('_') && !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(unsupported(key, "unknown UNet2DModel key: cannot tell whether this U-Net represents it"));
    }
    let r = Reader { map };
    r.require("_class_name", &[json!("UNet2DModel")], "only UNet2DModel configs describe this U-Net")?;
    r.require("time_embedding_type", &[json!("positional")], "the timestep embedding is sinusoidal")?;
    // Absent flip_sin_to_cos means diffusers' true, a [cos, sin] layout.
    if map.get("flip_sin_to_cos") != Some(&json!(false)) {
        return Err(unsupported("flip_sin_to_cos", "must be false: the embedding layout is [sin, cos]"));
    }
    // Absent freq_shift means diffusers' 0; ours divides by half - 1, i.e. 1.
    if r.int("freq_shift", 0)? != 1 {
        return Err(unsupported("freq_shift", "must be 1: frequencies are exp(-ln(10000) i / (ch/2 - 1))"));
    }
    if r.int("downsample_padding", 1)? != 0 {
        return Err(unsupported("downsample_padding", "must be 0: downsampling pads only right and bottom (TF SAME)"));
    }
    r.require("center_input_sample", &[json!(false)], "inputs are used as given")?;
    r.require("act_fn", &[json!("silu"), json!("swish")], "the activation is swish")?;
    r.require("mid_block_type", &[json!("UNetMidBlock2D")], "the middle is ResBlock, attention, ResBlock")?;
    r.require("add_attention", &[json!(true)], "the middle has an attention block")?;
    r.require("mid_block_scale_factor", &[json!(1), json!(1.0)], "residuals are not rescaled")?;
    r.require("resnet_time_scale_shift", &[json!("default")], "the timestep embedding is added, not a scale-shift")?;
    r.require("downsample_type", &[json!("conv")], "downsampling is a stride-2 conv")?;
    r.require("upsample_type", &[json!("conv")], "upsampling is nearest x2 then a conv")?;
    r.require("class_embed_type", &[Value::Null], "the model is unconditional")?;
    r.require("num_class_embeds", &[Value::Null], "the model is unconditional")?;

    let block_out_channels = r.ints("block_out_channels")?;
    let ch = *block_out_channels.first().ok_or_else(|| unsupported("block_out_channels", "is empty"))?;
    if ch <= 0 || block_out_channels.iter().any(|&c| c <= 0 || c % ch != 0) {
        return Err(unsupported(
            "block_out_channels",
            format!("{block_out_channels:?}: every width must be a positive multiple of the first"),
        ));
    }
    let ch_mult: Vec<i64> = block_out_channels.iter().map(|c| c / ch).collect();
    let image_size = match r.get("sample_size", &Value::Null) {
        Value::Number(n) => n.as_i64().ok_or_else(|| unsupported("sample_size", format!("{n} is not an integer")))?,
        Value::Array(a) if a.len() == 2 && a[0] == a[1] => a[0].as_i64().ok_or_else(|| unsupported("sample_size", "not integers"))?,
        other => return Err(unsupported("sample_size", format!("{other}: expected the side of a square image"))),
    };
    let config_without_attention = UNetConfig {
        image_size,
        in_channels: r.int("in_channels", 3)?,
        out_channels: r.int("out_channels", 3)?,
        ch,
        ch_mult,
        num_res_blocks: r.int("layers_per_block", 2)?,
        attn_resolutions: Vec::new(),
        dropout: r.float("dropout", 0.0)?,
        num_groups: r.int("norm_num_groups", 32)?,
        norm_eps: r.float("norm_eps", 1e-5)?,
        // The weights come with the config; this matters only to a new run.
        init: Default::default(),
    };
    let config = UNetConfig { attn_resolutions: attention_levels(&r, &config_without_attention)?, ..config_without_attention };
    if r.opt_int("time_embedding_dim")?.is_some_and(|d| d != 4 * ch) {
        return Err(unsupported("time_embedding_dim", format!("must be null or 4 * block_out_channels[0] = {}", 4 * ch)));
    }
    if r.opt_int("attn_norm_num_groups")?.is_some_and(|g| g != config.num_groups) {
        return Err(unsupported("attn_norm_num_groups", "must be null or equal norm_num_groups"));
    }
    if let Some(dim) = r.opt_int("attention_head_dim")? {
        // Heads = channels / dim in every attention block, the middle's included.
        let attention_widths = (0..config.levels()).filter(|&l| config.has_attention(l)).chain([config.levels() - 1]);
        if let Some(c) = attention_widths.map(|l| config.ch * config.ch_mult[l]).find(|&c| c != dim) {
            return Err(unsupported(
                "attention_head_dim",
                format!("{dim} splits the attention over {c} channels into heads; the paper's attention is single-head (null)"),
            ));
        }
    }
    config.validate()?;
    Ok(config)
}

/// The resolutions of the levels whose down and up blocks are the Attn kind;
/// the two lists must mirror each other.
fn attention_levels(r: &Reader<'_>, config: &UNetConfig) -> Result<Vec<i64>, UNetError> {
    let down = r.strings("down_block_types")?;
    let up = r.strings("up_block_types")?;
    let levels = config.levels();
    if down.len() != levels || up.len() != levels {
        return Err(unsupported(
            "down_block_types",
            format!("{} down and {} up block types for {levels} block_out_channels; they must match", down.len(), up.len()),
        ));
    }
    let mut attn_resolutions = Vec::new();
    for (level, kind) in down.iter().enumerate() {
        let attention = match kind.as_str() {
            "DownBlock2D" => false,
            "AttnDownBlock2D" => true,
            other => return Err(unsupported("down_block_types", format!("{other}: only DownBlock2D and AttnDownBlock2D"))),
        };
        let expected = if attention { "AttnUpBlock2D" } else { "UpBlock2D" };
        let mirror = &up[levels - 1 - level];
        if mirror != expected {
            return Err(unsupported(
                "up_block_types",
                format!(
                    "up_block_types[{}] is {mirror} but mirrors down_block_types[{level}] = {kind}: expected {expected}",
                    levels - 1 - level
                ),
            ));
        }
        if attention {
            attn_resolutions.push(config.resolution(level));
        }
    }
    Ok(attn_resolutions)
}
