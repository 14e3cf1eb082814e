//! Checkpoints written by the replicas (`[dist] shadow = "off"`,
//! `[checkpoint] writers = "replicas"`), with the real binaries on
//! loopback: four replicas write a shard each of a periodic checkpoint,
//! the coordinator writes its manifest; a run with two workers resumes
//! from it and ends where the uninterrupted run ended; `ddpm checkpoints
//! export` turns it into a diffusers model that diffusers loads and that
//! computes what our U-Net computes. A replica that cannot write its
//! shard costs the sharded checkpoint, never the checkpoint: the next is
//! taken through the coordinator.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::diffusers_check::{check_with_diffusers, write_io};
use common::{start_coordinator, start_worker, tempdir, Proc};
use ddpm::checkpoint::{self, CheckpointData};
use ddpm::store::RunStore;

/// The tiny U-Net at 16x16, 8 steps of batch 8 through the ring with the
/// shadow off, a checkpoint every 4 steps: step 4's is the replicas'
/// (periodic), step 8's the coordinator's (the last of the run).
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
batch_size = 8
steps = 8
seed = 7
ema_decay = 0.9
log_every = 1

[dist]
backend = "ring"
shadow = "off"
checksum_every = 1
chunk_kib = 64
heartbeat_timeout_s = 60

[checkpoint]
every_steps = 4

[sample]
at_end = false
"#;

/// A run of CONFIG in `run_dir` with `workers` workers, each with `env`;
/// returns the coordinator's output.
fn train(dir: &Path, run_dir: &Path, workers: usize, env: &[(&str, String)]) -> String {
    train_with(CONFIG, dir, run_dir, workers, env)
}

/// A run of `config` (a variant of CONFIG), as `train` does.
fn train_with(config: &str, dir: &Path, run_dir: &Path, workers: usize, env: &[(&str, String)]) -> String {
    let cfg = dir.join("run.toml");
    std::fs::write(&cfg, config).unwrap();
    let n = workers.to_string();
    let args =
        ["--preset", "tiny", "--config", cfg.to_str().unwrap(), "--workers", &n, "--run", run_dir.to_str().unwrap(), "--threads", "1"];
    let (mut coord, addr) = start_coordinator(&args);
    let mut ws: Vec<Proc> = (0..workers).map(|i| worker(&addr, i, env)).collect();
    assert_eq!(coord.wait(Duration::from_secs(600)), 0, "coordinator failed:\n{}", coord.output());
    for w in &mut ws {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "worker failed:\n{}", w.output());
    }
    coord.output()
}

