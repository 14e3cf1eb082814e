//! The single-process trainer on the built-in synthetic shapes: the loss
//! falls clearly within a few hundred steps, and a run is reproducible.

use ddpm::config::TrainConfig;
use ddpm::train::local::LocalTrainer;
use tch::Device;

/// Model initialisation and dropout draw from libtorch's global generator
/// (seeded from the run seed), which every test in this process shares:
/// the tests here take turns.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn small() -> TrainConfig {
    let mut c = TrainConfig::tiny();
    c.model.image_size = 16;
    c.train.batch_size = 8;
    c.optim.warmup_steps = 20;
    c.train.seed = 3;
    c
}

#[test]
fn loss_falls_on_synthetic_shapes() {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    let mut t = LocalTrainer::new(small(), Device::Cpu).unwrap();
    let losses: Vec<f64> = (0..300).map(|_| t.step().unwrap().loss).collect();
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let first = mean(&losses[..30]);
    let last = mean(&losses[270..]);
    eprintln!("mean L_simple: steps 1-30 {first:.4}, steps 271-300 {last:.4}");
    assert!(losses.iter().all(|l| l.is_finite()));
    // Before training the network predicts ~0, so the loss is E[eps^2] = 1.
    assert!(first > 0.5, "{first}");
    assert!(last < 0.5 * first, "the loss did not fall: {first:.4} -> {last:.4}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    // Bitwise equality needs the same reduction order in both runs: the
    // same libtorch thread count (tests share one process, and the other
    // test sets it too).
    tch::set_num_threads(1);
    let run = || {
        let mut t = LocalTrainer::new(small(), Device::Cpu).unwrap();
        for _ in 0..3 {
            t.step().unwrap();
        }
        ddpm::train::flat::to_vec_f32(&t.state.model.flat)
    };
    let (a, b) = (run(), run());
    let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
    assert_eq!(differ, 0, "{differ} of {} parameters differ between two runs with the same seed", a.len());
}

/// `[train] precision = "bf16"` (autocast on the CPU) against fp32 on the
/// same run: the same seed, data and initial weights, so the two loss
/// curves differ only by bfloat16's rounding in the forward and backward
/// passes. Means over windows of 30 steps (single steps are noisy: each
/// draws its own timesteps) must stay within 5% of fp32's, and both must
/// fall; the parameters, Adam and the EMA stay float32. At 8x8 with two
/// levels: this CPU has no bfloat16 instructions, so libtorch emulates them
/// and a bf16 step costs several fp32 steps (the tiny preset at 16x16 took
/// 3 minutes for the two curves).
#[test]
fn bf16_training_tracks_fp32() {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    const STEPS: usize = 150;
    const WINDOW: usize = 30;
    let curve = |precision: ddpm::config::Precision| {
        let mut c = small();
        c.model.image_size = 8;
        c.model.ch_mult = vec![1, 2];
        c.model.attn_resolutions = vec![4];
        c.train.precision = precision;
        let mut t = LocalTrainer::new(c, Device::Cpu).unwrap();
        let losses: Vec<f64> = (0..STEPS).map(|_| t.step().unwrap().loss).collect();
        assert_eq!(t.state.model.flat.kind(), tch::Kind::Float, "master weights stay float32");
        assert_eq!((t.state.adam.m.kind(), t.ema.kind()), (tch::Kind::Float, tch::Kind::Float));
        losses.chunks(WINDOW).map(|w| w.iter().sum::<f64>() / w.len() as f64).collect::<Vec<f64>>()
    };
    let started = std::time::Instant::now();
    let fp32 = curve(ddpm::config::Precision::Fp32);
    let bf16 = curve(ddpm::config::Precision::Bf16);
    eprintln!(
        "window means of L_simple ({:.0} s), fp32: {fp32:.4?}\n                          bf16: {bf16:.4?}",
        started.elapsed().as_secs_f64()
    );
    assert_ne!(fp32, bf16, "bf16 computed exactly what fp32 did: autocast was not on");
    for (i, (a, b)) in fp32.iter().zip(&bf16).enumerate() {
        let rel = (b - a).abs() / a;
        assert!(rel < 0.05, "window {i}: bf16 {b:.4} is {:.1}% from fp32 {a:.4}", rel * 100.0);
    }
    let last = fp32.len() - 1;
    assert!(bf16[last] < 0.5 * bf16[0] && fp32[last] < 0.5 * fp32[0], "the loss did not fall: {fp32:?} {bf16:?}");
}
