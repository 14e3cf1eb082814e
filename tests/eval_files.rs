//! Evaluation files: .npz written by numpy (np.savez, np.savez_compressed;
//! float64, float32, big-endian, Fortran order) read by us, ours read by
//! numpy, and clear errors on broken stats files and Inception files.
//! Fixtures from tests/golden/gen_eval.py.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ddpm::eval::npy::NpyData;
use ddpm::eval::{self, EvalError, FidStats, InceptionModel, SamplesNpzWriter};
use tch::{Device, Kind, Tensor};

fn dir() -> PathBuf {
    common::golden_dir("eval")
}

fn npz(name: &str) -> PathBuf {
    dir().join("npz").join(name)
}

fn arrays() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir().join("eval.safetensors")).expect("eval.safetensors").into_iter().collect()
}

fn vec64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).expect("tensor to Vec<f64>")
}

/// NHWC uint8 from the fixture, as NCHW bytes.
fn nchw(t: &Tensor) -> Vec<u8> {
    Vec::<u8>::try_from(&t.permute([0, 3, 1, 2]).contiguous().flatten(0, -1)).unwrap()
}

#[test]
fn reads_stats_written_by_numpy() {
    let t = arrays();
    let (mu, sigma) = (vec64(&t["fid/wellcond/mu1"]), vec64(&t["fid/wellcond/sigma1"]));
    for name in ["stats_f64.npz", "stats_bigendian_fortran.npz"] {
        let s = eval::read_stats_npz(&npz(name)).unwrap();
        assert!(s.mu == mu && s.sigma == sigma, "{name}: values differ");
    }
    let s = eval::read_stats_npz(&npz("stats_f32_compressed.npz")).unwrap();
    let round = |v: &[f64]| v.iter().map(|&x| x as f32 as f64).collect::<Vec<_>>();
    assert!(s.mu == round(&mu) && s.sigma == round(&sigma), "float32 deflated stats differ");
}

#[test]
fn reads_assorted_arrays_in_c_order() {
    let t = arrays();
    let m35 = vec64(&t["npz/m35"]);
    let path = npz("arrays.npz");
    for key in ["c64", "be64"] {
        let a = eval::read_npz_array(&path, key).unwrap();
        assert_eq!((a.shape.clone(), a.data), (vec![3, 5], NpyData::F64(m35.clone())), "{key}");
    }
    let a = eval::read_npz_array(&path, "f32_fortran").unwrap();
    assert_eq!(a.shape, [3, 5]);
    assert_eq!(a.data, NpyData::F32(m35.iter().map(|&x| x as f32).collect()));
    let a = eval::read_npz_array(&path, "u8_fortran").unwrap();
    assert_eq!((a.shape.clone(), a.data), (vec![2, 3, 4], NpyData::U8(Vec::<u8>::try_from(&t["npz/u8"].flatten(0, -1)).unwrap())));
    let a = eval::read_npz_array(&path, "scalar").unwrap();
    assert_eq!((a.shape.clone(), a.data), (vec![], NpyData::F64(vec![2.5])));
}

#[test]
fn reads_samples_written_by_numpy() {
    let t = arrays();
    let want = nchw(&t["npz/samples_nhwc"]);
    for name in ["samples.npz", "samples_compressed.npz"] {
        let s = eval::read_samples_npz(&npz(name)).unwrap();
        assert_eq!((s.count, s.height, s.width), (6, 8, 10), "{name}");
        assert!(s.pixels_nchw == want, "{name}: pixels differ");
    }
}

/// numpy loads `path` and saves it again (np.savez_compressed) as `out`.
fn numpy_resave(path: &Path, out: &Path) -> bool {
    let Some(python) = std::env::var_os("DDPM_PYTHON") else {
        eprintln!("skipped the numpy side: DDPM_PYTHON is not set (tests/run.sh sets it)");
        return false;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/gen_eval.py");
    let o = std::process::Command::new(python).arg(script).arg("--resave").arg(path).arg(out).output().unwrap();
    let log = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "numpy could not read {}:\n{log}", path.display());
    eprintln!("numpy read {}:\n{log}", path.display());
    true
}

