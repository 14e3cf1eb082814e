//! Why a job task failed on this worker: the coordinator gets the message
//! as the task's result (it fails the job, not this worker).

use ddpm::wire::WireError;

use super::inputs::InputError;
use crate::device::error::DeviceError;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// An assignment this worker cannot run (a sampler or an analysis it
    /// does not know).
    #[error(transparent)]
    Assignment(#[from] WireError),
    /// An assignment whose numbers do not describe a task.
    #[error("{0}")]
    Shape(String),
    #[error(transparent)]
    Inputs(#[from] InputError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}
