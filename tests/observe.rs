//! Watching a real run: `/metrics` scraped while a tiny run trains agrees
//! with the run's metrics log for the same steps; `ddpm status` (with the
//! user token) shows the run and its workers; the JSON log lines carry the
//! step's numbers as fields; and after a resume, the dashboard's history
//! covers the whole run while the time left and the step-time histograms
//! count only this start's steps.
//!
//! Tiny steps take milliseconds here: the resumed coordinator runs with
//! `--serve`, so that its ports are still there when the test asks.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{http_get, metrics_url, start_coordinator, tempdir, Proc};
use ddpm::observe::prom::parse_sample;

const CONFIG: &str = r#"
[model]
image_size = 16

[train]
batch_size = 4
seed = 5
log_every = 2

[checkpoint]
every_steps = 4
every_minutes = 0.0

[sample]
at_end = false
"#;

const WORKER_TOKEN: &str = "observe-test-worker-token-0123456789";
const USER_TOKEN: &str = "observe-test-user-token-9876543210";

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempdir();
        std::fs::write(dir.path().join("run.toml"), CONFIG).unwrap();
        std::fs::write(dir.path().join("worker.token"), WORKER_TOKEN).unwrap();
        std::fs::write(dir.path().join("user.token"), USER_TOKEN).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// A coordinator training to `steps`; with `serve`, it stays up after
    /// the last step (until SIGTERM), so its ports can still be asked.
    fn coordinator(&self, steps: u64, serve: bool) -> (Proc, String, String) {
        let (cfg, run, wt, ut, steps) =
            (self.path("run.toml"), self.path("run"), self.path("worker.token"), self.path("user.token"), steps.to_string());
        let mut args = vec![
            "--preset",
            "tiny",
            "--config",
            &cfg,
            "--data",
            "synthetic:shapes",
            "--steps",
            &steps,
            "--workers",
            "2",
            "--run",
            &run,
            "--worker-token-file",
            &wt,
            "--user-token-file",
            &ut,
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ];
        if serve {
            args.push("--serve");
        }
        let (mut coord, addr) = start_coordinator(&args);
        let url = metrics_url(&mut coord);
        (coord, addr, url)
    }

    fn workers(&self, addr: &str) -> Vec<Proc> {
        let wt = self.path("worker.token");
        (0..2)
            .map(|i| {
                let name = format!("w{i}");
                Proc::start(
                    &name,
                    "ddpm-worker",
                    &["--coord", addr, "--device", "cpu", "--threads", "1", "--name", &name, "--token-file", &wt],
                )
            })
            .collect()
    }

    /// `ddpm status --json` with the user token.
    fn status(&self, addr: &str) -> serde_json::Value {
        let ut = self.path("user.token");
        let out = std::process::Command::new(common::binary("ddpm"))
            .args(["status", "--coord", addr, "--token-file", &ut, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "ddpm status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("ddpm status --json printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The run's metrics log, step rows by step.
    fn rows(&self) -> BTreeMap<u64, serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("run/metrics.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("eval").is_none())
            .map(|v| (v["step"].as_u64().unwrap(), v))
            .collect()
    }
}

/// One scrape's numbers.
#[derive(Debug)]
struct Scrape {
    step: u64,
    loss: f64,
    grad_norm: f64,
    lr: f64,
    compute_count: f64,
    compute_sum: f64,
    images: f64,
}

fn scrape(url: &str) -> Option<Scrape> {
    let (code, body) = http_get(&format!("{url}/metrics")).ok()?;
    assert_eq!(code, 200);
    let text = String::from_utf8(body).unwrap();
    let v = |name: &str| parse_sample(&text, name);
    Some(Scrape {
        step: v("ddpm_step")? as u64,
        loss: v("ddpm_loss")?,
        grad_norm: v("ddpm_grad_norm")?,
        lr: v("ddpm_learning_rate")?,
        compute_count: v("ddpm_step_compute_seconds_count")?,
        compute_sum: v("ddpm_step_compute_seconds_sum")?,
        images: v("ddpm_trained_images_total")?,
    })
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-9 * b.abs().max(1e-12), "{what}: scraped {a}, logged {b}");
}

#[test]
fn metrics_status_and_logs_agree_with_the_run_and_survive_a_resume() {
    let files = Files::new();

    // A fresh run of 20 steps, scraped all along.
    let (mut coord, addr, url) = files.coordinator(20, false);
    let _workers = files.workers(&addr);
    let mut scrapes = Vec::new();
    let mut status_seen = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while coord.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        if let Some(s) = scrape(&url) {
            if s.step >= 4 && status_seen.is_none() {
                status_seen = Some(files.status(&addr));
            }
            scrapes.push(s);
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(coord.wait(Duration::from_secs(120)), 0, "{}", coord.output());
    let rows = files.rows();
    assert_eq!(rows.keys().copied().collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());

    let mut steps_seen = std::collections::BTreeSet::new();
    for s in scrapes.iter().filter(|s| s.step > 0) {
        let row = &rows[&s.step];
        close(s.loss, row["loss"].as_f64().unwrap(), "loss");
        close(s.grad_norm, row["grad_norm"].as_f64().unwrap(), "grad_norm");
        close(s.lr, row["lr"].as_f64().unwrap(), "learning rate");
        assert_eq!(s.compute_count, s.step as f64, "one compute observation per step: {s:?}");
        let logged: f64 = (1..=s.step).map(|k| rows[&k]["compute_s"].as_f64().unwrap()).sum();
        close(s.compute_sum, logged, "the sum of the steps' compute seconds");
        assert_eq!(s.images, 4.0 * s.step as f64);
        steps_seen.insert(s.step);
    }
    assert!(steps_seen.len() >= 3, "too few steps scraped: {steps_seen:?}");

    let status = status_seen.expect("ddpm status ran during the run");
    assert_eq!(status["total_steps"], 20);
    assert_eq!(status["workers_expected"], 2);
    assert!(status["run"].as_str().unwrap().ends_with("/run"), "{status}");
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{status}");
    for m in members {
        assert!(["idle", "busy"].contains(&m["state"].as_str().unwrap()), "{m}");
        assert_eq!(m["role"], "train");
        assert!(m["last_step"].as_u64().unwrap() >= 1, "{m}");
    }

    // Every stderr line is JSON; progress lines carry the numbers as fields.
    let log = coord.output();
    let mut progress = 0;
    for line in log.lines() {
        if line.starts_with("listening on")
            || line.starts_with("metrics on")
            || line.starts_with("run finished")
            || line.starts_with("checkpoint:")
        {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
        if v["message"].as_str().is_some_and(|m| m.starts_with("step ")) && v["step"].is_u64() {
            let step = v["step"].as_u64().unwrap_or_else(|| panic!("no numeric step in {line}"));
            assert!(rows.contains_key(&step));
            assert_eq!(v["total"], 20);
            for field in ["loss", "images_per_s", "compute_ms", "allreduce_ms", "eta_s"] {
                assert!(v[field].is_number(), "{field} is not a number in {line}");
            }
            progress += 1;
        }
    }
    assert!(progress >= 10, "expected a progress line every 2 steps:\n{log}");

    // The same run resumed to 40 steps, kept up after its last one.
    let (mut coord, addr, url) = files.coordinator(40, true);
    let _workers = files.workers(&addr);
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        let s = files.status(&addr);
        if s["step"].as_u64().unwrap() >= 23 {
            break s;
        }
        assert!(Instant::now() < deadline, "the resumed run did not reach step 23: {s}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let step = status["step"].as_u64().unwrap();
    assert_eq!(status["resumed_from"], 20);
    // The time left comes from this start's steps only.
    let (elapsed, eta) = (status["elapsed_s"].as_f64().unwrap(), status["eta_s"].as_f64().unwrap());
    let want = elapsed / (step - 20) as f64 * (40 - step) as f64;
    assert!((eta - want).abs() <= 1e-6 * want.max(1.0), "eta {eta} s, want {want} s from {status}");
    // The dashboard's history holds the earlier start's rows too.
    let (code, body) = http_get(&format!("{url}/api/metrics?after=0")).unwrap();
    assert_eq!(code, 200);
    let history: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let steps: Vec<u64> = history["steps"].as_array().unwrap().iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert!(steps.len() >= 23 && steps.iter().copied().eq(1..=steps.len() as u64), "history steps {steps:?}");
    let s = scrape(&url).unwrap();
    assert_eq!(s.compute_count, (s.step - 20) as f64, "the histograms count this process's steps: {s:?}");
    let deadline = Instant::now() + Duration::from_secs(600);
    while files.status(&addr)["phase"] != "serving" {
        assert!(Instant::now() < deadline, "the resumed run did not finish");
        std::thread::sleep(Duration::from_millis(300));
    }
    // SIGTERM ends the serving coordinator cleanly.
    unsafe { libc::kill(coord.child.id() as i32, libc::SIGTERM) };
    assert_eq!(coord.wait(Duration::from_secs(120)), 0, "{}", coord.output());
    let first_after_resume = coord
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"].as_str().is_some_and(|m| m.starts_with("step ")) && v["step"].is_u64())
        .expect("a progress line after the resume");
    assert_eq!(first_after_resume["step"], 21, "{first_after_resume}");
    assert_eq!(files.rows().len(), 40);
}
