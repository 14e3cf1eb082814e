//! Exact resume through the real binaries: a run stopped and restarted
//! (after its last step, on SIGTERM, or killed with SIGKILL in the middle of
//! a checkpoint upload) ends with exactly the parameters and EMA of a run
//! that went straight through.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{max_diff, read_tensors, start_coordinator, start_worker, tempdir, Proc};

/// Tiny U-Net at 16x16 with dropout on (its masks must be reproduced too),
/// 2 workers, checkpoints every 3 steps.
const CONFIG: &str = r#"
[model]
image_size = 16
dropout = 0.1

[optim]
lr = 5e-4
warmup_steps = 2

[train]
batch_size = 4
seed = 11
ema_decay = 0.9
log_every = 1

[checkpoint]
every_steps = 3
every_minutes = 0.0
keep_last = 10

[sample]
at_end = false
"#;

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

    fn run_dir(&self) -> String {
        self.dir.path().join("run").display().to_string()
    }

    /// Starts a coordinator for `steps` with 2 workers; returns them.
    fn start(&self, steps: u64, extra: &[&str]) -> (Proc, Vec<Proc>) {
        let steps = steps.to_string();
        let run = self.run_dir();
        let mut args =
            vec!["--preset", "tiny", "--config", &self.config, "--workers", "2", "--steps", &steps, "--run", &run, "--threads", "1"];
        args.extend_from_slice(extra);
        let (coord, addr) = start_coordinator(&args);
        let workers = (0..2).map(|i| start_worker(&addr, &format!("w{i}"))).collect();
        (coord, workers)
    }

    /// Runs to completion.
    fn finish(&self, steps: u64) -> String {
        let (mut coord, mut workers) = self.start(steps, &[]);
        let code = coord.wait(Duration::from_secs(600));
        let out = coord.output();
        assert_eq!(code, 0, "{out}");
        for w in &mut workers {
            w.wait(Duration::from_secs(60));
        }
        out
    }

    fn weights(&self, step: u64, file: &str) -> HashMap<String, Vec<f32>> {
        read_tensors(&self.dir.path().join(format!("run/checkpoints/step_{step:010}/{file}")))
    }
}

fn assert_same(a: &Run, b: &Run, step: u64) {
    for file in ["model.safetensors", "ema.safetensors", "optimizer.safetensors"] {
        let d = max_diff(&a.weights(step, file), &b.weights(step, file));
        eprintln!("{file}: max |straight - resumed| = {d:e}");
        assert!(d < 1e-6, "{file} differs by {d} after resuming");
    }
}

#[test]
fn stopping_and_resuming_gives_the_straight_run() {
    let straight = Run::new();
    straight.finish(8);

    // Stop after step 4 (its last step), then resume to 8.
    let resumed = Run::new();
    resumed.finish(4);
    let out = resumed.finish(8);
    assert!(out.contains("resuming from the latest complete checkpoint step=4"), "{out}");
    assert_same(&straight, &resumed, 8);

    // --fresh refuses a run that has checkpoints.
    let (mut coord, _w) = resumed.start(9, &["--fresh"]);
    assert_ne!(coord.wait(Duration::from_secs(60)), 0);
    assert!(coord.output().contains("--fresh: the run") && coord.output().contains("latest: step 8"), "{}", coord.output());
}

#[test]
fn sigterm_checkpoints_and_the_next_start_resumes() {
    let straight = Run::new();
    straight.finish(8);

    let stopped = Run::new();
    let (mut coord, mut workers) = stopped.start(8, &[]);
    coord.wait_for_line("step 2/8", Duration::from_secs(300));
    let pid = coord.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // 75: stopped before the end (ddpm::exit::STOPPED).
    assert_eq!(coord.wait(Duration::from_secs(120)), 75, "{}", coord.output());
    let out = coord.output();
    assert!(out.contains("run stopped after step"), "{out}");
    // They would wait for this coordinator's restart (tests/run_lifecycle.rs); these resume with new ones.
    workers.clear();
    let out = stopped.finish(8);
    assert!(out.contains("resuming from the latest complete checkpoint"), "{out}");
    assert_same(&straight, &stopped, 8);
}

/// SIGKILL while a checkpoint is being written: the torn checkpoint has no
/// manifest, the previous one stays the latest, and the next start resumes
/// from it and still ends where a straight run ends.
#[test]
fn sigkill_during_a_checkpoint_upload_leaves_the_previous_one_latest() {
    let straight = Run::new();
    straight.finish(9);

    let killed = Run::new();
    let (mut coord, _workers) = killed.start(9, &[]);
    let ckpt6 = killed.dir.path().join("run/checkpoints/step_0000000006");
    let deadline = Instant::now() + Duration::from_secs(300);
    // Wait until step 6's checkpoint has begun (its directory exists) but
    // is not complete (no manifest yet), then kill -9.
    loop {
        assert!(Instant::now() < deadline, "step 6's checkpoint never started:\n{}", coord.output());
        if ckpt6.is_dir() && !ckpt6.join("manifest.json").exists() {
            break;
        }
        assert!(!ckpt6.join("manifest.json").exists(), "missed the upload window");
        std::thread::sleep(Duration::from_micros(200));
    }
    coord.child.kill().unwrap();
    coord.child.wait().unwrap();
    assert!(!ckpt6.join("manifest.json").exists());

    let out = killed.finish(9);
    assert!(out.contains("resuming from the latest complete checkpoint step=3"), "{out}");
    assert_same(&straight, &killed, 9);
    // The killed start's rows after step 3 were superseded: each step once.
    let log = std::fs::read_to_string(killed.dir.path().join("run/metrics.jsonl")).unwrap();
    let steps: Vec<u64> = log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=9).collect::<Vec<_>>(), "{log}");
}
