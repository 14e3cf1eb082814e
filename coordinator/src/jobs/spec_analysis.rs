//! Analysis jobs (progressive generation, interpolation), validated once
//! where the request enters.

use ddpm::proto;
use ddpm::train::analysis::AnalysisKind;
use serde::Serialize;

use super::spec_error::SpecError;
use super::spec_sample::{SampleJobSpec, WeightsChoice, MAX_BATCH};

/// Most rows of a progressive generation, and mixing weights of an interpolation.
pub const MAX_ANALYSIS_ROWS: u32 = 256;
/// Most snapshots per progressive row.
pub const MAX_SNAPSHOTS: u32 = 64;

/// A validated analysis job (progressive generation or interpolation).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnalysisJobSpec {
    pub analysis: AnalysisKind,
    pub seed: u64,
    pub weights: WeightsChoice,
    pub checkpoint_step: u64,
    pub rows: u32,
    pub snapshots: u32,
    pub batch: u32,
    pub data: String,
    pub index_a: u64,
    pub index_b: u64,
    pub t: u32,
    pub lambdas: u32,
}

impl AnalysisJobSpec {
    /// Checks a request against the run; the error says what is wrong.
    pub fn from_request(r: &proto::AnalysisJobRequest, num_timesteps: usize) -> Result<Self, SpecError> {
        let weights = WeightsChoice::from_proto(r.weights)?;
        let analysis: AnalysisKind = r.kind.parse()?;
        let mut spec = Self {
            analysis,
            seed: r.seed,
            weights,
            checkpoint_step: r.checkpoint_step,
            rows: 0,
            snapshots: 0,
            batch: 0,
            data: String::new(),
            index_a: 0,
            index_b: 0,
            t: 0,
            lambdas: 0,
        };
        let unused = |fields: &'static str, set: bool| {
            if set {
                Err(SpecError::NotForAnalysis { fields, kind: r.kind.clone() })
            } else {
                Ok(())
            }
        };
        match analysis {
            AnalysisKind::Progressive => {
                unused(
                    "data, index_a, index_b, t and lambdas",
                    !r.data.is_empty() || r.index_a + r.index_b + (r.t + r.lambdas) as u64 > 0,
                )?;
                spec.rows = if r.rows == 0 { 8 } else { r.rows };
                spec.snapshots = if r.snapshots == 0 { 10 } else { r.snapshots };
                spec.batch = if r.batch == 0 { 8 } else { r.batch };
                if spec.rows > MAX_ANALYSIS_ROWS {
                    return Err(SpecError::at_most("rows", MAX_ANALYSIS_ROWS, spec.rows));
                }
                let most = MAX_SNAPSHOTS.min(num_timesteps as u32);
                if spec.snapshots < 2 || spec.snapshots > most {
                    return Err(SpecError::between("snapshots", 2, most, spec.snapshots));
                }
                if spec.batch > MAX_BATCH {
                    return Err(SpecError::at_most("batch", MAX_BATCH, spec.batch));
                }
            }
            AnalysisKind::Interpolate => {
                unused("rows, snapshots and batch", r.rows + r.snapshots + r.batch > 0)?;
                spec.data = r.data.clone();
                if !spec.data.is_empty() {
                    SpecError::check_dataset("data", &spec.data)?;
                }
                spec.index_a = r.index_a;
                spec.index_b = r.index_b;
                spec.t = if r.t == 0 { 500.min(num_timesteps as u32) } else { r.t };
                if spec.t as usize > num_timesteps {
                    return Err(SpecError::between("t", 1, format!("the run's {num_timesteps} timesteps"), spec.t));
                }
                spec.lambdas = if r.lambdas == 0 { 11 } else { r.lambdas };
                if spec.lambdas > MAX_ANALYSIS_ROWS {
                    return Err(SpecError::at_most("lambdas", MAX_ANALYSIS_ROWS, spec.lambdas));
                }
            }
        }
        Ok(spec)
    }

    /// Images of the output grid, and its columns.
    pub fn shape(&self) -> (u64, usize) {
        match self.analysis {
            AnalysisKind::Progressive => ((self.rows * self.snapshots) as u64, self.snapshots as usize),
            AnalysisKind::Interpolate => (self.lambdas as u64 + 2, self.lambdas as usize + 2),
        }
    }

    /// The weights, as a sample job would pin them.
    pub fn weights_spec(&self) -> SampleJobSpec {
        SampleJobSpec::weights_only(self.weights, self.checkpoint_step, self.seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_typed_and_settings_that_do_not_apply_are_refused() {
        let r = proto::AnalysisJobRequest { kind: "progressive".into(), ..Default::default() };
        let s = AnalysisJobSpec::from_request(&r, 1000).unwrap();
        assert_eq!((s.analysis, s.shape()), (AnalysisKind::Progressive, (80, 10)));
        assert_eq!(serde_json::to_value(&s).unwrap()["analysis"], "progressive");
        let e = AnalysisJobSpec::from_request(&proto::AnalysisJobRequest { t: 3, ..r.clone() }, 1000).unwrap_err().to_string();
        assert!(e.contains("does not apply to \"progressive\""), "{e}");
        let e = AnalysisJobSpec::from_request(&proto::AnalysisJobRequest { kind: "morph".into(), ..r }, 1000).unwrap_err().to_string();
        assert!(e.contains("unknown analysis \"morph\""), "{e}");
        let i = proto::AnalysisJobRequest { kind: "interpolate".into(), ..Default::default() };
        assert_eq!(AnalysisJobSpec::from_request(&i, 1000).unwrap().shape(), (13, 13));
    }
}
