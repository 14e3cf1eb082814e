//! `ddpm checkpoints list` and `export`, with the real binary: an exported
//! EMA checkpoint loads with diffusers' `UNet2DModel.from_pretrained` and
//! computes what our U-Net computes (tests/golden/check_diffusers_export.py),
//! from a local run and from the S3 test server; exported as a pipeline it
//! loads with `DDPMPipeline.from_pretrained` and samples what our sampler
//! samples from the same noise (tests/golden/check_diffusers_pipeline.py).

mod common;

use std::path::Path;
use std::process::Command;

use common::diffusers_check::{check_with_diffusers, python_check, write_io};
use ddpm::checkpoint::{self, CheckpointData};
use ddpm::config::TrainConfig;
use ddpm::data::OrderState;
use ddpm::diffusion::{GaussianDiffusion, ModelMeanType, VarianceType};
use ddpm::rng::{Purpose, Stream};
use ddpm::train::flat::{self, FlatModel};
use ddpm::train::sample::{self, Sampler};
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

/// `ddpm args` must fail; returns its stderr.
fn ddpm_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm")).args(args).output().expect("run ddpm");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "ddpm {args:?} should have failed:\n{}", String::from_utf8_lossy(&out.stdout));
    err
}

/// `data` written as the only checkpoint of a local run `dir/name`; returns the run.
fn local_run(dir: &Path, name: &str, data: &CheckpointData) -> String {
    let run = dir.join(name).display().to_string();
    let store = ddpm::store::RunStore::open(&run, &Default::default()).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(checkpoint::write(&store, data)).unwrap();
    run
}

#[test]
fn exported_ema_loads_in_diffusers_and_matches_our_unet() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_checkpoint();
    let run = local_run(dir.path(), "run", &data);

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

/// The same bound as the U-Net golden test (tests/golden_unet.rs `TOL`): the
/// few reverse steps compared add the scheduler's float32 tables, whose error
/// is ~1e-6 except at t = 1, 2 (up to 3.2e-4, tests/golden_diffusion/steps.rs;
/// not compared here).
const PIPELINE_TOL: f64 = 1e-4;
/// Ancestral steps compared from x_T (t = 999, 998, 997).
const ANCESTRAL_STEPS: usize = 3;
/// Ancestral steps t = 50, 49, 48 from a given x_50: near t = T beta_tilde_t
/// and beta_t agree to ~1e-6, so only low t tells fixed_large from
/// fixed_small in numbers (here by ~1e-3), and x0 clipping acts on part of
/// the pixels.
const LATE_STEPS: [i64; 3] = [50, 49, 48];
/// DDIM (eta = 0) steps compared, x_T to x_0 (t = 800, 600, 400, 200, 0).
const DDIM_STEPS: usize = 5;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

