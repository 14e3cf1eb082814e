//! `ddpm model`: architecture summary and exact parameter count of a U-Net,
//! counted from the architecture (nothing is allocated, so lsun256 is instant).

use std::path::PathBuf;

use anyhow::Context;
use ddpm::unet::{diffusers, Layout, UNetConfig};

/// Which U-Net to describe: a preset or a config file.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("model").required(true).args(["preset", "config"])))]
pub struct ModelArgs {
    /// Model preset: cifar10, lsun256 or tiny.
    #[arg(long)]
    pub preset: Option<String>,
    /// A U-Net config file instead of a preset: `.toml` holds a UNetConfig
    /// (fields not given take the cifar10 values), `.json` a diffusers
    /// UNet2DModel config.json.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ModelArgs) -> anyhow::Result<()> {
    let (name, config) = match (&args.preset, &args.config) {
        (Some(preset), _) => (preset.clone(), UNetConfig::preset(preset)?),
        (None, Some(path)) => (path.display().to_string(), read_config(path)?),
        (None, None) => anyhow::bail!("give --preset NAME or --config FILE"),
    };
    config.validate()?;
    let layout = Layout::new(&config);
    let params = layout.params();
    if args.json {
        let out = serde_json::json!({
            "model": name,
            "params": params.total(),
            "config": config,
            "sections": params,
            "layout": layout,
            "diffusers_config": diffusers::config_json(&config),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", summary(&name, &config, &layout));
    }
    Ok(())
}

fn read_config(path: &std::path::Path) -> anyhow::Result<UNetConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        let value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        Ok(diffusers::config_from_json(&value)?)
    } else {
        toml::from_str(&text).with_context(|| format!("{} is not a U-Net config", path.display()))
    }
}

/// `1234567` -> `1,234,567`.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn summary(name: &str, c: &UNetConfig, layout: &Layout) -> String {
    let params = layout.params();
    let mut s = format!(
        "U-Net {name}: {size}x{size}, {inc} -> {outc} channels, ch {ch}, ch_mult {mult:?}, num_res_blocks {nrb}, \
         attention at {attn:?}, dropout {drop}, GroupNorm({g}, eps {eps:e})\n\n",
        size = c.image_size,
        inc = c.in_channels,
        outc = c.out_channels,
        ch = c.ch,
        mult = c.ch_mult,
        nrb = c.num_res_blocks,
        attn = c.attn_resolutions,
        drop = c.dropout,
        g = c.num_groups,
        eps = c.norm_eps,
    );
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let dash = || "-".to_string();
    // section, resolution, channels, res blocks, attention, resample, params
    let mut rows: Vec<[String; 7]> = vec![
        ["section", "res", "channels", "res blocks", "attention", "resample", "params"].map(String::from),
        ["time embedding".into(), dash(), layout.temb_channels.to_string(), dash(), dash(), dash(), thousands(params.time_embedding)],
        ["conv_in".into(), c.image_size.to_string(), layout.ch.to_string(), dash(), dash(), dash(), thousands(params.conv_in)],
    ];
    for (i, (l, n)) in layout.down.iter().zip(&params.down).enumerate() {
        let resample = if l.downsample { "down".into() } else { dash() };
        let blocks = l.resnets.len().to_string();
        rows.push([
            format!("down_blocks.{i}"),
            l.resolution.to_string(),
            l.channels.to_string(),
            blocks,
            yes_no(l.attention),
            resample,
            thousands(*n),
        ]);
    }
    let deepest = layout.down.last().map_or(c.image_size, |l| l.resolution);
    rows.push([
        "mid_block".into(),
        deepest.to_string(),
        layout.mid_channels.to_string(),
        "2".into(),
        yes_no(true),
        dash(),
        thousands(params.mid),
    ]);
    for (i, (l, n)) in layout.up.iter().zip(&params.up).enumerate() {
        let resample = if l.upsample { "up".into() } else { dash() };
        let blocks = l.resnets.len().to_string();
        rows.push([
            format!("up_blocks.{i}"),
            l.resolution.to_string(),
            l.channels.to_string(),
            blocks,
            yes_no(l.attention),
            resample,
            thousands(*n),
        ]);
    }
    rows.push([
        "out (norm, conv)".into(),
        c.image_size.to_string(),
        layout.out_channels.to_string(),
        dash(),
        dash(),
        dash(),
        thousands(params.out),
    ]);
    rows.push(["total".into(), String::new(), String::new(), String::new(), String::new(), String::new(), thousands(params.total())]);
    for [section, res, channels, blocks, attn, resample, n] in rows {
        s += &format!("{section:<18}{res:>6}{channels:>10}{blocks:>12}{attn:>11}{resample:>10}{n:>14}\n");
    }
    s
}
