//! `ddpm bench dist` and `ddpm bench allreduce`: distributed training speed
//! with real processes on loopback, and the all-reduce against PyTorch DDP
//! (gloo) and raw TCP on the same machine.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use ddpm::config::{GradDtype, RunConfig};
use ddpm::proto::{self, coordinator_client::CoordinatorClient, gradient_message, reduced_message, work_message};
use ddpm::wire;
use tokio_stream::StreamExt;

use super::bench_util::{self, median, start_coordinator, start_worker, wait_ok};

const GLOO_SCRIPT: &str = include_str!("../../tests/bench/gloo_allreduce.py");

#[derive(clap::Args)]
pub struct DistArgs {
    /// Worker counts to run, comma-separated.
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// Training recipe.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Steps per run (the first 3 are not counted).
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    /// Global batch size (default: the preset's).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// libtorch threads per worker.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Dataset spec (default: the preset's, else the built-in shapes at the
    /// preset's resolution, so that every preset runs without a download).
    #[arg(long)]
    pub data: Option<String>,
}

#[derive(clap::Args)]
pub struct AllreduceArgs {
    /// Worker counts, comma-separated.
    #[arg(long, default_value = "2", value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// All-reduces to time per worker count.
    #[arg(long, default_value_t = 5)]
    pub steps: u64,
    /// Gradient wire format: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Python with torch for the gloo baseline (default $DDPM_PYTHON or python3).
    #[arg(long)]
    pub python: Option<String>,
    /// Skip the PyTorch gloo baseline.
    #[arg(long)]
    pub no_baseline: bool,
}

pub fn run_dist(args: DistArgs) -> anyhow::Result<()> {
    let preset = ddpm::config::TrainConfig::preset(&args.preset)?;
    // The paper's presets name no dataset (a run must say what it trains
    // on); the bench brings its own so that it measures every preset.
    let data = match (&args.data, &preset.data.spec) {
        (Some(spec), _) => spec.clone(),
        (None, Some(spec)) => spec.to_string(),
        (None, None) => format!("synthetic:shapes@{}", preset.model.image_size),
    };
    println!("distributed training, preset {} on {data}, loopback, CPU workers with {} thread(s) each; this machine has {} cores",
        args.preset, args.threads, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!("{:>8} {:>10} {:>12} {:>12} {:>14} {:>9}", "workers", "img/s", "step ms", "compute ms", "all-reduce ms", "speedup");
    let mut base = None;
    for &n in &args.workers {
        let dir = tempfile::tempdir()?;
        let run = dir.path().join("run");
        let mut coord_args: Vec<String> = vec![
            "--preset".into(), args.preset.clone(),
            "--data".into(), data.clone(),
            "--workers".into(), n.to_string(),
            "--steps".into(), args.steps.to_string(),
            "--samples".into(), "0".into(),
            "--threads".into(), "1".into(),
            "--run".into(), run.display().to_string(),
        ];
        if let Some(b) = args.batch_size {
            coord_args.extend(["--batch-size".into(), b.to_string()]);
        }
        let log = dir.path().join("coord.log");
        let (mut coord, addr) = start_coordinator(&coord_args, &log)?;
        let mut workers = (0..n)
            .map(|i| start_worker(&addr, &format!("bench{i}"), args.threads, &dir.path().join(format!("w{i}.log"))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        wait_ok(&mut coord, "ddpm-coord", &log)?;
        for (i, w) in workers.iter_mut().enumerate() {
            wait_ok(w, "ddpm-worker", &dir.path().join(format!("w{i}.log")))?;
        }
        let rows: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let counted: Vec<&serde_json::Value> = rows.iter().skip(3).collect();
        anyhow::ensure!(!counted.is_empty(), "run more than 3 steps");
        let col = |k: &str| median(&counted.iter().filter_map(|r| r[k].as_f64()).collect::<Vec<_>>());
        let batch = args.batch_size.unwrap_or(preset.train.batch_size);
        let step_s = col("step_s");
        let imgs = batch as f64 / step_s;
        let speedup = imgs / *base.get_or_insert(imgs);
        println!(
            "{n:>8} {imgs:>10.1} {:>12.1} {:>12.1} {:>14.1} {speedup:>8.2}x",
            1e3 * step_s,
            1e3 * col("compute_s"),
            1e3 * col("allreduce_s")
        );
    }
    Ok(())
}

/// GB/s of one TCP stream on loopback writing `bytes` (best of 3).
fn raw_tcp_gbps(bytes: usize) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if s.read(&mut buf)? == 0 {
                return Ok(());
            }
        }
    });
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let buf = vec![1u8; 1 << 20];
    let mut best = 0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len());
            s.write_all(&buf[..n])?;
            left -= n;
        }
        best = best.max(bytes as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    drop(s);
    reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    Ok(best)
}