/// CPU worker `i` of the coordinator at `addr`, with `env`.
fn worker(addr: &str, i: usize, env: &[(&str, String)]) -> Proc {
    let name = format!("w{i}");
    if env.is_empty() {
        return start_worker(addr, &name);
    }
    let mut cmd = Command::new(common::binary("ddpm-worker"));
    cmd.args(["--coord", addr, "--device", "cpu", "--threads", "1", "--name", &name]).env("RUST_LOG", "info");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    Proc::spawn(&name, cmd)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn read(run_dir: &Path, step: u64) -> (checkpoint::Manifest, CheckpointData) {
    let store = RunStore::open(run_dir.to_str().unwrap(), &Default::default()).unwrap();
    let rt = rt();
    (rt.block_on(checkpoint::verify(&store, step)).unwrap(), rt.block_on(checkpoint::read(&store, step)).unwrap())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn four_replicas_write_a_sharded_checkpoint_that_two_resume_and_diffusers_loads() {
    let dir = tempdir();
    let first = dir.path().join("four");
    let log = train(dir.path(), &first, 4, &[]);
    assert!(log.contains("every shard of the checkpoint of step 4 is written"), "{log}");

    // Step 4: the replicas' shards, a manifest that lists them and which values each holds.
    let (manifest, at4) = read(&first, 4);
    assert_eq!(manifest.format_version, 2);
    let names: Vec<&str> = manifest.shards.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["shard_000_of_004.safetensors", "shard_001_of_004.safetensors", "shard_002_of_004.safetensors", "shard_003_of_004.safetensors"]
    );
    assert_eq!(manifest.shards.last().unwrap().end as usize, at4.layout.total);
    assert!(!first.join("checkpoints/step_0000000004/model.safetensors").exists());
    assert_eq!((at4.step, at4.adam_step, at4.order.step), (4, 4, 4));
    // Step 8, the last: the coordinator's whole layout.
    let (manifest8, at8) = read(&first, 8);
    assert!(manifest8.shards.is_empty() && first.join("checkpoints/step_0000000008/model.safetensors").exists());

    // Two workers resume from the sharded checkpoint alone and end where four did.
    let second = dir.path().join("two");
    copy_dir(&first.join("checkpoints/step_0000000004"), &second.join("checkpoints/step_0000000004"));
    let log2 = train(dir.path(), &second, 2, &[]);
    assert!(log2.contains("training continues after step 4"), "{log2}");
    let (_, resumed) = read(&second, 8);
    let (dp, de) = (max_abs_diff(&resumed.params, &at8.params), max_abs_diff(&resumed.ema, &at8.ema));
    eprintln!("resumed with 2 from the 4 replicas' shards: max |params - uninterrupted| = {dp:.3e}, EMA {de:.3e}");
    assert!(dp < 1e-4 && de < 1e-4, "params {dp}, EMA {de}");
    assert!(max_abs_diff(&resumed.params, &at4.params) > 1e-4, "the resumed run did not train");

    // `ddpm checkpoints list` says which is which.
    let run = first.display().to_string();
    let listed = Command::new(env!("CARGO_BIN_EXE_ddpm")).args(["checkpoints", "list", "--run", &run, "--json"]).output().unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let shards: Vec<(u64, u64)> =
        listed.as_array().unwrap().iter().map(|c| (c["step"].as_u64().unwrap(), c["shards"].as_u64().unwrap())).collect();
    assert_eq!(shards, [(4, 4), (8, 0)], "{listed}");

    // The sharded checkpoint exported to diffusers loads there and computes what our U-Net does.
    let out = dir.path().join("export");
    let export = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(["checkpoints", "export", "--run", &run, "--step", "4", "--ema", "--format", "diffusers", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let io = dir.path().join("io.safetensors");
    write_io(&at4, &at4.ema, &io);
    check_with_diffusers(&out, &io);
}

#[test]
fn a_replica_that_cannot_write_its_shard_costs_the_sharded_checkpoint_not_the_checkpoint() {
    let dir = tempdir();
    let run_dir = dir.path().join("run");
    let flag = dir.path().join("failed-once");
    // 12 steps: the failure of step 4's shard is known by step 8 at the
    // latest (the periodic save of step 8 waits for step 4's set), so a
    // checkpoint the whole way lands before the last one of the run
    // however slowly the writer (at nice 19) gets the cores.
    let config = CONFIG.replace("steps = 8", "steps = 12").replace("every_steps = 4", "every_steps = 4\nkeep_last = 10");
    let log = train_with(&config, dir.path(), &run_dir, 2, &[("DDPM_FAULT_FAIL_SHARD", format!("4:{}", flag.display()))]);
    assert!(flag.exists(), "no worker was asked for a shard of step 4");
    assert!(log.contains("could not write shard"), "{log}");
    assert!(log.contains("checkpoints go through the coordinator for the rest of this start"), "{log}");
    // A checkpoint is taken all the same, the whole way, of the step the
    // run is at when the failure is known (the replicas hold no other),
    // and every later one goes through the coordinator.
    let store = RunStore::open(run_dir.to_str().unwrap(), &Default::default()).unwrap();
    let complete: Vec<u64> = rt().block_on(checkpoint::list(&store)).unwrap().iter().filter(|c| c.complete).map(|c| c.step).collect();
    assert!(!complete.contains(&4), "step 4's torn shard set was committed: {complete:?}");
    assert!(complete.iter().any(|s| (5..=8).contains(s)), "no checkpoint after the failed one by step 8: {complete:?}");
    assert!(complete.contains(&12), "{complete:?}");
    for &step in &complete {
        let (manifest, data) = read(&run_dir, step);
        assert!(manifest.shards.is_empty(), "step {step} after the failure is sharded: {manifest:?}");
        assert_eq!(data.step, step);
    }
}

/// A replica killed (-9) after its copy, before it reported its shard
/// (`DDPM_FAULT_HOLD_SHARD`): the coordinator drops it, gives the
/// replicas' checkpoint up (no manifest: the shards written stay torn)
/// and takes one the whole way from a survivor; the next periodic
/// checkpoint is the survivors' shards; the run ends with them agreeing.
#[test]
fn a_replica_killed_before_its_shard_report_costs_the_sharded_checkpoint_not_the_checkpoint() {
    let dir = tempdir();
    let run_dir = dir.path().join("run");
    let cfg = dir.path().join("run.toml");
    let config = CONFIG.replace("steps = 8", "steps = 12").replace("heartbeat_timeout_s = 60", "heartbeat_timeout_s = 3");
    std::fs::write(&cfg, config.replace("every_steps = 4", "every_steps = 4\nkeep_last = 10")).unwrap();
    let args =
        ["--preset", "tiny", "--config", cfg.to_str().unwrap(), "--workers", "3", "--run", run_dir.to_str().unwrap(), "--threads", "1"];
    let (mut coord, addr) = start_coordinator(&args);
    let hold = format!("4:{}", dir.path().join("held").display());
    let mut ws: Vec<Proc> = (0..3).map(|i| worker(&addr, i, &[("DDPM_FAULT_HOLD_SHARD", hold.clone())])).collect();
    let held = loop {
        if let Some(i) = ws.iter_mut().position(|w| w.output().contains("fault injection: holding shard")) {
            break i;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ws[held].child.kill().unwrap();
    assert_eq!(coord.wait(Duration::from_secs(600)), 0, "coordinator failed:\n{}", coord.output());
    for (i, w) in ws.iter_mut().enumerate().filter(|(i, _)| *i != held) {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "w{i}: {}", w.output());
    }
    let out = coord.output();
    assert!(out.contains("the replicas' checkpoint of step 4 is given up"), "{out}");
    let store = RunStore::open(run_dir.to_str().unwrap(), &Default::default()).unwrap();
    let listed = rt().block_on(checkpoint::list(&store)).unwrap();
    assert!(listed.iter().all(|c| c.step != 4 || !c.complete), "step 4's shards must not count: {listed:?}");
    let whole =
        listed.iter().find(|c| c.complete && (5..8).contains(&c.step)).unwrap_or_else(|| panic!("no checkpoint after step 4: {listed:?}"));
    let (manifest, data) = read(&run_dir, whole.step);
    assert!(manifest.shards.is_empty() && data.step == whole.step, "{manifest:?}");
    // The next periodic one is the two survivors' shards again.
    let (manifest, data) = read(&run_dir, 8);
    assert_eq!((manifest.shards.len(), data.step), (2, 8), "{manifest:?}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["replicas_agree"], true, "{summary}");
}

/// The replicas' checkpoint of step 4 is committed as soon as its last
/// shard is reported, in the middle of step 5, not at the step's end:
/// step 5 is frozen in one member's ring (`DDPM_FAULT_RING_FREEZE`, the
/// peer and step timeouts out of reach) while the checkpoint is saved,
/// and a coordinator killed (-9) right then leaves it complete, with no
/// step after 4 logged.
#[test]
fn a_sharded_checkpoint_is_committed_when_its_last_shard_is_reported_not_after_the_next_step() {
    let dir = tempdir();
    let run_dir = dir.path().join("run");
    let cfg = dir.path().join("run.toml");
    let config = CONFIG.replace("heartbeat_timeout_s = 60", "heartbeat_timeout_s = 600\nring_peer_timeout_s = 600\nstraggler_factor = 0.0");
    std::fs::write(&cfg, config).unwrap();
    let args =
        ["--preset", "tiny", "--config", cfg.to_str().unwrap(), "--workers", "2", "--run", run_dir.to_str().unwrap(), "--threads", "1"];
    let (mut coord, addr) = start_coordinator(&args);
    let mut ws = vec![worker(&addr, 0, &[("DDPM_FAULT_RING_FREEZE", "5:300".into())]), worker(&addr, 1, &[])];
    ws[0].wait_for_line("fault injection: freezing the ring", Duration::from_secs(300));
    coord.wait_for_line("checkpoint saved step=4", Duration::from_secs(200));
    coord.child.kill().unwrap();
    let _ = coord.child.wait();
    for w in &mut ws {
        w.child.kill().unwrap();
        let _ = w.child.wait();
    }
    let (manifest, data) = read(&run_dir, 4);
    assert_eq!((manifest.shards.len(), data.step), (2, 4), "{manifest:?}");
    let logged: Vec<u64> = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|row| row.get("loss").is_some())
        .map(|row| row["step"].as_u64().unwrap())
        .collect();
    assert!(logged.iter().all(|&s| s <= 4), "step 5 ended before the checkpoint of step 4 was saved: {logged:?}");
}
