//! Fault injection with the real binaries on loopback: each test provokes
//! one failure (a store that refuses writes, a metrics log that cannot be
//! written, a killed process) and asserts what survived. `deploy/chaos.sh`
//! drives the same scenarios for longer.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{start_coordinator, start_worker, tempdir, Proc};
use ddpm::proto::{self, coordinator_client::CoordinatorClient};

/// The tiny U-Net at 16x16, checkpoints every 3 steps, a line per step.
const CONFIG: &str = r#"
[model]
image_size = 16

[train]
batch_size = 4
seed = 5
log_every = 1

[checkpoint]
every_steps = 3
every_minutes = 0.0
keep_last = 10

[sample]
at_end = false
"#;

/// A 2-worker run in a temporary directory.
struct Run {
    dir: tempfile::TempDir,
    config: String,
}

impl Run {
    fn new() -> Self {
        let dir = tempdir();
        let config = dir.path().join("run.toml");
        std::fs::write(&config, CONFIG).unwrap();
        Run { config: config.display().to_string(), dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// A coordinator for `steps` steps (extra flags appended) and 2 workers.
    fn start(&self, steps: u64, extra: &[&str]) -> (Proc, String, Vec<Proc>) {
        let steps = steps.to_string();
        let run = self.path().display().to_string();
        let mut args =
            vec!["--preset", "tiny", "--config", &self.config, "--workers", "2", "--steps", &steps, "--threads", "1", "--run", &run];
        args.extend_from_slice(extra);
        let (coord, addr) = start_coordinator(&args);
        let workers = (0..2).map(|i| start_worker(&addr, &format!("w{i}"))).collect();
        (coord, addr, workers)
    }

    fn summary(&self) -> serde_json::Value {
        let path = self.path().join("summary.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    /// The steps of the training rows of metrics.jsonl, in order.
    fn logged_steps(&self) -> Vec<u64> {
        steps_in(&self.path().join("metrics.jsonl"))
    }
}

fn steps_in(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("torn row {l:?}: {e}")))
        .filter(|row| row.get("loss").is_some())
        .map(|row| row["step"].as_u64().unwrap())
        .collect()
}

async fn status(addr: &str) -> proto::StatusReply {
    let mut c = CoordinatorClient::connect(format!("http://{addr}")).await.expect("connect");
    c.get_status(proto::StatusRequest {}).await.expect("status").into_inner()
}

/// A store path that refuses every checkpoint (a file where the
/// checkpoints directory should be: "Not a directory", which no retry
/// fixes): training goes on, each checkpoint fails at its first attempt,
/// GetStatus shows the unsaved steps and the error, and the failed final
/// checkpoint still leaves a summary.json that says why, with exit 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_refuses_checkpoints_is_not_retried_and_the_summary_says_why() {
    let run = Run::new();
    std::fs::create_dir_all(run.path()).unwrap();
    std::fs::write(run.path().join("checkpoints"), "in the way").unwrap();
    let (mut coord, addr, _workers) = run.start(12, &[]);
    coord.wait_for_line("checkpoint upload failed; training goes on without it", Duration::from_secs(300));
    let s = status(&addr).await;
    assert_eq!(s.last_checkpoint_step, 0, "{s:?}");
    assert!(s.unsaved_steps >= 3 && s.unsaved_steps == s.step, "{s:?}");
    assert!(s.checkpoint_error.contains("Not a directory") && s.checkpoint_error.contains("move it away"), "{s:?}");

    let code = coord.wait(Duration::from_secs(300));
    let out = coord.output();
    assert_eq!(code, 1, "{out}");
    // Refused, so never retried: every failure took one attempt.
    assert!(!out.contains("retrying"), "{out}");
    assert!(out.contains("attempts=1"), "{out}");
    let summary = run.summary();
    assert_eq!(summary["steps"], 12, "{summary}");
    let error = summary["error"].as_str().unwrap_or_else(|| panic!("no error in {summary}"));
    assert!(error.contains("the checkpoint of step 12 could not be saved") && error.contains("Not a directory"), "{error}");
    assert_eq!(summary["checkpoint"], serde_json::Value::Null, "{summary}");
    assert_eq!(run.logged_steps(), (1..=12).collect::<Vec<_>>());
}

/// A metrics log that cannot be written (a directory in its place) does
/// not stop training: the failure is logged with the file, the rows are
/// held, and once the path is free again every step lands exactly once.
#[test]
fn a_metrics_log_that_cannot_be_written_holds_its_rows_and_the_run_finishes() {
    let run = Run::new();
    let log = run.path().join("metrics.jsonl");
    std::fs::create_dir_all(&log).unwrap();
    let (mut coord, _addr, _workers) = run.start(10, &[]);
    let line = coord.wait_for_line("cannot write the metrics log", Duration::from_secs(300));
    assert!(line.contains("metrics.jsonl"), "{line}");
    coord.wait_for_line("step 4/10", Duration::from_secs(300));
    std::fs::remove_dir(&log).unwrap();
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    let out = coord.output();
    assert!(out.contains("the metrics log is written again"), "{out}");
    assert_eq!(run.logged_steps(), (1..=10).collect::<Vec<_>>());
    assert_eq!(run.summary()["error"], serde_json::Value::Null);
    assert!(run.path().join("checkpoints/step_0000000010/manifest.json").exists());
}

/// Waits until `path` exists.
#[allow(dead_code)]
fn wait_for_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear within {timeout:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}
