//! The numbers of the paper's rate-distortion curve (section 4.3, Figure 5;
//! docs/ddpm.md section 5), from an evaluation job's `metrics.json`: along the reverse
//! process, the rate is the bits/dim received so far and the distortion the
//! RMSE of `x0_hat` on the [0, 255] scale.
//!
//! The job's bound (`metrics.bpd`) holds, per 0-based timestep k,
//! `terms_bits_per_dim[k]`: the paper's `L_0` (decoder NLL) for k = 0 and
//! its KL term `L_k = KL(q(x_k | x_{k+1}, x0) || p(x_k | x_{k+1}))` for
//! k > 0 (paper indices), and `x0_rmse_0_255[k]`: the RMSE of `x0_hat`
//! predicted from the paper's `x_{k+1}`; and `prior_bits_per_dim`, `L_T`.
//! After s = T - t reverse steps the receiver holds `x_t` (t = T..1):
//!
//! ```text
//! rate(s)       = L_T + sum_{j=t}^{T-1} L_j     (rate(0) = L_T)
//! distortion(s) = x0_rmse_0_255[t - 1]
//! ```
//!
//! so the rate after all T - 1 steps is the bound less `L_0` (the paper's
//! CIFAR-10 rate 1.78 bits/dim; its `L_0`, 1.97, is the distortion in bits).

use serde_json::Value;

/// The fields a plot needs, read from an evaluation job's `metrics.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct RdCurve {
    pub job_id: Option<u64>,
    pub weights_step: Option<u64>,
    /// The dataset the bound was measured on, and how many of its images.
    pub data: String,
    pub images: u64,
    /// The whole bound, `L_T + ... + L_0`.
    pub bits_per_dim: f64,
    /// `L_T`.
    pub prior: f64,
    /// Per 0-based timestep k: `L_0` at k = 0, `L_k` after: `[T]`.
    pub terms: Vec<f64>,
    /// Per 0-based timestep k, the RMSE of `x0_hat` from the paper's `x_{k+1}`: `[T]`.
    pub x0_rmse: Vec<f64>,
}

/// Why a file gives no rate-distortion curve.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RdError {
    #[error("not a job record: the file holds {0}, not a JSON object")]
    NotAnObject(&'static str),
    #[error(
        "no bound terms to plot ({found}): the rate-distortion curve comes from an evaluation job with \
         bpd among its metrics (`ddpm jobs submit-eval --metrics bpd`), whose metrics.json holds \
         metrics.bpd.terms_bits_per_dim and metrics.bpd.x0_rmse_0_255"
    )]
    NoBound { found: String },
    #[error(
        "metrics.bpd.{field} {problem} (the bpd metric of an evaluation job writes it; a metrics.json \
         from an older ddpm may lack it: evaluate again)"
    )]
    Field { field: &'static str, problem: String },
}

