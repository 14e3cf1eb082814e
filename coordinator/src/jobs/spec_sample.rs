//! Sample jobs, validated once where the request enters; their spec is
//! also the sampling part of evaluation and analysis jobs and of the
//! training loop's grid.

use ddpm::diffusion::{Sampler, SamplerKind};
use ddpm::proto;
use serde::Serialize;

use super::spec_error::SpecError;

/// Most images one job may ask for.
pub const MAX_IMAGES: u64 = 100_000;
/// Most images per forward pass.
pub const MAX_BATCH: u32 = 1024;
/// Images per forward pass of a sample job, by default (`ddpm sample` too).
pub use ddpm::train::sample::DEFAULT_BATCH as DEFAULT_SAMPLE_BATCH;

/// Which weights a job uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsChoice {
    /// The EMA weights (the paper's evaluated weights).
    Ema,
    /// The raw parameters.
    Raw,
}

impl WeightsChoice {
    /// From a request's `weights` field.
    pub fn from_proto(v: i32) -> Result<Self, SpecError> {
        match proto::Weights::try_from(v) {
            Ok(proto::Weights::Ema) => Ok(Self::Ema),
            Ok(proto::Weights::Raw) => Ok(Self::Raw),
            Err(_) => Err(SpecError::UnknownWeights(v)),
        }
    }
}

/// A validated sample job, as recorded in its `job.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SampleJobSpec {
    pub count: u64,
    pub sampler: SamplerKind,
    /// Network evaluations per image: T for ancestral, the DDIM steps.
    pub steps: u32,
    pub eta: f64,
    pub seed: u64,
    pub weights: WeightsChoice,
    /// 0: the live state when the job starts.
    pub checkpoint_step: u64,
    pub batch: u32,
    pub individual_pngs: bool,
}

impl SampleJobSpec {
    /// Checks a request against the run; the error says what is wrong and
    /// what would be accepted.
    pub fn from_request(r: &proto::SampleJobRequest, num_timesteps: usize) -> Result<Self, SpecError> {
        if r.count == 0 || r.count > MAX_IMAGES {
            return Err(SpecError::between("count", 1, MAX_IMAGES, r.count));
        }
        let kind: SamplerKind = if r.sampler.is_empty() { SamplerKind::Ancestral } else { r.sampler.parse()? };
        let sampler = Sampler::resolve(kind, r.steps, r.eta, num_timesteps)?;
        let weights = WeightsChoice::from_proto(r.weights)?;
        let batch = if r.batch == 0 { DEFAULT_SAMPLE_BATCH } else { r.batch };
        if batch > MAX_BATCH {
            return Err(SpecError::at_most("batch", MAX_BATCH, batch));
        }
        Ok(Self {
            count: r.count,
            sampler: kind,
            steps: sampler.evaluations(num_timesteps) as u32,
            eta: r.eta,
            seed: r.seed,
            weights,
            checkpoint_step: r.checkpoint_step,
            batch,
            individual_pngs: r.individual_pngs,
        })
    }

    /// The reverse process of the job's images.
    pub fn reverse_process(&self) -> Sampler {
        match self.sampler {
            SamplerKind::Ancestral => Sampler::Ancestral,
            SamplerKind::Ddim => Sampler::Ddim { steps: self.steps as usize, eta: self.eta },
        }
    }

    /// The sample assignment of images `[first, first + count)` of job `id`.
    pub fn assignment(&self, id: u64, weights_step: u64, first: u64, count: u64) -> proto::SampleAssignment {
        let mut a =
            proto::SampleAssignment { job_id: id, first, count, seed: self.seed, weights_step, batch: self.batch, ..Default::default() };
        ddpm::wire::set_assignment_sampler(&mut a, self.reverse_process());
        a
    }

    /// Only the weights of a job (for analysis jobs, which pin as a sample
    /// job would).
    pub fn weights_only(weights: WeightsChoice, checkpoint_step: u64, seed: u64) -> Self {
        Self {
            count: 0,
            sampler: SamplerKind::Ancestral,
            steps: 0,
            eta: 0.0,
            seed,
            weights,
            checkpoint_step,
            batch: 0,
            individual_pngs: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> proto::SampleJobRequest {
        proto::SampleJobRequest { count: 8, ..Default::default() }
    }

    #[test]
    fn defaults_are_ancestral_ema_batch_16() {
        let s = SampleJobSpec::from_request(&req(), 1000).unwrap();
        assert_eq!((s.sampler, s.steps, s.weights, s.batch), (SamplerKind::Ancestral, 1000, WeightsChoice::Ema, 16));
        let d = SampleJobSpec::from_request(&proto::SampleJobRequest { sampler: "ddim".into(), ..req() }, 1000).unwrap();
        assert_eq!(d.steps, 50);
        assert_eq!(d.reverse_process(), Sampler::Ddim { steps: 50, eta: 0.0 });
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!((json["sampler"].as_str(), json["weights"].as_str()), (Some("ddim"), Some("ema")));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let err = |r: proto::SampleJobRequest| SampleJobSpec::from_request(&r, 1000).unwrap_err().to_string();
        assert!(err(proto::SampleJobRequest { count: 0, ..req() }).contains("count must be between 1"));
        assert!(err(proto::SampleJobRequest { count: MAX_IMAGES + 1, ..req() }).contains("count must be between 1"));
        assert!(err(proto::SampleJobRequest { sampler: "euler".into(), ..req() }).contains("unknown sampler \"euler\""));
        assert!(err(proto::SampleJobRequest { sampler: "ddim".into(), steps: 1001, ..req() }).contains("at most the run's 1000"));
        assert!(err(proto::SampleJobRequest { steps: 50, ..req() }).contains("runs all 1000 steps"));
        assert!(err(proto::SampleJobRequest { sampler: "ddim".into(), eta: f64::NAN, ..req() }).contains("eta must be"));
        assert!(err(proto::SampleJobRequest { eta: 0.5, ..req() }).contains("ddim sampler only"));
        assert!(err(proto::SampleJobRequest { weights: 7, ..req() }).contains("unknown weights 7"));
        assert!(err(proto::SampleJobRequest { batch: MAX_BATCH + 1, ..req() }).contains("batch must be at most"));
    }

    #[test]
    fn an_assignment_carries_the_typed_sampler() {
        let s = SampleJobSpec::from_request(&proto::SampleJobRequest { sampler: "ddim".into(), steps: 4, ..req() }, 1000).unwrap();
        let a = s.assignment(3, 7, 2, 2);
        assert_eq!(ddpm::wire::assignment_sampler(&a), Ok(Sampler::Ddim { steps: 4, eta: 0.0 }));
        assert_eq!((a.job_id, a.weights_step, a.first, a.count), (3, 7, 2, 2));
    }
}
