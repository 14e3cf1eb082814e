//! Our training trajectory against PyTorch's: K = 20 steps of the
//! single-process trainer (`LocalTrainer`: our U-Net, `L_simple`, clipping,
//! Adam, warmup, EMA) and of tests/golden/trajectory_reference.py (diffusers'
//! `UNet2DModel`, `torch.optim.Adam`, `clip_grad_norm_`, a `LambdaLR`
//! warmup, the official EMA), from the same initial weights on the same
//! batches, timesteps and noise, which this test exports from our trainer
//! first. Losses, gradient norms, learning rates and clipping decisions are
//! compared at every step; parameters, Adam moments and EMA tensor by
//! tensor after steps 1, 5, 10 and 20. Two configs: the `tiny` preset
//! (every step clips at 1.0, warmup 50 not reached) and an odd one (warmup
//! 5 crossed, 8 of 20 steps clipped at 0.95). Needs `$DDPM_PYTHON` with
//! torch and diffusers (tests/run.sh sets it).
//!
//! The error of a tensor is `||ours - ref|| / ||ref - base||`, `base` the
//! initial weights for the parameters (the error relative to how far
//! training moved them) and 0 for the moments and the EMA (whose rounding,
//! ulp-sized, would swamp its small displacement at decay 0.995). Both
//! sides run libtorch's kernels on one thread; they differ in op order
//! (our U-Net vs diffusers', one f64 vs per-tensor f32 norm, Adam's
//! `lerp`/`addcdiv` vs separate ops, torch's `max / (norm + 1e-6)` clip
//! factor vs TensorFlow's `max / norm`), so the float32 differences start
//! at a few 1e-7 and grow with the steps. Measured (tiny / odd16), worst
//! over the 20 steps or the 4 states:
//!
//! | quantity                          | tiny    | odd16   | tolerance |
//! |-----------------------------------|---------|---------|-----------|
//! | loss, relative                    | 1.2e-7  | 3.3e-7  | 1e-5      |
//! | gradient norm, relative           | 1.5e-7  | 2.3e-6  | 2e-5      |
//! | whole model, per quantity         | 3.3e-6  | 1.4e-5  | 2e-4      |
//! | worst single tensor               | 2.3e-4  | 9.5e-5  | 2e-3      |
//!
//! each about ten times the worst seen, and far below what a recipe error
//! gives: breaking the reference on purpose, no clipping moves the loss by
//! 1.5e-3, `t` off by one by 1e-2, a sum over the batch instead of a mean
//! by 0.75, diffusers' EMA decay warm-up puts `ema.conv_out.weight` 0.88
//! off after one step, and a warmup off by one fails the learning-rate
//! check. The worst single tensors are those whose gradient is a small
//! difference of large terms (the first up ResBlock's output biases in
//! tiny), where float32 cancellation shows most.
//!
//! A few tensors have a gradient that is zero in exact arithmetic (the
//! reference finds them on a float64 copy: attention key biases, and in
//! tiny the per-channel constants before a one-channel-per-group
//! GroupNorm, 3% of its parameters). Their float32 gradient is rounding
//! noise, which Adam turns into steps of about `lr |g| / eps` that differ
//! from one implementation to the other by 100%, so they are checked for
//! staying noise instead: on both sides a gradient RMS at most 1e-5 of the
//! model's (measured 1.3e-7), and at most 0.1 x the sum of the learning
//! rates apart (measured 8.3e-3; a real gradient would move them by about
//! that sum).

mod common;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use ddpm::config::{OptimConfig, TrainConfig};
use ddpm::diffusion::{BetaSchedule, LossType, ModelMeanType};
use ddpm::train::flat::{to_vec_f32, Layout};
use ddpm::train::local::{LocalTrainer, StepReport};
use ddpm::unet::{diffusers, UNetConfig};
use tch::{Device, Tensor};

/// Steps trained, and the steps after which the states are compared.
const K: u64 = 20;
const SAVE_AT: [u64; 4] = [1, 5, 10, 20];

/// The compared state, in our names and the reference's file prefixes.
const QUANTITIES: [&str; 4] = ["param", "exp_avg", "exp_avg_sq", "ema"];

/// Tolerances: the measurements and the reasons are in the module comment.
/// Relative error of each step's loss and of its gradient norm.
const LOSS_TOL: f64 = 1e-5;
const NORM_TOL: f64 = 2e-5;
/// Relative L2 error of a quantity over all compared tensors, and of any one.
const GLOBAL_TOL: f64 = 2e-4;
const TENSOR_TOL: f64 = 2e-3;
/// A zero-gradient tensor: its gradient RMS over the model's, and how far
/// apart the two sides may put it, in units of the summed learning rates.
const NOISE_GRAD: f64 = 1e-5;
const NOISE_STEP: f64 = 0.1;

