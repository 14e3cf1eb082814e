//! The pods of the CPU overlays run as local processes exactly as their
//! rendered manifests describe them (tests/common/cluster.rs), with this
//! test playing the Job and JobSet controllers: it replaces or ends pods
//! as the rendered podFailurePolicy and JobSet failurePolicy say, starts
//! a JobSet's workers once its coordinator is ready (dependsOn), and runs
//! the containers' gRPC probes.
//!
//! What it shows:
//! - `cpu-small` (plain Jobs): the run trains and completes; a worker pod
//!   killed with SIGKILL is replaced and its replacement rejoins; a
//!   coordinator pod stopped as in a node drain (SIGTERM) exits 75, which
//!   the Job ignores, and its replacement resumes the run with the same
//!   worker pods; both Jobs applied again on the finished run complete
//!   (the coordinator tells the new workers the run is over) and change
//!   nothing. A worker pod that finds no coordinator exits 4, which fails
//!   the worker Job and so ends its other pods.
//! - `cpu-small-jobset`: the coordinator failing for good (every pod of
//!   its Job killed, past its backoffLimit, through every restart the
//!   JobSet allows) ends the workers: each JobSet restart and its final
//!   failure delete the Jobs, whose worker pods leave on SIGTERM.
//! - `two-runs-a` and `two-runs-b`: two runs side by side in one
//!   namespace, each coordinator with exactly its own workers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::{job_action, kill, until_ready, Cluster, JobAction, PodSpec};
use common::k8s::jobset_action;
use common::Proc;
use serde_json::Value;

