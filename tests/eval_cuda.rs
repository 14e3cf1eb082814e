//! Evaluation on a CUDA device, against the same fixtures as
//! tests/golden_eval.rs (tests/golden/gen_eval.py). Every test returns at once
//! on a machine without CUDA, so CI (CPU only) passes it trivially; run it
//! where a GPU is. cuDNN may run float32 convolutions in TF32 (libtorch's
//! default, as in PyTorch), so model outputs get looser tolerances than on
//! the CPU; the float64 statistics do not.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use ddpm::data::{self, DatasetSpec, OpenOptions};
use ddpm::diffusion::{BetaSchedule, DiffusionConfig, GaussianDiffusion};
use ddpm::eval::{self, FeatureStats, InceptionModel};
use tch::{Device, Kind, Tensor};

fn cuda() -> Option<Device> {
    if tch::Cuda::is_available() {
        Some(Device::Cuda(0))
    } else {
        eprintln!("skipped: no CUDA device");
        None
    }
}

fn dir() -> PathBuf {
    common::golden_dir("eval")
}

fn arrays() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir().join("eval.safetensors")).expect("eval.safetensors").into_iter().collect()
}

fn vec64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn standin_on_cuda_matches_pytorch_and_stats_match_the_cpu() {
    let Some(dev) = cuda() else { return };
    let t = arrays();
    let model = InceptionModel::load(&dir().join("standin.pt"), dev).unwrap();
    for set in ["a", "b", "odd"] {
        let x = &t[&format!("images/{set}")];
        let f = model.features(x).unwrap();
        assert_eq!(f.device(), dev);
        let df = max_abs_diff(&vec64(&f), &vec64(&t[&format!("features/{set}")]));
        let dp = max_abs_diff(&vec64(&model.probabilities(x, true).unwrap()), &vec64(&t[&format!("probs_nobias/{set}")]));
        eprintln!("cuda {set}: max abs diff features {df:.2e}, probabilities (no bias) {dp:.2e}");
        assert!(df < 2e-2 && dp < 2e-2, "{set}: {df} {dp}");
        // float64 sums of the same features on the GPU and on the host.
        let (mut g, mut c) = (FeatureStats::new(64), FeatureStats::new(64));
        g.add_batch(&f).unwrap();
        c.add_batch(&f.to_device(Device::Cpu)).unwrap();
        let scale = c.sum_outer().iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let d = max_abs_diff(g.sum_outer(), c.sum_outer()) / scale;
        eprintln!("cuda {set}: x^T x in float64 on the GPU vs the CPU, rel diff {d:.2e}");
        assert!(d < 1e-13);
    }
}

#[test]
fn dataset_stats_on_cuda() {
    let Some(dev) = cuda() else { return };
    let t = arrays();
    let spec: DatasetSpec = format!("folder:{}", dir().join("folder").display()).parse().unwrap();
    let ds = data::open(&spec, &OpenOptions::default()).unwrap();
    let model = InceptionModel::load(&dir().join("standin.pt"), dev).unwrap();
    let s = eval::dataset_stats(ds.as_ref(), &model, None, 16, &mut |_, _| {}).unwrap().to_fid_stats().unwrap();
    let (dm, ds_) = (max_abs_diff(&s.mu, &vec64(&t["folder/mu"])), max_abs_diff(&s.sigma, &vec64(&t["folder/sigma"])));
    let fid = s.fid(&eval::FidStats::new(vec64(&t["folder/mu"]), vec64(&t["folder/sigma"])).unwrap()).unwrap();
    eprintln!("cuda folder stats: mu max diff {dm:.2e}, sigma max diff {ds_:.2e}, FID vs PyTorch's CPU stats {fid:.3e}");
    assert!(dm < 1e-2 && ds_ < 1e-2 && fid.abs() < 1e-3);
}

#[test]
fn bits_per_dim_on_cuda() {
    let Some(dev) = cuda() else { return };
    let t = arrays();
    let (_vs, unet) = ddpm::unet::diffusers::load_pretrained(&dir().join("unet"), dev).unwrap();
    let diffusion = GaussianDiffusion::new(&DiffusionConfig {
        num_timesteps: 12,
        beta_schedule: BetaSchedule::Linear { start: 1e-3, end: 0.2 },
        ..DiffusionConfig::default()
    })
    .unwrap();
    let pixels = Vec::<u8>::try_from(&t["bpd/images"].flatten(0, -1)).unwrap();
    let res = eval::images_bpd(&unet, &diffusion, &pixels, &[7, 0, 123456789], 2020, true, dev).unwrap();
    let want = vec64(&t["bpd/total"]);
    let d = res.total.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs()).fold(0.0, f64::max);
    eprintln!("cuda bpd total {:?} vs numpy {want:?}: max rel diff {d:.2e}", res.total);
    assert!(d < 1e-3);
}

/// Sizes of the real thing: 2048-d features of 50k images, and the Frechet
/// distance of two 2048 x 2048 covariances (on the host, as the coordinator
/// computes it). Prints timings; asserts only that the numbers are sane.
#[test]
fn timings_at_inception_size() {
    let Some(dev) = cuda() else { return };
    tch::manual_seed(0);
    let mut s = FeatureStats::new(2048);
    let start = Instant::now();
    for _ in 0..100 {
        s.add_batch(&Tensor::rand([500, 2048], (Kind::Float, dev))).unwrap();
    }
    eprintln!("50k x 2048 features into FeatureStats on cuda: {:.2} s", start.elapsed().as_secs_f64());
    let start = Instant::now();
    let bytes = s.to_bytes();
    let back = FeatureStats::from_bytes(&bytes).unwrap();
    eprintln!("to_bytes + from_bytes of {} bytes: {:.3} s", bytes.len(), start.elapsed().as_secs_f64());
    let a = back.to_fid_stats().unwrap();
    let mut o = FeatureStats::new(2048);
    o.add_batch(&(Tensor::rand([5000, 2048], (Kind::Float, dev)) * 1.1)).unwrap();
    let b = o.to_fid_stats().unwrap();
    let start = Instant::now();
    let fid = a.fid(&b).unwrap();
    eprintln!("FID at D = 2048 on {} CPU threads: {fid:.6} in {:.2} s", tch::get_num_threads(), start.elapsed().as_secs_f64());
    let own = a.fid(&a).unwrap();
    eprintln!("FID of the 50k statistics against themselves: {own:.3e}");
    assert!(fid > 0.0 && own.abs() < 1e-6);
}
