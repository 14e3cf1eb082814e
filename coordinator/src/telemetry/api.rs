//! The dashboard's JSON: the run at a glance (`/api/status`), its curves
//! downsampled to the page's width (`/api/curves`) and its metrics history
//! step by step (`/api/metrics`), built from the components' copies.
//! Images are named by URLs under `/files/`, which serves only the run's
//! sample grids ([`servable`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ddpm::store::RunStore;
use serde::Serialize;

use super::curves::Curves;
use super::history::{RunHistory, StepPoint};
use super::metrics::Sources;

#[derive(Serialize)]
pub struct StatusView {
    pub run: String,
    pub phase: &'static str,
    pub step: u64,
    pub total_steps: u64,
    pub resumed_from: u64,
    pub loss: Option<f64>,
    pub images_per_s: f64,
    pub elapsed_s: f64,
    pub eta_s: Option<f64>,
    pub skipped_steps: u64,
    pub last_checkpoint_step: u64,
    pub unsaved_steps: u64,
    pub checkpoint_error: Option<String>,
    pub checkpoints: Vec<CheckpointView>,
    pub workers_expected: usize,
    pub workers: Vec<WorkerView>,
    pub jobs: Vec<JobView>,
    pub latest_grid: Option<GridView>,
}

#[derive(Serialize)]
pub struct CheckpointView {
    pub step: u64,
    pub location: String,
}

#[derive(Serialize)]
pub struct WorkerView {
    pub id: u64,
    pub name: String,
    pub device: String,
    pub role: String,
    pub state: String,
    pub last_step: u64,
    pub compute_s: Option<f64>,
    /// Its shard over its compute time in its last step.
    pub images_per_s: Option<f64>,
    pub silent_s: f64,
}

#[derive(Serialize)]
pub struct JobView {
    pub id: u64,
    pub kind: String,
    pub state: String,
    pub done: u64,
    pub total: u64,
    pub error: String,
    pub age_s: f64,
    pub weights_step: u64,
    pub grid_url: Option<String>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct GridView {
    pub url: String,
    pub label: String,
}

#[derive(Serialize)]
pub struct MetricsView {
    pub steps: Vec<StepPoint>,
    pub evals: Vec<EvalView>,
}

#[derive(Serialize)]
pub struct EvalView {
    pub step: u64,
    pub eval: serde_json::Value,
}

/// Whether `/files/KEY` may serve `key`: a sample grid of the run
/// (`samples/step_N.png`, `jobs/N/grid.png`), nothing else of the store.
pub fn servable(key: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match key.split('/').collect::<Vec<_>>().as_slice() {
        ["samples", name] => name.strip_prefix("step_").and_then(|n| n.strip_suffix(".png")).is_some_and(digits),
        ["jobs", id, "grid.png"] => digits(id),
        _ => false,
    }
}

/// The `/files/` URL of a location in `store` (`None`: not a servable grid).
pub fn file_url(store: &RunStore, location: &str) -> Option<String> {
    let key = location.strip_prefix(&store.location(""))?;
    servable(key).then(|| format!("/files/{key}"))
}

/// Builds the views; caches the store listing of end-of-run grids.
pub struct Api {
    pub sources: Sources,
    pub history: std::sync::Arc<RunHistory>,
    pub store: RunStore,
    /// The newest `samples/step_N.png` and when it was listed.
    listed_grid: Mutex<Option<(Instant, Option<GridView>)>>,
}

/// How long a listing of `samples/` is reused.
const LISTING_TTL: Duration = Duration::from_secs(20);

impl Api {
    pub fn new(sources: Sources, history: std::sync::Arc<RunHistory>, store: RunStore) -> Self {
        Self { sources, history, store, listed_grid: Mutex::new(None) }
    }