/// Every file under `dir` with its bytes (the run, before and after).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cpu_overlay_trains_survives_a_killed_worker_and_a_drain_and_completes_once() {
    let mut cluster = Cluster::new("cpu-small");
    let coord_job = cluster.job("ddpm-coord").clone();
    let worker_job = cluster.job("ddpm-worker").clone();
    assert_eq!(worker_job["spec"]["completionMode"], "Indexed");
    let workers = worker_job["spec"]["parallelism"].as_u64().unwrap() as usize;
    // The podFailurePolicy says what the binaries' exit codes mean (ddpm::exit).
    for (job, container) in [(&coord_job, "coordinator"), (&worker_job, "worker")] {
        assert_eq!(job_action(job, container, Some(0)), JobAction::Complete);
        assert_eq!(job_action(job, container, Some(75)), JobAction::Ignore, "a drain (75) must not count as a failure");
        assert_eq!(job_action(job, container, Some(2)), JobAction::FailJob, "bad flags (2) cannot heal by retrying");
        let no_coordinator = if container == "worker" { JobAction::FailJob } else { JobAction::Count };
        assert_eq!(job_action(job, container, Some(4)), no_coordinator, "a worker without a coordinator (4) stops the workers");
        assert_eq!(job_action(job, container, Some(1)), JobAction::Count);
        assert_eq!(job_action(job, container, None), JobAction::Count);
    }

    let coord_pod = cluster.pod("ddpm-coord", None);
    let mut coord = cluster.start(&coord_pod);
    let mut worker_pods: Vec<PodSpec> = (0..workers).map(|i| cluster.pod("ddpm-worker", Some(i))).collect();
    let mut worker_procs: Vec<Proc> = worker_pods.iter().map(|p| cluster.start(p)).collect();
    until_ready(&coord_pod, Duration::from_secs(120)).await;
    for p in &worker_pods {
        until_ready(p, Duration::from_secs(120)).await;
    }
    let steps = |coord: &mut Proc, n: u64| coord.wait_for_line(&format!("\"step {n}/"), Duration::from_secs(600));
    steps(&mut coord, 20);

    // SIGKILL worker pod 1: the Job replaces it (same index, a new pod), which rejoins.
    kill(&worker_procs[1], "-KILL");
    let code = worker_procs[1].wait(Duration::from_secs(30));
    assert_eq!(job_action(&worker_job, "worker", (code >= 0).then_some(code)), JobAction::Count);
    worker_pods[1] = cluster.pod("ddpm-worker", Some(1));
    worker_procs[1] = cluster.start(&worker_pods[1]);
    until_ready(&worker_pods[1], Duration::from_secs(120)).await;
    coord.wait_for_line(&worker_pods[1].name, Duration::from_secs(60));
    steps(&mut coord, 120);

    // A node drain: SIGTERM, a checkpoint, exit 75, which the Job ignores;
    // its next pod resumes with the same worker pods.
    kill(&coord, "-TERM");
    let code = coord.wait(Duration::from_secs(120));
    assert_eq!(code, 75, "{}", coord.output());
    assert_eq!(job_action(&coord_job, "coordinator", Some(code)), JobAction::Ignore);
    for w in &mut worker_procs {
        assert!(w.child.try_wait().unwrap().is_none(), "a worker pod ended with the drained coordinator:\n{}", w.output());
    }
    let coord_pod = cluster.pod("ddpm-coord", None);
    let mut coord = cluster.start(&coord_pod);
    coord.wait_for_line("resuming from the latest complete checkpoint", Duration::from_secs(120));
    let code = coord.wait(Duration::from_secs(900));
    assert_eq!(job_action(&coord_job, "coordinator", Some(code)), JobAction::Complete, "{}", coord.output());
    let out = coord.output();
    assert!(out.contains("run finished"), "{out}");
    for w in &mut worker_procs {
        let code = w.wait(Duration::from_secs(60));
        assert_eq!(job_action(&worker_job, "worker", Some(code)), JobAction::Complete, "{}", w.output());
    }

    // The run is on the claim: finished, with its grid.
    let claim = cluster.root.path().join("claims/ddpm-runs");
    let run = std::fs::read_dir(&claim)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("summary.json").exists())
        .expect("a run on the claim");
    let summary: Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["error"], Value::Null, "{summary}");
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert!(summary["grid"].as_str().is_some(), "{summary}");

    // Both Jobs applied again on the finished run: the coordinator tells the
    // new worker pods the run is over; all complete and nothing is written.
    let before = snapshot(&claim);
    let again = cluster.pod("ddpm-coord", None);
    let mut coord = cluster.start(&again);
    let late_pods: Vec<PodSpec> = (0..workers).map(|i| cluster.pod("ddpm-worker", Some(i))).collect();
    let mut late: Vec<Proc> = late_pods.iter().map(|p| cluster.start(p)).collect();
    for w in &mut late {
        let code = w.wait(Duration::from_secs(120));
        assert_eq!(job_action(&worker_job, "worker", Some(code)), JobAction::Complete, "{}", w.output());
    }
    assert_eq!(coord.wait(Duration::from_secs(120)), 0, "{}", coord.output());
    assert!(coord.output().contains("already finished"), "{}", coord.output());
    assert_eq!(snapshot(&claim), before, "a coordinator started on the finished run changed it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_pod_without_a_coordinator_exits_4_and_its_job_fails() {
    let mut cluster = Cluster::new("cpu-small");
    let worker_job = cluster.job("ddpm-worker").clone();
    let workers = worker_job["spec"]["parallelism"].as_u64().unwrap() as usize;
    // The coordinator Job has failed for good: no coordinator pod. The
    // workers' command lines as rendered, but --connect-timeout 3 s
    // instead of 900 (the one change: the test does not wait 15 minutes).
    let mut pods: Vec<PodSpec> = (0..workers).map(|i| cluster.pod("ddpm-worker", Some(i))).collect();
    for p in &mut pods {
        let at = p.args.iter().position(|a| a == "--connect-timeout=900").expect("the workers' --connect-timeout=900");
        p.args[at] = "--connect-timeout=3".into();
    }
    let mut first = cluster.start(&pods[0]);
    let code = first.wait(Duration::from_secs(60));
    assert_eq!(code, 4, "{}", first.output());
    // "reach" when nothing listens on the Service's loopback port; "join"
    // when another test's listener took that port meanwhile (the port is
    // free when the cluster picks it, not held) and resets the connection:
    // either way no coordinator, and exit 4.
    let out = first.output();
    assert!(out.contains("cannot reach the coordinator") || out.contains("cannot join the coordinator"), "{out}");
    // The Job fails (FailJob): the controller ends the Job's other pods,
    // which leave on SIGTERM, instead of replacing pods up to the backoff limit.
    assert_eq!(job_action(&worker_job, "worker", Some(code)), JobAction::FailJob);
    let mut others: Vec<Proc> = pods[1..].iter().map(|p| cluster.start(p)).collect();
    for w in &mut others {
        // Up (its metrics port serves), waiting for a coordinator: it
        // leaves at once (75), or, still starting, dies of the signal (-1).
        w.wait_for_line("metrics on http://", Duration::from_secs(60));
        kill(w, "-TERM");
        let code = w.wait(Duration::from_secs(30));
        assert!(code == 75 || code == -1, "a worker pod ended by its failed Job exited {code}:\n{}", w.output());
    }
}

