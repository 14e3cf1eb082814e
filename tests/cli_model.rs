//! `ddpm model`: the real binary's summary, JSON and errors.

use std::process::{Command, Output};

fn ddpm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm")).args(args).output().expect("the ddpm binary runs")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = ddpm(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON object")
}

#[test]
fn json_has_the_exact_param_counts_and_the_config() {
    let cifar = json(&["model", "--preset", "cifar10", "--json"]);
    assert_eq!(cifar["params"], 35_746_307);
    assert_eq!(cifar["config"]["ch_mult"], serde_json::json!([1, 2, 2, 2]));
    assert_eq!(cifar["config"]["dropout"], 0.1);
    let sections = &cifar["sections"];
    let sum: i64 = ["time_embedding", "conv_in", "mid", "out"].iter().map(|k| sections[k].as_i64().unwrap()).sum::<i64>()
        + sections["down"].as_array().unwrap().iter().chain(sections["up"].as_array().unwrap()).map(|v| v.as_i64().unwrap()).sum::<i64>();
    assert_eq!(sum, 35_746_307);
    assert_eq!(json(&["model", "--preset", "lsun256", "--json"])["params"], 113_673_219);
    assert_eq!(json(&["model", "--preset", "tiny", "--json"])["params"], 774_531);
}

#[test]
fn text_summary_lists_levels_and_total() {
    let out = ddpm(&["model", "--preset", "cifar10"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("35,746,307"), "{text}");
    assert!(text.contains("down_blocks.3") && text.contains("mid_block") && text.contains("up_blocks.2"), "{text}");
}

#[test]
fn unknown_preset_fails_and_lists_the_valid_ones() {
    let out = ddpm(&["model", "--preset", "imagenet"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("imagenet") && err.contains("cifar10, lsun256, tiny"), "{err}");
    assert!(!ddpm(&["model"]).status.success(), "a preset or a config is required");
}

#[test]
fn config_files_in_toml_and_diffusers_json() {
    let dir = tempfile::tempdir().unwrap();
    let toml_path = dir.path().join("unet.toml");
    std::fs::write(&toml_path, "image_size = 16\nch = 64\nch_mult = [1, 2]\nattn_resolutions = [8]\n").unwrap();
    let v = json(&["model", "--config", toml_path.to_str().unwrap(), "--json"]);
    assert_eq!(v["config"]["image_size"], 16);
    let json_path = dir.path().join("config.json");
    std::fs::write(&json_path, serde_json::to_string(&v["diffusers_config"]).unwrap()).unwrap();
    let w = json(&["model", "--config", json_path.to_str().unwrap(), "--json"]);
    assert_eq!(w["params"], v["params"]);

    std::fs::write(&toml_path, "image_size = 16\nch_mult = [1, 2]\nattn_resolutions = [16, 3]\n").unwrap();
    let out = ddpm(&["model", "--config", toml_path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("attn_resolutions"));
}
