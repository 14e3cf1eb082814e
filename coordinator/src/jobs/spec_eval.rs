//! Evaluation jobs (FID, Inception Score, bits/dim), validated once where
//! the request enters.

use ddpm::proto;
use serde::Serialize;

use super::spec_error::SpecError;
use super::spec_sample::{SampleJobSpec, MAX_BATCH};

/// Images per forward pass of the feature network and the bound, by default.
pub const DEFAULT_EVAL_BATCH: u32 = 50;

/// A measurement an evaluation job makes; ordered as jobs report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Metric {
    #[serde(rename = "fid")]
    Fid,
    /// The Inception Score.
    #[serde(rename = "is")]
    Is,
    /// The variational bound in bits/dim.
    #[serde(rename = "bpd")]
    Bpd,
}

impl std::str::FromStr for Metric {
    type Err = SpecError;

    /// A request's word, in any case and with spaces around it.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fid" => Ok(Self::Fid),
            "is" => Ok(Self::Is),
            "bpd" => Ok(Self::Bpd),
            other => Err(SpecError::UnknownMetric(other.to_string())),
        }
    }
}

/// A validated evaluation job, as recorded in its `metrics.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalJobSpec {
    /// Each asked for once, in [`Metric`] order.
    pub metrics: Vec<Metric>,
    /// How the samples are drawn (`count` 0 when neither FID nor IS is
    /// asked for; the weights are also the bound's).
    pub sample: SampleJobSpec,
    pub inception: String,
    pub reference_stats: String,
    pub reference_data: String,
    pub reference_images: u64,
    pub bpd_data: String,
    pub bpd_images: u64,
    pub is_splits: u32,
    pub eval_batch: u32,
}

impl EvalJobSpec {
    /// Checks a request against the run; the error says what is wrong.
    pub fn from_request(r: &proto::EvalJobRequest, num_timesteps: usize) -> Result<Self, SpecError> {
        let mut metrics = Vec::new();
        for m in &r.metrics {
            let m: Metric = m.parse()?;
            if !metrics.contains(&m) {
                metrics.push(m);
            }
        }
        if metrics.is_empty() {
            metrics.push(Metric::Fid);
        }
        metrics.sort();
        let has = |m: Metric| metrics.contains(&m);
        let needs_samples = has(Metric::Fid) || has(Metric::Is);
        let mut req = r.sample.clone().unwrap_or_default();
        if !needs_samples {
            if req.count != 0 {
                return Err(SpecError::NotForMetrics("sample.count applies to fid and is; a bits/dim-only job draws no samples"));
            }
            req.count = 1;
        }
        let mut sample = SampleJobSpec::from_request(&req, num_timesteps).map_err(|e| SpecError::Sample(Box::new(e)))?;
        if !needs_samples {
            sample.count = 0;
        }
        if has(Metric::Fid) && sample.count < 2 {
            return Err(SpecError::FidSamples(sample.count));
        }
        let is_splits = if r.is_splits == 0 { 10 } else { r.is_splits };
        if has(Metric::Is) && sample.count < is_splits as u64 {
            return Err(SpecError::IsSplits { samples: sample.count, splits: is_splits });
        }
        if needs_samples && r.inception.trim().is_empty() {
            return Err(SpecError::NoInception);
        }
        if !r.reference_stats.is_empty() && !r.reference_data.is_empty() {
            return Err(SpecError::TwoReferences);
        }
        let reference_set = !r.reference_stats.is_empty() || !r.reference_data.is_empty() || r.reference_images != 0;
        if !has(Metric::Fid) && reference_set {
            return Err(SpecError::NotForMetrics("reference_stats, reference_data and reference_images apply to fid only"));
        }
        if !has(Metric::Bpd) && (!r.bpd_data.is_empty() || r.bpd_images != 0) {
            return Err(SpecError::NotForMetrics("bpd_data and bpd_images apply to bpd only"));
        }
        for (field, spec) in [("reference_data", &r.reference_data), ("bpd_data", &r.bpd_data)] {
            if !spec.is_empty() {
                SpecError::check_dataset(field, spec)?;
            }
        }
        let eval_batch = if r.eval_batch == 0 { DEFAULT_EVAL_BATCH } else { r.eval_batch };
        if eval_batch > MAX_BATCH {
            return Err(SpecError::at_most("eval_batch", MAX_BATCH, eval_batch));
        }
        Ok(Self {
            metrics,
            sample,
            inception: r.inception.trim().to_string(),
            reference_stats: r.reference_stats.clone(),
            reference_data: r.reference_data.clone(),
            reference_images: r.reference_images,
            bpd_data: r.bpd_data.clone(),
            bpd_images: r.bpd_images,
            is_splits,
            eval_batch,
        })
    }

    pub fn has(&self, metric: Metric) -> bool {
        self.metrics.contains(&metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(metrics: &[&str]) -> proto::EvalJobRequest {
        proto::EvalJobRequest {
            metrics: metrics.iter().map(|m| m.to_string()).collect(),
            sample: Some(proto::SampleJobRequest { count: 20, ..Default::default() }),
            inception: "/m/inception.pt".into(),
            ..Default::default()
        }
    }

    #[test]
    fn metrics_are_parsed_once_deduplicated_and_ordered() {
        let s = EvalJobSpec::from_request(&req(&["BPD", " is", "fid", "is"]), 1000).unwrap();
        assert_eq!(s.metrics, vec![Metric::Fid, Metric::Is, Metric::Bpd]);
        assert_eq!(serde_json::to_value(&s.metrics).unwrap(), serde_json::json!(["fid", "is", "bpd"]));
        let e = EvalJobSpec::from_request(&req(&["kid"]), 1000).unwrap_err().to_string();
        assert!(e.contains("unknown metric \"kid\""), "{e}");
        assert_eq!(EvalJobSpec::from_request(&req(&[]), 1000).unwrap().metrics, vec![Metric::Fid]);
    }

    #[test]
    fn a_bpd_only_job_draws_no_samples() {
        let mut r = req(&["bpd"]);
        r.sample = None;
        let s = EvalJobSpec::from_request(&r, 1000).unwrap();
        assert_eq!(s.sample.count, 0);
        r.sample = Some(proto::SampleJobRequest { count: 3, ..Default::default() });
        assert!(EvalJobSpec::from_request(&r, 1000).unwrap_err().to_string().contains("bits/dim-only job draws no samples"));
    }
}
