//! Training: the flat parameter buffer, the `L_simple` step, Adam and the
//! EMA, sampling, and a single-process trainer that is the reference the
//! distributed run must reproduce.
//!
//! This is single-device code; distribution lives in the coordinator and
//! worker crates, which call [`step::loss_and_grad`] on workers and
//! [`TrainState::apply`] everywhere.

pub mod analysis;
pub mod autocast;
mod error;
pub mod flat;
pub mod fused;
pub mod local;
pub mod optim;
pub mod param_digest;
pub mod replica;
pub mod sample;
pub mod step;

pub use error::TrainError;
pub use replica::{Outcome, TrainState};
