//! `ddpm bench`: throughput measurements (not tests), each printing ratios
//! against what users would pick instead. `ddpm bench data` measures whether
//! reading and decoding keep up with 8 GPUs training at the paper's speed
//! (docs/ddpm.md section 8); `train`, `dist`, `allreduce`, `checkpoint` and
//! `sample` live in their own files.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ddpm::data::{self, Dataset, DatasetSpec, OpenOptions};
use ddpm::{imageio, rng};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Samples/s of the data layer on files it writes itself: CIFAR-10
    /// binary records, and 400x300 WebP images in an LSUN-style LMDB
    /// cropped and resized to 256x256.
    Data(DataBenchArgs),
    /// One device's training step against PyTorch eager on the same U-Net.
    Train(super::bench_train::TrainArgs),
    /// Distributed training with 1, 2, 4 CPU workers on loopback: img/s,
    /// compute and all-reduce time per step.
    Dist(super::bench_dist::DistArgs),
    /// The coordinator's all-reduce of the cifar10 gradient (143 MB) against
    /// PyTorch DDP (gloo) and raw TCP on loopback.
    Allreduce(super::bench_allreduce::AllreduceArgs),
    /// Write and read throughput of a full checkpoint (parameters, EMA,
    /// Adam's moments) to a run store: a directory or s3://bucket/prefix.
    Checkpoint(super::bench_checkpoint::CheckpointBenchArgs),
    /// Sampling images/s, ancestral (all T steps) and DDIM 50 steps, against
    /// PyTorch eager on the same U-Net and the paper's TPU v3-8.
    Sample(super::bench_sample::SampleArgs),
}

#[derive(clap::Args)]
pub struct DataBenchArgs {
    /// Seconds to run each measurement.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Threads for the parallel decode measurement (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Distinct WebP images in the LMDB.
    #[arg(long, default_value_t = 256)]
    pub webp_images: usize,
}

/// Images/s 8 GPUs consume at the paper's TPU v3-8 speed (docs/ddpm.md section 8).
const CIFAR_NEED: f64 = 8.0 * 2688.0;
const LSUN_NEED: f64 = 8.0 * 2.2 * 64.0;

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Data(a) => bench_data(a),
        BenchCommand::Train(a) => super::bench_train::run(a),
        BenchCommand::Dist(a) => super::bench_dist::run_dist(a),
        BenchCommand::Allreduce(a) => super::bench_allreduce::run_allreduce(a),
        BenchCommand::Checkpoint(a) => super::bench_checkpoint::run(a),
        BenchCommand::Sample(a) => super::bench_sample::run(a),
    }
}

