//! The paper's U-Net (docs/ddpm.md section 6).
//!
//! - [`UNetConfig`] (config.rs): hyper-parameters, the `cifar10`, `lsun256`
//!   and `tiny` presets, validation and the exact parameter count;
//! - [`Layout`] (layout.rs): the block structure a config describes, shared by
//!   the builder, the parameter count and `ddpm model`;
//! - [`UNet`] (model.rs) and its blocks (blocks.rs);
//! - [`diffusers`]: weights and `config.json` in the layout of diffusers'
//!   `UNet2DModel`, whose state-dict names are our var-store names.

mod blocks;
mod config;
pub mod diffusers;
mod error;
mod layout;
mod model;

pub use config::{ModelInit, UNetConfig};
pub use error::UNetError;
pub use layout::{DownLevel, Layout, ParamCounts, UpLevel};
pub use model::UNet;

#[cfg(test)]
mod tests;
