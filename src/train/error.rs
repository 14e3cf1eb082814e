//! The errors of training on one device (the single-process trainer).

use crate::unet::UNetError;

/// Why training could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Model(#[from] UNetError),
    #[error(transparent)]
    Diffusion(#[from] crate::diffusion::DiffusionError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}
