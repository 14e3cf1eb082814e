//! Distributed training through the real binaries on loopback: a run with
//! 1, 2 or 3 workers ends with the same parameters and EMA as the
//! single-process reference, and every replica ends equal to the
//! coordinator.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::{start_coordinator, start_worker, tempdir};
use ddpm::config::TrainConfig;
use ddpm::train::local::LocalTrainer;
use tch::{Device, Kind, Tensor};

/// A small run: tiny U-Net at 16x16 with 4 channels per GroupNorm group (so
/// no parameter has a gradient that is zero in exact arithmetic and pure
/// rounding noise in floating point, which Adam would blow up to +-lr),
/// dropout off, 8 steps of batch 6 (6 = 3 + 3 = 2 + 2 + 2).
const CONFIG: &str = r#"
[model]
image_size = 16
ch = 32
ch_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = [8]
dropout = 0.0
num_groups = 8

[data]
spec = "synthetic:shapes"

[optim]
lr = 5e-4
warmup_steps = 0

[train]
batch_size = 6
steps = 8
seed = 7
ema_decay = 0.9
log_every = 1

[dist]
checksum_every = 2
heartbeat_timeout_s = 60

[sample]
at_end = false
"#;

fn config() -> TrainConfig {
    TrainConfig::from_toml_str(CONFIG, &TrainConfig::tiny()).expect("test config")
}

/// Reads a diffusers-layout safetensors file into name -> values.
fn read_weights(path: &Path) -> HashMap<String, Vec<f32>> {
    let tensors = Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    tensors.into_iter().map(|(name, t)| (name, ddpm::train::flat::to_vec_f32(&t.to_kind(Kind::Float).reshape([-1])))).collect()
}

fn max_abs_diff(a: &HashMap<String, Vec<f32>>, b: &HashMap<String, Vec<f32>>) -> f64 {
    assert_eq!(a.len(), b.len(), "different tensor sets");
    let mut worst = 0f64;
    for (name, va) in a {
        let vb = b.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(va.len(), vb.len(), "{name}");
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((*x as f64 - *y as f64).abs());
        }
    }
    worst
}

/// Moves of the parameters from their initial values (to show the test
/// compares something that changed).
fn max_abs(a: &HashMap<String, Vec<f32>>) -> f64 {
    a.values().flatten().fold(0f64, |m, x| m.max(x.abs() as f64))
}

fn run_distributed(workers: usize, extra: &[&str]) -> (tempfile::TempDir, serde_json::Value) {
    run_distributed_with(workers, extra, CONFIG)
}

/// A run of `config` (a whole TOML file) with `workers` workers.
fn run_distributed_with(workers: usize, extra: &[&str], config: &str) -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempdir();
    let cfg_path = dir.path().join("run.toml");
    std::fs::write(&cfg_path, config).unwrap();
    let run_dir = dir.path().join("run");
    let n = workers.to_string();
    let mut args = vec![
        "--preset",
        "tiny",
        "--config",
        cfg_path.to_str().unwrap(),
        "--workers",
        &n,
        "--run",
        run_dir.to_str().unwrap(),
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    let (mut coord, addr) = start_coordinator(&args);
    let mut ws: Vec<_> = (0..workers).map(|i| start_worker(&addr, &format!("w{i}"))).collect();
    let code = coord.wait(Duration::from_secs(600));
    assert_eq!(code, 0, "coordinator failed:\n{}", coord.output());
    for w in &mut ws {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "worker failed:\n{}", w.output());
    }
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    (dir, summary)
}

/// The single-process reference run: its final parameters and EMA.
fn reference() -> (HashMap<String, Vec<f32>>, HashMap<String, Vec<f32>>) {
    let cfg = config();
    let mut local = LocalTrainer::new(cfg.clone(), Device::Cpu).unwrap();
    let init = ddpm::train::flat::to_vec_f32(&local.state.model.flat);
    for _ in 0..cfg.train.steps {
        let r = local.step().unwrap();
        assert!(r.outcome.apply && r.loss.is_finite());
    }
    let dir = tempdir();
    let ref_params = dir.path().join("ref.safetensors");
    let ref_ema = dir.path().join("ref_ema.safetensors");
    ddpm::unet::diffusers::save_safetensors(&local.state.model.vs, &ref_params).unwrap();
    local.state.model.load_flat(&local.ema);
    ddpm::unet::diffusers::save_safetensors(&local.state.model.vs, &ref_ema).unwrap();
    let (want_params, want_ema) = (read_weights(&ref_params), read_weights(&ref_ema));
    let moved = {
        let now = ddpm::train::flat::to_vec_f32(&Tensor::from_slice(&init));
        let after = ddpm::train::flat::to_vec_f32(&local.state.model.flat);
        now.iter().zip(after).fold(0f32, |m, (a, b)| m.max((a - b).abs()))
    };
    eprintln!("largest parameter change of the reference over the run: {moved:.3e}");
    assert!(moved > 1e-3, "the reference barely trained ({moved}); the comparison would be empty");
    (want_params, want_ema)
}