/// The JobSet's coordinator fails for good: the run's volume is lost with
/// the coordinator's node, so every coordinator pod from then on fails at
/// its start (exit 1, counted), through the Job's backoffLimit and every
/// restart the JobSet allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobset_ends_its_workers_when_the_coordinator_fails_for_good() {
    let mut cluster = Cluster::new("cpu-small-jobset");
    let js = cluster.render.all("JobSet").next().expect("a JobSet").clone();
    let coord_job = cluster.job("ddpm-coord").clone();
    let rj = coord_job["jobset"]["replicatedJob"].as_str().unwrap().to_string();
    let backoff = coord_job["spec"]["backoffLimit"].as_u64().unwrap();
    let max_restarts = js["spec"]["failurePolicy"]["maxRestarts"].as_u64().unwrap();
    let workers = cluster.job("ddpm-worker")["spec"]["parallelism"].as_u64().unwrap() as usize;

    // The first generation: the coordinator, then (once it is ready) the workers; it trains.
    let coord_pod = cluster.pod("ddpm-coord", None);
    let mut coord = cluster.start(&coord_pod);
    until_ready(&coord_pod, Duration::from_secs(120)).await;
    let worker_pods: Vec<PodSpec> = (0..workers).map(|i| cluster.pod("ddpm-worker", Some(i))).collect();
    let mut worker_procs: Vec<Proc> = worker_pods.iter().map(|p| cluster.start(p)).collect();
    for p in &worker_pods {
        until_ready(p, Duration::from_secs(120)).await;
    }
    coord.wait_for_line("\"step 20/", Duration::from_secs(600));

    // The node dies with the run's volume: the coordinator is killed, and
    // the run's directory on the claim is gone (a file stands in its
    // place). Removed once the coordinator is dead: while it lives it may
    // write a file into the directory being removed.
    let run_dir = PathBuf::from(coord_pod.args.iter().find_map(|a| a.strip_prefix("--run=")).expect("the coordinator's --run"));
    kill(&coord, "-KILL");
    let code = coord.wait(Duration::from_secs(30));
    std::fs::remove_dir_all(&run_dir).unwrap();
    std::fs::write(&run_dir, "the volume is lost").unwrap();
    assert_eq!(job_action(&coord_job, "coordinator", (code >= 0).then_some(code)), JobAction::Count);
    let mut failures = 1;
    let mut restarts = 0;
    loop {
        // The Job replaces its failed pods until its backoff limit; each fails at its start.
        while failures <= backoff {
            let pod = cluster.pod("ddpm-coord", None);
            let mut p = cluster.start(&pod);
            let code = p.wait(Duration::from_secs(120));
            assert_eq!(job_action(&coord_job, "coordinator", Some(code)), JobAction::Count, "exit {code}:\n{}", p.output());
            failures += 1;
        }
        // Meanwhile the workers wait for a coordinator (--connect-timeout).
        for w in &mut worker_procs {
            assert!(w.child.try_wait().unwrap().is_none(), "a worker pod ended while its coordinator's Job retried:\n{}", w.output());
        }
        // The Job failed (BackoffLimitExceeded): the JobSet restarts (or,
        // its restarts used up, fails), and either way deletes its Jobs:
        // their worker pods get SIGTERM and leave at once.
        let action = jobset_action(&js, &rj, "BackoffLimitExceeded", "Job has reached the specified backoff limit");
        assert_eq!(action, "RestartJobSet", "a coordinator that failed for good restarts the set, at most {max_restarts} times");
        let ending = Instant::now();
        for mut w in worker_procs.drain(..) {
            kill(&w, "-TERM");
            let code = w.wait(Duration::from_secs(60));
            assert_eq!(code, 75, "a worker pod of a deleted Job:\n{}", w.output());
        }
        assert!(ending.elapsed() < Duration::from_secs(60), "the workers took {:?} to leave", ending.elapsed());
        if restarts == max_restarts {
            break;
        }
        // A new generation: its coordinator first. Its workers would start
        // once it is ready, which it never is: they hold no GPU for it.
        restarts += 1;
        failures = 0;
    }
    assert_eq!(restarts, max_restarts);
}