impl RdCurve {
    /// Reads a job's `metrics.json` (or the `metrics` object inside it).
    pub fn from_json(v: &Value) -> Result<Self, RdError> {
        let Some(record) = v.as_object() else { return Err(RdError::NotAnObject(json_kind(v))) };
        let metrics = match record.get("metrics") {
            Some(m) => m.as_object(),
            None if record.contains_key("bpd") => Some(record),
            None => None,
        };
        let Some(bpd) = metrics.and_then(|m| m.get("bpd")) else {
            return Err(RdError::NoBound { found: describe(v) });
        };
        let field = |field: &'static str, problem: String| RdError::Field { field, problem };
        let numbers = |name: &'static str| -> Result<Vec<f64>, RdError> {
            let a = bpd.get(name).ok_or_else(|| field(name, "is missing".into()))?;
            let a = a.as_array().ok_or_else(|| field(name, format!("is {}, not an array", json_kind(a))))?;
            let v: Vec<f64> = a.iter().filter_map(|x| x.as_f64().filter(|x| x.is_finite())).collect();
            if v.len() != a.len() {
                return Err(field(name, "holds something other than finite numbers".into()));
            }
            Ok(v)
        };
        let terms = numbers("terms_bits_per_dim")?;
        let x0_rmse = numbers("x0_rmse_0_255")?;
        if terms.is_empty() {
            return Err(field("terms_bits_per_dim", "is empty".into()));
        }
        if x0_rmse.len() != terms.len() {
            let problem = format!("has {} values but terms_bits_per_dim {}: one each per timestep", x0_rmse.len(), terms.len());
            return Err(field("x0_rmse_0_255", problem));
        }
        let number = |name: &'static str| -> Result<f64, RdError> {
            let x = bpd.get(name).ok_or_else(|| field(name, "is missing".into()))?;
            x.as_f64().filter(|x| x.is_finite()).ok_or_else(|| field(name, format!("is {}, not a finite number", json_kind(x))))
        };
        let prior = number("prior_bits_per_dim")?;
        let bits_per_dim = number("bits_per_dim").unwrap_or_else(|_| prior + terms.iter().sum::<f64>());
        Ok(Self {
            job_id: record.get("job_id").and_then(Value::as_u64),
            weights_step: record.get("weights_step").and_then(Value::as_u64),
            data: bpd.get("data").and_then(Value::as_str).unwrap_or_default().to_string(),
            images: bpd.get("images").and_then(Value::as_u64).unwrap_or(0),
            bits_per_dim,
            prior,
            terms,
            x0_rmse,
        })
    }

    /// `T`.
    pub fn timesteps(&self) -> usize {
        self.terms.len()
    }

    /// The reverse steps taken, `T - t` for t = T..1: 0..T-1.
    pub fn steps(&self) -> Vec<f64> {
        (0..self.timesteps()).map(|s| s as f64).collect()
    }

    /// Bits/dim received after each reverse step ([`cumulative_rate`]).
    pub fn rate(&self) -> Vec<f64> {
        cumulative_rate(self.prior, &self.terms)
    }

    /// RMSE on the [0, 255] scale after each reverse step: the timesteps
    /// from T-1 down to 0.
    pub fn distortion(&self) -> Vec<f64> {
        self.x0_rmse.iter().rev().copied().collect()
    }

    /// `L_0`: the bits/dim that send x0 itself once `x_1` is known.
    pub fn decoder_nll(&self) -> f64 {
        self.terms[0]
    }
}

