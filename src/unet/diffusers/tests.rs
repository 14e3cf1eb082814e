//! Unit tests of the safetensors reader and writer and of config.json.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::{config_from_json, config_json, load_safetensors, save_pretrained, save_safetensors};
use crate::unet::{UNet, UNetConfig, UNetError};

fn config() -> UNetConfig {
    UNetConfig {
        image_size: 8,
        ch: 32,
        ch_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.0,
        ..UNetConfig::cifar10()
    }
}

fn model() -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    UNet::new(&vs.root(), &config()).unwrap();
    tch::no_grad(|| {
        for mut t in vs.trainable_variables() {
            let _ = t.uniform_(-0.5, 0.5);
        }
    });
    vs
}

/// Writes `tensors` (name, dtype, shape, bytes) as a safetensors file.
fn write(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<_> = tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// The model's tensors as (name, F32, shape, bytes).
fn tensors_of(vs: &VarStore) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let mut out: Vec<_> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let mut bytes = vec![0u8; t.numel() * 4];
            t.copy_data_u8(&mut bytes, t.numel());
            (name, Dtype::F32, t.size().iter().map(|&d| d as usize).collect(), bytes)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn load_err(tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> UNetError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    write(&path, tensors);
    let mut target = model();
    load_safetensors(&mut target, &path).unwrap_err()
}

#[test]
fn save_then_load_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let source = model();
    save_safetensors(&source, &path).unwrap();
    let mut target = model();
    load_safetensors(&mut target, &path).unwrap();
    let (a, b) = (source.variables(), target.variables());
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{name} differs after the round trip");
    }
    // Saving again gives the same bytes: deterministic, name-sorted layout.
    let again = dir.path().join("again.safetensors");
    save_safetensors(&target, &again).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn unreadable_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut vs = model();
    let good = dir.path().join("good.safetensors");
    save_safetensors(&vs, &good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated.safetensors", bytes[..bytes.len() - 100].to_vec(), "truncated"),
        ("tiny.safetensors", vec![1, 2, 3], "not a safetensors file"),
        ("garbage.safetensors", [16u64.to_le_bytes().to_vec(), b"{not json at all".to_vec()].concat(), "not valid JSON"),
        ("hugeheader.safetensors", [u64::MAX.to_le_bytes().to_vec(), vec![0; 64]].concat(), "safetensors"),
    ];
    for (name, content, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let err = load_safetensors(&mut vs, &path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, UNetError::Safetensors { .. }) && msg.contains(name) && msg.contains(expected), "{msg}");
    }
    let missing = dir.path().join("absent.safetensors");
    let msg = load_safetensors(&mut vs, &missing).unwrap_err().to_string();
    assert!(msg.contains("absent.safetensors") && msg.contains("cannot read"), "{msg}");
}

#[test]
fn wrong_contents_are_named_and_load_nothing() {
    let good = tensors_of(&model());
    let name = "down_blocks.1.attentions.0.to_k.weight".to_string();

    let mut missing = good.clone();
    missing.retain(|t| t.0 != name);
    let err = load_err(&missing);
    assert!(matches!(&err, UNetError::MissingTensor { name: n, .. } if *n == name), "{err}");

    let mut extra = good.clone();
    extra.push(("class_embedding.weight".into(), Dtype::F32, vec![2], vec![0; 8]));
    let err = load_err(&extra);
    assert!(matches!(&err, UNetError::UnexpectedTensor { name: n, .. } if n == "class_embedding.weight"), "{err}");

    let mut shape = good.clone();
    let i = shape.iter().position(|t| t.0 == name).unwrap();
    shape[i].2 = vec![32, 128];
    let err = load_err(&shape);
    assert!(
        matches!(&err, UNetError::ShapeMismatch { name: n, expected, found, .. } if *n == name && expected == &[64, 64] && found == &[32, 128]),
        "{err}"
    );

    let mut dtype = good.clone();
    dtype[i].1 = Dtype::F16;
    let half = dtype[i].3.len() / 2;
    dtype[i].3.truncate(half);
    let err = load_err(&dtype);
    assert!(matches!(&err, UNetError::WrongDtype { name: n, found, .. } if *n == name && found == "F16"), "{err}");

    // A failed load leaves the var store untouched.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let mut bad = good.clone();
    bad.push(("extra".into(), Dtype::F32, vec![1], vec![0; 4]));
    write(&path, &bad);
    let mut target = model();
    let before: HashMap<String, Tensor> = target.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
    assert!(load_safetensors(&mut target, &path).is_err());
    assert!(target.variables().iter().all(|(n, t)| t.equal(&before[n])));
}

