//! Fault injection with the real binaries on loopback: each test provokes
//! one failure (a store that refuses writes, a metrics log that cannot be
//! written, a killed process) and asserts what survived. `deploy/chaos.sh`
//! drives the same scenarios for longer.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{max_diff, read_tensors, start_coordinator, start_worker, tempdir, Proc};
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
        Self::with_config("")
    }

    /// A run whose config adds `extra` (whole TOML sections) to CONFIG.
    fn with_config(extra: &str) -> Self {
        Self::with_toml(&format!("{CONFIG}\n{extra}"))
    }

    /// The same with checkpoints taken through the coordinator even with
    /// the shadow off: the replicas' sharded ones are committed at the
    /// first step boundary after their last shard is written, which a
    /// frozen step can put after the kill this test times against.
    fn with_coordinator_checkpoints(extra: &str) -> Self {
        let config = CONFIG.replace("keep_last = 10", "keep_last = 10\nwriters = \"coordinator\"");
        Self::with_toml(&format!("{config}\n{extra}"))
    }

    fn with_toml(toml: &str) -> Self {
        let dir = tempdir();
        let config = dir.path().join("run.toml");
        std::fs::write(&config, toml).unwrap();
        Run { config: config.display().to_string(), dir }
    }

    /// The coordinator's flags for `steps` steps.
    fn coord_args(&self, steps: u64) -> Vec<String> {
        let run = self.path().display().to_string();
        let steps = steps.to_string();
        ["--preset", "tiny", "--config", &self.config, "--workers", "2", "--steps", &steps, "--threads", "1", "--run", &run]
            .map(String::from)
            .to_vec()
    }

    /// A coordinator on the fixed address `addr` (so that a restart is
    /// found at the same place).
    fn start_at(&self, addr: &str, steps: u64) -> Proc {
        let mut args = vec!["--listen".to_string(), addr.to_string()];
        args.extend(self.coord_args(steps));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = Proc::start("ddpm-coord", "ddpm-coord", &args);
        p.wait_for_line("listening on ", Duration::from_secs(120));
        p
    }

    /// Runs `steps` steps with 2 workers, fault-free.
    fn finish(&self, steps: u64) {
        let (mut coord, _addr, mut workers) = self.start(steps, &[]);
        assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
        for w in &mut workers {
            assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
        }
    }

    /// The largest difference from `other`'s parameters, EMA and Adam
    /// moments after `step`.
    fn max_diff(&self, other: &Run, step: u64) -> f64 {
        let file = |run: &Run, f: &str| read_tensors(&run.path().join(format!("checkpoints/step_{step:010}/{f}")));
        ["model.safetensors", "ema.safetensors", "optimizer.safetensors"]
            .iter()
            .map(|f| max_diff(&file(self, f), &file(other, f)))
            .fold(0.0, f64::max)
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// A coordinator for `steps` steps (extra flags appended) and 2 workers.
    fn start(&self, steps: u64, extra: &[&str]) -> (Proc, String, Vec<Proc>) {
        let mut args = self.coord_args(steps);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
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
    // The status hears of the failure just after the log line.
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = status(&addr).await;
        if !s.checkpoint_error.is_empty() || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
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

fn kill(p: &Proc, signal: &str) {
    let pid = p.child.id().to_string();
    assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success());
}

/// kill -9 of the coordinator after step 7 of 12 (checkpoint at 6), and
/// the same command again: the workers, never restarted, reconnect and
/// rejoin by themselves, and the run ends bit-identical to a straight one.
#[test]
fn a_killed_coordinator_gets_its_workers_back_and_the_run_ends_as_a_straight_one() {
    let straight = Run::new();
    straight.finish(12);

    let run = Run::new();
    let addr = common::free_addr();
    let mut coord = run.start_at(&addr, 12);
    let mut workers: Vec<Proc> = (0..2).map(|i| start_worker(&addr, &format!("w{i}"))).collect();
    // Step 6's checkpoint goes up in the background: killed after it
    // landed (and after step 7), the run resumes from it.
    coord.wait_for_line("checkpoint saved step=6", Duration::from_secs(300));
    coord.wait_for_line("step 7/12", Duration::from_secs(300));
    coord.child.kill().unwrap();
    coord.child.wait().unwrap();
    let killed_at = Instant::now();

    let mut again = run.start_at(&addr, 12);
    again.wait_for_line("resuming from the latest complete checkpoint step=6", Duration::from_secs(60));
    again.wait_for_line("training starts", Duration::from_secs(120));
    eprintln!("the workers were back {:.1} s after the kill", killed_at.elapsed().as_secs_f64());
    assert_eq!(again.wait(Duration::from_secs(300)), 0, "{}", again.output());
    for w in &mut workers {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
        assert!(w.output().contains("lost the coordinator"), "{}", w.output());
    }
    let d = run.max_diff(&straight, 12);
    assert_eq!(d, 0.0, "the restarted run differs from the straight one by {d}");
    assert_eq!(run.logged_steps(), (1..=12).collect::<Vec<_>>());
}

/// kill -9 of a worker: its connection closes, the coordinator drops it at
/// once (the heartbeat timeout and the straggler policy are out of reach
/// here: 600 s and off) and the other redoes the step; the run ends within
/// 1e-4 of the fault-free run (a different split of the same batches).
#[test]
fn a_killed_worker_is_dropped_at_once_and_its_step_redone() {
    let straight = Run::new();
    straight.finish(12);

    let run = Run::with_config("[dist]\nheartbeat_timeout_s = 600.0\nstraggler_factor = 0.0\n");
    let (mut coord, _addr, mut workers) = run.start(12, &[]);
    coord.wait_for_line("step 4/12", Duration::from_secs(300));
    workers[1].child.kill().unwrap();
    let killed_at = Instant::now();
    coord.wait_for_line("dropped at once", Duration::from_secs(300));
    let dropped_after = killed_at.elapsed();
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    eprintln!("a killed worker was dropped {:.3} s after kill -9", dropped_after.as_secs_f64());
    assert_eq!(workers[0].wait(Duration::from_secs(60)), 0, "{}", workers[0].output());
    let d = run.max_diff(&straight, 12);
    eprintln!("max |fault-free - killed worker| = {d:e}");
    assert!(d < 1e-4, "{d}");
}

/// A worker that stops making progress (SIGSTOP: its connection stays
/// open) is dropped by the straggler policy once the other has delivered
/// (or, stopped between two steps, passed over after the same grace), long
/// before the step timeout (600 s) or the heartbeat timeout (600 s); the
/// run goes on without it.
#[test]
fn a_stuck_worker_is_dropped_by_the_straggler_policy() {
    let run =
        Run::with_config("[dist]\nheartbeat_timeout_s = 600.0\nstep_timeout_s = 600.0\nstraggler_factor = 4.0\nstraggler_min_s = 1.0\n");
    let (mut coord, _addr, mut workers) = run.start(8, &[]);
    coord.wait_for_line("step 3/8", Duration::from_secs(300));
    kill(&workers[1], "-STOP");
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    // Stopped inside a step (dropped) or between two (passed over).
    let out = coord.output();
    assert!(out.contains("straggler policy") || out.contains("did not come back within 1.0 s"), "{out}");
    assert_eq!(workers[0].wait(Duration::from_secs(60)), 0, "{}", workers[0].output());
    kill(&workers[1], "-CONT");
    assert_eq!(run.summary()["steps"], 8);
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A second coordinator on a run that one is training is refused, naming
/// the holder, and the first finishes untouched (each step logged once,
/// replicas agreeing); then the finished run started again exits 0 and
/// changes nothing in the run's directory.
#[test]
fn a_second_coordinator_is_refused_and_a_finished_run_restarted_changes_nothing() {
    let run = Run::new();
    let (mut first, _addr, mut workers) = run.start(10, &[]);
    first.wait_for_line("step 2/10", Duration::from_secs(300));
    let args = run.coord_args(10);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut second, _) = start_coordinator(&args);
    assert_ne!(second.wait(Duration::from_secs(60)), 0);
    let out = second.output();
    assert!(out.contains("is held by another coordinator"), "{out}");
    assert!(out.contains(&format!("pid {}", first.child.id())), "{out}");
    assert_eq!(first.wait(Duration::from_secs(300)), 0, "{}", first.output());
    for w in &mut workers {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
    }
    assert_eq!(run.logged_steps(), (1..=10).collect::<Vec<_>>());
    let summary = run.summary();
    assert_eq!(summary["replicas_agree"], true, "{summary}");

    let before = snapshot(&run.path());
    let (mut again, _) = start_coordinator(&args);
    assert_eq!(again.wait(Duration::from_secs(60)), 0, "{}", again.output());
    assert!(again.output().contains("the run is already finished"), "{}", again.output());
    let after = snapshot(&run.path());
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    assert!(before == after, "a restarted finished run changed its files");
}

/// A worker-to-worker backend: the replicas keep the EMA too, so they
/// hold the run's whole last step, and a coordinator killed with -9 (after
/// the checkpoint of step 6, while step 9 is held up by a member frozen
/// mid-ring) loses nothing: the same command again finds the workers,
/// which kept their state, checks by checksum that they agree, takes
/// step 8 from one of them and goes on from there. No step is trained
/// twice, each is in the log once, and the run ends as a straight one;
/// with the coordinator's copy of the state off, and on (it died with the
/// coordinator).
#[test]
fn with_the_shadow_off_a_new_coordinator_goes_on_from_the_replicas_step() {
    a_new_coordinator_goes_on_from_the_replicas_step("[dist]\nbackend = \"ring\"\nshadow = \"off\"\nchecksum_every = 1\n");
}

#[test]
fn with_the_shadow_on_a_new_coordinator_goes_on_from_the_replicas_step() {
    a_new_coordinator_goes_on_from_the_replicas_step("[dist]\nbackend = \"ring\"\nchecksum_every = 1\n");
}

fn a_new_coordinator_goes_on_from_the_replicas_step(dist: &str) {
    let straight = Run::with_coordinator_checkpoints(dist);
    straight.finish(12);

    let run = Run::with_coordinator_checkpoints(dist);
    let addr = common::free_addr();
    let mut coord = run.start_at(&addr, 12);
    let worker = |i: usize, fault: Option<&str>| {
        let name = format!("w{i}");
        let mut cmd = std::process::Command::new(common::binary("ddpm-worker"));
        cmd.args(["--coord", &addr, "--device", "cpu", "--threads", "1", "--name", &name]).env("RUST_LOG", "info");
        if let Some(f) = fault {
            cmd.env("DDPM_FAULT_RING_FREEZE", f);
        }
        Proc::spawn(&name, cmd)
    };
    let mut workers = vec![worker(0, Some("9:6")), worker(1, None)];
    coord.wait_for_line("checkpoint saved step=6", Duration::from_secs(300));
    workers[0].wait_for_line("fault injection: freezing the ring", Duration::from_secs(300));
    coord.child.kill().unwrap();
    coord.child.wait().unwrap();
    assert_eq!(run.logged_steps(), (1..=8).collect::<Vec<_>>(), "the killed coordinator logged steps 1 to 8:\n{}", coord.output());

    let mut again = run.start_at(&addr, 12);
    again.wait_for_line(
        "the live replicas hold step 8 (2 of 2 agree by checksum): going on from it, not from step 6",
        Duration::from_secs(120),
    );
    assert_eq!(again.wait(Duration::from_secs(300)), 0, "{}", again.output());
    for w in &mut workers {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
        assert!(w.output().contains("keeping the training state of step 8"), "{}", w.output());
    }
    let out = again.output();
    assert!(!out.contains("step 8/12"), "step 8 was trained again:\n{out}");
    let summary = run.summary();
    assert_eq!((summary["steps"].as_u64(), summary["resumed_from"].as_u64()), (Some(12), Some(8)), "{summary}");
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(run.logged_steps(), (1..=12).collect::<Vec<_>>(), "each step once");
    let d = run.max_diff(&straight, 12);
    eprintln!("max |straight - coordinator killed, replicas' step adopted| = {d:e}");
    assert!(d < 1e-4, "{d}");
}
