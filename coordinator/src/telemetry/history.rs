//! The run's metrics history in memory, for the dashboard: every step's
//! loss and images/s (the two curves it draws), from the run's metrics log
//! up to the step this start resumed from (read line by line, so the
//! curves cover the whole run after a restart; read again up to the
//! replicas' step when a start goes on from theirs), then every row the
//! metrics log writes, as it writes it; and the periodic evaluations' rows.
//!
//! Kept in columns of 16 bytes a step (step, loss and images/s as f32):
//! 12.8 MB for the paper's 800,000 CIFAR-10 steps, 19 MB for LSUN's 1.2M.
//! The full rows stay in the log (`ddpm metrics plot` reads them there).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ddpm::store::metrics_rows::{self, EvalRow, StepRow};
use ddpm::store::{RunStore, StoreError};
use serde::{Deserialize, Serialize};

use super::curves::{self, Curves};

/// The columns, one entry per step, in step order.
#[derive(Default)]
struct Columns {
    step: Vec<u64>,
    /// NaN: the row had none (a non-finite loss is written as null).
    loss: Vec<f32>,
    images_per_s: Vec<f32>,
    evals: Vec<EvalRow>,
}

impl Columns {
    /// Appends a step; a step at or before the last one supersedes the
    /// rows from it on (a resumed start logs them again).
    fn push(&mut self, step: u64, loss: Option<f64>, images_per_s: Option<f64>) {
        if self.step.last().is_some_and(|&l| l >= step) {
            let keep = self.step.partition_point(|&s| s < step);
            self.truncate(keep);
        }
        self.step.push(step);
        self.loss.push(loss.map_or(f32::NAN, |v| v as f32));
        self.images_per_s.push(images_per_s.map_or(f32::NAN, |v| v as f32));
    }

    fn truncate(&mut self, len: usize) {
        self.step.truncate(len);
        self.loss.truncate(len);
        self.images_per_s.truncate(len);
    }

    fn reserve(&mut self, rows: usize) {
        self.step.reserve(rows);
        self.loss.reserve(rows);
        self.images_per_s.reserve(rows);
    }

    /// One line of a metrics log: a step row, an evaluation row, or
    /// neither (a torn or foreign line, skipped).
    fn parse_line(&mut self, line: &[u8]) {
        #[derive(Deserialize)]
        struct Line {
            step: Option<u64>,
            #[serde(default)]
            loss: Option<f64>,
            #[serde(default)]
            images_per_s: Option<f64>,
            #[serde(default)]
            eval: Option<serde_json::Value>,
        }
        let Ok(Line { step: Some(step), loss, images_per_s, eval }) = serde_json::from_slice::<Line>(line) else { return };
        match eval {
            Some(eval) => self.evals.push(EvalRow { step, eval }),
            None => self.push(step, loss, images_per_s),
        }
    }

    fn parse(&mut self, text: &[u8]) {
        self.reserve(text.iter().filter(|&&b| b == b'\n').count());
        for line in text.split(|&b| b == b'\n') {
            if !line.iter().all(u8::is_ascii_whitespace) {
                self.parse_line(line);
            }
        }
    }
}

/// A step as `/api/metrics` sends it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepPoint {
    pub step: u64,
    pub loss: Option<f32>,
    pub images_per_s: Option<f32>,
}

#[derive(Default)]
pub struct RunHistory {
    columns: Mutex<Columns>,
    /// The newest step any load was asked to keep the log's rows up to: a
    /// load that ends after a later one keeps what that one kept.
    upto: AtomicU64,
}

/// The run's metrics log as columns, read part by part.
async fn read_log(store: &RunStore) -> Result<Columns, StoreError> {
    let mut cols = Columns::default();
    metrics_rows::for_each_part(store, |part| cols.parse(part)).await?;
    Ok(cols)
}