#[test]
fn legacy_attention_names_load_and_duplicates_are_refused() {
    let good = tensors_of(&model());
    let legacy: Vec<_> = good
        .iter()
        .map(|(n, d, s, b)| (n.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn."), *d, s.clone(), b.clone()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.safetensors");
    write(&path, &legacy);
    let mut target = model();
    load_safetensors(&mut target, &path).unwrap();
    let source: HashMap<String, Vec<u8>> = good.iter().map(|(n, _, _, b)| (n.clone(), b.clone())).collect();
    for (name, t) in tensors_of(&target).into_iter().map(|(n, _, _, b)| (n, b)) {
        assert_eq!(source[&name], t, "{name}");
    }
    let mut both = good.clone();
    let q = good.iter().find(|t| t.0.ends_with("to_q.weight")).unwrap();
    both.push((q.0.replace("to_q", "query"), q.1, q.2.clone(), q.3.clone()));
    let msg = load_err(&both).to_string();
    assert!(msg.contains("same parameter"), "{msg}");
}

#[test]
fn config_json_round_trips_for_every_preset() {
    for name in UNetConfig::PRESETS {
        let config = UNetConfig::preset(name).unwrap();
        assert_eq!(config_from_json(&config_json(&config)).unwrap(), config, "{name}");
    }
    let cifar = config_json(&UNetConfig::cifar10());
    assert_eq!(cifar["block_out_channels"], json!([128, 256, 256, 256]));
    assert_eq!(cifar["down_block_types"], json!(["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]));
    assert_eq!(cifar["up_block_types"], json!(["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]));
}

/// The config.json of google/ddpm-cifar10-32 as published (diffusers 0.0.4:
/// no attention_head_dim, dropout or add_attention keys).
fn hub_cifar10() -> serde_json::Value {
    json!({
        "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu",
        "block_out_channels": [128, 256, 256, 256], "center_input_sample": false,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "downsample_padding": 0, "flip_sin_to_cos": false, "freq_shift": 1, "in_channels": 3,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32,
        "out_channels": 3, "sample_size": 32, "time_embedding_type": "positional",
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    })
}

#[test]
fn the_published_cifar10_config_reads_as_the_paper_model() {
    let config = config_from_json(&hub_cifar10()).unwrap();
    assert_eq!(config, UNetConfig { dropout: 0.0, ..UNetConfig::cifar10() });
}

#[test]
fn unrepresentable_diffusers_configs_are_refused_with_the_key() {
    let cases: [(&str, serde_json::Value); 11] = [
        ("attention_head_dim", json!(8)),
        ("flip_sin_to_cos", json!(true)),
        ("freq_shift", json!(0)),
        ("downsample_padding", json!(1)),
        ("resnet_time_scale_shift", json!("scale_shift")),
        ("up_block_types", json!(["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"])),
        ("down_block_types", json!(["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"])),
        ("block_out_channels", json!([128, 192, 256, 256])),
        ("num_class_embeds", json!(10)),
        ("time_embedding_type", json!("fourier")),
        ("encoder_hid_dim", json!(768)),
    ];
    for (key, value) in cases {
        let mut config = hub_cifar10();
        config[key] = value.clone();
        match config_from_json(&config) {
            Err(UNetError::UnsupportedDiffusersConfig { key: k, reason }) => assert_eq!(k, key, "{reason}"),
            other => panic!("{key} = {value}: expected a refusal, got {other:?}"),
        }
    }
    // Keys whose diffusers default differs from the paper must be present.
    for key in ["flip_sin_to_cos", "freq_shift", "downsample_padding"] {
        let mut config = hub_cifar10();
        config.as_object_mut().unwrap().remove(key);
        assert!(matches!(config_from_json(&config), Err(UNetError::UnsupportedDiffusersConfig { key: k, .. }) if k == key));
    }
    // Single-head spelled out (head dim = channels of every attention) is fine.
    let mut explicit = hub_cifar10();
    explicit["attention_head_dim"] = json!(256);
    assert!(config_from_json(&explicit).is_ok());
    // Channels GroupNorm cannot split are a config error, not a silent build.
    let mut groups = hub_cifar10();
    groups["norm_num_groups"] = json!(48);
    assert!(matches!(config_from_json(&groups), Err(UNetError::InvalidConfig { field: "num_groups", .. })));
}

#[test]
fn save_pretrained_writes_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let vs = model();
    save_pretrained(&vs, &config(), dir.path()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    assert_eq!(config_from_json(&serde_json::from_str(&text).unwrap()).unwrap(), config());
    let (loaded, unet) = super::load_pretrained(dir.path(), Device::Cpu).unwrap();
    assert_eq!(unet.config(), &config());
    let x = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
    assert!(loaded.variables()["conv_in.weight"].equal(&vs.variables()["conv_in.weight"]));
    let _ = unet.forward_t(&x, &Tensor::from_slice(&[3i64]), false);
}
