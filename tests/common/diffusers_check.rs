//! The checks of an exported model against diffusers itself, with the
//! project's Python (tests/golden's scripts; `tests/run.sh` sets
//! `DDPM_PYTHON` up with torch and diffusers).

use std::path::Path;
use std::process::Command;

use ddpm::checkpoint::CheckpointData;
use ddpm::rng::Stream;
use ddpm::train::flat::{self, FlatModel};
use safetensors::tensor::{Dtype, TensorView};
use tch::{Device, Tensor};

/// Runs a check script of tests/golden with the project's Python; returns
/// its last stdout line as JSON (its report), failing with `what` and its output.
pub fn python_check(script: &str, args: &[&std::ffi::OsStr], what: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(script);
    let out = Command::new(python()).arg(&script).args(args).env("HF_HUB_OFFLINE", "1").output().expect("run python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{what}:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(text.trim().lines().last().unwrap_or("")).expect("JSON line")
}

pub fn python() -> String {
    std::env::var("DDPM_PYTHON")
        .unwrap_or_else(|_| panic!("DDPM_PYTHON is not set: run tests/run.sh (it sets up the Python environment with torch and diffusers)"))
}

/// Our U-Net with `weights` on fixed inputs, saved as x, t, y for the script.
pub fn write_io(data: &CheckpointData, weights: &[f32], path: &Path) {
    let mut m = FlatModel::new(&data.config.model, Device::Cpu).unwrap();
    m.load_flat(&Tensor::from_slice(weights));
    let r = data.config.model.image_size;
    let mut xs = vec![0f32; (2 * 3 * r * r) as usize];
    Stream::new(5).fill_normal(&mut xs);
    let x = Tensor::from_slice(&xs).view([2, 3, r, r]);
    let ts = [10i64, 700];
    let y = flat::to_vec_f32(&m.unet.forward_t(&x, &Tensor::from_slice(&ts), false).reshape([-1]));
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (xb, yb) = (f32_bytes(&xs), f32_bytes(&y));
    let tb: Vec<u8> = ts.iter().flat_map(|t| t.to_le_bytes()).collect();
    let shape = vec![2, 3, r as usize, r as usize];
    let views = vec![
        ("x", TensorView::new(Dtype::F32, shape.clone(), &xb).unwrap()),
        ("t", TensorView::new(Dtype::I64, vec![2], &tb).unwrap()),
        ("y", TensorView::new(Dtype::F32, shape, &yb).unwrap()),
    ];
    safetensors::serialize_to_file(views, None, path).unwrap();
}

pub fn check_with_diffusers(model_dir: &Path, io: &Path) {
    let args = ["--model".as_ref(), model_dir.as_os_str(), "--io".as_ref(), io.as_os_str(), "--tol".as_ref(), "1e-4".as_ref()];
    let report = python_check("check_diffusers_export.py", &args, "diffusers disagrees with our U-Net or cannot load the export");
    assert!(report["max_abs_diff"].as_f64().unwrap() < 1e-4, "{report}");
    assert!(report["max_abs_output"].as_f64().unwrap() > 1e-3, "outputs should not be trivially zero: {report}");
}
