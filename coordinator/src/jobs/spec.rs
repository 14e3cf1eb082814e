//! What a job is, validated once where the request enters: the kinds of
//! job (sample jobs in `spec_sample.rs`, evaluation and analysis jobs
//! beside it) and the two the training loop submits (the end-of-training
//! grid, the periodic evaluation). A spec is what the job's `job.json` or
//! `metrics.json` records; the words of a request (sampler, weights,
//! metrics, analysis) are parsed into types where it enters and carried
//! as types from then on.

use ddpm::config::TrainConfig;
use ddpm::diffusion::{Sampler, SamplerKind};
use ddpm::proto;
use serde::Serialize;

use super::spec_analysis::AnalysisJobSpec;
use super::spec_error::SpecError;
use super::spec_eval::EvalJobSpec;
use super::spec_sample::{SampleJobSpec, WeightsChoice, DEFAULT_SAMPLE_BATCH};

/// The end-of-training sample grid (`[sample]`): a sample job on the EMA
/// weights after the last step whose only output is the run's
/// `samples/step_N.png`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GridJobSpec {
    pub sample: SampleJobSpec,
    /// The step whose weights are drawn (the run's last).
    pub step: u64,
}

impl GridJobSpec {
    /// The grid of `config`'s `[sample]` section after `step`.
    pub fn from_config(config: &TrainConfig, step: u64) -> Self {
        let s = &config.sample;
        let count = s.count;
        let sampler = match s.sampler {
            SamplerKind::Ancestral => Sampler::Ancestral,
            SamplerKind::Ddim => Sampler::Ddim { steps: s.steps as usize, eta: 0.0 },
        };
        let sample = SampleJobSpec {
            count,
            sampler: s.sampler,
            steps: sampler.evaluations(config.diffusion.num_timesteps) as u32,
            eta: 0.0,
            seed: s.seed,
            weights: WeightsChoice::Ema,
            checkpoint_step: 0,
            batch: DEFAULT_SAMPLE_BATCH.min(count.max(1) as u32),
            individual_pngs: false,
        };
        Self { sample, step }
    }

    /// Where the grid goes in the run's store.
    pub fn key(&self) -> String {
        format!("samples/step_{:08}.png", self.step)
    }
}

/// A job as submitted.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum JobSpec {
    Sample(SampleJobSpec),
    Eval(EvalJobSpec),
    Analysis(AnalysisJobSpec),
    Grid(GridJobSpec),
}

impl JobSpec {
    /// The word of `JobStatus.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sample(_) => "sample",
            Self::Eval(_) => "eval",
            Self::Analysis(_) => "analysis",
            Self::Grid(_) => "grid",
        }
    }

    /// The images of the job as far as known at submission.
    pub fn initial_total(&self) -> u64 {
        match self {
            Self::Sample(s) => s.count,
            Self::Eval(e) => e.sample.count,
            Self::Analysis(a) => a.shape().0,
            Self::Grid(g) => g.sample.count,
        }
    }
}

/// The job of a periodic evaluation (config `[eval]`): an evaluation job
/// when an Inception file is set, else a sample job (the grid only).
pub fn periodic_spec(config: &TrainConfig) -> Result<JobSpec, SpecError> {
    let e = &config.eval;
    let sample = proto::SampleJobRequest {
        count: e.samples,
        sampler: e.sampler.as_str().into(),
        steps: if e.sampler == SamplerKind::Ddim { e.steps } else { 0 },
        seed: e.seed,
        batch: e.batch,
        ..Default::default()
    };
    let t = config.diffusion.num_timesteps;
    if e.inception.is_empty() {
        return SampleJobSpec::from_request(&sample, t).map(JobSpec::Sample);
    }
    let r = proto::EvalJobRequest {
        metrics: e.metrics.clone(),
        sample: Some(sample),
        inception: e.inception.clone(),
        reference_stats: e.reference_stats.clone(),
        reference_data: e.reference_data.clone(),
        reference_images: e.reference_images,
        is_splits: e.is_splits,
        ..Default::default()
    };
    EvalJobSpec::from_request(&r, t).map(JobSpec::Eval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_grid_is_a_sample_job_of_the_config() {
        let mut c = TrainConfig::tiny();
        c.sample.count = 4;
        let g = GridJobSpec::from_config(&c, 2);
        assert_eq!(g.key(), "samples/step_00000002.png");
        assert_eq!((g.sample.count, g.sample.batch, g.sample.weights), (4, 4, WeightsChoice::Ema));
    }
}
