//! Errors of the U-Net: configuration, construction and weight files.

use std::path::PathBuf;

/// Everything that can go wrong when configuring, building, loading or
/// saving the U-Net. Messages name the preset, field, tensor or file at
/// fault and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum UNetError {
    /// `UNetConfig::preset` was given a name it does not know.
    #[error("unknown U-Net preset `{name}`: valid presets are {}", valid.join(", "))]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// Every preset name, for the message.
        valid: Vec<&'static str>,
    },

    /// A configuration the network cannot be built from.
    #[error("invalid U-Net config: {field}: {reason}")]
    InvalidConfig {
        /// The offending field (`ch_mult`, `attn_resolutions`, ...).
        field: &'static str,
        /// Why, and what would be accepted.
        reason: String,
    },

    /// A diffusers `config.json` that describes a network ours cannot represent.
    #[error("diffusers config not supported: {key}: {reason}")]
    UnsupportedDiffusersConfig {
        /// The config.json key at fault.
        key: String,
        /// Why, and what would be accepted.
        reason: String,
    },

    /// A config file could not be read or written.
    #[error("config file {}: {reason}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// `UNet::new` was given a path that already holds U-Net variables.
    #[error("the var-store path `{path}` already holds a U-Net (`{existing}` exists); build each U-Net under a fresh path")]
    PathInUse {
        /// The path given to `UNet::new` (empty for the root).
        path: String,
        /// A variable that is already there.
        existing: String,
    },

    /// The file is not a readable safetensors file, or could not be written.
    #[error("safetensors file {}: {reason}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The var store has a parameter the file lacks.
    #[error("safetensors file {}: tensor `{name}` is missing (the file has {found} tensors, the model needs {expected})", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The parameter with no tensor in the file.
        name: String,
        /// How many tensors the model needs.
        expected: usize,
        /// How many tensors the file has.
        found: usize,
    },

    /// A tensor in the file has a different shape than the parameter.
    #[error("safetensors file {}: tensor `{name}` has shape {found:?}, the model needs {expected:?} (a file for another config?)", path.display())]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The parameter's shape.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },

    /// A tensor in the file has a dtype the loader does not take.
    #[error("safetensors file {}: tensor `{name}` has dtype {found}, expected F32 (convert the file to float32)", path.display())]
    WrongDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its dtype, as safetensors names it.
        found: String,
    },

    /// The file has a tensor the model has no parameter for.
    #[error("safetensors file {}: unexpected tensor `{name}`: the model has no such parameter (a file for another architecture?)", path.display())]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor with no parameter.
        name: String,
    },

    /// A libtorch operation failed (allocation, device copy).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
