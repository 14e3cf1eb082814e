//! Evaluation against its references: fixtures from tests/golden/gen_eval.py
//! (pytorch-fid's calculate_frechet_distance, StyleGAN3's Inception Score,
//! numpy's mean and covariance, a TorchScript Inception stand-in run by
//! PyTorch, the float64 numpy bound around diffusers' UNet2DModel).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use ddpm::data::{self, DatasetSpec, OpenOptions};
use ddpm::diffusion::{BetaSchedule, DiffusionConfig, GaussianDiffusion};
use ddpm::eval::{self, FeatureStats, FidStats, InceptionModel, ScoreStats};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn dir() -> PathBuf {
    common::golden_dir("eval")
}

fn arrays() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir().join("eval.safetensors")).expect("eval.safetensors").into_iter().collect()
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("meta.json")).expect("meta.json")).expect("meta.json is JSON")
}

fn vec64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).expect("tensor to Vec<f64>")
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

fn stats_of(features: &Tensor, batch: i64) -> FeatureStats {
    let mut s = FeatureStats::new(features.size()[1] as usize);
    for chunk in features.split(batch, 0) {
        s.add_batch(&chunk).unwrap();
    }
    s
}

#[test]
fn frechet_distance_matches_pytorch_fid() {
    let (t, m) = (arrays(), meta());
    for (case, tol) in [("wellcond", 1e-9), ("singular", 1e-7)] {
        let v = |k: &str| vec64(&t[&format!("fid/{case}/{k}")]);
        let fid = eval::frechet_distance(&v("mu1"), &v("sigma1"), &v("mu2"), &v("sigma2")).unwrap();
        let want = m["fid"][case]["fid"].as_f64().unwrap();
        eprintln!("{case}: FID {fid:.12} vs pytorch-fid {want:.12}, rel diff {:.2e}", rel(fid, want));
        assert!(rel(fid, want) < tol, "{case}: {fid} vs {want}");
        let own = eval::frechet_distance(&v("mu1"), &v("sigma1"), &v("mu1"), &v("sigma1")).unwrap();
        eprintln!("{case}: FID against itself {own:.3e} (pytorch-fid {:.3e})", m["fid"][case]["self"].as_f64().unwrap());
        assert!(own.abs() < 1e-9, "{case}: FID of identical statistics {own}");
    }
}

#[test]
fn feature_stats_match_numpy_moments() {
    let t = arrays();
    for case in ["wellcond", "singular"] {
        let f1 = &t[&format!("fid/{case}/f1")];
        let s = stats_of(f1, 97).to_fid_stats().unwrap();
        let (mu, sigma) = (vec64(&t[&format!("fid/{case}/mu1")]), vec64(&t[&format!("fid/{case}/sigma1")]));
        let (dm, ds) = (max_abs_diff(&s.mu, &mu), max_abs_diff(&s.sigma, &sigma));
        eprintln!("{case}: mean max diff {dm:.2e}, covariance max diff {ds:.2e} vs np.mean / np.cov");
        assert!(dm < 1e-13 && ds < 1e-12, "{case}: {dm} {ds}");
    }
}

#[test]
fn sharded_accumulation_equals_single_pass() {
    let t = arrays();
    let f1 = &t["fid/wellcond/f1"]; // [600, 32]
                                    // Shards on batch boundaries merge into exactly the single pass's sums.
    let single = stats_of(f1, 200);
    let mut merged = FeatureStats::new(32);
    for shard in f1.split(200, 0) {
        let bytes = stats_of(&shard, 200).to_bytes();
        merged.merge(&FeatureStats::from_bytes(&bytes).unwrap()).unwrap();
    }
    assert_eq!(merged, single, "aligned shards must be bitwise equal to one pass");
    // Uneven shards (3 workers, batches of 50 vs one pass in batches of 97): equal to rounding.
    let mut merged = FeatureStats::new(32);
    for (a, b) in [(0, 123), (123, 400), (400, 600)] {
        let shard = stats_of(&f1.narrow(0, a, b - a), 50);
        merged.merge(&FeatureStats::from_bytes(&shard.to_bytes()).unwrap()).unwrap();
    }
    let single = stats_of(f1, 97);
    assert_eq!(merged.count(), 600);
    let scale = single.sum_outer().iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let d = max_abs_diff(merged.sum_outer(), single.sum_outer()) / scale;
    let (a, b) = (merged.to_fid_stats().unwrap(), single.to_fid_stats().unwrap());
    let other = FidStats::new(vec64(&t["fid/wellcond/mu2"]), vec64(&t["fid/wellcond/sigma2"])).unwrap();
    let (fa, fb) = (a.fid(&other).unwrap(), b.fid(&other).unwrap());
    eprintln!("uneven shards: sum_outer rel diff {d:.2e}, FID {fa} vs {fb} (rel {:.2e})", rel(fa, fb));
    assert!(d < 1e-14 && rel(fa, fb) < 1e-12);
}

