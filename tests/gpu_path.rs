//! What a machine without a GPU can show of the GPU path, with the real
//! binaries: an NCCL run refuses a CPU worker before it joins; `--gpus`
//! gives every child its own peer and metrics ports (a dry run through
//! `--check-config`) and refuses ports that would collide; a worker asked
//! for a CUDA device refuses a machine without the NVIDIA driver before it
//! starts, with what to do, and a CPU worker never asks for one; and
//! deploy/gpu-check.sh refuses to measure where there is no GPU.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{binary, start_coordinator, tempdir, Proc};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn an_nccl_run_refuses_a_cpu_worker_when_it_registers() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let args = ["--preset", "tiny", "--data", "synthetic:shapes", "--workers", "1", "--steps", "2", "--samples", "0"];
    let (mut coord, addr) = start_coordinator(&[&args[..], &["--backend", "nccl", "--run", run.to_str().unwrap()]].concat());
    let mut worker = Proc::start("ddpm-worker", "ddpm-worker", &["--coord", &addr, "--device", "cpu", "--threads", "1"]);
    let code = worker.wait(Duration::from_secs(120));
    let out = worker.output();
    assert_eq!(code, 1, "the worker did not refuse:\n{out}");
    assert!(out.contains("[dist] backend = \"nccl\" needs a CUDA device, but this worker runs on cpu"), "{out}");
    // It refused before building the model or reporting ready: the run never started.
    assert!(!out.contains("joined the run") && !out.contains("building the model"), "{out}");
    let log = coord.output();
    assert!(!log.contains("training starts") && !log.contains("worker ready"), "{log}");
}

/// `ddpm-worker --check-config` with `flags`: exit code, stdout, stderr.
fn check_config(flags: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("ddpm-worker"))
        .args(["--coord", "coord:50051", "--check-config"])
        .args(flags)
        .env_remove("DDPM_METRICS_LISTEN")
        .env_remove("DDPM_PEER_LISTEN")
        .env_remove("DDPM_PEER_ADVERTISE")
        .output()
        .expect("ddpm-worker runs");
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn gpus_children_get_distinct_peer_and_metrics_ports_in_a_dry_run() {
    let (code, stdout, stderr) =
        check_config(&["--gpus", "4", "--name", "node", "--metrics-listen=0.0.0.0:9091", "--peer-listen=0.0.0.0:9100"]);
    assert_eq!(code, 0, "{stderr}");
    let children: Vec<&str> = stdout.lines().collect();
    assert_eq!(children.len(), 4, "{stdout}");
    let mut ports = BTreeSet::new();
    for (k, line) in children.iter().enumerate() {
        assert!(line.starts_with("ddpm-worker --coord coord:50051 "), "{line}");
        assert!(line.contains(&format!("--gpu={k} --name=node-gpu{k} ")), "{line}");
        assert!(!line.contains("--gpus") && !line.contains("--check-config"), "{line}");
        for flag in ["--metrics-listen=", "--peer-listen="] {
            let port = line.split(flag).nth(1).and_then(|r| r.split_whitespace().next()).and_then(|a| a.rsplit(':').next());
            assert!(ports.insert(port.unwrap().to_string()), "port of {flag} in {line} used twice:\n{stdout}");
        }
    }
    let want: BTreeSet<String> = (9091..9095).chain(9100..9104).map(|p| p.to_string()).collect();
    assert_eq!(ports, want);
    // Every child then passes --check-config with the flags it was given.
    for line in &children {
        let flags: Vec<&str> = line.split_whitespace().skip(3).collect();
        let (code, _, stderr) = check_config(&flags);
        assert_eq!(code, 0, "{line}: {stderr}");
    }
}