#[test]
fn one_two_and_three_workers_match_the_single_process_reference() {
    let (want_params, want_ema) = reference();
    for workers in [1, 2, 3] {
        let (run, summary) = run_distributed(workers, &[]);
        let weights = run.path().join("run/checkpoints/step_0000000008");
        let got_params = read_weights(&weights.join("model.safetensors"));
        let got_ema = read_weights(&weights.join("ema.safetensors"));
        let dp = max_abs_diff(&got_params, &want_params);
        let de = max_abs_diff(&got_ema, &want_ema);
        eprintln!("{workers} worker(s): max |params - reference| = {dp:.3e}, max |ema - reference| = {de:.3e}");
        assert!(dp < 1e-4, "{workers} workers: parameters differ from the reference by {dp}");
        assert!(de < 1e-4, "{workers} workers: EMA differs from the reference by {de}");
        assert!(max_abs(&got_params) > 0.0);
        assert_eq!(summary["replicas_agree"], true, "{summary}");
        assert_eq!(summary["replica_checksums"].as_object().unwrap().len(), workers, "{summary}");
        assert_eq!(summary["checksum_mismatches"], 0, "{summary}");
        assert_eq!(summary["skipped_steps"], 0);
    }
}

/// The ring backend (gradients worker to worker, each member's reduced
/// segment to the coordinator) with 1, 2, 3 and 4 workers: the same
/// parameters and EMA as the single-process reference, and every replica's
/// checksum equal to the coordinator's after every step.
#[test]
fn the_ring_backend_with_one_to_four_workers_matches_the_reference_and_the_coordinator_every_step() {
    let (want_params, want_ema) = reference();
    for workers in [1, 2, 3, 4] {
        // 64 KiB chunks: 43 of them, so that every member owns a segment of several.
        let every_step = CONFIG.replace("checksum_every = 2", "checksum_every = 1\nchunk_kib = 64");
        let (run, summary) = run_distributed_with(workers, &["--backend", "ring"], &every_step);
        let weights = run.path().join("run/checkpoints/step_0000000008");
        let dp = max_abs_diff(&read_weights(&weights.join("model.safetensors")), &want_params);
        let de = max_abs_diff(&read_weights(&weights.join("ema.safetensors")), &want_ema);
        eprintln!("ring, {workers} worker(s): max |params - reference| = {dp:.3e}, max |ema - reference| = {de:.3e}");
        assert!(dp < 1e-4 && de < 1e-4, "ring with {workers} workers: params {dp}, EMA {de} from the reference");
        assert_eq!(summary["replicas_agree"], true, "{summary}");
        assert_eq!(summary["replica_checksums"].as_object().unwrap().len(), workers, "{summary}");
        assert_eq!(summary["checksum_mismatches"], 0, "{summary}");
        // Compared after every step: each replica's checksum of each of the 8 steps.
        assert_eq!(summary["checksums_compared"], 8 * workers as u64, "{summary}");
    }
}