fn bench_data(args: DataBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let budget = Duration::from_secs_f64(args.seconds.max(0.1));
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);

    println!("ddpm bench data: {threads} thread(s) for parallel decode, {:.1} s per measurement", budget.as_secs_f64());
    println!(
        "needs (paper speed per GPU): CIFAR-10 2,688 img/s per GPU, {CIFAR_NEED:.0} for 8; \
         256x256 2.2 x 64 = {:.0} img/s per GPU, {LSUN_NEED:.0} for 8",
        LSUN_NEED / 8.0
    );
    println!("the coordinator reads for all GPUs; each worker decodes its own share (its measurement includes the read)\n");

    // CIFAR-10: the five official train batches, random pixels.
    let cifar_dir = dir.path().join("cifar-10-batches-bin");
    write_cifar_bin(&cifar_dir)?;
    let t = Instant::now();
    let spec: DatasetSpec = format!("cifar10:{}", cifar_dir.display()).parse()?;
    let cifar = data::open(&spec, &OpenOptions::default())?;
    let load_s = t.elapsed().as_secs_f64();
    println!("cifar10 open (5 x 30 MB batches into memory): {load_s:.2} s");
    let read = measure(budget, |i| cifar.encoded(sample(i, cifar.len())).map(|b| b.len()))?;
    report_read("cifar10 coordinator read (encoded)", read, CIFAR_NEED);
    let full = measure(budget, |i| read_decode(cifar.as_ref(), i))?;
    report_decode("cifar10 worker decode + to_model_input, 1 thread", full, CIFAR_NEED);

    // LSUN-style: lossy WebP in an LMDB, cropped and resized to 256.
    let lmdb_dir = dir.path().join("bench_train_lmdb");
    let mean_kb = write_webp_lmdb(&lmdb_dir, args.webp_images)?;
    let spec: DatasetSpec = format!("lsun:{}@256", lmdb_dir.display()).parse()?;
    let t = Instant::now();
    let lsun = data::open(&spec, &OpenOptions::default())?;
    println!("\nlsun open ({} 400x300 WebP images, {mean_kb:.1} KB each, quality 80): {:.3} s", lsun.len(), t.elapsed().as_secs_f64());
    let read = measure(budget, |i| lsun.encoded(sample(i, lsun.len())).map(|b| b.len()))?;
    report_read("lsun coordinator read (encoded)", read, LSUN_NEED);
    let one = measure(budget, |i| read_decode(lsun.as_ref(), i))?;
    report_decode("lsun worker webp decode + crop/resize 256 + input, 1 thread", one, LSUN_NEED);
    // Where a worker's time goes.
    let sample_bytes = lsun.encoded(0)?;
    let decode = measure(budget / 2, |_| data::decode_rgb(&sample_bytes).map(|d| d.2.len()))?;
    let (w, h, rgb) = data::decode_rgb(&sample_bytes)?;
    let resize = measure(budget / 2, |_| data::center_crop_resize(&rgb, w, h, 256).map(|v| v.len()))?;
    println!("  of which: webp decode {:.2} ms, crop + Lanczos-3 resize {:.2} ms per image", 1e3 / decode, 1e3 / resize);
    if threads > 1 {
        let many = measure_parallel(budget, threads, |i| read_decode(lsun.as_ref(), i))?;
        report_decode(&format!("lsun worker decode, {threads} threads"), many, LSUN_NEED);
    }
    Ok(())
}

/// A scattered index, as a shuffled epoch reads them.
fn sample(i: u64, len: usize) -> usize {
    (rng::mix64(i) % len as u64) as usize
}

fn read_decode(ds: &dyn Dataset, i: u64) -> Result<usize, data::DataError> {
    let index = sample(i, ds.len());
    let bytes = ds.encoded(index)?;
    let dec = ds.decoder();
    let mut out = vec![0f32; dec.sample_len()];
    dec.decode_to_model_input(&bytes, i.is_multiple_of(2), &mut out)?;
    Ok(out.len())
}