/// Model initialisation draws from libtorch's global generator, which the
/// tests of this file share: they take turns while our side trains.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One trajectory to compare.
struct Case {
    name: &'static str,
    config: TrainConfig,
    /// The reference asserts that some steps clip and some do not.
    require_clipping: bool,
}

/// The `tiny` preset as it is (lr 1e-3, 50 warmup steps, clipping at 1.0,
/// EMA 0.995, 32x32), at batch 4.
fn tiny() -> Case {
    let mut config = TrainConfig::tiny();
    config.train.batch_size = 4;
    config.train.seed = 11;
    Case { name: "tiny", config, require_clipping: false }
}

/// A config no preset has: 16x16, ch 16, ch_mult 1,2,2, two ResBlocks per
/// level, attention at 16 and 4, 8 groups of norm eps 1e-5; warmup of 5
/// steps (crossed within K), a clip threshold that clips 8 of the 20 steps,
/// Adam's beta2 at 0.99 and a fast EMA (0.9) whose trajectory shows in 20 steps.
fn odd16() -> Case {
    let mut config = TrainConfig::tiny();
    config.model = UNetConfig {
        image_size: 16,
        ch: 16,
        ch_mult: vec![1, 2, 2],
        num_res_blocks: 2,
        attn_resolutions: vec![16, 4],
        dropout: 0.0,
        num_groups: 8,
        norm_eps: 1e-5,
        ..UNetConfig::tiny()
    };
    config.optim = OptimConfig { lr: 2e-3, warmup_steps: 5, grad_clip: 0.95, beta1: 0.9, beta2: 0.99, eps: 1e-8 };
    config.train.batch_size = 3;
    config.train.seed = 5;
    config.train.ema_decay = 0.9;
    Case { name: "odd16", config, require_clipping: true }
}

/// Writes what the reference needs to replay the run: the initial weights
/// as a diffusers model directory, every step's batch, and the recipe.
fn export(trainer: &LocalTrainer, case: &Case, dir: &Path) -> Result<()> {
    let c = &case.config;
    ensure!(c.model.dropout == 0.0, "dropout masks are not exported: use dropout 0");
    ensure!(
        c.diffusion.model_mean_type == ModelMeanType::Eps && c.diffusion.loss_type == LossType::Mse,
        "the reference trains eps-prediction with L_simple"
    );
    let BetaSchedule::Linear { start, end } = c.diffusion.beta_schedule else { bail!("the reference has the linear schedule") };
    diffusers::save_pretrained(&trainer.state.model.vs, &c.model, &dir.join("model"))?;
    let mut batches = Vec::new();
    for k in 1..=K {
        let b = trainer.batch(k)?;
        batches.extend([(format!("x0.{k}"), b.x0), (format!("t.{k}"), b.t), (format!("noise.{k}"), b.noise)]);
    }
    Tensor::write_safetensors(&batches, dir.join("batches.safetensors"))?;
    let o = &c.optim;
    let run = serde_json::json!({
        "steps": K, "save_at": SAVE_AT,
        "lr": o.lr, "warmup_steps": o.warmup_steps, "grad_clip": o.grad_clip,
        "beta1": o.beta1, "beta2": o.beta2, "eps": o.eps, "ema_decay": c.train.ema_decay,
        "beta_start": start, "beta_end": end, "num_timesteps": c.diffusion.num_timesteps,
        "require_clipping": case.require_clipping,
    });
    std::fs::write(dir.join("run.json"), serde_json::to_string_pretty(&run)?)?;
    Ok(())
}

/// Our side: K steps of the local trainer; the initial parameters, each
/// step's report and the states after the steps of `SAVE_AT`.
struct Ours {
    layout: Layout,
    init: Vec<f32>,
    reports: Vec<StepReport>,
    states: BTreeMap<u64, [Vec<f32>; 4]>,
}

fn train_ours(case: &Case, inputs: &Path) -> Result<Ours> {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    let mut trainer = LocalTrainer::new(case.config.clone(), Device::Cpu)?;
    export(&trainer, case, inputs)?;
    let init = to_vec_f32(&trainer.state.model.flat);
    let (mut reports, mut states) = (Vec::new(), BTreeMap::new());
    for k in 1..=K {
        let report = trainer.step()?;
        ensure!(report.step == k && report.outcome.apply, "step {k} was not applied: {report:?}");
        reports.push(report);
        if SAVE_AT.contains(&k) {
            let s = &trainer.state;
            states.insert(k, [&s.model.flat, &s.adam.m, &s.adam.v, &trainer.ema].map(to_vec_f32));
        }
    }
    Ok(Ours { layout: trainer.state.model.layout.clone(), init, reports, states })
}