/// The rate after s = 0..T-1 reverse steps from the prior `L_T` and the
/// per-timestep terms (`terms[0]` is `L_0`, not a rate: it is left out):
/// `out[0] = L_T`, `out[s] = out[s - 1] + terms[T - s]`.
pub fn cumulative_rate(prior: f64, terms: &[f64]) -> Vec<f64> {
    let mut rate = prior;
    let mut out = Vec::with_capacity(terms.len());
    if !terms.is_empty() {
        out.push(rate);
    }
    for term in terms.iter().skip(1).rev() {
        rate += term;
        out.push(rate);
    }
    out
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a record without the bound is, for the error.
fn describe(v: &Value) -> String {
    let metrics = |v: &Value| -> Vec<String> {
        v.get("spec")
            .and_then(|s| s.get("metrics"))
            .and_then(Value::as_array)
            .map_or_else(Vec::new, |a| a.iter().filter_map(|m| m.as_str().map(String::from)).collect())
    };
    match v.get("kind").and_then(Value::as_str) {
        Some("eval") => match metrics(v) {
            m if m.is_empty() => "an evaluation job without bpd".into(),
            m => format!("an evaluation job of {} only", m.join(", ")),
        },
        Some(kind) => format!("the record of a {kind} job"),
        None if v.get("metrics").is_some() => "a metrics object without bpd".into(),
        None => "no \"metrics\" object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_rate_adds_the_kl_terms_from_the_last_timestep_down() {
        // T = 4: L_0 = 5 (left out), L_1 = 0.5, L_2 = 0.25, L_3 = 0.125; L_T = 0.01.
        let rate = cumulative_rate(0.01, &[5.0, 0.5, 0.25, 0.125]);
        assert_eq!(rate, vec![0.01, 0.01 + 0.125, 0.01 + 0.125 + 0.25, 0.01 + 0.125 + 0.25 + 0.5]);
        assert_eq!(cumulative_rate(0.5, &[2.0]), vec![0.5]);
        assert!(cumulative_rate(0.5, &[]).is_empty());
    }

    fn record(bpd: Value) -> Value {
        json!({"job_id": 7, "kind": "eval", "weights_step": 30, "spec": {"metrics": ["bpd"]}, "metrics": {"bpd": bpd}})
    }

    #[test]
    fn a_metrics_json_gives_rate_and_distortion_along_the_reverse_process() {
        let v = record(json!({
            "bits_per_dim": 5.885, "images": 4, "data": "synthetic:shapes:test", "prior_bits_per_dim": 0.01,
            "decoder_nll_bits_per_dim": 5.0, "timesteps": 4,
            "terms_bits_per_dim": [5.0, 0.5, 0.25, 0.125], "x0_rmse_0_255": [1.0, 10.0, 40.0, 80.0],
        }));
        let c = RdCurve::from_json(&v).unwrap();
        assert_eq!((c.job_id, c.weights_step, c.images, c.timesteps()), (Some(7), Some(30), 4, 4));
        assert_eq!(c.steps(), vec![0.0, 1.0, 2.0, 3.0]);
        // Step 0 holds x_T: the prior alone, x0_hat from the noisiest x.
        assert_eq!(c.distortion(), vec![80.0, 40.0, 10.0, 1.0]);
        assert_eq!(c.rate(), cumulative_rate(0.01, &c.terms));
        // The last rate and L_0 make up the whole bound.
        assert!((c.rate()[3] + c.decoder_nll() - c.bits_per_dim).abs() < 1e-12);
        // The bare metrics object reads the same.
        assert_eq!(RdCurve::from_json(&v["metrics"]).unwrap().terms, c.terms);
    }

    #[test]
    fn files_without_the_bound_say_which_job_writes_it() {
        let fid = json!({"kind": "eval", "spec": {"metrics": ["fid", "is"]}, "metrics": {"fid": {"value": 3.0}}});
        let e = RdCurve::from_json(&fid).unwrap_err().to_string();
        assert!(e.contains("an evaluation job of fid, is only") && e.contains("--metrics bpd"), "{e}");
        let sample = json!({"kind": "sample", "spec": {}});
        let e = RdCurve::from_json(&sample).unwrap_err().to_string();
        assert!(e.contains("a sample job") && e.contains("evaluation job with bpd"), "{e}");
        assert_eq!(RdCurve::from_json(&json!([1, 2])), Err(RdError::NotAnObject("an array")));
        let e = RdCurve::from_json(&record(json!({"terms_bits_per_dim": [1.0], "prior_bits_per_dim": 0.0}))).unwrap_err();
        assert_eq!(e, RdError::Field { field: "x0_rmse_0_255", problem: "is missing".into() });
        let uneven = json!({"terms_bits_per_dim": [1.0, 2.0], "x0_rmse_0_255": [3.0], "prior_bits_per_dim": 0.0});
        let e = RdCurve::from_json(&record(uneven)).unwrap_err().to_string();
        assert!(e.contains("x0_rmse_0_255 has 1 values but terms_bits_per_dim 2"), "{e}");
        let bad = json!({"terms_bits_per_dim": [1.0, "x"], "x0_rmse_0_255": [3.0, 4.0], "prior_bits_per_dim": 0.0});
        let e = RdCurve::from_json(&record(bad)).unwrap_err().to_string();
        assert!(e.contains("terms_bits_per_dim holds something other than finite numbers"), "{e}");
        let no_prior = json!({"terms_bits_per_dim": [1.0], "x0_rmse_0_255": [3.0]});
        let e = RdCurve::from_json(&record(no_prior)).unwrap_err();
        assert_eq!(e, RdError::Field { field: "prior_bits_per_dim", problem: "is missing".into() });
    }
}
