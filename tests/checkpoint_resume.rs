//! Exact resume through a real store, in one process: training 2K steps
//! straight and training K steps, checkpointing, reading the checkpoint back
//! into a fresh trainer and training K more give bit-identical parameters,
//! EMA and Adam state, with dropout on. Against the local store and the S3
//! test server. (The multi-process version, with a coordinator stopped and
//! restarted, is the coordinator's test.)

mod common;

use ddpm::checkpoint::{self, CheckpointData};
use ddpm::config::TrainConfig;
use ddpm::store::{RunStore, StoreOptions};
use ddpm::train::flat::to_vec_f32;
use ddpm::train::local::LocalTrainer;
use tch::Device;

const K: u64 = 3;

/// Dropout draws from torch's global generator (seeded per step), so the
/// trainers of two tests must not interleave.
static TORCH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config() -> TrainConfig {
    let mut c = TrainConfig::tiny();
    c.model.dropout = 0.1;
    c.train.batch_size = 4;
    c.optim.warmup_steps = 2;
    c.train.ema_decay = 0.9;
    c
}

fn snapshot(t: &LocalTrainer) -> [Vec<f32>; 4] {
    [to_vec_f32(&t.state.model.flat), to_vec_f32(&t.ema), to_vec_f32(&t.state.adam.m), to_vec_f32(&t.state.adam.v)]
}

async fn resume_is_exact(store: RunStore) {
    let _torch = TORCH.lock().await;
    let cfg = config();
    let mut straight = LocalTrainer::new(cfg.clone(), Device::Cpu).unwrap();
    for _ in 0..2 * K {
        straight.step().unwrap();
    }

    let mut first = LocalTrainer::new(cfg.clone(), Device::Cpu).unwrap();
    for _ in 0..K {
        first.step().unwrap();
    }
    let data = CheckpointData::capture(&cfg, &first.state, &first.ema, 0, 10_000);
    checkpoint::write(&store, &data).await.unwrap();
    drop(first);

    let loaded = checkpoint::load_latest(&store).await.unwrap().expect("the checkpoint");
    assert_eq!(loaded.data.step, K);
    let mut resumed = LocalTrainer::new(cfg.clone(), Device::Cpu).unwrap();
    let dataset_len = 10_000; // what capture recorded; the check is on the stream's shape
    loaded.data.check_resume(&cfg, &resumed.state.model.layout, dataset_len).unwrap();
    let (state, ema) = loaded.data.restore(&cfg, Device::Cpu).unwrap();
    resumed.state = state;
    resumed.ema = ema;
    for _ in 0..K {
        resumed.step().unwrap();
    }
    assert_eq!((resumed.state.step, resumed.state.adam.step), (straight.state.step, straight.state.adam.step));
    let names = ["parameters", "EMA", "Adam m", "Adam v"];
    for ((name, a), b) in names.iter().zip(snapshot(&resumed)).zip(snapshot(&straight)) {
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max == 0.0, "{name} differ after resume: max abs difference {max}");
    }
    // Dropout really was on: the same steps without it end elsewhere.
    let mut no_dropout = cfg.clone();
    no_dropout.model.dropout = 0.0;
    let mut plain = LocalTrainer::new(no_dropout, Device::Cpu).unwrap();
    for _ in 0..2 * K {
        plain.step().unwrap();
    }
    assert!(snapshot(&plain)[0] != snapshot(&straight)[0], "dropout had no effect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_the_local_store_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    resume_is_exact(RunStore::open(&dir.path().display().to_string(), &StoreOptions::default()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_s3_is_exact() {
    let (url, opts) = common::s3_test_store("resume");
    let store = RunStore::open(&url, &opts).unwrap();
    resume_is_exact(store.clone()).await;
    for o in store.list("").await.unwrap() {
        store.delete(&o.key).await.unwrap();
    }
}