/// Runs the PyTorch reference on `inputs`, writing into `out`.
fn run_reference(inputs: &Path, out: &Path) -> Result<String> {
    let python = std::env::var_os("DDPM_PYTHON")
        .context("DDPM_PYTHON is not set: run tests/run.sh, or `source deploy/env.sh && ddpm_setup` first")?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/trajectory_reference.py");
    let output = Command::new(python).arg(&script).arg("--inputs").arg(inputs).arg("--out").arg(out).output()?;
    let log = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "{} failed:\n{log}", script.display());
    Ok(log)
}

/// The reference's state after step `k`, flattened in our layout order.
fn reference_state(out: &Path, layout: &Layout, k: u64) -> Result<[Vec<f32>; 4]> {
    let path = out.join(format!("step{k}.safetensors"));
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)?.into_iter().collect();
    let n = layout.entries.len();
    ensure!(tensors.len() == 4 * n, "{}: {} tensors for {n} parameters", path.display(), tensors.len());
    let mut flat: [Vec<f32>; 4] = Default::default();
    for (q, buf) in QUANTITIES.iter().zip(&mut flat) {
        for e in &layout.entries {
            let key = format!("{q}.{}", e.name);
            let t = tensors.get(&key).with_context(|| format!("{}: no {key}", path.display()))?;
            ensure!(t.size() == e.shape, "{q}.{}: shape {:?}, ours {:?}", e.name, t.size(), e.shape);
            buf.extend(to_vec_f32(t));
        }
    }
    Ok(flat)
}

fn l2(xs: impl Iterator<Item = f64>) -> f64 {
    xs.map(|x| x * x).sum::<f64>().sqrt()
}

/// `||ours - ref|| / ||ref - base||` over `ranges` of the flat buffers
/// (0 when they are equal, even where `ref == base`).
fn rel_error(ours: &[f32], reference: &[f32], base: Option<&[f32]>, ranges: &[Range<usize>]) -> f64 {
    let idx = || ranges.iter().flat_map(|r| r.clone());
    let diff = l2(idx().map(|i| ours[i] as f64 - reference[i] as f64));
    let moved = l2(idx().map(|i| reference[i] as f64 - base.map_or(0.0, |b| b[i] as f64)));
    if diff == 0.0 {
        0.0
    } else {
        diff / moved
    }
}

/// RMS of the square root of Adam's second moment over `ranges`: the
/// gradient's typical size.
fn grad_rms(v: &[f32], ranges: &[Range<usize>]) -> f64 {
    let n: usize = ranges.iter().map(|r| r.len()).sum();
    (ranges.iter().flat_map(|r| v[r.clone()].iter()).map(|x| *x as f64).sum::<f64>() / n as f64).sqrt()
}

