//! `ddpm checkpoints list` and `export`, with the real binary: an exported
//! EMA checkpoint loads with diffusers' `UNet2DModel.from_pretrained` and
//! computes what our U-Net computes (tests/golden/check_diffusers_export.py),
//! from a local run and from the S3 test server.

mod common;

use std::path::Path;
use std::process::Command;

use ddpm::checkpoint::{self, CheckpointData};
use ddpm::config::TrainConfig;
use ddpm::data::OrderState;
use ddpm::rng::Stream;
use ddpm::train::flat::{self, FlatModel};
use ddpm::train::TrainState;
use safetensors::tensor::{Dtype, TensorView};
use tch::{Device, Tensor};

/// A checkpoint of the tiny model at step 7; its EMA differs from its parameters.
fn tiny_checkpoint() -> CheckpointData {
    let config = TrainConfig::tiny();
    let state = TrainState::init(&config, Device::Cpu).expect("tiny model");
    // The paper's initialisation zeroes the output conv; perturb it away.
    let init = flat::to_vec_f32(&state.model.flat);
    let mut noise = vec![0f32; init.len()];
    Stream::new(99).fill_normal(&mut noise);
    let params: Vec<f32> = init.iter().zip(&noise).map(|(p, n)| p + 0.01 * n).collect();
    let ema: Vec<f32> = init.iter().zip(&noise).map(|(p, n)| p - 0.02 * n).collect();
    let adam_v = noise.iter().map(|n| n * n * 1e-6).collect();
    CheckpointData {
        step: 7,
        adam_step: 7,
        skipped_steps: 0,
        order: OrderState { seed: config.train.seed, dataset_len: 100, batch_size: config.train.batch_size, step: 7 },
        layout: state.model.layout.clone(),
        adam_m: noise.iter().map(|n| n * 1e-3).collect(),
        adam_v,
        params,
        ema,
        config,
    }
}

fn ddpm(args: &[&str]) -> String {
    // Cargo builds the binary of this package before its integration tests.
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm")).args(args).output().expect("run ddpm");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "ddpm {args:?} failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

fn python() -> String {
    std::env::var("DDPM_PYTHON").unwrap_or_else(|_| {
        panic!("DDPM_PYTHON is not set: run tests/run.sh (it sets up the Python environment with torch and diffusers)")
    })
}

/// Our U-Net with `weights` on fixed inputs, saved as x, t, y for the script.
fn write_io(data: &CheckpointData, weights: &[f32], path: &Path) {
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

fn check_with_diffusers(model_dir: &Path, io: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/check_diffusers_export.py");
    let out = Command::new(python())
        .arg(&script)
        .arg("--model")
        .arg(model_dir)
        .arg("--io")
        .arg(io)
        .args(["--tol", "1e-4"])
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "diffusers disagrees with our U-Net or cannot load the export:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(text.trim().lines().last().unwrap_or("")).expect("JSON line");
    assert!(report["max_abs_diff"].as_f64().unwrap() < 1e-4, "{report}");
    assert!(report["max_abs_output"].as_f64().unwrap() > 1e-3, "outputs should not be trivially zero: {report}");
}

#[test]
fn exported_ema_loads_in_diffusers_and_matches_our_unet() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run").display().to_string();
    let data = tiny_checkpoint();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = ddpm::store::RunStore::open(&run, &Default::default()).unwrap();
    rt.block_on(checkpoint::write(&store, &data)).unwrap();

    let listed: serde_json::Value = serde_json::from_str(&ddpm(&["checkpoints", "list", "--run", &run, "--json"])).unwrap();
    assert_eq!(listed.as_array().map(|a| a.len()), Some(1), "{listed}");
    assert_eq!((listed[0]["step"].as_u64(), listed[0]["latest"].as_bool()), (Some(7), Some(true)), "{listed}");
    let table = ddpm(&["checkpoints", "list", "--run", &run]);
    assert!(table.contains("complete, latest"), "{table}");

    let out = dir.path().join("export");
    let out_s = out.display().to_string();
    ddpm(&["checkpoints", "export", "--run", &run, "--ema", "--format", "diffusers", "--out", &out_s]);
    let io = dir.path().join("io.safetensors");
    write_io(&data, &data.ema, &io);
    check_with_diffusers(&out, &io);
}

#[test]
fn s3_list_and_export_through_the_cli() {
    let var = common::s3_env;
    let (run, opts) = common::s3_test_store("export");
    let data = tiny_checkpoint();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = ddpm::store::RunStore::open(&run, &opts).unwrap();
    rt.block_on(checkpoint::write(&store, &data)).unwrap();

    let (endpoint, region) = (var("DDPM_TEST_S3_ENDPOINT"), var("DDPM_TEST_S3_REGION"));
    let (key, secret) = (var("DDPM_TEST_S3_ACCESS_KEY"), var("DDPM_TEST_S3_SECRET"));
    let s3 = ["--s3-endpoint", &endpoint, "--s3-region", &region, "--s3-access-key", &key, "--s3-secret-key", &secret, "--s3-allow-http"];
    let listed = ddpm(&[&["checkpoints", "list", "--run", &run, "--json", "--verify"][..], &s3].concat());
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!((listed[0]["step"].as_u64(), listed[0]["complete"].as_bool()), (Some(7), Some(true)), "{listed}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("raw");
    let out_s = out.display().to_string();
    ddpm(&[&["checkpoints", "export", "--run", &run, "--step", "7", "--out", &out_s][..], &s3].concat());
    let io = dir.path().join("io.safetensors");
    write_io(&data, &data.params, &io);
    check_with_diffusers(&out, &io);
    rt.block_on(async {
        for o in store.list("").await.unwrap() {
            store.delete(&o.key).await.unwrap();
        }
    });
}