/// The metric `name`'s value summed over its series that have the label
/// `label` (`key="value"`; "" for all) in a scrape of `url`.
fn scrape_sum(url: &str, name: &str, label: &str) -> f64 {
    let (code, body) = common::http_get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(code, 200, "GET {url}");
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_train_side_by_side_in_one_namespace() {
    let mut runs = [Cluster::new("two-runs-a"), Cluster::new("two-runs-b")];
    let mut procs = Vec::new();
    let mut names = Vec::new();
    for run in &mut runs {
        let coord_pod = run.pod("ddpm-coord", None);
        let coord = run.start(&coord_pod);
        until_ready(&coord_pod, Duration::from_secs(120)).await;
        let workers = run.job("ddpm-worker")["spec"]["parallelism"].as_u64().unwrap() as usize;
        let worker_pods: Vec<PodSpec> = (0..workers).map(|i| run.pod("ddpm-worker", Some(i))).collect();
        let worker_procs: Vec<Proc> = worker_pods.iter().map(|p| run.start(p)).collect();
        names.push(worker_pods.iter().map(|p| p.name.clone()).collect::<Vec<_>>());
        let metrics = format!("http://127.0.0.1:{}/metrics", coord_pod.ports[&9090]);
        procs.push((coord, worker_pods, worker_procs, metrics));
    }
    for (coord, worker_pods, _, metrics) in &mut procs {
        for p in worker_pods.iter() {
            until_ready(p, Duration::from_secs(120)).await;
        }
        coord.wait_for_line("\"step 20/", Duration::from_secs(600));
        assert_eq!(scrape_sum(metrics, "ddpm_worker_joins_total", ""), worker_pods.len() as f64, "{metrics}");
        assert_eq!(scrape_sum(metrics, "ddpm_members", "role=\"train\""), worker_pods.len() as f64, "{metrics}");
    }
    // Each coordinator trained with its own workers and never saw the other run's.
    for (i, (coord, _, _, _)) in procs.iter_mut().enumerate() {
        let out = coord.output();
        for n in &names[i] {
            assert!(out.contains(n.as_str()), "run {i}'s coordinator does not name its worker {n}");
        }
        for n in &names[1 - i] {
            assert!(!out.contains(n.as_str()), "run {i}'s coordinator names the other run's worker {n}:\n{out}");
        }
    }
    // Stopped as on a drain: each coordinator checkpoints its own run.
    for (coord, _, workers, _) in &mut procs {
        kill(coord, "-TERM");
        assert_eq!(coord.wait(Duration::from_secs(120)), 75, "{}", coord.output());
        for w in workers.iter_mut() {
            kill(w, "-TERM");
            w.wait(Duration::from_secs(60));
        }
    }
    for (run, claim) in runs.iter().zip(["run-a-ddpm-runs", "run-b-ddpm-runs"]) {
        let dir = run.claim(claim);
        let logs: Vec<PathBuf> = walk(&dir).into_iter().filter(|p| p.ends_with("metrics.jsonl")).collect();
        assert_eq!(logs.len(), 1, "{}: {logs:?}", dir.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir).into_keys().map(|p| dir.join(p)).collect()
}