/// The ring with the coordinator's copy off (`[dist] shadow = "off"`):
/// the replicas keep the EMA and write a shard each of the periodic
/// checkpoint (step 4), the coordinator takes the state from one of them
/// for the last checkpoint (step 8) and the final checksum, and compares
/// the replicas among themselves after every step. 1 to 4 workers end as
/// the single-process reference.
#[test]
fn the_ring_with_the_shadow_off_matches_the_reference_with_state_from_the_replicas() {
    let (want_params, want_ema) = reference();
    for workers in [1, 2, 3, 4] {
        let off = CONFIG.replace("checksum_every = 2", "checksum_every = 1\nchunk_kib = 64\nshadow = \"off\"")
            + "\n[checkpoint]\nevery_steps = 4\n";
        let (run, summary) = run_distributed_with(workers, &["--backend", "ring"], &off);
        for step in [4, 8] {
            let dir = run.path().join(format!("run/checkpoints/step_{step:010}"));
            assert!(dir.join("manifest.json").exists(), "no checkpoint of step {step} with the shadow off");
        }
        // Step 4's (periodic) is the replicas' shards, one each; step 8's (the last) the coordinator's.
        let shard = format!("run/checkpoints/step_0000000004/shard_{:03}_of_{workers:03}.safetensors", workers - 1);
        assert!(run.path().join(shard).exists(), "step 4 was not written by the {workers} replicas");
        let weights = run.path().join("run/checkpoints/step_0000000008");
        let dp = max_abs_diff(&read_weights(&weights.join("model.safetensors")), &want_params);
        let de = max_abs_diff(&read_weights(&weights.join("ema.safetensors")), &want_ema);
        eprintln!("ring, shadow off, {workers} worker(s): max |params - reference| = {dp:.3e}, max |ema - reference| = {de:.3e}");
        assert!(dp < 1e-4 && de < 1e-4, "shadow off with {workers} workers: params {dp}, EMA {de} from the reference");
        assert_eq!(summary["replicas_agree"], true, "{summary}");
        assert_eq!(summary["replica_checksums"].as_object().unwrap().len(), workers, "{summary}");
        assert_eq!(summary["checksum_mismatches"], 0, "{summary}");
        assert_eq!(summary["checksums_compared"], 8 * workers as u64, "{summary}");
    }
}

#[test]
fn bf16_gradients_train_and_replicas_still_agree() {
    let (_run, summary) = run_distributed(2, &["--grad-dtype", "bf16"]);
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert!(summary["final_loss"].as_f64().unwrap().is_finite());
}

/// Two runs with two workers and the same seed are bit-identical, down to
/// the sample grid: the all-reduce sums in rank order, never in arrival order.
#[test]
fn a_two_worker_run_is_bitwise_reproducible() {
    let run = || {
        let (run, summary) = run_distributed(2, &["--samples", "4", "--steps", "2"]);
        let path = summary["grid"].as_str().expect("grid path").to_string();
        assert!(path.ends_with("samples/step_00000002.png"), "{path}");
        let bytes = std::fs::read(&path).unwrap();
        drop(run);
        (bytes, summary["coordinator_checksum"].as_str().unwrap().to_string())
    };
    let (grid_a, sum_a) = run();
    let (grid_b, sum_b) = run();
    let img = image::load_from_memory(&grid_a).expect("a PNG");
    // 4 images of 16x16 in a 2x2 grid, enlarged 4 times (64 px cells), 4 px borders.
    assert_eq!((img.width(), img.height()), (4 + 2 * 68, 4 + 2 * 68));
    assert_eq!(sum_a, sum_b, "two identical runs ended with different parameters");
    assert!(grid_a == grid_b, "two identical runs drew different sample grids");
}

/// One ring run of `config` with 3 workers, worker `no_shm` (if any)
/// without shared memory (as if on another host): the coordinator's final
/// checksum and each worker's output.
fn ring_run(config: &str, no_shm: Option<usize>) -> (String, Vec<String>) {
    let dir = tempdir();
    let cfg_path = dir.path().join("run.toml");
    std::fs::write(&cfg_path, config).unwrap();
    let run_dir = dir.path().join("run");
    let args = ["--preset", "tiny", "--config", cfg_path.to_str().unwrap(), "--workers", "3", "--run", run_dir.to_str().unwrap()];
    let (mut coord, addr) = start_coordinator(&args);
    let mut ws: Vec<_> = (0..3)
        .map(|i| {
            let name = format!("w{i}");
            let mut cmd = std::process::Command::new(common::binary("ddpm-worker"));
            cmd.args(["--coord", &addr, "--device", "cpu", "--threads", "1", "--name", &name]).env("RUST_LOG", "info");
            if no_shm == Some(i) {
                cmd.env("DDPM_RING_SHM_DIR", "");
            }
            common::Proc::spawn(&name, cmd)
        })
        .collect();
    assert_eq!(coord.wait(Duration::from_secs(600)), 0, "coordinator failed:\n{}", coord.output());
    let logs = ws
        .iter_mut()
        .map(|w| {
            assert_eq!(w.wait(Duration::from_secs(60)), 0, "worker failed:\n{}", w.output());
            w.output()
        })
        .collect();
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(summary["checksum_mismatches"], 0, "{summary}");
    (summary["coordinator_checksum"].as_str().unwrap().to_string(), logs)
}