/// One fake member: joins, then for every training assignment streams a
/// fixed gradient and times the all-reduce (header sent to outcome received).
async fn fake_member(addr: String, dtype: GradDtype) -> anyhow::Result<Vec<f64>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(wire::MAX_FRAME_BYTES)
        .connect()
        .await?;
    // The bench's coordinator is an open run on loopback: no token, but
    // the session secret like any worker.
    let credentials = wire::auth::Credentials::default();
    let mut c = CoordinatorClient::with_interceptor(channel, credentials.clone())
        .max_decoding_message_size(wire::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(wire::MAX_MESSAGE_BYTES);
    let reg = c
        .register(proto::RegisterRequest {
            protocol_version: wire::PROTOCOL_VERSION,
            name: "bench".into(),
            device: "none".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            role: "train".into(),
            peer_endpoint: String::new(),
        })
        .await?
        .into_inner();
    let id = reg.worker_id;
    credentials.set_session(&reg.session_secret);
    let run: RunConfig = serde_json::from_str(&reg.run_config_json)?;
    c.ready(proto::ReadyRequest { worker_id: id, layout_hash: run.layout_hash, param_count: run.param_count }).await?;
    let hb = {
        let mut c = c.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let _ = c.heartbeat(proto::HeartbeatRequest { worker_id: id }).await;
            }
        })
    };
    let total = run.param_count as usize;
    let grad: Vec<f32> = (0..total).map(|i| ((i % 1000) as f32 - 500.0) * 1e-6).collect();
    let mut times = Vec::new();
    let mut applied = 0;
    let mut chunks: Option<Vec<Bytes>> = None;
    loop {
        let mut work = c
            .next_work(proto::NextWorkRequest { worker_id: id, applied_step: applied, param_checksum: 0 })
            .await?
            .into_inner();
        let a = match work.next().await.context("empty work stream")??.kind {
            Some(work_message::Kind::Train(a)) => a,
            Some(work_message::Kind::Shutdown(_)) => break,
            other => anyhow::bail!("unexpected work {other:?}"),
        };
        while work.next().await.is_some() {}
        let encoded = chunks.get_or_insert_with(|| {
            wire::chunk_ranges(total, a.chunk_elements as usize).map(|r| wire::encode(&grad[r], dtype)).collect()
        });
        let mut msgs = vec![proto::GradientMessage {
            kind: Some(gradient_message::Kind::Header(proto::GradientHeader {
                worker_id: id,
                step: a.step,
                attempt: a.attempt,
                elements: total as u64,
                dtype: dtype.to_proto() as i32,
                loss: 0.0,
                samples: a.shard_size,
                compute_s: 0.0,
            })),
        }];
        msgs.extend(encoded.iter().enumerate().map(|(i, d)| proto::GradientMessage {
            kind: Some(gradient_message::Kind::Chunk(proto::GradientChunk { index: i as u32, data: d.clone() })),
        }));
        let start = Instant::now();
        let mut inbound = c.reduce_gradients(tokio_stream::iter(msgs)).await?.into_inner();
        while let Some(m) = inbound.next().await {
            if let Some(reduced_message::Kind::Outcome(_)) = m?.kind {
                break;
            }
        }
        times.push(start.elapsed().as_secs_f64());
        applied = a.step;
    }
    hb.abort();
    Ok(times)
}

pub fn run_allreduce(args: AllreduceArgs) -> anyhow::Result<()> {
    let dtype = match args.dtype.as_str() {
        "f32" => GradDtype::F32,
        "bf16" => GradDtype::Bf16,
        d => anyhow::bail!("unknown dtype {d:?}: use f32 or bf16"),
    };
    let params = ddpm::unet::UNetConfig::cifar10().param_count() as usize;
    let bytes = params * 4;
    let tcp = raw_tcp_gbps(bytes)?;
    println!("all-reduce of the cifar10 gradient: {params} float32 values, {:.1} MB (wire: {})", bytes as f64 / 1e6, dtype.name());
    println!("raw TCP on loopback, one stream: {tcp:.2} GB/s");
    let rt = tokio::runtime::Runtime::new()?;
    for &n in &args.workers {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("coord.log");
        let coord_args: Vec<String> = [
            "--preset", "cifar10", "--data", "synthetic:shapes", "--samples", "0",
            "--grad-dtype", &args.dtype,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--workers".into(), n.to_string(),
            "--steps".into(), (args.steps + 1).to_string(),
            "--run".into(), dir.path().join("run").display().to_string(),
        ])
        .collect();
        let (mut coord, addr) = start_coordinator(&coord_args, &log)?;
        let times: Vec<Vec<f64>> = rt.block_on(async {
            let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(fake_member(addr.clone(), dtype))).collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await??);
            }
            anyhow::Ok(out)
        })?;
        wait_ok(&mut coord, "ddpm-coord", &log)?;
        // Per step, the slowest member's time; the first step is warm-up.
        let steps: Vec<f64> = (1..times[0].len()).map(|s| times.iter().map(|t| t[s]).fold(0.0, f64::max)).collect();
        let t = median(&steps);
        let gbps = bytes as f64 / t / 1e9;
        println!(
            "ddpm coordinator, {n} workers: {:.3} s per all-reduce, {gbps:.2} GB/s reduced per worker ({:.2}x raw TCP)",
            t,
            gbps / tcp
        );
        if !args.no_baseline && n >= 2 {
            let py = bench_util::python(&args.python);
            let a = vec!["--world".into(), n.to_string(), "--elements".into(), params.to_string(), "--repeats".into(), "5".into()];
            match bench_util::python_baseline(&py, "gloo_allreduce.py", GLOO_SCRIPT, &a) {
                Ok(v) => {
                    let g = median(&bench_util::seconds(&v));
                    println!(
                        "PyTorch DDP gloo, {n} processes: {g:.3} s per all-reduce; ddpm/gloo speed ratio {:.2} (>1: ddpm faster)",
                        g / t
                    );
                }
                Err(e) => println!("PyTorch gloo baseline unavailable ({e:#}); pass --python PATH to a Python with torch"),
            }
        }
    }
    Ok(())
}