#[test]
fn files_we_write_round_trip_through_numpy() {
    let t = arrays();
    let tmp = common::tempdir();
    let stats = FidStats::new(vec64(&t["fid/singular/mu1"]), vec64(&t["fid/singular/sigma1"])).unwrap();
    let p = tmp.path().join("stats.npz");
    eval::write_stats_npz(&p, &stats).unwrap();
    assert_eq!(eval::read_stats_npz(&p).unwrap(), stats);
    if numpy_resave(&p, &tmp.path().join("stats_np.npz")) {
        assert_eq!(eval::read_stats_npz(&tmp.path().join("stats_np.npz")).unwrap(), stats);
    }
    let pixels = nchw(&t["npz/samples_nhwc"]);
    let p = tmp.path().join("samples.npz");
    // Streamed in two pieces.
    let mut w = SamplesNpzWriter::create(&p, 6, 8, 10).unwrap();
    w.push_nchw(&pixels[..2 * 240]).unwrap();
    assert!(!p.exists(), "the file appears only when finished");
    w.push_nchw(&pixels[2 * 240..]).unwrap();
    w.finish().unwrap();
    let back = eval::read_samples_npz(&p).unwrap();
    assert!(back.pixels_nchw == pixels);
    if numpy_resave(&p, &tmp.path().join("samples_np.npz")) {
        assert!(eval::read_samples_npz(&tmp.path().join("samples_np.npz")).unwrap().pixels_nchw == pixels);
    }
    // Unfinished or overfilled writers leave nothing behind.
    let q = tmp.path().join("short.npz");
    let mut w = SamplesNpzWriter::create(&q, 6, 8, 10).unwrap();
    assert!(w.push_nchw(&[pixels.as_slice(), &pixels[..240]].concat()).is_err());
    w.push_nchw(&pixels[..240]).unwrap();
    assert!(w.finish().unwrap_err().to_string().contains("only 1 of 6 images"));
    assert!(std::fs::read_dir(tmp.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("short")));
}

fn err_text(e: EvalError) -> String {
    e.to_string()
}

#[track_caller]
fn assert_has(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "error {text:?} should mention {p:?}");
    }
}

#[test]
fn broken_stats_files_give_clear_errors() {
    let e = eval::read_stats_npz(&npz("missing_sigma.npz")).unwrap_err();
    assert!(matches!(e, EvalError::MissingKey { .. }));
    assert_has(&err_text(e), &["missing_sigma.npz", "no array `sigma`", "it holds: mu", "np.savez(path, mu=mu, sigma=sigma)"]);
    let e = err_text(eval::read_stats_npz(&npz("wrong_shape.npz")).unwrap_err());
    assert_has(&e, &["`sigma`", "expected [32, 32]", "[32, 33]"]);
    assert_has(&err_text(eval::read_stats_npz(&npz("complex.npz")).unwrap_err()), &["array `sigma`", "dtype '<c16' is not supported"]);
    assert_has(&err_text(eval::read_stats_npz(&npz("nan.npz")).unwrap_err()), &["nan.npz", "NaN or infinite"]);
    assert_has(&err_text(eval::read_stats_npz(&npz("truncated.npz")).unwrap_err()), &["truncated.npz", "not a usable .npz"]);
    assert_has(&err_text(eval::read_stats_npz(&npz("not_a_zip.npz")).unwrap_err()), &["not a readable zip archive"]);
    assert_has(&err_text(eval::read_stats_npz(&npz("absent.npz")).unwrap_err()), &["cannot open", "absent.npz"]);
    assert_has(
        &err_text(eval::read_samples_npz(&npz("samples_wrong.npz")).unwrap_err()),
        &["`arr_0`", "uint8 [N, H, W, 3]", "float32 [6, 8, 10, 3]"],
    );
    assert_has(&err_text(eval::read_samples_npz(&npz("stats_f64.npz")).unwrap_err()), &["no array `arr_0`", "mu, sigma"]);
}

#[test]
fn broken_inception_files_give_clear_errors() {
    let load = |name: &str| InceptionModel::load(&dir().join(name), Device::Cpu).unwrap_err();
    let e = load("absent.pt");
    assert!(matches!(e, EvalError::ModelMissing { .. }));
    assert_has(&err_text(e), &["absent.pt does not exist", "inception-2015-12-05.pt"]);
    for name in ["state_dict.pt", "meta.json", "npz"] {
        let e = load(name);
        assert!(matches!(e, EvalError::NotTorchScript { .. }), "{name}: {e}");
        assert_has(&err_text(e), &[name, "not a TorchScript module"]);
    }
    assert_has(&err_text(load("wrong_shape.pt")), &["wrong_shape.pt features", "expected [1, D]", "[1, 3, 32, 32]"]);
    assert_has(&err_text(load("wrong_signature.pt")), &["wrong_signature.pt", "forward(img, return_features=False"]);
    let model = InceptionModel::load(&dir().join("standin.pt"), Device::Cpu).unwrap();
    let e = err_text(model.features(&Tensor::zeros([2, 1, 8, 8], (Kind::Float, Device::Cpu))).unwrap_err());
    assert_has(&e, &["[N >= 1, 3, H, W]", "[2, 1, 8, 8]"]);
}

#[test]
fn fid_stats_cli_reports_a_missing_inception_file() {
    let tmp = common::tempdir();
    let out = tmp.path().join("s.npz");
    let args = [
        "data",
        "fid-stats",
        "--data",
        "synthetic:shapes",
        "--max",
        "4",
        "--out",
        out.to_str().unwrap(),
        "--inception",
        "/nonexistent/inception-2015-12-05.pt",
    ];
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ddpm")).args(args).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_has(&String::from_utf8_lossy(&o.stderr), &["error: Inception model /nonexistent/inception-2015-12-05.pt does not exist"]);
    assert!(!out.exists());
}
