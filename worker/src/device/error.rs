//! Why the device thread could not do what it was asked: one typed error
//! for every command, wrapping the library's typed errors and naming the
//! step that failed. The async side turns it into `anyhow` (a training
//! failure ends the worker) or into a task's error text (a job task's
//! failure fails the job, not the worker).
//!
//! The library errors are held, not marked as `#[source]`, and printed in
//! the message: the worker prints errors with `{:#}`, which would otherwise
//! repeat the library's text once per level.

use ddpm::data::DataError;
use ddpm::diffusion::DiffusionError;
use ddpm::eval::EvalError;
use ddpm::train::sample::SampleError;
use ddpm::unet::UNetError;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The thread cannot be started (the OS refused a thread).
    #[error("cannot start the device thread: {0}")]
    Spawn(std::io::Error),
    /// The thread panicked or returned while starting.
    #[error("the device thread died while starting")]
    DiedStarting,
    /// The thread is gone (it panicked): no command can run any more.
    #[error("the device thread has stopped")]
    Stopped,
    /// The run's model cannot be built on this device.
    #[error("building the model: {0}")]
    Model(UNetError),
    /// The run's diffusion cannot be set up.
    #[error("setting up the diffusion: {0}")]
    Diffusion(DiffusionError),
    /// A training state tensor of another model.
    #[error("state tensor {name} has {got} elements, the model {want}")]
    StateSize { name: &'static str, got: usize, want: usize },
    /// Asked for its state with the EMA, which only a replica of a run
    /// with a worker-to-worker backend keeps.
    #[error("this replica keeps no EMA (the run's [dist] backend is the coordinator's star, or its state came without one)")]
    NoReplicaEma,
    /// A checkpoint shard of values the model does not have.
    #[error("asked for values {start}..{end} of the state, but the model has {total}")]
    ShardRange { start: usize, end: usize, total: usize },
    /// A reduced gradient of another model.
    #[error("reduced gradient has {got} elements, the model {want}")]
    GradientSize { got: usize, want: usize },
    /// A job's pinned weights of another model.
    #[error("the job's weights have {got} elements, the model {want}")]
    WeightsSize { got: usize, want: usize },
    /// A training assignment without samples.
    #[error("empty shard")]
    EmptyShard,
    /// A training sample the run's decoder cannot read.
    #[error("sample at position {position}: {error}")]
    Decode { position: u64, error: DataError },
    /// Drawing a sample or evaluation task's images.
    #[error("drawing images: {0}")]
    Sample(SampleError),
    /// Drawing an analysis task's images.
    #[error("drawing analysis images: {0}")]
    Analysis(SampleError),
    /// Loading the Inception TorchScript file.
    #[error("loading the Inception network: {0}")]
    Inception(EvalError),
    /// Feeding images through the Inception network (FID features, IS).
    #[error("measuring the images' features: {0}")]
    Features(EvalError),
    /// Computing the bound in bits/dim.
    #[error("computing the bound: {0}")]
    Bound(EvalError),
    /// An NCCL call of the NCCL backend (joining, the all-reduce, its
    /// asynchronous error or an abort).
    #[error("NCCL: {0}")]
    Nccl(ddpm::nccl::NcclError),
    /// A tensor operation around the NCCL all-reduce.
    #[error("the NCCL all-reduce's tensors: {0}")]
    NcclTensor(tch::TchError),
    /// An all-reduce asked of a thread that has joined no communicator.
    #[error("an NCCL all-reduce without a communicator: join the epoch first")]
    NoCommunicator,
}
