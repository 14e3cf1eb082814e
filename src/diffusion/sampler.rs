//! Which reverse process draws images: the paper's ancestral sampler
//! (Algorithm 2) or DDIM. The words "ancestral" and "ddim" arrive from
//! configs, the command line and gRPC requests; each entry parses them once
//! into [`SamplerKind`], and a sampling task carries a resolved [`Sampler`].
//! The rules for steps and eta live here, not at every entry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name of a reverse process, without its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// All T steps of Algorithm 2.
    Ancestral,
    /// DDIM (Song et al. 2021) on evenly spaced timesteps.
    Ddim,
}

/// DDIM steps when a request leaves them at 0 (the monitoring sampler).
pub const DEFAULT_DDIM_STEPS: u32 = 50;

impl SamplerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ancestral => "ancestral",
            Self::Ddim => "ddim",
        }
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SamplerKind {
    type Err = SamplerError;

    fn from_str(s: &str) -> Result<Self, SamplerError> {
        match s {
            "ancestral" => Ok(Self::Ancestral),
            "ddim" => Ok(Self::Ddim),
            other => Err(SamplerError::Unknown(other.to_string())),
        }
    }
}

/// A reverse process with its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// All T steps of Algorithm 2 with the configured variance.
    Ancestral,
    /// DDIM on `steps` evenly spaced timesteps with the given eta.
    Ddim { steps: usize, eta: f64 },
}

/// Why sampler settings cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    #[error("unknown sampler {0:?}: use \"ancestral\" or \"ddim\"")]
    Unknown(String),
    #[error("the ancestral sampler runs all {num_timesteps} steps; leave steps at 0 or use sampler \"ddim\" for {steps} steps")]
    AncestralSteps { steps: u32, num_timesteps: usize },
    #[error("ddim steps must be at most the run's {num_timesteps} timesteps, got {steps}")]
    TooManyDdimSteps { steps: u32, num_timesteps: usize },
    #[error("the ddim sampler needs steps >= 1")]
    NoDdimSteps,
    #[error("eta must be between 0 and 1, got {0}")]
    Eta(f64),
    #[error("eta applies to the ddim sampler only")]
    EtaWithAncestral,
}

impl Sampler {
    /// The sampler a request asks for: `steps` 0 means all T (ancestral) or
    /// [`DEFAULT_DDIM_STEPS`] (ddim); an ancestral request may only name T.
    pub fn resolve(kind: SamplerKind, steps: u32, eta: f64, num_timesteps: usize) -> Result<Self, SamplerError> {
        if !(eta.is_finite() && (0.0..=1.0).contains(&eta)) {
            return Err(SamplerError::Eta(eta));
        }
        match kind {
            SamplerKind::Ancestral => {
                if steps != 0 && steps as usize != num_timesteps {
                    return Err(SamplerError::AncestralSteps { steps, num_timesteps });
                }
                if eta != 0.0 {
                    return Err(SamplerError::EtaWithAncestral);
                }
                Ok(Self::Ancestral)
            }
            SamplerKind::Ddim => {
                let steps = if steps == 0 { DEFAULT_DDIM_STEPS } else { steps };
                if steps as usize > num_timesteps {
                    return Err(SamplerError::TooManyDdimSteps { steps, num_timesteps });
                }
                Ok(Self::Ddim { steps: steps as usize, eta })
            }
        }
    }

    /// The sampler of an assignment that a coordinator resolved already:
    /// only checks that it can run (DDIM needs a step).
    pub fn from_parts(kind: SamplerKind, steps: u32, eta: f64) -> Result<Self, SamplerError> {
        match kind {
            SamplerKind::Ancestral => Ok(Self::Ancestral),
            SamplerKind::Ddim if steps == 0 => Err(SamplerError::NoDdimSteps),
            SamplerKind::Ddim => Ok(Self::Ddim { steps: steps as usize, eta }),
        }
    }

    pub fn kind(&self) -> SamplerKind {
        match self {
            Self::Ancestral => SamplerKind::Ancestral,
            Self::Ddim { .. } => SamplerKind::Ddim,
        }
    }

    /// Network evaluations per image.
    pub fn evaluations(&self, num_timesteps: usize) -> usize {
        match self {
            Self::Ancestral => num_timesteps,
            Self::Ddim { steps, .. } => *steps,
        }
    }

    /// DDIM's eta (0 for the ancestral sampler).
    pub fn eta(&self) -> f64 {
        match self {
            Self::Ancestral => 0.0,
            Self::Ddim { eta, .. } => *eta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_parse_once_and_print_back() {
        for kind in [SamplerKind::Ancestral, SamplerKind::Ddim] {
            assert_eq!(kind.as_str().parse::<SamplerKind>().unwrap(), kind);
        }
        assert_eq!("euler".parse::<SamplerKind>().unwrap_err().to_string(), "unknown sampler \"euler\": use \"ancestral\" or \"ddim\"");
    }

    #[test]
    fn requests_resolve_with_defaults_and_limits() {
        let r = |k, s, e| Sampler::resolve(k, s, e, 1000);
        assert_eq!(r(SamplerKind::Ancestral, 0, 0.0), Ok(Sampler::Ancestral));
        assert_eq!(r(SamplerKind::Ancestral, 1000, 0.0), Ok(Sampler::Ancestral));
        assert!(matches!(r(SamplerKind::Ancestral, 50, 0.0), Err(SamplerError::AncestralSteps { .. })));
        assert_eq!(r(SamplerKind::Ancestral, 0, 0.5), Err(SamplerError::EtaWithAncestral));
        assert_eq!(r(SamplerKind::Ddim, 0, 0.0), Ok(Sampler::Ddim { steps: 50, eta: 0.0 }));
        assert!(matches!(r(SamplerKind::Ddim, 1001, 0.0), Err(SamplerError::TooManyDdimSteps { .. })));
        assert!(matches!(r(SamplerKind::Ddim, 4, f64::NAN), Err(SamplerError::Eta(_))));
        assert_eq!(Sampler::from_parts(SamplerKind::Ddim, 0, 0.0), Err(SamplerError::NoDdimSteps));
        assert_eq!(Sampler::Ddim { steps: 7, eta: 0.0 }.evaluations(1000), 7);
    }
}