/// Samples/s of `f` run back to back for `budget`.
fn measure(budget: Duration, mut f: impl FnMut(u64) -> Result<usize, data::DataError>) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut n = 0u64;
    while n < 10 || t.elapsed() < budget {
        std::hint::black_box(f(n)?);
        n += 1;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn measure_parallel(budget: Duration, threads: usize, f: impl Fn(u64) -> Result<usize, data::DataError> + Sync) -> anyhow::Result<f64> {
    let t = Instant::now();
    let counts: Vec<Result<u64, data::DataError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let f = &f;
                s.spawn(move || {
                    let mut n = 0u64;
                    while n < 10 || t.elapsed() < budget {
                        std::hint::black_box(f(n * threads as u64 + k as u64)?);
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread panicked")).collect()
    });
    let mut total = 0;
    for c in counts {
        total += c?;
    }
    Ok(total as f64 / t.elapsed().as_secs_f64())
}

/// The coordinator reads for all 8 GPUs: compare with the total need.
fn report_read(what: &str, per_s: f64, need_8: f64) {
    println!("{what:<64} {per_s:>11.0} samples/s  {:>8.2}x the 8-GPU need", per_s / need_8);
}

/// Each worker decodes its own GPU's share: compare with one GPU's need.
fn report_decode(what: &str, per_s: f64, need_8: f64) {
    println!("{what:<64} {per_s:>11.0} samples/s  {:>8.2}x one GPU's need", per_s / (need_8 / 8.0));
}

/// The official binary layout: five files of 10,000 records of 1 label byte
/// + 3072 pixel bytes.
fn write_cifar_bin(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut s = rng::Stream::new(1);
    for b in 1..=5 {
        let mut buf = vec![0u8; 10_000 * 3073];
        for rec in buf.chunks_exact_mut(3073) {
            rec[0] = s.below(10) as u8;
            for chunk in rec[1..].chunks_mut(8) {
                let v = s.next_u64().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
        std::fs::write(dir.join(format!("data_batch_{b}.bin")), buf)?;
    }
    Ok(())
}

/// Photo-like 400x300 scenes (a gradient, blocks and discs, grain) as
/// lossy WebP in an LMDB keyed like LSUN's (40 hex digits). Returns the mean
/// file size in KB.
fn write_webp_lmdb(dir: &Path, count: usize) -> anyhow::Result<f64> {
    let (w, h) = (400usize, 300usize);
    std::fs::create_dir_all(dir)?;
    let mut options = heed::EnvOpenOptions::new();
    options.map_size(1 << 30);
    // SAFETY: a fresh directory that only this function opens, closed below.
    let env = unsafe { options.open(dir)? };
    let mut wtxn = env.write_txn()?;
    let db: heed::Database<heed::types::Bytes, heed::types::Bytes> = env.create_database(&mut wtxn, None)?;
    let mut total = 0usize;
    for i in 0..count.max(1) {
        let rgb = scene_rgb(i as u64, w, h);
        let webp = imageio::encode_webp_rgb(&rgb, w, h, 80.0)?;
        total += webp.len();
        let key = format!("{:016x}{:016x}{:08x}", rng::mix64(i as u64), rng::mix64(!(i as u64)), i);
        db.put(&mut wtxn, key.as_bytes(), &webp)?;
    }
    wtxn.commit()?;
    env.prepare_for_closing().wait();
    Ok(total as f64 / count.max(1) as f64 / 1024.0)
}

fn scene_rgb(seed: u64, w: usize, h: usize) -> Vec<u8> {
    let mut s = rng::Stream::new(rng::mix64(seed ^ 0xBE7C));
    let mut c = || [s.below(256) as f64, s.below(256) as f64, s.below(256) as f64];
    let (top, bottom) = (c(), c());
    let mut rgb = vec![0u8; w * h * 3];
    let mut shapes = Vec::new();
    let mut s = rng::Stream::new(rng::mix64(seed ^ 0x5CE4E));
    for _ in 0..24 {
        let colour = [s.below(256) as f64, s.below(256) as f64, s.below(256) as f64];
        let (x, y, r) = (s.below(w as u64) as f64, s.below(h as u64) as f64, 5.0 + s.below(60) as f64);
        shapes.push((x, y, r, colour, s.below(2) == 0));
    }
    for y in 0..h {
        let a = y as f64 / h as f64;
        for x in 0..w {
            let mut px = [0f64; 3];
            for k in 0..3 {
                px[k] = top[k] * (1.0 - a) + bottom[k] * a;
            }
            for &(sx, sy, r, colour, disc) in &shapes {
                let (dx, dy) = (x as f64 - sx, y as f64 - sy);
                let inside = if disc { dx * dx + dy * dy < r * r } else { dx.abs() < r && dy.abs() < r * 0.6 };
                if inside {
                    px = colour;
                }
            }
            let grain = (s.next_u64() % 25) as f64 - 12.0;
            for k in 0..3 {
                rgb[(y * w + x) * 3 + k] = (px[k] + grain).clamp(0.0, 255.0) as u8;
            }
        }
    }
    rgb
}
