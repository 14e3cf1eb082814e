//! The quality comparison (deploy/quality/bench.py) end to end on a tiny
//! budget: our binaries and the PyTorch trainer each train 30 steps on the
//! digits of scikit-learn and are scored. Too short to compare quality
//! (docs/correctness.md, "Sample quality against PyTorch", has the real
//! numbers); this checks that the script runs as that page says, that both sides produce
//! what it scores, and that its yardstick separates real digits from what a
//! 30-step model draws.

mod common;

use std::path::PathBuf;
use std::process::Command;

#[test]
fn quality_bench_scores_both_trainers_and_real_digits() {
    let dir = common::tempdir();
    let out = dir.path().join("bench");
    let python = std::env::var_os("DDPM_PYTHON").expect("DDPM_PYTHON: run tests/run.sh, or `source deploy/env.sh && ddpm_setup`");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/quality/bench.py");
    let bin = common::binary("ddpm-coord").parent().unwrap().to_path_buf();
    let output = Command::new(python)
        .arg(&script)
        .args(["--steps", "30", "--seeds", "2", "--samples", "100", "--ddim-steps", "5", "--threads", "1"])
        .args(["--arms", "ours-paper,torch-pytorch"])
        .arg("--out")
        .arg(&out)
        .arg("--bin")
        .arg(&bin)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench.py failed:\n{log}");
    assert!(log.contains("| ours-paper |") && log.contains("| torch-pytorch |"), "no table:\n{log}");

    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let accuracy = results["feature_held_out_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.9, "the feature classifier knows digits poorly: held-out accuracy {accuracy}");
    let floor = results["real_digits"]["mean"].as_f64().unwrap();
    for arm in ["ours-paper", "torch-pytorch"] {
        let values = results["arms"][arm]["values"].as_array().unwrap();
        assert_eq!(values.len(), 2, "{arm}: one score per seed");
        for v in values {
            let v = v.as_f64().unwrap();
            // 30 steps draw blobs, not digits: far above real digits' distance.
            assert!(v.is_finite() && v > 5.0 * floor, "{arm}: {v} vs real digits {floor}");
        }
    }
    assert!(floor > 0.0, "real digits against the dataset: {floor}");
    // Our side went through the real binaries: a run with its checkpoint and samples.
    for seed in 0..2 {
        let run = out.join(format!("ours-paper-s{seed}"));
        assert!(run.join("samples/samples.npz").is_file(), "{}", run.display());
        let config = std::fs::read_to_string(run.join("checkpoints/step_0000000030/config.toml")).unwrap();
        assert!(config.contains("init = \"paper\"") && config.contains(&format!("seed = {seed}")), "{config}");
    }
}
