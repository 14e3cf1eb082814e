//! Interop with diffusers' `UNet2DModel`: its safetensors weights and its
//! `config.json`. Our var-store names are its state-dict names, so weights
//! map one to one; the pretrained DDPM checkpoints people have
//! (google/ddpm-cifar10-32, google/ddpm-church-256, ...) load directly.

mod config;
mod weights;

use std::path::Path;

use tch::nn::VarStore;
use tch::Device;

use super::config::UNetConfig;
use super::error::UNetError;
use super::model::UNet;

pub use config::{config_from_json, config_json, DIFFUSERS_VERSION};
pub use weights::{load_safetensors, save_safetensors};

/// The weights file of a diffusers model directory.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// The config file of a diffusers model directory.
pub const CONFIG_FILE: &str = "config.json";

/// Writes `dir/config.json` and `dir/diffusion_pytorch_model.safetensors`,
/// a directory that `UNet2DModel.from_pretrained(dir)` loads.
pub fn save_pretrained(vs: &VarStore, config: &UNetConfig, dir: &Path) -> Result<(), UNetError> {
    let config_path = dir.join(CONFIG_FILE);
    let err = |reason: String| UNetError::ConfigFile { path: config_path.clone(), reason };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create the directory: {e}")))?;
    let text = serde_json::to_string_pretty(&config_json(config)).map_err(|e| err(e.to_string()))?;
    std::fs::write(&config_path, text + "\n").map_err(|e| err(format!("cannot write: {e}")))?;
    save_safetensors(vs, &dir.join(WEIGHTS_FILE))
}

/// Reads a diffusers model directory (`config.json` and
/// `diffusion_pytorch_model.safetensors`) into a new U-Net on `device`.
pub fn load_pretrained(dir: &Path, device: Device) -> Result<(VarStore, UNet), UNetError> {
    let config_path = dir.join(CONFIG_FILE);
    let err = |reason: String| UNetError::ConfigFile { path: config_path.clone(), reason };
    let text = std::fs::read_to_string(&config_path).map_err(|e| err(format!("cannot read: {e}")))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    let config = config_from_json(&value)?;
    let mut vs = VarStore::new(device);
    let unet = UNet::new(&vs.root(), &config)?;
    load_safetensors(&mut vs, &dir.join(WEIGHTS_FILE))?;
    Ok((vs, unet))
}

#[cfg(test)]
mod tests;