/// The ring's links through shared memory (the default between processes
/// of one host), through TCP (`ring_shm = false`), and mixed (one worker
/// without shared memory: TCP to and from it, shared memory between the
/// other two) give the same bits; each worker says how its links went.
#[test]
fn ring_links_through_shared_memory_tcp_or_both_give_the_same_bits() {
    let config = CONFIG.replace("checksum_every = 2", "checksum_every = 1\nbackend = \"ring\"\nchunk_kib = 64");
    let said = |log: &str, links: &str| log.contains(&format!("ring links (from the predecessor/to the successor): {links}"));
    let (shm, logs) = ring_run(&config, None);
    assert!(logs.iter().all(|l| said(l, "shm/shm")), "{logs:#?}");
    let (tcp, logs) = ring_run(&config.replace("backend = \"ring\"", "backend = \"ring\"\nring_shm = false"), None);
    assert!(logs.iter().all(|l| said(l, "tcp/tcp") && !["shm/shm", "tcp/shm", "shm/tcp"].iter().any(|k| said(l, k))), "{logs:#?}");
    assert_eq!(tcp, shm, "the TCP ring's result differs from the shared-memory ring's");
    let (mixed, logs) = ring_run(&config, Some(0));
    assert!(said(&logs[0], "tcp/tcp"), "{}", logs[0]);
    // The successor of the worker without shared memory, and its predecessor.
    assert!(logs[1..].iter().any(|l| said(l, "tcp/shm")) && logs[1..].iter().any(|l| said(l, "shm/tcp")), "{logs:#?}");
    assert_eq!(mixed, shm, "the mixed ring's result differs from the shared-memory ring's");
}

/// Step 2's loss of a single-process run of `config`: the first step's is
/// E[eps^2] whatever the arithmetic (the paper's initialisation zeroes the
/// output convolution, so the network predicts exactly 0), while step 2
/// runs the forward pass on weights that moved.
fn second_loss(config: &str) -> f64 {
    let cfg = TrainConfig::from_toml_str(config, &TrainConfig::tiny()).expect("test config");
    let mut local = LocalTrainer::new(cfg, Device::Cpu).unwrap();
    local.step().unwrap();
    local.step().unwrap().loss
}

/// `[train] precision = "bf16"` travels in the run config to the workers:
/// a 2-worker run (backend auto, the ring with CPU workers) computes step
/// 2's loss in bf16, as the single-process bf16 run does, and not in fp32,
/// and its replicas agree with the coordinator after every checked step.
#[test]
fn bf16_precision_reaches_the_workers_and_replicas_agree() {
    let bf16 = CONFIG.replace("log_every = 1", "log_every = 1\nprecision = \"bf16\"");
    let (want_bf16, want_fp32) = (second_loss(&bf16), second_loss(CONFIG));
    let (run, summary) = run_distributed_with(2, &["--backend", "auto"], &bf16);
    let rows = std::fs::read_to_string(run.path().join("run/metrics.jsonl")).unwrap();
    let row = |step: u64| -> serde_json::Value {
        rows.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|r| r["step"] == step).unwrap()
    };
    let got = row(2)["loss"].as_f64().unwrap();
    let (to_bf16, to_fp32) = ((got - want_bf16).abs(), (got - want_fp32).abs());
    eprintln!("step 2 loss: 2 workers bf16 {got:.7}, one process bf16 {want_bf16:.7}, fp32 {want_fp32:.7}");
    assert!((want_bf16 - want_fp32).abs() > 1e-5, "bf16 and fp32 gave the same loss ({want_fp32}): the comparison would be empty");
    assert!(to_bf16 * 10.0 < to_fp32, "the workers' step 2 ({got}) is not bf16's ({want_bf16}) rather than fp32's ({want_fp32})");
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(summary["replica_checksums"].as_object().unwrap().len(), 2, "{summary}");
    assert_eq!(summary["checksum_mismatches"], 0, "{summary}");
    assert!(summary["final_loss"].as_f64().unwrap().is_finite(), "{summary}");
}
