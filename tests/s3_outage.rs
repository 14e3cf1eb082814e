//! The run's S3 store, the real test server, frozen in the middle of a run
//! (SIGSTOP: every request hangs, as with a server that stopped answering)
//! and thawed (SIGCONT): training goes on meanwhile, the checkpoints due in
//! the outage land after it, the run ends normally, and its latest complete
//! checkpoint is the final one. A test binary of its own: no other test
//! uses the server while it is frozen.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{s3_env, s3_test_store, start_coordinator, start_worker};
use ddpm::proto::{self, coordinator_client::CoordinatorClient};
use ddpm::store::RunStore;

const CONFIG: &str = r#"
[model]
image_size = 8
ch = 16
ch_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = []
dropout = 0.0
num_groups = 8

[data]
spec = "synthetic:shapes"

[train]
batch_size = 8
log_every = 5

[checkpoint]
every_steps = 10
every_minutes = 0.0
retry_initial_s = 0.5
retry_max_s = 2.0
"#;

/// Thaws the server however the test ends: the later tests need it.
struct Thaw(String);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

async fn status(addr: &str) -> proto::StatusReply {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    CoordinatorClient::new(ch).get_status(proto::StatusRequest {}).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_goes_on_while_the_s3_store_is_frozen_and_its_checkpoints_land_after() {
    let pid = s3_env("DDPM_TEST_S3_PID");
    let (url, opts) = s3_test_store("outage");
    let dir = common::tempdir();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let (endpoint, region) = (s3_env("DDPM_TEST_S3_ENDPOINT"), s3_env("DDPM_TEST_S3_REGION"));
    let (key, secret) = (s3_env("DDPM_TEST_S3_ACCESS_KEY"), s3_env("DDPM_TEST_S3_SECRET"));
    let steps = 400u64;
    let (mut coord, addr) = start_coordinator(&[
        "--preset",
        "tiny",
        "--config",
        cfg.to_str().unwrap(),
        "--workers",
        "1",
        "--steps",
        &steps.to_string(),
        "--samples",
        "0",
        "--threads",
        "1",
        "--run",
        &url,
        "--s3-endpoint",
        &endpoint,
        "--s3-region",
        &region,
        "--s3-access-key",
        &key,
        "--s3-secret-key",
        &secret,
        "--s3-allow-http",
    ]);
    let _worker = start_worker(&addr, "w1");
    coord.wait_for_line("checkpoint saved", Duration::from_secs(120));

    // Frozen for 8 s (under the lease's 20 s time to live).
    let s0 = status(&addr).await;
    let thaw = Thaw(pid.clone());
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let frozen = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let s1 = status(&addr).await;
    drop(thaw);
    eprintln!(
        "frozen {:.1} s: steps {} -> {}, last checkpoint {} -> {}, unsaved steps {}",
        frozen.elapsed().as_secs_f64(),
        s0.step,
        s1.step,
        s0.last_checkpoint_step,
        s1.last_checkpoint_step,
        s1.unsaved_steps
    );
    assert!(s1.step >= s0.step + 20, "training stalled while the store was frozen: step {} -> {}", s0.step, s1.step);
    assert!(s1.unsaved_steps >= 10, "checkpoints were due in the outage: {s1:?}");

    // Thawed: the run ends normally and everything it owes the store is there.
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    let out = coord.output();
    assert!(out.contains("the metrics log is written again") || !out.contains("cannot write the metrics log"), "{out}");
    let store = RunStore::open(&url, &opts).unwrap();
    let latest = ddpm::checkpoint::load_latest(&store).await.unwrap().expect("a checkpoint");
    assert_eq!(latest.data.step, steps);
    assert!(latest.skipped.is_empty(), "torn checkpoints: {:?}", latest.skipped);
    let summary: serde_json::Value = serde_json::from_slice(&store.get("summary.json").await.unwrap()).unwrap();
    assert_eq!(summary["steps"], steps, "{summary}");
    assert!(summary["error"].is_null(), "{summary}");
    // Every step's metrics row is there once.
    let mut rows = Vec::new();
    for o in store.list("metrics").await.unwrap() {
        let text = String::from_utf8(store.get(&o.key).await.unwrap().to_vec()).unwrap();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(s) = v.get("loss").and(v["step"].as_u64()) {
                rows.push(s);
            }
        }
    }
    rows.sort();
    assert_eq!(rows, (1..=steps).collect::<Vec<_>>(), "metrics rows");
}
