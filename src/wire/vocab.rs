//! The typed vocabulary on the wire: the proto enums of samplers, analyses
//! and worker roles to and from the library's types, in one place. A value
//! a peer sent that names nothing is a [`WireError`], never a panic.

use std::fmt;
use std::str::FromStr;

use super::error::WireError;
use crate::diffusion::{Sampler, SamplerKind};
use crate::proto;
use crate::train::analysis::AnalysisKind;

impl From<SamplerKind> for proto::Sampler {
    fn from(kind: SamplerKind) -> Self {
        match kind {
            SamplerKind::Ancestral => proto::Sampler::Ancestral,
            SamplerKind::Ddim => proto::Sampler::Ddim,
        }
    }
}

/// The sampler kind of an assignment's `sampler_kind` field.
pub fn sampler_kind(v: i32) -> Result<SamplerKind, WireError> {
    match proto::Sampler::try_from(v) {
        Ok(proto::Sampler::Ancestral) => Ok(SamplerKind::Ancestral),
        Ok(proto::Sampler::Ddim) => Ok(SamplerKind::Ddim),
        _ => Err(WireError::BadEnum { what: "sampler", value: v }),
    }
}

/// The resolved sampler of a sample assignment.
pub fn assignment_sampler(a: &proto::SampleAssignment) -> Result<Sampler, WireError> {
    let kind = sampler_kind(a.sampler_kind)?;
    Ok(Sampler::from_parts(kind, a.steps, a.eta)?)
}

/// Writes `sampler` into an assignment's sampler fields.
pub fn set_assignment_sampler(a: &mut proto::SampleAssignment, sampler: Sampler) {
    a.sampler_kind = proto::Sampler::from(sampler.kind()) as i32;
    a.steps = match sampler {
        Sampler::Ancestral => 0,
        Sampler::Ddim { steps, .. } => steps as u32,
    };
    a.eta = sampler.eta();
}

impl From<AnalysisKind> for proto::Analysis {
    fn from(kind: AnalysisKind) -> Self {
        match kind {
            AnalysisKind::Progressive => proto::Analysis::Progressive,
            AnalysisKind::Interpolate => proto::Analysis::Interpolate,
        }
    }
}

/// The analysis of an assignment's `analysis` field.
pub fn analysis_kind(v: i32) -> Result<AnalysisKind, WireError> {
    match proto::Analysis::try_from(v) {
        Ok(proto::Analysis::Progressive) => Ok(AnalysisKind::Progressive),
        Ok(proto::Analysis::Interpolate) => Ok(AnalysisKind::Interpolate),
        _ => Err(WireError::BadEnum { what: "analysis", value: v }),
    }
}

/// What a worker does in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerRole {
    /// Training steps; job tasks once training is over.
    Train,
    /// Job tasks only, at any time; never part of a training step.
    Eval,
}

impl WorkerRole {
    /// The word of `RegisterRequest.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Eval => "eval",
        }
    }
}

impl fmt::Display for WorkerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkerRole {
    type Err = WireError;

    /// From `RegisterRequest.role` or `--role` ("" means train).
    fn from_str(s: &str) -> Result<Self, WireError> {
        match s {
            "" | "train" => Ok(Self::Train),
            "eval" => Ok(Self::Eval),
            other => Err(WireError::UnknownRole(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_and_unknown_values_are_errors() {
        for kind in [SamplerKind::Ancestral, SamplerKind::Ddim] {
            assert_eq!(sampler_kind(proto::Sampler::from(kind) as i32), Ok(kind));
        }
        assert_eq!(sampler_kind(0), Err(WireError::BadEnum { what: "sampler", value: 0 }));
        for kind in [AnalysisKind::Progressive, AnalysisKind::Interpolate] {
            assert_eq!(analysis_kind(proto::Analysis::from(kind) as i32), Ok(kind));
        }
        assert!(analysis_kind(9).is_err());
        let mut a = proto::SampleAssignment::default();
        set_assignment_sampler(&mut a, Sampler::Ddim { steps: 4, eta: 0.5 });
        assert_eq!(assignment_sampler(&a), Ok(Sampler::Ddim { steps: 4, eta: 0.5 }));
        assert_eq!("".parse::<WorkerRole>(), Ok(WorkerRole::Train));
        assert_eq!("gpu".parse::<WorkerRole>().unwrap_err().to_string(), "unknown worker role \"gpu\": use \"train\" or \"eval\"");
    }
}
