//! ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain and Abbeel 2020)
//! as a library shared by the `ddpm` tool, the `ddpm-coord` coordinator and
//! the `ddpm-worker` worker.
//!
//! One module per concept: the diffusion math knows nothing of the network,
//! the network knows nothing of diffusion, and neither knows of gRPC.

pub mod checkpoint;
pub mod config;
pub mod cuda_driver;
pub mod data;
pub mod diffusion;
pub mod eval;
pub mod exit;
pub mod imageio;
pub mod nccl;
pub mod observe;
pub mod plot;
pub mod ring;
pub mod rng;
pub mod runtime;
pub mod store;
pub mod sumsq;
pub mod train;
pub mod unet;
pub mod wire;

/// Code generated from `proto/ddpm.proto` (package `ddpm.v1`).
pub mod proto {
    tonic::include_proto!("ddpm.v1");
}