#[test]
fn gpus_ports_that_would_collide_are_refused_before_any_child_starts() {
    // The shipped manifests' single-GPU ports: child 1's metrics port would be child 0's peer port.
    let shipped = ["--metrics-listen=0.0.0.0:9091", "--peer-listen=0.0.0.0:9092"];
    let (code, stdout, stderr) = check_config(&[&["--gpus", "2"][..], &shipped].concat());
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("only 1 fit") && stderr.contains("--peer-listen"), "{stderr}");
    assert!(stdout.is_empty(), "no child is printed when the ports do not fit: {stdout}");
    let (code, _, stderr) = check_config(&shipped);
    assert_eq!(code, 0, "one process on the shipped ports is fine: {stderr}");
    let (code, _, stderr) = check_config(&["--metrics-listen=0.0.0.0:9091", "--peer-listen=0.0.0.0:9091"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("same port"), "{stderr}");
    // `all` cannot be counted without a device: the dry run says how many fit.
    let (code, _, stderr) = check_config(&["--gpus", "all", "--metrics-listen=0.0.0.0:9091", "--peer-listen=0.0.0.0:9100"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("up to 9 GPU processes fit"), "{stderr}");
}

/// A real worker process asked for a CUDA device, on a machine without the
/// NVIDIA driver (this one: no libcuda.so.1), exits 2 (bad flags: the
/// Job fails at once instead of retrying on the same node) with the
/// driver's absence named, before it contacts anyone; `--device cpu`
/// never loads the driver and gets as far as the (absent) coordinator.
#[test]
fn a_cuda_worker_refuses_a_machine_without_the_driver_and_a_cpu_worker_does_not_ask() {
    // SAFETY: only probes whether the driver library exists here.
    if unsafe { libloading::Library::new("libcuda.so.1") }.is_ok() {
        eprintln!("skipped: this machine has an NVIDIA driver, so the no-driver refusal cannot be shown");
        return;
    }
    let worker = |flags: &[&str]| {
        let out = Command::new(binary("ddpm-worker"))
            .args(["--coord", "127.0.0.1:1", "--connect-timeout", "1", "--threads", "1"])
            .args(flags)
            .env_remove("DDPM_METRICS_LISTEN")
            .env_remove("DDPM_PEER_LISTEN")
            .output()
            .expect("ddpm-worker runs");
        (out.status.code().unwrap_or(-1), text(&out.stderr))
    };
    for flags in [&["--gpu", "0"][..], &["--device", "cuda:1"], &["--gpus", "all"], &["--gpus", "2"]] {
        let (code, stderr) = worker(flags);
        assert_eq!(code, 2, "{flags:?}: {stderr}");
        assert!(
            stderr.contains("a CUDA device was asked for, but the NVIDIA driver cannot be loaded (libcuda.so.1")
                && stderr.contains("install the driver, or use --device cpu"),
            "{flags:?}: {stderr}"
        );
        assert!(!stderr.contains("cannot reach the coordinator"), "{flags:?} went on past the device check: {stderr}");
    }
    let (code, stderr) = worker(&["--device", "cpu"]);
    assert_eq!(code, 4, "a CPU worker goes on to look for its coordinator: {stderr}");
    assert!(stderr.contains("cannot reach the coordinator") && !stderr.contains("NVIDIA driver"), "{stderr}");
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_gpu_check_refuses_a_machine_without_a_gpu() {
    let bin = binary("ddpm").parent().unwrap().to_path_buf();
    let python = std::env::var("DDPM_PYTHON").unwrap_or_else(|_| "python3".into());
    let out_dir = tempdir();
    // No visible device, whatever the machine has: torch sees none.
    let out = Command::new("bash")
        .arg(repo().join("deploy/gpu-check.sh"))
        .args(["--bin", bin.to_str().unwrap(), "--python", &python, "--out", out_dir.path().to_str().unwrap()])
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .expect("bash runs");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}{stderr}", text(&out.stdout));
    assert!(stderr.contains("no GPU here") || stderr.contains("torch sees no CUDA device"), "{stderr}");
    assert!(stderr.contains("--cpu-smoke"), "the refusal names the smoke mode: {stderr}");
    assert!(!out_dir.path().join("results.json").exists(), "nothing is measured without a GPU");
}

/// The GPU check's whole pipeline on the CPU (`--cpu-smoke`: the tiny
/// preset, a few steps of each part): every part runs, and results.json and
/// results.md say what each measured, marked as a smoke run. About 50 s on
/// a busy 2-core machine; what a lent GPU runs differs only in its sizes.
#[test]
fn the_gpu_check_runs_end_to_end_on_the_cpu_with_cpu_smoke() {
    let bin = binary("ddpm").parent().unwrap().to_path_buf();
    let python = std::env::var("DDPM_PYTHON").expect("DDPM_PYTHON: the venv's Python with torch and diffusers (tests/run.sh sets it)");
    let out_dir = tempdir();
    let out = Command::new("bash")
        .arg(repo().join("deploy/gpu-check.sh"))
        .args(["--cpu-smoke", "--bin", bin.to_str().unwrap(), "--python", &python, "--out", out_dir.path().to_str().unwrap()])
        .output()
        .expect("bash runs");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(results["smoke"], true);
    assert_eq!(results["failures"], serde_json::json!([]), "{results:#}");
    for p in ["fp32", "bf16"] {
        let t = &results["train"][p];
        assert!(t["ddpm_img_s"].as_f64().unwrap() > 0.0 && t["pytorch_img_s"].as_f64().unwrap() > 0.0, "{t}");
        assert!(t.get("ratio_to_paper_tpu_v3_8").is_none(), "a smoke run is not compared with the paper: {t}");
    }
    assert!(results["sample"]["ddpm_ddim50_img_s"].as_f64().unwrap() > 0.0, "{results:#}");
    for b in ["coordinator", "ring"] {
        let d = &results["dist"][b];
        assert_eq!((d["replicas"].as_u64(), d["replicas_agree"].as_bool()), (Some(2), Some(true)), "{d}");
    }
    assert_eq!(results["dist"]["nccl"]["status"], "not run: NCCL needs a GPU (CPU smoke run)");
    assert_eq!(results["dist"]["ring-shadow-off"]["replicas_agree"], true, "{results}");
    let table = std::fs::read_to_string(out_dir.path().join("results.md")).unwrap();
    assert!(
        table.contains("CPU SMOKE RUN: not a measurement") && table.contains("| nccl | not run: NCCL needs a GPU (CPU smoke run) |"),
        "{table}"
    );
}
