//! `ddpm bench checkpoint`: write and read throughput of a full training
//! checkpoint (parameters, EMA, Adam's two moments: 4 x P float32) to and
//! from a run store, local or S3.

use std::time::Instant;

use anyhow::Context;
use ddpm::checkpoint::{self, CheckpointData};
use ddpm::config::TrainConfig;
use ddpm::data::OrderState;
use ddpm::rng::Stream;
use ddpm::store::{RetryOptions, RunStore, StoreArgs};
use ddpm::train::flat::FlatModel;
use tch::Device;

use super::bench_util::median;

#[derive(clap::Args)]
pub struct CheckpointBenchArgs {
    /// Store to measure: a directory, file:///path or s3://bucket/prefix.
    /// The benchmark writes under `ddpm-bench-PID/` there and deletes it.
    #[arg(long, value_name = "URL")]
    pub run: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Model preset whose checkpoint is written: cifar10 (35.7M parameters,
    /// 572 MB), lsun256 or tiny (quick runs).
    #[arg(long, default_value = "cifar10")]
    pub preset: String,
    /// Timed writes and reads (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

fn join(url: &str, leaf: &str) -> String {
    format!("{}/{leaf}", url.trim_end_matches('/'))
}

/// A checkpoint of `config`'s model filled with normal noise.
fn synthetic_checkpoint(config: &TrainConfig) -> anyhow::Result<CheckpointData> {
    let layout = FlatModel::new(&config.model, Device::Cpu)?.layout;
    let fill = |k: u64| {
        let mut v = vec![0f32; layout.total];
        Stream::new(k).fill_normal(&mut v);
        v
    };
    let (params, adam_m, adam_v, ema) = (fill(1), fill(2), fill(3), fill(4));
    Ok(CheckpointData {
        step: 1,
        adam_step: 1,
        skipped_steps: 0,
        order: OrderState { seed: config.train.seed, dataset_len: 50_000, batch_size: config.train.batch_size, step: 1 },
        config: config.clone(),
        layout,
        params,
        adam_m,
        adam_v,
        ema,
    })
}

pub fn run(args: CheckpointBenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(bench(args))
}

async fn bench(args: CheckpointBenchArgs) -> anyhow::Result<()> {
    let config = TrainConfig::preset(&args.preset)?;
    let mut opts = args.store.options();
    opts.retry = RetryOptions::interactive();
    let url = join(&args.run, &format!("ddpm-bench-{}", std::process::id()));
    let store = RunStore::open(&url, &opts)?;
    store.check().await?;
    let data = synthetic_checkpoint(&config)?;
    let t = Instant::now();
    let enc = checkpoint::encode(&data)?;
    let encode_s = t.elapsed().as_secs_f64();
    let mb = enc.total_bytes() as f64 / 1e6;
    println!(
        "ddpm bench checkpoint: {} ({} parameters), 5 files = {mb:.1} MB, part size {} MiB, store {}",
        args.preset,
        data.layout.total,
        store.part_size() >> 20,
        store.url()
    );
    println!("encode (safetensors + sha256, in memory): {encode_s:.2} s ({:.0} MB/s)", mb / encode_s);

    let result = async {
        let (mut writes, mut reads) = (Vec::new(), Vec::new());
        for _ in 0..args.repeat.max(1) {
            let t = Instant::now();
            checkpoint::write_encoded(&store, &enc).await?;
            writes.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let back = checkpoint::read(&store, data.step).await?;
            reads.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(back == data, "the checkpoint read back differs from the one written");
        }
        Ok::<_, anyhow::Error>((writes, reads))
    }
    .await;
    // Clean up whatever happened.
    let leftovers = store.list("").await.unwrap_or_default();
    for o in leftovers {
        let _ = store.delete(&o.key).await;
    }
    let (writes, reads) = result?;
    let (w, r) = (median(&writes), median(&reads));
    println!("write (upload, manifest last), median of {}: {w:.2} s = {:.0} MB/s", writes.len(), mb / w);
    println!("read (download + sha256 verify + decode), median of {}: {r:.2} s = {:.0} MB/s", reads.len(), mb / r);
    println!("checkpoint every 30 min costs {:.2}% of wall time in background upload", 100.0 * (encode_s + w) / 1800.0);
    Ok(())
}
