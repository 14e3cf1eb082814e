//! Why a job request's words are refused: one variant per check of
//! `spec_sample.rs`, `spec_eval.rs` and `spec_analysis.rs`, each message
//! saying what is wrong and what would be accepted. The Jobs service
//! answers them as `INVALID_ARGUMENT`.

use ddpm::data::DataError;
use ddpm::diffusion::SamplerError;
use ddpm::train::analysis::UnknownAnalysis;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A number outside what the run accepts; `bounds` reads "at most 8",
    /// "between 1 and 8".
    #[error("{field} must be {bounds}, got {got}")]
    OutOfRange { field: &'static str, bounds: String, got: u64 },
    #[error("unknown weights {0}: use EMA (0) or RAW (1)")]
    UnknownWeights(i32),
    #[error("unknown metric {0:?}: use \"fid\", \"is\" (Inception Score) or \"bpd\" (bits/dim)")]
    UnknownMetric(String),
    /// The sampler's name or settings.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error(transparent)]
    Analysis(#[from] UnknownAnalysis),
    /// A dataset spec that does not parse, in the field named.
    #[error("{field}: {source}")]
    Dataset { field: &'static str, source: DataError },
    /// Settings given that the job's metrics do not use.
    #[error("{0}")]
    NotForMetrics(&'static str),
    /// Settings given that the analysis `kind` does not use.
    #[error("{fields} does not apply to {kind:?}")]
    NotForAnalysis { fields: &'static str, kind: String },
    #[error("give reference_stats (a .npz) or reference_data (a dataset spec), not both")]
    TwoReferences,
    #[error("fid needs at least 2 samples for a covariance (the paper uses 50000), got {0}")]
    FidSamples(u64),
    #[error("is: {samples} samples cannot fill {splits} splits; draw more or lower is_splits")]
    IsSplits { samples: u64, splits: u32 },
    #[error(
        "fid and is need the Inception TorchScript file: set inception to its path on the workers \
         (the inception-2015-12-05.pt of clean-fid / the StyleGAN metrics)"
    )]
    NoInception,
    /// The sampling part of an evaluation job.
    #[error("sample: {0}")]
    Sample(Box<SpecError>),
}

impl SpecError {
    /// `field` above `most`.
    pub fn at_most(field: &'static str, most: impl std::fmt::Display, got: impl Into<u64>) -> Self {
        Self::OutOfRange { field, bounds: format!("at most {most}"), got: got.into() }
    }

    /// `field` outside `least..=most`.
    pub fn between(field: &'static str, least: u64, most: impl std::fmt::Display, got: impl Into<u64>) -> Self {
        Self::OutOfRange { field, bounds: format!("between {least} and {most}"), got: got.into() }
    }

    /// A dataset spec in `field` that must parse.
    pub fn check_dataset(field: &'static str, spec: &str) -> Result<(), Self> {
        spec.parse::<ddpm::data::DatasetSpec>().map(drop).map_err(|source| Self::Dataset { field, source })
    }
}