#[test]
fn inception_score_matches_stylegan3() {
    let (t, m) = (arrays(), meta());
    for case in ["n250", "n253", "n37s3"] {
        let splits = m["is"][case]["splits"].as_u64().unwrap() as usize;
        let want = &m["is"][case]["score"];
        let (mean, std) = eval::inception_score(&t[&format!("is/{case}")], splits).unwrap();
        let (wm, ws) = (want[0].as_f64().unwrap(), want[1].as_f64().unwrap());
        eprintln!("{case}: IS {mean:.12} +- {std:.12} vs numpy {wm:.12} +- {ws:.12}");
        assert!(rel(mean, wm) < 1e-12 && rel(std, ws) < 1e-9, "{case}");
    }
}

#[test]
fn score_sums_shard_and_roundtrip() {
    let t = arrays();
    let probs = &t["is/n253"]; // [253, 1008]
    let mut merged = ScoreStats::new(253, 10, 1008).unwrap();
    for (a, b) in [(190, 253), (0, 50), (50, 190)] {
        let mut shard = ScoreStats::new(253, 10, 1008).unwrap();
        shard.add_probs(&probs.narrow(0, a, b - a), a as u64).unwrap();
        assert!(shard.score().is_err(), "a shard alone is not a whole job");
        merged.merge(&ScoreStats::from_bytes(&shard.to_bytes()).unwrap()).unwrap();
    }
    let (m1, s1) = merged.score().unwrap();
    let (m2, s2) = eval::inception_score(probs, 10).unwrap();
    assert!(rel(m1, m2) < 1e-13 && rel(s1, s2) < 1e-10, "{m1} {s1} vs {m2} {s2}");
    let again = merged.clone();
    assert!(merged.merge(&again).is_err(), "overlapping shards are refused");
}

fn standin() -> InceptionModel {
    InceptionModel::load(&dir().join("standin.pt"), Device::Cpu).expect("stand-in loads")
}

#[test]
fn standin_outputs_match_pytorch() {
    let (t, model) = (arrays(), standin());
    assert_eq!((model.feature_dim(), model.num_classes()), (64, 1008));
    for set in ["a", "b", "odd"] {
        let x = &t[&format!("images/{set}")]; // uint8 [n, 3, h, w]
        let feats = model.features(x).unwrap();
        let probs = model.probabilities(x, false).unwrap();
        let nobias = model.probabilities(x, true).unwrap();
        let diffs = [
            max_abs_diff(&vec64(&feats), &vec64(&t[&format!("features/{set}")])),
            max_abs_diff(&vec64(&probs), &vec64(&t[&format!("probs/{set}")])),
            max_abs_diff(&vec64(&nobias), &vec64(&t[&format!("probs_nobias/{set}")])),
        ];
        eprintln!("{set}: max abs diff features {:.2e}, probabilities {:.2e}, no_output_bias {:.2e}", diffs[0], diffs[1], diffs[2]);
        assert!(diffs.iter().all(|&d| d < 1e-5), "{set}: {diffs:?}");
        assert!(max_abs_diff(&vec64(&probs), &vec64(&nobias)) > 1e-3, "no_output_bias must reach the module");
    }
}

#[test]
fn standin_fid_and_is_match_python() {
    let (t, m, model) = (arrays(), meta(), standin());
    let stats = |set: &str| {
        let pixels = Vec::<u8>::try_from(&t[&format!("images/{set}")].flatten(0, -1)).unwrap();
        let mut sums = eval::ImageEvalSums::new(&model, 40, Some(4)).unwrap();
        eval::add_images(&model, &pixels, 32, 32, 0, 16, &mut sums).unwrap();
        sums
    };
    let (a, b) = (stats("a"), stats("b"));
    let fid = a.features.to_fid_stats().unwrap().fid(&b.features.to_fid_stats().unwrap()).unwrap();
    let want = m["standin"]["fid_a_b"].as_f64().unwrap();
    let (is, is_std) = a.scores.as_ref().unwrap().score().unwrap();
    let want_is = m["standin"]["is_a_nobias_4"][0].as_f64().unwrap();
    eprintln!("stand-in FID {fid:.9} vs {want:.9} (rel {:.2e}); IS {is:.9} +- {is_std:.3e} vs {want_is:.9}", rel(fid, want));
    assert!(rel(fid, want) < 1e-5 && rel(is, want_is) < 1e-5);
}