/// Our sampler (`train::sample::reverse`) on the EMA weights from the noise
/// of seed 3, images 0 and 1, with the inputs and outputs the pipeline check
/// needs: `x_T`, the ancestral noise `z` of the first steps, our
/// `ancestral` x_{T-k} and `ddim` x_0, our DDIM timesteps and float64
/// tables; and the sampler's ancestral step (`GaussianDiffusion::p_sample`
/// with x0 clipped, as `reverse` calls it) over [`LATE_STEPS`] from a given
/// `late_x`. The metadata says what the scheduler config must say.
fn write_sampler_io(data: &CheckpointData, path: &Path) {
    let mut m = FlatModel::new(&data.config.model, Device::Cpu).unwrap();
    m.load_flat(&Tensor::from_slice(&data.ema));
    let diffusion = GaussianDiffusion::new(&data.config.diffusion).unwrap();
    let (seed, n) = (3u64, 2usize);
    let run = |sampler, evals| {
        let x = sample::reverse(&m.unet, &diffusion, seed, 0, n, sampler, evals, Device::Cpu, &mut |_, _| {}).unwrap();
        flat::to_vec_f32(&x.reshape([-1]))
    };
    // The sampler's noise for image i at reverse step `key` (0: x_T; t + 1:
    // the noise added leaving step t), as src/train/sample.rs keys it.
    let r = data.config.model.image_size as usize;
    let per = 3 * r * r;
    let noise = |key: u64| {
        let mut buf = vec![0f32; n * per];
        for (i, chunk) in buf.chunks_exact_mut(per).enumerate() {
            Stream::for_key(seed, Purpose::Sample, i as u64, key).fill_normal(chunk);
        }
        buf
    };
    let x_t = noise(0);
    assert_eq!(run(Sampler::Ancestral, Some(0)), x_t, "the sampler's x_T is not keyed as this test assumes");
    let t_max = diffusion.num_timesteps() as u64 - 1;
    let z: Vec<f32> = (0..ANCESTRAL_STEPS as u64).flat_map(|k| noise(t_max - k + 1)).collect();
    let ancestral = run(Sampler::Ancestral, Some(ANCESTRAL_STEPS));
    let ddim = run(Sampler::Ddim { steps: DDIM_STEPS, eta: 0.0 }, None);
    let ddim_ts = diffusion.ddim_timesteps(DDIM_STEPS).unwrap();
    // reverse() cannot start at t = 50; its loop body can.
    let mut late_x = vec![0f32; n * per];
    Stream::new(11).fill_normal(&mut late_x);
    let late_z: Vec<f32> = LATE_STEPS.iter().flat_map(|&t| noise(t as u64 + 1)).collect();
    let late = {
        let _guard = tch::no_grad_guard();
        let mut x = Tensor::from_slice(&late_x).view([n as i64, 3, r as i64, r as i64]);
        for (k, &t) in LATE_STEPS.iter().enumerate() {
            let tt = Tensor::full([n as i64], t, (tch::Kind::Int64, Device::Cpu));
            let z = Tensor::from_slice(&late_z[k * n * per..(k + 1) * n * per]).view_as(&x);
            let out = m.unet.forward_t(&x, &tt, false);
            x = diffusion.p_sample(&out, &x, &tt, &z, true).0;
        }
        flat::to_vec_f32(&x.reshape([-1]))
    };

    let (xb, zb, ab, db) = (f32_bytes(&x_t), f32_bytes(&z), f32_bytes(&ancestral), f32_bytes(&ddim));
    let f64_bytes = |v: &[f64]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (betas, abar) = (f64_bytes(&diffusion.betas), f64_bytes(&diffusion.alphas_cumprod));
    let tsb: Vec<u8> = ddim_ts.iter().flat_map(|t| t.to_le_bytes()).collect();
    let (lxb, lzb, lb) = (f32_bytes(&late_x), f32_bytes(&late_z), f32_bytes(&late));
    let ltb: Vec<u8> = LATE_STEPS.iter().flat_map(|t| t.to_le_bytes()).collect();
    let shape = vec![n, 3, r, r];
    let big_t = diffusion.betas.len();
    let views = vec![
        ("x_T", TensorView::new(Dtype::F32, shape.clone(), &xb).unwrap()),
        ("z", TensorView::new(Dtype::F32, vec![ANCESTRAL_STEPS, n, 3, r, r], &zb).unwrap()),
        ("ancestral", TensorView::new(Dtype::F32, shape.clone(), &ab).unwrap()),
        ("ddim", TensorView::new(Dtype::F32, shape.clone(), &db).unwrap()),
        ("late_x", TensorView::new(Dtype::F32, shape.clone(), &lxb).unwrap()),
        ("late_z", TensorView::new(Dtype::F32, vec![LATE_STEPS.len(), n, 3, r, r], &lzb).unwrap()),
        ("late", TensorView::new(Dtype::F32, shape, &lb).unwrap()),
        ("late_timesteps", TensorView::new(Dtype::I64, vec![LATE_STEPS.len()], &ltb).unwrap()),
        ("ddim_timesteps", TensorView::new(Dtype::I64, vec![DDIM_STEPS], &tsb).unwrap()),
        ("betas", TensorView::new(Dtype::F64, vec![big_t], &betas).unwrap()),
        ("alphas_cumprod", TensorView::new(Dtype::F64, vec![big_t], &abar).unwrap()),
    ];
    // Stated here independently of the export's mapping: the paper's
    // sigma_t^2 = beta_t is diffusers' fixed_large, beta_tilde_t its fixed_small.
    let variance = match data.config.diffusion.model_var_type {
        VarianceType::FixedLarge => "fixed_large",
        VarianceType::FixedSmall => "fixed_small",
    };
    assert_eq!(data.config.diffusion.model_mean_type, ModelMeanType::Eps);
    let meta = std::collections::HashMap::from([
        ("variance_type".to_string(), variance.to_string()),
        ("prediction_type".to_string(), "epsilon".to_string()),
    ]);
    safetensors::serialize_to_file(views, Some(meta), path).unwrap();
}

fn check_pipeline_with_diffusers(pipeline_dir: &Path, io: &Path) -> serde_json::Value {
    let tol = PIPELINE_TOL.to_string();
    let args = ["--pipeline".as_ref(), pipeline_dir.as_os_str(), "--io".as_ref(), io.as_os_str(), "--tol".as_ref(), tol.as_ref()];
    python_check("check_diffusers_pipeline.py", &args, "diffusers' pipeline disagrees with our sampler or cannot load the export")
}

