//! A real Prometheus (Debian's `prometheus` package) scrapes a real
//! coordinator and two real workers of a tiny run on loopback and
//! evaluates the alerts of `deploy/k8s/monitoring/prometheusrule.yaml`:
//! while both workers train, no alert fires; every metric the rules name
//! is one the binaries export; a worker killed with SIGKILL makes
//! `DdpmWorkersBelowMinimum` fire (the run's --min-workers is 2).
//!
//! The targets carry the labels components/monitoring's PodMonitor gives
//! them in a cluster (namespace, pod, ddpm_run, ddpm_component). Kept
//! short: scrapes and evaluations every second, and the rules' `for:`
//! durations set to 0 s (their timing is what `promtool test rules`
//! checks, tests/prometheus_rules.rs); every expression is as shipped.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::k8s::{k8s_dir, on_path, yaml_docs};
use common::{start_coordinator, tempdir, Proc};
use serde_json::Value;

/// Prometheus: DDPM_PROMETHEUS, else the one on PATH.
fn prometheus() -> PathBuf {
    std::env::var_os("DDPM_PROMETHEUS").map(PathBuf::from).or_else(|| on_path("prometheus")).unwrap_or_else(|| {
        panic!(
            "prometheus is missing: this test lets a real Prometheus evaluate the alerts. Install Debian's prometheus \
             package (`source deploy/env.sh && ddpm_setup_prometheus`), or point DDPM_PROMETHEUS at a prometheus binary"
        )
    })
}

const CONFIG: &str = r#"
[model]
# The tiny U-Net at 16x16: a step takes a moment on one core.
image_size = 16

[train]
batch_size = 8
log_every = 10

[checkpoint]
every_steps = 0
every_minutes = 0.0
at_end = false

[sample]
at_end = false
"#;

/// The URL-encoding of a query parameter's value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// GET `path` of Prometheus' API at `base`; its `data`.
fn api(base: &str, path: &str) -> Value {
    let (code, body) = common::http_get(&format!("{base}{path}")).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    assert!(code == 200 && v["status"] == "success", "{path}: {code} {v}");
    v["data"].clone()
}

fn query(base: &str, q: &str) -> Vec<Value> {
    api(base, &format!("/api/v1/query?query={}", encode(q)))["result"].as_array().cloned().unwrap_or_default()
}

/// The firing alerts: (alertname, ddpm_run).
fn firing(base: &str) -> BTreeSet<(String, String)> {
    api(base, "/api/v1/alerts")["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .map(|a| (a["labels"]["alertname"].as_str().unwrap_or("?").to_string(), a["labels"]["ddpm_run"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The `host:port` a process printed its metrics URL with.
fn metrics_addr(p: &mut Proc) -> String {
    let line = p.wait_for_line("metrics on http://", Duration::from_secs(120));
    line[line.find("http://").unwrap() + 7..].trim().trim_end_matches('/').to_string()
}

/// The metric names in a PromQL expression: its identifiers outside label
/// matchers (`{...}`) and label lists (`by (...)`, `without (...)`,
/// `ignoring (...)`, `on (...)`) that are ddpm's or `up`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut text = String::new();
    let mut depth = 0;
    for c in expr.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if depth == 0 => text.push(c),
            _ => {}
        }
    }
    for grouping in ["without (", "by (", "ignoring (", "on ("] {
        while let Some(i) = text.find(grouping) {
            let end = text[i..].find(')').map_or(text.len(), |e| i + e + 1);
            text.replace_range(i..end, " ");
        }
    }
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("ddpm_") || *w == "up")
        .map(str::to_string)
        .collect()
}

/// The shipped rules with every `for:` at 0 s; the metric names they use.
fn rules_for_now() -> (Value, BTreeSet<String>) {
    let path = k8s_dir().join("monitoring/prometheusrule.yaml");
    let docs = yaml_docs(&std::fs::read_to_string(&path).unwrap(), "prometheusrule.yaml");
    let mut spec = docs.iter().find(|d| d["kind"] == "PrometheusRule").expect("a PrometheusRule")["spec"].clone();
    let mut names = BTreeSet::new();
    for g in spec["groups"].as_array_mut().unwrap() {
        for r in g["rules"].as_array_mut().unwrap() {
            if r.get("for").is_some() {
                r["for"] = "0s".into();
            }
            names.extend(metric_names(r["expr"].as_str().unwrap()));
        }
    }
    (spec, names)
}

