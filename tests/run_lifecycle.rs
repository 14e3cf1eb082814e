//! A run as a supervisor (a Kubernetes Job, systemd, a script) sees it,
//! through the real binaries: the exit codes of `ddpm::exit`, workers that
//! outlive a stopped coordinator and rejoin its restart, an elastic start
//! (--min-workers, --start-grace, --start-timeout), and `--check-config`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{binary, start_worker, tempdir, Proc};

const CONFIG: &str = r#"
[model]
image_size = 16
dropout = 0.1

[train]
batch_size = 4
log_every = 1

[checkpoint]
every_steps = 4
every_minutes = 0.0

[sample]
at_end = false
"#;

fn signal(p: &Proc, sig: &str) {
    assert!(Command::new("kill").args([sig, &p.child.id().to_string()]).status().unwrap().success());
}

/// A coordinator of `steps` tiny steps on `addr`, run dir under `dir`.
fn coordinator(dir: &std::path::Path, addr: &str, steps: u64, extra: &[&str]) -> Proc {
    let config = dir.join("run.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let (config, run, steps) = (config.display().to_string(), dir.join("run").display().to_string(), steps.to_string());
    let mut args = vec!["--preset", "tiny", "--config", &config, "--steps", &steps, "--run", &run, "--listen", addr, "--threads", "1"];
    args.extend_from_slice(extra);
    let mut p = Proc::start("ddpm-coord", "ddpm-coord", &args);
    p.wait_for_line("listening on ", Duration::from_secs(120));
    p
}

fn alive(p: &mut Proc) -> bool {
    p.child.try_wait().unwrap().is_none()
}

#[test]
fn sigterm_exits_75_and_the_same_workers_rejoin_the_restart_which_ends_with_0() {
    let dir = tempdir();
    let addr = common::free_addr();
    let mut coord = coordinator(dir.path(), &addr, 16, &["--workers", "2"]);
    let mut workers: Vec<Proc> = (0..2).map(|i| start_worker(&addr, &format!("w{i}"))).collect();
    coord.wait_for_line("step 2/16", Duration::from_secs(300));
    signal(&coord, "-TERM");
    assert_eq!(coord.wait(Duration::from_secs(120)), 75, "{}", coord.output());
    assert!(coord.output().contains("run stopped after step"), "{}", coord.output());

    // The workers were told the run goes on: they wait for its next start.
    std::thread::sleep(Duration::from_secs(2));
    for w in &mut workers {
        assert!(alive(w), "a worker exited after the coordinator's SIGTERM:\n{}", w.output());
        w.wait_for_line("the coordinator stops", Duration::from_secs(1));
    }
    // The same command on the same address: the same two processes rejoin.
    let mut again = coordinator(dir.path(), &addr, 16, &["--workers", "2"]);
    assert_eq!(again.wait(Duration::from_secs(600)), 0, "{}", again.output());
    assert!(again.output().contains("resuming from the latest complete checkpoint"), "{}", again.output());
    for w in &mut workers {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
    }

    // A finished run started again: exit 0 at once, the summary untouched.
    let summary = dir.path().join("run/summary.json");
    let before = std::fs::read(&summary).unwrap();
    let mut third = coordinator(dir.path(), &addr, 16, &["--workers", "2"]);
    assert_eq!(third.wait(Duration::from_secs(60)), 0, "{}", third.output());
    assert!(third.output().contains("already finished"), "{}", third.output());
    assert_eq!(std::fs::read(&summary).unwrap(), before, "a restart of the finished run rewrote its summary");

    // With --finished-linger, workers started with it hear that the run is
    // over and exit 0; it exits once all --workers have heard it.
    let mut fourth = coordinator(dir.path(), &addr, 16, &["--workers", "2", "--finished-linger", "300"]);
    let mut late: Vec<Proc> = (0..2).map(|i| start_worker(&addr, &format!("late{i}"))).collect();
    for w in &mut late {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
        assert!(w.output().contains("the run is over"), "{}", w.output());
    }
    assert_eq!(fourth.wait(Duration::from_secs(60)), 0, "{}", fourth.output());
    assert_eq!(std::fs::read(&summary).unwrap(), before, "a lingering coordinator rewrote the summary");
}

#[test]
fn a_worker_stopped_before_the_end_exits_75() {
    // Nobody listens there: the worker keeps trying until told to stop.
    let mut w = start_worker(&common::free_addr(), "w");
    std::thread::sleep(Duration::from_secs(1));
    signal(&w, "-TERM");
    assert_eq!(w.wait(Duration::from_secs(30)), 75, "{}", w.output());
}

#[test]
fn with_min_workers_the_run_starts_with_what_came_and_a_late_worker_joins() {
    let dir = tempdir();
    let addr = common::free_addr();
    let mut coord = coordinator(dir.path(), &addr, 40, &["--workers", "3", "--min-workers", "2", "--start-grace", "1"]);
    let _early: Vec<Proc> = (0..2).map(|i| start_worker(&addr, &format!("w{i}"))).collect();
    let line = coord.wait_for_line("starting with 2 of 3 workers", Duration::from_secs(300));
    assert!(line.contains("the others join when they come"), "{line}");
    coord.wait_for_line("step 2/40", Duration::from_secs(300));
    let _late = start_worker(&addr, "late");
    // The late worker becomes a member and trains in later steps.
    coord.wait_for_line("workers=3", Duration::from_secs(300));
    assert_eq!(coord.wait(Duration::from_secs(600)), 0, "{}", coord.output());
}

#[test]
fn too_few_workers_by_the_start_timeout_exit_3_and_say_what_to_check() {
    let dir = tempdir();
    let addr = common::free_addr();
    let mut coord = coordinator(dir.path(), &addr, 8, &["--workers", "2", "--start-timeout", "3"]);
    let mut w = start_worker(&addr, "w0");
    assert_eq!(coord.wait(Duration::from_secs(120)), 3, "{}", coord.output());
    let out = coord.output();
    assert!(out.contains("only 1 of the 2 workers needed") && out.contains("--start-timeout"), "{out}");
    // A failed start is not the run's end: the worker waits for the next one.
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(&mut w), "{}", w.output());
}

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary(bin)).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_config_parses_everything_and_touches_nothing() {
    let dir = tempdir();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, CONFIG).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[train]\nsave_every = 10\n").unwrap();
    let run_dir = dir.path().join("run");
    let run_arg = run_dir.display().to_string();
    let good = good.display().to_string();
    let bad = bad.display().to_string();

    let (code, stdout, stderr) = run(
        "ddpm-coord",
        &["--preset", "tiny", "--config", &good, "--run", &run_arg, "--listen", "127.0.0.1:50051", "--check-config", "--workers", "2"],
    );
    assert_eq!(code, 0, "{stderr}");
    // The resolved config, as TOML the binary reads back.
    let table: toml::Table = stdout.parse().unwrap_or_else(|e| panic!("not TOML: {e}\n{stdout}"));
    assert_eq!(table["model"]["image_size"].as_integer(), Some(16));
    assert!(!run_dir.exists(), "--check-config created the run");
    // The configs the project ships resolve on their preset.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, init, sampler) in [("deploy/demo.toml", "paper", "ancestral"), ("deploy/quality/recipe.toml", "paper", "ddim")] {
        let file = root.join(file).display().to_string();
        let (code, stdout, stderr) =
            run("ddpm-coord", &["--preset", "tiny", "--config", &file, "--listen", "127.0.0.1:0", "--check-config"]);
        assert_eq!(code, 0, "{file}: {stderr}");
        let table: toml::Table = stdout.parse().unwrap();
        assert_eq!((table["model"]["init"].as_str(), table["sample"]["sampler"].as_str()), (Some(init), Some(sampler)), "{file}");
    }
    let init = dir.path().join("init.toml");
    std::fs::write(&init, "[model]\ninit = \"glorot\"\n").unwrap();
    let (code, _, stderr) = run("ddpm-coord", &["--preset", "tiny", "--config", &init.display().to_string(), "--check-config"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("init") && stderr.contains("`paper`") && stderr.contains("`pytorch`"), "{stderr}");

    let (code, _, stderr) = run("ddpm-coord", &["--preset", "tiny", "--config", &bad, "--check-config"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("save_every"), "{stderr}");
    // A non-loopback address needs tokens (files need not exist yet) or --insecure.
    let (code, _, stderr) = run("ddpm-coord", &["--preset", "tiny", "--listen", "0.0.0.0:50051", "--check-config"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("without credentials"), "{stderr}");
    let (code, _, stderr) = run(
        "ddpm-coord",
        &[
            "--preset",
            "tiny",
            "--listen",
            "0.0.0.0:50051",
            "--worker-token-file",
            "/nonexistent/w",
            "--user-token-file",
            "/nonexistent/u",
            "--check-config",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) =
        run("ddpm-coord", &["--preset", "tiny", "--listen", "127.0.0.1:0", "--workers", "2", "--min-workers", "3", "--check-config"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--min-workers 3 is more than --workers 2"), "{stderr}");

    let (code, _, stderr) = run("ddpm-worker", &["--coord", "ddpm-coord:50051", "--gpu", "0", "--threads", "4", "--check-config"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run("ddpm-worker", &["--coord", "ddpm-coord", "--check-config"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("give HOST:PORT"), "{stderr}");
    let (code, _, stderr) = run("ddpm-worker", &["--coord", "c:1", "--device", "tpu", "--check-config"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown device"), "{stderr}");
}

#[test]
fn gpus_all_without_a_gpu_says_so() {
    let (code, _, stderr) = run("ddpm-worker", &["--coord", "127.0.0.1:1", "--gpus", "all"]);
    assert_eq!(code, 2);
    // No driver here (tests/gpu_path.rs checks that message); a driver without a visible device says so too.
    let no_device = stderr.contains("libtorch sees no CUDA device") || stderr.contains("the NVIDIA driver cannot be loaded");
    assert!(no_device && stderr.contains("--device cpu"), "{stderr}");
    let (code, _, stderr) = run("ddpm-worker", &["--coord", "127.0.0.1:1", "--gpus", "all", "--gpu", "0"]);
    assert_eq!(code, 2, "{stderr}");
}