#[test]
fn exported_pipeline_loads_in_diffusers_and_samples_like_our_sampler() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_checkpoint();
    let run = local_run(dir.path(), "run", &data);

    // No --ema: a pipeline gets the EMA weights unless --raw.
    let out = dir.path().join("pipeline");
    let out_s = out.display().to_string();
    let said = ddpm(&["checkpoints", "export", "--run", &run, "--format", "diffusers-pipeline", "--out", &out_s]);
    assert!(said.contains("EMA weights of step 7"), "{said}");
    let json = |rel: &str| -> serde_json::Value { serde_json::from_slice(&std::fs::read(out.join(rel)).unwrap()).unwrap() };
    let index = json("model_index.json");
    assert_eq!(index["_class_name"], "DDPMPipeline", "{index}");
    assert_eq!(index["_diffusers_version"], ddpm::unet::diffusers::DIFFUSERS_VERSION, "{index}");
    assert_eq!(
        (&index["unet"], &index["scheduler"]),
        (&serde_json::json!(["diffusers", "UNet2DModel"]), &serde_json::json!(["diffusers", "DDPMScheduler"]))
    );
    let sc = json("scheduler/scheduler_config.json");
    assert_eq!(sc["num_train_timesteps"], 1000, "{sc}");
    assert_eq!(
        (sc["beta_schedule"].as_str(), sc["beta_start"].as_f64(), sc["beta_end"].as_f64()),
        (Some("linear"), Some(1e-4), Some(0.02)),
        "{sc}"
    );
    assert_eq!(
        (sc["variance_type"].as_str(), sc["clip_sample"].as_bool(), sc["prediction_type"].as_str()),
        (Some("fixed_large"), Some(true), Some("epsilon")),
        "{sc}"
    );
    assert!(out.join("unet/config.json").is_file() && out.join("unet/diffusion_pytorch_model.safetensors").is_file());

    let io = dir.path().join("sampler_io.safetensors");
    write_sampler_io(&data, &io);
    let report = check_pipeline_with_diffusers(&out, &io);
    eprintln!("diffusers pipeline check: {report}");
    for key in ["ancestral_max_abs_diff", "late_max_abs_diff", "ddim_max_abs_diff"] {
        assert!(report[key].as_f64().unwrap() < PIPELINE_TOL, "{key}: {report}");
    }
    assert!(report["ddim_max_abs"].as_f64().unwrap() > 1e-2, "x_0 should not be trivially zero: {report}");

    // A second export into the same directory is refused; it is left whole.
    let err = ddpm_fails(&["checkpoints", "export", "--run", &run, "--format", "diffusers-pipeline", "--out", &out_s]);
    assert!(err.contains("exists and is not empty"), "{err}");
    assert!(out.join("model_index.json").is_file());
    // --ema and --raw contradict each other.
    let err = ddpm_fails(&["checkpoints", "export", "--run", &run, "--ema", "--raw", "--format", "diffusers-pipeline", "--out", "x"]);
    assert!(err.contains("cannot be used with"), "{err}");

    // A mu-predicting run has no DDPMScheduler; nothing is written.
    let mut mu = tiny_checkpoint();
    mu.config.diffusion.model_mean_type = ModelMeanType::Mu;
    let mu_run = local_run(dir.path(), "mu-run", &mu);
    let mu_out = dir.path().join("mu-pipeline");
    let err =
        ddpm_fails(&["checkpoints", "export", "--run", &mu_run, "--format", "diffusers-pipeline", "--out", &mu_out.display().to_string()]);
    assert!(err.contains("model_mean_type = \"mu\""), "{err}");
    assert!(!mu_out.exists());
}

/// A checkpoint of a run trained with `[train] precision = "bf16"`: its
/// weights are the float32 masters, so the export is the same float32
/// diffusers model, which loads and computes what our float32 U-Net does.
#[test]
fn a_bf16_trained_checkpoint_exports_and_loads_in_diffusers() {
    let mut config = TrainConfig::tiny();
    config.train.precision = ddpm::config::Precision::Bf16;
    config.train.batch_size = 4;
    // Past the zero-initialised output conv, so that the outputs are not trivially zero.
    config.optim.warmup_steps = 0;
    let mut trainer = ddpm::train::local::LocalTrainer::new(config.clone(), Device::Cpu).unwrap();
    for _ in 0..3 {
        assert!(trainer.step().unwrap().loss.is_finite());
    }
    let (params, ema) = (flat::to_vec_f32(&trainer.state.model.flat), flat::to_vec_f32(&trainer.ema));
    let mut data = tiny_checkpoint();
    data.order.batch_size = config.train.batch_size;
    data.config = config;
    data.layout = trainer.state.model.layout.clone();
    (data.params, data.ema) = (params, ema);
    let dir = tempfile::tempdir().unwrap();
    let run = local_run(dir.path(), "run", &data);
    let out = dir.path().join("export");
    ddpm(&["checkpoints", "export", "--run", &run, "--ema", "--format", "diffusers", "--out", &out.display().to_string()]);
    for file in std::fs::read_dir(&out).unwrap().filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
    {
        let tensors = Tensor::read_safetensors(file.path()).unwrap();
        assert!(tensors.iter().all(|(_, t)| t.kind() == tch::Kind::Float), "{}: not all float32", file.path().display());
    }
    let io = dir.path().join("io.safetensors");
    write_io(&data, &data.ema, &io);
    check_with_diffusers(&out, &io);
}
