//! The U-Net against diffusers' UNet2DModel: fixtures from
//! tests/golden/gen_unet.py (random weights, fixed inputs, reference outputs).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ddpm::unet::diffusers::{self, config_from_json, config_json, load_safetensors, save_safetensors};
use ddpm::unet::{UNet, UNetConfig};
use safetensors::SafeTensors;
use tch::nn::VarStore;
use tch::{Device, Tensor};

const TOL: f64 = 1e-4;
const CASES: [&str; 4] = ["cifar10", "tiny", "odd16", "small8"];

fn case_dir(case: &str) -> PathBuf {
    common::golden_dir("unet").join(case)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

/// The case's network with the diffusers weights loaded.
fn load_case(case: &str) -> Result<(UNetConfig, VarStore, UNet)> {
    let dir = case_dir(case);
    let config = config_from_json(&read_json(&dir.join("config.json"))?)?;
    let mut vs = VarStore::new(Device::Cpu);
    let unet = UNet::new(&vs.root(), &config)?;
    load_safetensors(&mut vs, &dir.join(diffusers::WEIGHTS_FILE))?;
    Ok((config, vs, unet))
}

fn io(case: &str) -> Result<BTreeMap<String, Tensor>> {
    Ok(Tensor::read_safetensors(case_dir(case).join("io.safetensors"))?.into_iter().collect())
}

/// Max |ours - diffusers| on the case's inputs.
fn max_diff(unet: &UNet, case: &str) -> Result<f64> {
    let io = io(case)?;
    let out = tch::no_grad(|| unet.forward_t(&io["x"], &io["t"], false));
    assert_eq!(out.size(), io["eps"].size());
    Ok((out - &io["eps"]).abs().max().double_value(&[]))
}

#[test]
fn outputs_match_diffusers() -> Result<()> {
    for case in CASES {
        let (_config, _vs, unet) = load_case(case)?;
        let diff = max_diff(&unet, case)?;
        eprintln!("{case}: max abs diff vs diffusers {diff:.3e}");
        assert!(diff < TOL, "{case}: max abs diff {diff} >= {TOL}");
    }
    Ok(())
}

#[test]
fn fixture_configs_are_the_presets() -> Result<()> {
    let (cifar, _, _) = load_case("cifar10")?;
    assert_eq!(cifar, UNetConfig { dropout: 0.0, ..UNetConfig::cifar10() });
    assert_eq!(cifar.param_count(), 35_746_307);
    let (tiny, _, _) = load_case("tiny")?;
    assert_eq!(tiny, UNetConfig::tiny(), "gen_unet.py's tiny case must follow the preset");
    Ok(())
}

#[test]
fn config_json_is_what_diffusers_saves() -> Result<()> {
    for case in CASES {
        let saved = read_json(&case_dir(case).join("config.json"))?;
        let ours = config_json(&config_from_json(&saved)?);
        assert_eq!(ours, saved, "{case}: config.json differs from diffusers' save_pretrained");
    }
    Ok(())
}

/// name -> (dtype, shape) of a safetensors file.
fn signature(path: &Path) -> Result<BTreeMap<String, (String, Vec<usize>)>> {
    let bytes = std::fs::read(path)?;
    let file = SafeTensors::deserialize(&bytes)?;
    Ok(file.iter().map(|(n, v)| (n.to_string(), (format!("{:?}", v.dtype()), v.shape().to_vec()))).collect())
}

#[test]
fn export_has_the_diffusers_layout_and_round_trips_exactly() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    for case in CASES {
        let (config, vs, _) = load_case(case)?;
        let exported = tmp.path().join(format!("{case}.safetensors"));
        save_safetensors(&vs, &exported)?;
        let reference = case_dir(case).join(diffusers::WEIGHTS_FILE);
        assert_eq!(signature(&exported)?, signature(&reference)?, "{case}: names, dtypes or shapes differ");
        // Same tensor bytes as the diffusers file.
        let (ours, theirs) = (std::fs::read(&exported)?, std::fs::read(&reference)?);
        let (ours, theirs) = (SafeTensors::deserialize(&ours)?, SafeTensors::deserialize(&theirs)?);
        for (name, view) in theirs.iter() {
            assert!(ours.tensor(name)?.data() == view.data(), "{case}: {name} changed on export");
        }
        let mut again = VarStore::new(Device::Cpu);
        UNet::new(&again.root(), &config)?;
        load_safetensors(&mut again, &exported)?;
        let reloaded = again.variables();
        for (name, t) in vs.variables() {
            assert!(t.equal(&reloaded[&name]), "{case}: {name} differs after export and import");
        }
    }
    Ok(())
}

#[test]
fn legacy_attention_names_give_the_same_network() -> Result<()> {
    let (config, _, _) = load_case("tiny")?;
    let mut vs = VarStore::new(Device::Cpu);
    let unet = UNet::new(&vs.root(), &config)?;
    let legacy = common::golden_dir("unet").join("legacy").join(diffusers::WEIGHTS_FILE);
    assert!(signature(&legacy)?.keys().any(|k| k.ends_with("proj_attn.weight")), "fixture uses the legacy names");
    load_safetensors(&mut vs, &legacy)?;
    assert!(max_diff(&unet, "tiny")? < TOL);
    Ok(())
}

/// diffusers' `UNet2DModel.from_pretrained` on a directory we exported
/// reproduces the reference outputs (needs $DDPM_PYTHON, as tests/run.sh sets).
#[test]
fn diffusers_loads_our_export() -> Result<()> {
    let Some(python) = std::env::var_os("DDPM_PYTHON") else {
        eprintln!("skipped: DDPM_PYTHON is not set (tests/run.sh sets it)");
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    for case in ["odd16", "small8"] {
        let (config, vs, _) = load_case(case)?;
        let dir = tmp.path().join(case);
        diffusers::save_pretrained(&vs, &config, &dir)?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/gen_unet.py");
        let out = std::process::Command::new(&python).arg(script).arg("--check-export").arg(&dir).arg(case_dir(case)).output()?;
        let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{case}: diffusers could not use our export:\n{log}");
    }
    Ok(())
}