    pub async fn status(&self) -> StatusView {
        let s = self.sources.status.get();
        let total = self.sources.total_steps;
        let workers = self
            .sources
            .roster
            .status()
            .into_iter()
            .map(|m| {
                let worked = m.last_step > 0 && m.compute_s > 0.0;
                WorkerView {
                    id: m.worker_id,
                    name: m.name,
                    device: m.device,
                    role: m.role,
                    state: m.state,
                    last_step: m.last_step,
                    compute_s: worked.then_some(m.compute_s),
                    images_per_s: worked.then(|| m.shard_size as f64 / m.compute_s),
                    silent_s: m.silent_s,
                }
            })
            .collect();
        let jobs: Vec<JobView> = self
            .sources
            .queue
            .list()
            .into_iter()
            .map(|j| JobView {
                grid_url: j.outputs.iter().find_map(|o| file_url(&self.store, o)),
                id: j.job_id,
                kind: j.kind,
                state: j.state,
                done: j.done,
                total: j.total,
                error: j.error,
                age_s: j.age_s,
                weights_step: j.weights_step,
            })
            .collect();
        let latest_grid = self.latest_grid(&jobs).await;
        StatusView {
            run: self.store.url().to_string(),
            phase: self.sources.lifecycle.phase().as_str(),
            step: s.step,
            total_steps: total,
            resumed_from: s.resumed_from,
            loss: s.last.as_ref().map(|m| m.loss),
            images_per_s: s.images_per_s,
            elapsed_s: s.elapsed_s,
            eta_s: s.eta_s(total),
            skipped_steps: s.skipped_steps,
            last_checkpoint_step: s.last_checkpoint,
            unsaved_steps: s.unsaved_steps(),
            checkpoint_error: s.checkpoint_error.clone(),
            checkpoints: s
                .checkpoints
                .iter()
                .map(|&step| CheckpointView { step, location: self.store.location(&ddpm::checkpoint::step_dir(step)) })
                .collect(),
            workers_expected: self.sources.workers_expected,
            workers,
            jobs,
            latest_grid,
        }
    }

    /// The newest grid: this process's latest finished job with one, else
    /// the latest periodic evaluation's, else the newest end-of-run grid in
    /// the store (a restarted coordinator).
    async fn latest_grid(&self, jobs: &[JobView]) -> Option<GridView> {
        let from_job = jobs.iter().rev().filter(|j| j.state == "done").find_map(|j| {
            let url = j.grid_url.clone()?;
            let label = match j.kind.as_str() {
                "grid" => format!("end of training, step {}", j.weights_step),
                kind => format!("job {} ({kind}), weights of step {}", j.id, j.weights_step),
            };
            Some(GridView { url, label })
        });
        if from_job.is_some() {
            return from_job;
        }
        let from_eval = self.history.evals().into_iter().rev().find_map(|e| {
            let url = file_url(&self.store, e.eval.get("grid")?.as_str()?)?;
            Some(GridView { url, label: format!("evaluation after step {}", e.step) })
        });
        if from_eval.is_some() {
            return from_eval;
        }
        self.listed_grid().await
    }

    async fn listed_grid(&self) -> Option<GridView> {
        if let Some((at, grid)) = &*self.listed_grid.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < LISTING_TTL {
                return grid.clone();
            }
        }
        let grid = match self.store.list("samples").await {
            Ok(objects) => objects
                .iter()
                .filter(|o| servable(&o.key))
                .max_by_key(|o| o.key.trim_start_matches("samples/step_").trim_end_matches(".png").parse::<u64>().unwrap_or(0))
                .map(|o| GridView {
                    url: format!("/files/{}", o.key),
                    label: format!("end of training, {}", o.key.trim_start_matches("samples/").trim_end_matches(".png").replace('_', " ")),
                }),
            Err(e) => {
                tracing::debug!("cannot list the run's sample grids: {e}");
                None
            }
        };
        *self.listed_grid.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), grid.clone()));
        grid
    }

    /// The curves in `columns` pixel columns.
    pub fn curves(&self, columns: usize) -> Curves {
        self.history.curves(columns)
    }

    /// Step rows after `after` (at most `limit`) and every evaluation.
    pub fn metrics(&self, after: u64, limit: usize) -> MetricsView {
        let evals = self
            .history
            .evals()
            .into_iter()
            .map(|e| {
                let mut eval = e.eval;
                let url = eval.get("grid").and_then(|g| g.as_str()).and_then(|g| file_url(&self.store, g));
                if let (Some(url), Some(obj)) = (url, eval.as_object_mut()) {
                    obj.insert("grid_url".into(), url.into());
                }
                EvalView { step: e.step, eval }
            })
            .collect();
        MetricsView { steps: self.history.steps_after(after, limit), evals }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sample_grids_are_served() {
        for ok in ["samples/step_000040.png", "samples/step_7.png", "jobs/000004/grid.png"] {
            assert!(servable(ok), "{ok}");
        }
        for bad in [
            "checkpoints/step_000010/manifest.json",
            "samples/../lease.json",
            "jobs/4/../../lease.json",
            "jobs/x/grid.png",
            "samples/step_.png",
            "summary.json",
            "jobs/000004/images/000001.png",
            "/etc/passwd",
        ] {
            assert!(!servable(bad), "{bad}");
        }
    }

    #[test]
    fn grid_locations_become_file_urls() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        let loc = store.location("jobs/000003/grid.png");
        assert_eq!(file_url(&store, &loc).as_deref(), Some("/files/jobs/000003/grid.png"));
        assert_eq!(file_url(&store, &store.location("jobs/000003/samples.npz")), None);
        assert_eq!(file_url(&store, "s3://elsewhere/jobs/000003/grid.png"), None);
    }
}
