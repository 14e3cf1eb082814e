//! The run's metrics history in memory, for the dashboard: the rows of the
//! run's metrics log up to the step this start resumed from (read from the
//! store once, so the curves cover the whole run after a restart), then
//! every row the metrics log writes, as it writes it.
//!
//! About 100 bytes per step: 800,000 steps (the paper's CIFAR-10 run) hold
//! some 80 MB.

use std::sync::Mutex;

use ddpm::store::metrics_rows::{self, EvalRow, RunRows, StepRow};
use ddpm::store::RunStore;

#[derive(Default)]
pub struct RunHistory {
    rows: Mutex<RunRows>,
}

impl RunHistory {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunRows> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the rows of the run in `store` up to step `upto` (later rows
    /// are superseded by this start) in front of the rows this start pushed
    /// meanwhile (the load may take a while on a long run in object
    /// storage, and training does not wait for it). A store that cannot be
    /// read leaves the earlier rows out: the dashboard then shows this
    /// start only.
    pub async fn load(&self, store: &RunStore, upto: u64) {
        match metrics_rows::read(store).await {
            Ok(mut rows) => {
                rows.steps.retain(|r| r.step <= upto);
                rows.evals.retain(|r| r.step <= upto);
                let mut held = self.lock();
                let pushed = std::mem::take(&mut *held);
                rows.steps.extend(pushed.steps.into_iter().filter(|r| r.step > upto));
                rows.evals.extend(pushed.evals);
                *held = rows;
            }
            Err(e) => {
                tracing::warn!(run = %store.url(), "cannot read the run's metrics log for the dashboard (it shows this start's steps only): {e}")
            }
        }
    }

    /// A step's row, as the metrics log wrote it.
    pub fn push_step(&self, row: StepRow) {
        let mut rows = self.lock();
        // A redone step replaces its row (it should not happen: rows are
        // pushed once per applied step).
        if rows.steps.last().is_some_and(|l| l.step >= row.step) {
            rows.steps.retain(|r| r.step < row.step);
        }
        rows.steps.push(row);
    }

    /// A finished periodic evaluation's row.
    pub fn push_eval(&self, row: EvalRow) {
        self.lock().evals.push(row);
    }

    /// The step rows after step `after`, at most `limit` of them (the oldest).
    pub fn steps_after(&self, after: u64, limit: usize) -> Vec<StepRow> {
        self.lock().steps_after(after).iter().take(limit).cloned().collect()
    }

    pub fn evals(&self) -> Vec<EvalRow> {
        self.lock().evals.clone()
    }

    /// Step rows held.
    pub fn len(&self) -> usize {
        self.lock().steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: u64, loss: f64) -> StepRow {
        serde_json::from_value(serde_json::json!({ "step": step, "loss": loss })).unwrap()
    }

    #[tokio::test]
    async fn a_resumed_start_keeps_the_rows_up_to_its_checkpoint_then_appends() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (1..=6).map(|s| format!("{{\"step\":{s},\"loss\":{}}}\n", s as f64 / 10.0)).collect();
        std::fs::write(dir.path().join("metrics.jsonl"), lines).unwrap();
        let store = RunStore::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        let h = RunHistory::default();
        // A row of this start arrives before the earlier rows are loaded.
        h.push_step(row(5, 0.05));
        h.load(&store, 4).await;
        assert_eq!(h.len(), 5);
        let after = h.steps_after(3, 10);
        assert_eq!(after.iter().map(|r| (r.step, r.loss)).collect::<Vec<_>>(), vec![(4, 0.4), (5, 0.05)]);
        assert_eq!(h.steps_after(0, 2).len(), 2);
    }
}
