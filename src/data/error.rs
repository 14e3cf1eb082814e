//! The one error type of the data layer. Every variant names what was being
//! read (a spec, a file, a sample) and says what is wrong with it in words a
//! user can act on; none is ever a panic.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The `--data` spec itself is malformed.
    #[error("invalid dataset spec '{spec}': {problem}")]
    Spec { spec: String, problem: String },

    /// A file or folder could not be read at all.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file was read but is not what the spec says it is (truncated, wrong
    /// layout, wrong pickle, missing member of an archive, ...).
    #[error("{}: {problem}", path.display())]
    Format { path: PathBuf, problem: String },

    /// One sample's bytes could not be turned into pixels.
    #[error("cannot decode {sample}: {problem}")]
    Decode { sample: String, problem: String },

    /// A dataset in object storage could not be fetched to the local cache.
    #[error("cannot fetch the dataset {url}: {problem}")]
    Fetch { url: String, problem: String },

    /// A sample index past the end of the dataset.
    #[error("sample index {index} is out of range: the dataset has {len} samples (0..{len})")]
    IndexOutOfRange { index: usize, len: usize },
}

impl DataError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        DataError::Io { path: path.as_ref().to_path_buf(), source }
    }

    pub(crate) fn format(path: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        DataError::Format { path: path.as_ref().to_path_buf(), problem: problem.into() }
    }

    pub(crate) fn spec(spec: &str, problem: impl Into<String>) -> Self {
        DataError::Spec { spec: spec.to_string(), problem: problem.into() }
    }

    /// A decode error about bytes whose origin the decoder does not know.
    pub(crate) fn decode(problem: impl Into<String>) -> Self {
        DataError::Decode { sample: "sample".to_string(), problem: problem.into() }
    }

    /// Names the sample a decode error is about (a file, an LMDB key, an
    /// index), so that a user can find the bad image.
    pub fn in_sample(self, sample: impl Into<String>) -> Self {
        match self {
            DataError::Decode { problem, .. } => DataError::Decode { sample: sample.into(), problem },
            other => other,
        }
    }
}