fn check(case: Case) -> Result<()> {
    let dir = common::tempdir();
    let (inputs, out) = (dir.path().join("inputs"), dir.path().join("reference"));
    std::fs::create_dir_all(&inputs)?;
    let ours = train_ours(&case, &inputs)?;
    let log = run_reference(&inputs, &out)?;
    let name = case.name;
    for line in log.lines() {
        eprintln!("{name}: {line}");
    }
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("log.json"))?)?;
    let list = |key: &str| reference[key].as_array().cloned().with_context(|| format!("log.json has no {key}"));

    // Every step: the learning rate, the loss, the gradient
    // norm before clipping, and the clipping decision.
    let (lrs, losses, norms, clipped) = (list("lr")?, list("loss")?, list("grad_norm")?, list("clipped")?);
    let (mut loss_err, mut norm_err) = (0f64, 0f64);
    for (i, r) in ours.reports.iter().enumerate() {
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        // Equal but for serde_json's float parsing (not correctly rounded by default).
        let lr = case.config.lr_at(r.step);
        assert!((lr - f(&lrs[i])).abs() <= 1e-15 * lr, "{name}: step {}: learning rate {lr} here, {} in PyTorch", r.step, lrs[i]);
        loss_err = loss_err.max((r.loss - f(&losses[i])).abs() / f(&losses[i]));
        norm_err = norm_err.max((r.outcome.grad_norm - f(&norms[i])).abs() / f(&norms[i]));
        let theirs = clipped[i].as_bool() == Some(true);
        assert_eq!(r.outcome.clip_scale < 1.0, theirs, "{name}: step {}: clipped here {:?}, in PyTorch {theirs}", r.step, r.outcome);
    }
    let clips = ours.reports.iter().filter(|r| r.outcome.clip_scale < 1.0).count();
    eprintln!("{name}: over {K} steps ({clips} clipped): relative error of the loss {loss_err:.1e}, of the gradient norm {norm_err:.1e}");
    assert!(loss_err <= LOSS_TOL, "{name}: loss differs by {loss_err:.2e} (relative) > {LOSS_TOL:.0e}");
    assert!(norm_err <= NORM_TOL, "{name}: gradient norm differs by {norm_err:.2e} (relative) > {NORM_TOL:.0e}");

    // The tensors whose gradient is zero in exact arithmetic: rounding
    // noise that Adam amplifies differently on each side.
    let zero: Vec<String> =
        list("zero_grad")?.iter().map(|v| v.as_str().map(String::from).context("zero_grad: a name")).collect::<Result<_>>()?;
    let entries = &ours.layout.entries;
    let (noise, real): (Vec<_>, Vec<_>) = entries.iter().partition(|e| zero.contains(&e.name));
    ensure!(noise.len() == zero.len(), "{name}: zero_grad names a tensor we do not have: {zero:?}");
    let noise_params: usize = noise.iter().map(|e| e.numel).sum();
    ensure!(
        noise_params * 10 <= ours.layout.total,
        "{name}: {noise_params} of {} parameters have no gradient: too few would be compared",
        ours.layout.total
    );
    let range = |e: &&ddpm::train::flat::LayoutEntry| e.offset..e.offset + e.numel;
    let real_ranges: Vec<Range<usize>> = real.iter().map(range).collect();
    let all = std::slice::from_ref(&(0..ours.layout.total)).to_vec();

    let mut worst: [(f64, String); 4] = Default::default();
    let mut worst_noise = (0f64, 0f64);
    for k in SAVE_AT {
        let theirs = reference_state(&out, &ours.layout, k)?;
        let mine = &ours.states[&k];
        for (qi, q) in QUANTITIES.iter().enumerate() {
            let base = (*q == "param").then_some(ours.init.as_slice());
            let global = rel_error(&mine[qi], &theirs[qi], base, &real_ranges);
            let (mut tensor, mut tensor_name) = (0f64, "");
            for e in &real {
                let err = rel_error(&mine[qi], &theirs[qi], base, &[range(e)]);
                if err > tensor {
                    (tensor, tensor_name) = (err, &e.name);
                }
            }
            eprintln!("{name}: step {k:2} {q:10}: relative L2 error {global:.1e}, worst tensor {tensor:.1e} ({tensor_name})");
            assert!(global <= GLOBAL_TOL, "{name}: step {k}: {q}: relative error {global:.2e} > {GLOBAL_TOL:.0e}");
            assert!(tensor <= TENSOR_TOL, "{name}: step {k}: {q}.{tensor_name}: relative error {tensor:.2e} > {TENSOR_TOL:.0e}");
            if tensor > worst[qi].0 {
                worst[qi] = (tensor, format!("{tensor_name} at step {k}"));
            }
        }
        // The noise tensors stay noise on both sides: a gradient far below
        // the model's, and steps far below the learning rate.
        let lr_sum: f64 = (1..=k).map(|s| case.config.lr_at(s)).sum();
        for e in &noise {
            for (side, v) in [("ours", &mine[2]), ("PyTorch", &theirs[2])] {
                let ratio = grad_rms(v, &[range(e)]) / grad_rms(v, &all);
                assert!(ratio <= NOISE_GRAD, "{name}: step {k}: {side}: {} has a gradient {ratio:.1e} of the model's", e.name);
                worst_noise.0 = worst_noise.0.max(ratio);
            }
            let apart = range(e).map(|i| (mine[0][i] - theirs[0][i]).abs() as f64).fold(0.0, f64::max) / lr_sum;
            assert!(apart <= NOISE_STEP, "{name}: step {k}: {} is {apart:.1e} x sum(lr) apart", e.name);
            worst_noise.1 = worst_noise.1.max(apart);
        }
    }
    eprintln!(
        "{name}: worst tensors: {}; {} noise tensors ({noise_params} parameters): gradient <= {:.1e} of the model's, <= {:.1e} x sum(lr) apart",
        QUANTITIES.iter().zip(&worst).map(|(q, (e, at))| format!("{q} {e:.1e} ({at})")).collect::<Vec<_>>().join(", "),
        noise.len(),
        worst_noise.0,
        worst_noise.1
    );
    Ok(())
}

#[test]
fn tiny_preset_follows_pytorch() -> Result<()> {
    check(tiny())
}

#[test]
fn odd_config_follows_pytorch() -> Result<()> {
    check(odd16())
}
