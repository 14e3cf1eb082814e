//! The one error type of the evaluation layer. Every variant names the file,
//! array or argument at fault and says what would be accepted; none is ever a
//! panic, since stats files, Inception files and serialized sums come from
//! users and peers.

use std::path::{Path, PathBuf};

use crate::data::DataError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be opened, read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// "read", "write", "create", ...
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file is not a valid `.npz` / `.npy` (corrupt zip, bad header,
    /// unsupported dtype, truncated data).
    #[error("{}: not a usable .npz file: {problem}", path.display())]
    Npz { path: PathBuf, problem: String },

    /// An `.npz` without an array the caller needs.
    #[error("{}: no array `{key}` in this .npz (it holds: {}); {hint}", path.display(), if found.is_empty() { "nothing".to_string() } else { found.join(", ") })]
    MissingKey {
        path: PathBuf,
        /// The array name as `np.savez` writes it, without `.npy`.
        key: String,
        /// The arrays the file does hold.
        found: Vec<String>,
        /// What the file should look like.
        hint: &'static str,
    },

    /// An array, tensor or buffer of the wrong shape.
    #[error("{what}: expected {expected}, got {found}")]
    Shape {
        /// What was being checked (an npz array, a model output, an argument).
        what: String,
        expected: String,
        found: String,
    },

    /// The Inception TorchScript file does not exist.
    #[error(
        "Inception model {} does not exist: pass the TorchScript file inception-2015-12-05.pt \
         (the one clean-fid and the StyleGAN2-ADA/StyleGAN3 metrics use; it cannot be downloaded at run time)",
        path.display()
    )]
    ModelMissing { path: PathBuf },

    /// The file exists but libtorch cannot load it as a TorchScript module.
    #[error(
        "{} is not a TorchScript module libtorch can load (save one with torch.jit.script(m).save(path); \
         a state dict or pickle will not do): {reason}",
        path.display()
    )]
    NotTorchScript { path: PathBuf, reason: String },

    /// Calling the feature network failed or gave something unexpected.
    #[error("Inception model {}: {problem}", path.display())]
    Model { path: PathBuf, problem: String },

    /// Statistics that cannot be combined, finished or decoded.
    #[error("feature statistics: {0}")]
    Stats(String),

    /// NaN or infinity where finite numbers are required.
    #[error("{0} contains NaN or infinite values")]
    NonFinite(String),

    /// An argument out of range (a split count, an index range, a batch size).
    #[error("{0}")]
    InvalidArgument(String),

    /// A libtorch operation failed.
    #[error("{context}: {source}")]
    Torch {
        context: String,
        #[source]
        source: tch::TchError,
    },

    /// Reading or decoding a dataset sample failed.
    #[error(transparent)]
    Data(#[from] DataError),
}

impl EvalError {
    pub(crate) fn io(action: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        EvalError::Io { action, path: path.as_ref().to_path_buf(), source }
    }

    pub(crate) fn npz(path: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        EvalError::Npz { path: path.as_ref().to_path_buf(), problem: problem.into() }
    }

    pub(crate) fn shape(what: impl Into<String>, expected: impl Into<String>, found: impl Into<String>) -> Self {
        EvalError::Shape { what: what.into(), expected: expected.into(), found: found.into() }
    }

    pub(crate) fn torch(context: impl Into<String>) -> impl FnOnce(tch::TchError) -> Self {
        let context = context.into();
        move |source| EvalError::Torch { context, source }
    }
}