impl RunHistory {
    fn lock(&self) -> std::sync::MutexGuard<'_, Columns> {
        self.columns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the rows of the run in `store` up to step `upto` (later rows
    /// are superseded by this start) in front of the rows this start pushed
    /// meanwhile (the load may take a while on a long run in object
    /// storage, and training does not wait for it). A store that cannot be
    /// read leaves the earlier rows out: the dashboard then shows this
    /// start only.
    pub async fn load(&self, store: &RunStore, upto: u64) {
        self.upto.fetch_max(upto, Ordering::SeqCst);
        let mut loaded = match read_log(store).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(run = %store.url(), "cannot read the run's metrics log for the dashboard (it shows this start's steps only): {e}");
                return;
            }
        };
        let mut held = self.lock();
        let upto = self.upto.load(Ordering::SeqCst);
        let keep = loaded.step.partition_point(|&s| s <= upto);
        loaded.truncate(keep);
        loaded.evals.retain(|r| r.step <= upto);
        let pushed = std::mem::take(&mut *held);
        loaded.reserve(pushed.step.len());
        for i in (0..pushed.step.len()).filter(|&i| pushed.step[i] > upto) {
            loaded.step.push(pushed.step[i]);
            loaded.loss.push(pushed.loss[i]);
            loaded.images_per_s.push(pushed.images_per_s[i]);
        }
        loaded.evals.extend(pushed.evals);
        loaded.step.shrink_to_fit();
        loaded.loss.shrink_to_fit();
        loaded.images_per_s.shrink_to_fit();
        *held = loaded;
    }

    /// A step's row, as the metrics log wrote it.
    pub fn push_step(&self, row: StepRow) {
        let finite = |v: f64| v.is_finite().then_some(v);
        self.lock().push(row.step, finite(row.loss), finite(row.images_per_s));
    }

    /// A finished periodic evaluation's row.
    pub fn push_eval(&self, row: EvalRow) {
        self.lock().evals.push(row);
    }

    /// The steps after step `after`, at most `limit` of them (the oldest).
    pub fn steps_after(&self, after: u64, limit: usize) -> Vec<StepPoint> {
        let c = self.lock();
        let first = c.step.partition_point(|&s| s <= after);
        let value = |v: f32| v.is_finite().then_some(v);
        (first..c.step.len().min(first.saturating_add(limit)))
            .map(|i| StepPoint { step: c.step[i], loss: value(c.loss[i]), images_per_s: value(c.images_per_s[i]) })
            .collect()
    }

    /// The loss and images/s curves downsampled to `columns` pixel columns.
    pub fn curves(&self, columns: usize) -> Curves {
        let c = self.lock();
        curves::downsample(&c.step, &c.loss, &c.images_per_s, columns)
    }

    pub fn evals(&self) -> Vec<EvalRow> {
        self.lock().evals.clone()
    }

    /// Steps held.
    pub fn len(&self) -> usize {
        self.lock().step.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the step columns hold (their capacity).
    pub fn bytes(&self) -> usize {
        let c = self.lock();
        c.step.capacity() * 8 + (c.loss.capacity() + c.images_per_s.capacity()) * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: u64, loss: f64) -> StepRow {
        serde_json::from_value(serde_json::json!({ "step": step, "loss": loss })).unwrap()
    }

    /// A run whose metrics log holds steps 1 to `last` (loss `step / 10`).
    fn logged(last: u64) -> (tempfile::TempDir, RunStore) {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (1..=last).map(|s| format!("{{\"step\":{s},\"loss\":{}}}\n", s as f64 / 10.0)).collect();
        std::fs::write(dir.path().join("metrics.jsonl"), lines).unwrap();
        let store = RunStore::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_resumed_start_keeps_the_rows_up_to_its_checkpoint_then_appends() {
        let (_dir, store) = logged(6);
        let h = RunHistory::default();
        // A row of this start arrives before the earlier rows are loaded.
        h.push_step(row(5, 0.05));
        h.load(&store, 4).await;
        assert_eq!(h.len(), 5);
        let after = h.steps_after(3, 10);
        assert_eq!(after.iter().map(|r| (r.step, r.loss)).collect::<Vec<_>>(), vec![(4, Some(0.4)), (5, Some(0.05))]);
        assert_eq!(h.steps_after(0, 2).len(), 2);
        assert_eq!(h.bytes(), 5 * 16);
    }

    /// A start that goes on from the replicas' step 5, after the checkpoint
    /// of step 3, keeps the log's rows 4 and 5 (the killed coordinator's),
    /// whichever of its two loads ends last.
    #[tokio::test]
    async fn a_start_that_goes_on_from_the_replicas_step_keeps_the_rows_up_to_it() {
        let (_dir, store) = logged(5);
        let steps = |h: &RunHistory| h.steps_after(0, 100).iter().map(|r| r.step).collect::<Vec<_>>();
        // The start's load (up to its checkpoint), then the adoption's.
        let h = RunHistory::default();
        h.load(&store, 3).await;
        assert_eq!(steps(&h), vec![1, 2, 3]);
        h.load(&store, 5).await;
        h.push_step(row(6, 0.6));
        assert_eq!(steps(&h), vec![1, 2, 3, 4, 5, 6]);
        // The start's load ending last keeps the adopted rows too.
        let h = RunHistory::default();
        h.load(&store, 5).await;
        h.push_step(row(6, 0.6));
        h.load(&store, 3).await;
        assert_eq!(steps(&h), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_log_read_back_keeps_the_later_start_and_skips_what_is_no_row() {
        let text = concat!(
            r#"{"step":1,"loss":0.9,"images_per_s":10.0,"grad_norm":2.0}"#,
            "\n",
            r#"{"step":2,"loss":null}"#,
            "\n",
            r#"{"step":2,"eval":{"job_id":3,"state":"done"}}"#,
            "\n",
            r#"{"step":3,"loss":0.7}"#,
            "\n",
            // A resumed start from step 1 logs step 2 again.
            r#"{"step":2,"loss":0.5}"#,
            "\n",
            r#"{"step":3,"los"#,
            "\n\n",
            "not json\n",
        );
        let mut c = Columns::default();
        c.parse(text.as_bytes());
        assert_eq!(c.step, vec![1, 2]);
        assert_eq!(c.loss, vec![0.9, 0.5]);
        assert_eq!(c.images_per_s[0], 10.0);
        assert!(c.images_per_s[1].is_nan());
        assert_eq!(c.evals.len(), 1);
    }
}