#[test]
fn a_real_prometheus_fires_the_worker_lost_alert_when_a_worker_is_killed() {
    let prometheus = prometheus();
    let dir = tempdir();
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let run = dir.path().join("run");
    #[rustfmt::skip]
    let (mut coord, addr) = start_coordinator(&[
        "--preset", "tiny", "--config", cfg.to_str().unwrap(), "--data", "synthetic:shapes", "--workers", "2",
        "--min-workers", "2", "--steps", "1000000", "--threads", "1", "--metrics-listen", "127.0.0.1:0",
        "--run", run.to_str().unwrap(),
    ]);
    let coord_metrics = metrics_addr(&mut coord);
    let workers: Vec<(Proc, String)> = (1..=2)
        .map(|i| {
            let name = format!("w{i}");
            let mut w = Proc::start(
                &name,
                "ddpm-worker",
                &["--coord", &addr, "--device", "cpu", "--threads", "1", "--name", &name, "--metrics-listen", "127.0.0.1:0"],
            );
            let m = metrics_addr(&mut w);
            (w, m)
        })
        .collect();

    // Prometheus, with the targets labelled as the PodMonitor labels them.
    let (rules, names) = rules_for_now();
    std::fs::write(dir.path().join("rules.yaml"), serde_json::to_string(&rules).unwrap()).unwrap();
    let target = |addr: &str, pod: &str, component: &str| {
        format!(
            "      - targets: ['{addr}']\n        labels: {{namespace: loopback, pod: {pod}, ddpm_run: test, ddpm_component: {component}}}\n"
        )
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yaml]\nscrape_configs:\n  - job_name: ddpm\n    static_configs:\n{}{}{}",
        target(&coord_metrics, "coord", "coordinator"),
        target(&workers[0].1, "w1", "worker"),
        target(&workers[1].1, "w2", "worker"),
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(&prometheus);
    cmd.current_dir(dir.path())
        .arg("--config.file=prometheus.yml")
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn");
    let mut prom = Proc::spawn("prometheus", cmd);
    let base = format!("http://127.0.0.1:{port}");
    wait_until("Prometheus ready", Duration::from_secs(60), || {
        assert!(prom.child.try_wait().unwrap().is_none(), "prometheus exited:\n{}", prom.output());
        common::http_get(&format!("{base}/-/ready")).is_ok_and(|(c, _)| c == 200)
    });

    // Both workers train: every target up, the run in its training phase.
    wait_until("both workers training", Duration::from_secs(300), || {
        let up = query(&base, "sum(up{job=\"ddpm\"})");
        let members = query(&base, "sum(ddpm_members{role=\"train\"})");
        let training = query(&base, "ddpm_phase{phase=\"training\"} == 1");
        let v = |r: &[Value]| r.first().and_then(|s| s["value"][1].as_str()).and_then(|x| x.parse::<f64>().ok());
        v(&up) == Some(3.0) && v(&members) == Some(2.0) && !training.is_empty()
    });
    // Every metric the rules name is one the binaries export.
    let missing: Vec<&String> = names.iter().filter(|n| query(&base, &format!("count({{__name__=\"{n}\"}})")).is_empty()).collect();
    assert!(missing.is_empty(), "the rules name metrics nothing exports: {missing:?}");
    // A few evaluations later, nothing fires.
    std::thread::sleep(Duration::from_secs(3));
    let now = firing(&base);
    assert!(now.is_empty(), "alerts fire while both workers train: {now:?}");

    // SIGKILL one worker: the coordinator drops it; the run is below --min-workers.
    let killed_at = Instant::now();
    assert!(Command::new("kill").args(["-KILL", &workers[1].0.child.id().to_string()]).status().unwrap().success());
    let want = ("DdpmWorkersBelowMinimum".to_string(), "test".to_string());
    wait_until("DdpmWorkersBelowMinimum firing", Duration::from_secs(120), || {
        assert!(coord.child.try_wait().unwrap().is_none(), "the coordinator exited:\n{}", coord.output());
        firing(&base).contains(&want)
    });
    eprintln!("DdpmWorkersBelowMinimum fired {:.1} s after the kill; firing: {:?}", killed_at.elapsed().as_secs_f64(), firing(&base));
    drop(workers);
}
