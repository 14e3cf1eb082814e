//! What a peer can send wrong on the wire: bad tensor data, and values of
//! the proto's vocabulary that name nothing.

/// Bad tensor data from a peer.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("chunk {index} has {got} bytes, expected {want} ({elements} {dtype} elements)")]
    WrongSize { index: u32, got: usize, want: usize, elements: usize, dtype: &'static str },
    #[error("chunk index {index} out of range: the gradient has {chunks} chunks")]
    BadIndex { index: u32, chunks: usize },
    #[error("chunk {index} arrived twice")]
    Duplicate { index: u32 },
    #[error("unknown gradient dtype {0}")]
    BadDtype(i32),
    #[error("unknown {what} value {value}")]
    BadEnum { what: &'static str, value: i32 },
    #[error(transparent)]
    Sampler(#[from] crate::diffusion::SamplerError),
    #[error("unknown worker role {0:?}: use \"train\" or \"eval\"")]
    UnknownRole(String),
    #[error("state stream has {got} bytes, expected {want} ({tensors} tensors of {elements} float32)")]
    StateSize { got: usize, want: usize, tensors: usize, elements: usize },
}
