//! Reading a run's metrics log back: what the coordinator's metrics log
//! wrote (`metrics.jsonl` in a local run, `metrics/step_<first>.jsonl`
//! segments in object storage), as step rows and evaluation rows, oldest
//! first. The dashboard, `ddpm metrics plot` and `ddpm status` read runs
//! through this, live or finished, local or S3.
//!
//! A torn or foreign line is skipped (a crash can leave half a line at the
//! end of a local log); a step that appears twice keeps its last row (a
//! resumed run supersedes the rows after its checkpoint, but a reader can
//! race that rewrite).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::StoreError;
use super::run_store::RunStore;

/// The local log's key, and the prefix of the remote segments.
pub const LOCAL_LOG: &str = "metrics.jsonl";
pub const SEGMENTS: &str = "metrics";

/// One training step as the log holds it (the fields a reader plots; the
/// log may hold more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub step: u64,
    pub loss: f64,
    #[serde(default)]
    pub grad_norm: f64,
    #[serde(default = "yes")]
    pub applied: bool,
    #[serde(default)]
    pub lr: f64,
    #[serde(default)]
    pub workers: usize,
    #[serde(default)]
    pub step_s: f64,
    #[serde(default)]
    pub compute_s: f64,
    #[serde(default)]
    pub allreduce_s: f64,
    #[serde(default)]
    pub images_per_s: f64,
    #[serde(default)]
    pub last_checkpoint: u64,
    #[serde(default)]
    pub unsaved_steps: u64,
}

fn yes() -> bool {
    true
}

/// A finished periodic evaluation's row: the step it was taken after and
/// its result as written (`job_id`, `state`, `weights_step`, `fid.value`,
/// `grid`, `error`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRow {
    pub step: u64,
    pub eval: serde_json::Value,
}

/// Everything in a run's metrics log.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunRows {
    /// By step, each step once.
    pub steps: Vec<StepRow>,
    /// In the order they finished.
    pub evals: Vec<EvalRow>,
    /// Lines that were neither (torn, or not JSON).
    pub skipped_lines: usize,
}

impl RunRows {
    /// Parses the lines of a log (or the concatenation of its segments).
    pub fn parse(text: &str) -> Self {
        let mut steps = BTreeMap::new();
        let mut evals = Vec::new();
        let mut skipped_lines = 0;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                skipped_lines += 1;
                continue;
            };
            let step = value.get("step").and_then(|s| s.as_u64());
            match (step, value.get("eval")) {
                (Some(step), Some(eval)) => evals.push(EvalRow { step, eval: eval.clone() }),
                (Some(step), None) => match serde_json::from_value::<StepRow>(value) {
                    Ok(row) => {
                        steps.insert(step, row);
                    }
                    Err(_) => skipped_lines += 1,
                },
                _ => skipped_lines += 1,
            }
        }
        Self { steps: steps.into_values().collect(), evals, skipped_lines }
    }

    /// The step rows after step `after`.
    pub fn steps_after(&self, after: u64) -> &[StepRow] {
        let first = self.steps.partition_point(|r| r.step <= after);
        &self.steps[first..]
    }
}

/// The rows of the run in `store`; a run with no log yet has none.
pub async fn read(store: &RunStore) -> Result<RunRows, StoreError> {
    let mut text = String::new();
    for_each_part(store, |part| {
        text.push_str(&String::from_utf8_lossy(part));
        text.push('\n');
    })
    .await?;
    Ok(RunRows::parse(&text))
}

/// Hands `f` each part of the run's metrics log as it is read, in the
/// log's order: a local run's `metrics.jsonl`, then the remote segments.
/// A reader that keeps only some columns of each row holds one part at a
/// time, never the whole log's text and rows (the dashboard's history of
/// an 800,000-step run).
pub async fn for_each_part(store: &RunStore, mut f: impl FnMut(&[u8])) -> Result<(), StoreError> {
    if !store.is_remote() {
        match store.get(LOCAL_LOG).await {
            Ok(bytes) => f(&bytes),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    // Segments sort by their zero-padded first step, which is the log's order.
    for seg in store.list(SEGMENTS).await? {
        if !seg.key.ends_with(".jsonl") {
            continue;
        }
        match store.get(&seg.key).await {
            Ok(bytes) => f(&bytes),
            // Superseded between the listing and the read.
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_evals_and_torn_lines_are_told_apart() {
        let text = concat!(
            r#"{"step":1,"loss":0.9,"images_per_s":10.0}"#,
            "\n",
            r#"{"step":2,"loss":0.8,"grad_norm":1.5,"applied":false}"#,
            "\n",
            r#"{"step":2,"eval":{"job_id":3,"state":"done","fid":{"value":99.5}}}"#,
            "\n",
            r#"{"step":1,"loss":0.7}"#,
            "\n",
            r#"{"step":3,"los"#,
        );
        let rows = RunRows::parse(text);
        let losses: Vec<(u64, f64)> = rows.steps.iter().map(|r| (r.step, r.loss)).collect();
        assert_eq!(losses, vec![(1, 0.7), (2, 0.8)]);
        assert!(!rows.steps[1].applied && rows.steps[0].applied);
        assert_eq!(rows.evals.len(), 1);
        assert_eq!(rows.evals[0].eval["fid"]["value"], 99.5);
        assert_eq!(rows.skipped_lines, 1);
        assert_eq!(rows.steps_after(1).len(), 1);
        assert_eq!(rows.steps_after(0).len(), 2);
    }

    #[tokio::test]
    async fn a_local_run_without_a_log_has_no_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        assert_eq!(read(&store).await.unwrap(), RunRows::default());
        std::fs::write(dir.path().join("metrics.jsonl"), "{\"step\":4,\"loss\":0.5}\n").unwrap();
        assert_eq!(read(&store).await.unwrap().steps[0].step, 4);
    }
}