fn folder_dataset() -> Box<dyn data::Dataset> {
    let spec: DatasetSpec = format!("folder:{}", dir().join("folder").display()).parse().expect("folder spec");
    data::open(&spec, &OpenOptions::default()).expect("folder dataset")
}

#[test]
fn fid_stats_cli_matches_python_and_scores_zero_against_itself() -> Result<()> {
    let tmp = common::tempdir();
    let out = tmp.path().join("folder_stats.npz");
    let data = format!("folder:{}", dir().join("folder").display());
    let standin_path = dir().join("standin.pt");
    let args = [
        "data",
        "fid-stats",
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
        "--inception",
        standin_path.to_str().unwrap(),
        "--batch",
        "9",
    ];
    // The binary Cargo built for this test run, not whatever target/debug/ddpm holds.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ddpm")).args(args).output()?;
    assert!(o.status.success(), "ddpm data fid-stats failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let t = arrays();
    let stats = eval::read_stats_npz(&out)?;
    let (dm, ds) = (max_abs_diff(&stats.mu, &vec64(&t["folder/mu"])), max_abs_diff(&stats.sigma, &vec64(&t["folder/sigma"])));
    eprintln!("fid-stats of the folder vs PyTorch + numpy: mu max diff {dm:.2e}, sigma max diff {ds:.2e}");
    assert!(dm < 1e-5 && ds < 1e-5);
    // The library over three uneven shards, against the CLI's file.
    let (ds_, model) = (folder_dataset(), standin());
    let mut merged = FeatureStats::new(64);
    for range in [0..23, 23..50, 50..70] {
        merged.merge(&eval::dataset_stats_range(ds_.as_ref(), &model, range, 10, &mut |_, _| {})?)?;
    }
    let fid = merged.to_fid_stats()?.fid(&stats)?;
    eprintln!("FID of the folder's shards against its own statistics: {fid:.3e}");
    assert!(fid.abs() < 1e-6, "{fid}");
    Ok(())
}

#[test]
fn bits_per_dim_match_numpy() -> Result<()> {
    let (t, m) = (arrays(), meta());
    let b = &m["bpd"];
    let seed = b["seed"].as_u64().unwrap();
    let indices: Vec<u64> = b["indices"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    // The Python port of the noise streams draws the same numbers.
    let mut n0 = vec![0f32; 3 * 8 * 8];
    eval::bpd_noise(seed, indices[0], 0, &mut n0);
    assert_eq!(n0, Vec::<f32>::try_from(&t["bpd/noise_t0"].get(0).flatten(0, -1))?, "noise streams differ from ddpm_rng.py");
    let (_vs, unet) = ddpm::unet::diffusers::load_pretrained(&dir().join("unet"), Device::Cpu)?;
    let diffusion = GaussianDiffusion::new(&DiffusionConfig {
        num_timesteps: b["t"].as_u64().unwrap() as usize,
        beta_schedule: BetaSchedule::Linear { start: b["start"].as_f64().unwrap(), end: b["end"].as_f64().unwrap() },
        ..DiffusionConfig::default()
    })?;
    let pixels = Vec::<u8>::try_from(&t["bpd/images"].flatten(0, -1))?;
    let clip = b["clip"].as_bool().unwrap();
    let res = eval::images_bpd(&unet, &diffusion, &pixels, &indices, seed, clip, Device::Cpu)?;
    let worst = [("total", &res.total), ("prior", &res.prior), ("terms", &res.terms), ("mse", &res.x0_mse)]
        .into_iter()
        .map(|(k, v)| {
            let want = vec64(&t[&format!("bpd/{k}")]);
            let d = v.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1e-3)).fold(0.0, f64::max);
            eprintln!("bpd {k}: max rel diff {d:.2e} vs the numpy bound");
            d
        })
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "{worst}");
    // Per-image numbers do not depend on the batch an image is in.
    let per = 3 * 8 * 8;
    let two = [&pixels[..per], &pixels[2 * per..]].concat();
    let sub = eval::images_bpd(&unet, &diffusion, &two, &[indices[0], indices[2]], seed, clip, Device::Cpu)?;
    let d = max_abs_diff(&sub.total, &[res.total[0], res.total[2]]);
    assert!(d < 1e-6, "image bound changed with its batch: {d}");
    let mut sums = eval::BpdSums::new(12);
    sums.add(&sub)?;
    let mut rest = eval::BpdSums::new(12);
    rest.add(&eval::images_bpd(&unet, &diffusion, &pixels[per..2 * per], &indices[1..2], seed, clip, Device::Cpu)?)?;
    sums.merge(&rest)?;
    let whole = res.total.iter().sum::<f64>() / 3.0;
    assert!((sums.mean_total()? - whole).abs() < 1e-6);
    Ok(())
}
