//! Evaluation jobs (FID, Inception Score, bits/dim), validated once where
//! the request enters.

use ddpm::proto;
use serde::Serialize;

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
    type Err = String;

    /// A request's word, in any case and with spaces around it.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fid" => Ok(Self::Fid),
            "is" => Ok(Self::Is),
            "bpd" => Ok(Self::Bpd),
            other => Err(format!("unknown metric {other:?}: use \"fid\", \"is\" (Inception Score) or \"bpd\" (bits/dim)")),
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
    pub fn from_request(r: &proto::EvalJobRequest, num_timesteps: usize) -> Result<Self, String> {
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
                return Err("sample.count applies to fid and is; a bits/dim-only job draws no samples".into());
            }
            req.count = 1;
        }
        let mut sample = SampleJobSpec::from_request(&req, num_timesteps).map_err(|e| format!("sample: {e}"))?;
        if !needs_samples {
            sample.count = 0;
        }
        if has(Metric::Fid) && sample.count < 2 {
            return Err(format!(
                "fid needs at least 2 samples for a covariance (the paper uses 50000), got {}",
                sample.count
            ));
        }
        let is_splits = if r.is_splits == 0 { 10 } else { r.is_splits };
        if has(Metric::Is) && sample.count < is_splits as u64 {
            return Err(format!("is: {} samples cannot fill {is_splits} splits; draw more or lower is_splits", sample.count));
        }
        if needs_samples && r.inception.trim().is_empty() {
            return Err(
                "fid and is need the Inception TorchScript file: set inception to its path on the workers \
                 (the inception-2015-12-05.pt of clean-fid / the StyleGAN metrics)"
                    .into(),
            );
        }
        if !r.reference_stats.is_empty() && !r.reference_data.is_empty() {
            return Err("give reference_stats (a .npz) or reference_data (a dataset spec), not both".into());
        }
        let reference_set = !r.reference_stats.is_empty() || !r.reference_data.is_empty() || r.reference_images != 0;
        if !has(Metric::Fid) && reference_set {
            return Err("reference_stats, reference_data and reference_images apply to fid only".into());
        }
        if !has(Metric::Bpd) && (!r.bpd_data.is_empty() || r.bpd_images != 0) {
            return Err("bpd_data and bpd_images apply to bpd only".into());
        }
        for (what, spec) in [("reference_data", &r.reference_data), ("bpd_data", &r.bpd_data)] {
            if !spec.is_empty() {
                spec.parse::<ddpm::data::DatasetSpec>().map_err(|e| format!("{what}: {e}"))?;
            }
        }
        let eval_batch = if r.eval_batch == 0 { DEFAULT_EVAL_BATCH } else { r.eval_batch };
        if eval_batch > MAX_BATCH {
            return Err(format!("eval_batch must be at most {MAX_BATCH}, got {eval_batch}"));
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
        let e = EvalJobSpec::from_request(&req(&["kid"]), 1000).unwrap_err();
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
        assert!(EvalJobSpec::from_request(&r, 1000).unwrap_err().contains("bits/dim-only job draws no samples"));
    }
}
