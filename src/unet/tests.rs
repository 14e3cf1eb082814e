//! Unit tests of the config, the parameter count, initialisation and forward.

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::{UNet, UNetConfig, UNetError};

fn small(image_size: i64, ch_mult: Vec<i64>, attn: Vec<i64>) -> UNetConfig {
    UNetConfig { image_size, ch: 32, ch_mult, num_res_blocks: 1, attn_resolutions: attn, dropout: 0.0, ..UNetConfig::cifar10() }
}

fn built_count(vs: &VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

#[test]
fn paper_param_counts_are_exact() {
    assert_eq!(UNetConfig::cifar10().param_count(), 35_746_307);
    assert_eq!(UNetConfig::lsun256().param_count(), 113_673_219);
    assert_eq!(UNetConfig::default(), UNetConfig::cifar10());
}

#[test]
fn presets_validate_and_unknown_names_list_the_valid_ones() {
    for name in UNetConfig::PRESETS {
        UNetConfig::preset(name).unwrap().validate().unwrap();
    }
    let err = UNetConfig::preset("cifar").unwrap_err();
    assert!(matches!(err, UNetError::UnknownPreset { .. }));
    let msg = err.to_string();
    assert!(msg.contains("`cifar`") && msg.contains("cifar10, lsun256, tiny"), "{msg}");
}

#[test]
fn invalid_configs_name_the_field() {
    type Edit = Box<dyn Fn(&mut UNetConfig)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("ch", Box::new(|c| c.ch = 127)),
        ("ch", Box::new(|c| c.ch = 2)),
        ("ch_mult", Box::new(|c| c.ch_mult = vec![])),
        ("ch_mult", Box::new(|c| c.ch_mult = vec![2, 2])),
        ("ch_mult", Box::new(|c| c.ch_mult = vec![1, 0])),
        ("num_groups", Box::new(|c| c.ch = 80)),
        ("num_groups", Box::new(|c| c.num_groups = 0)),
        ("image_size", Box::new(|c| c.image_size = 36)),
        ("image_size", Box::new(|c| c.image_size = 0)),
        ("attn_resolutions", Box::new(|c| c.attn_resolutions = vec![12])),
        ("attn_resolutions", Box::new(|c| c.attn_resolutions = vec![2])),
        ("num_res_blocks", Box::new(|c| c.num_res_blocks = 0)),
        ("dropout", Box::new(|c| c.dropout = 1.0)),
        ("norm_eps", Box::new(|c| c.norm_eps = 0.0)),
        ("in_channels", Box::new(|c| c.in_channels = 0)),
    ];
    for (field, edit) in cases {
        let mut config = UNetConfig::cifar10();
        edit(&mut config);
        match config.validate() {
            Err(UNetError::InvalidConfig { field: f, reason }) => assert_eq!(f, field, "{reason}"),
            other => panic!("{config:?}: expected an error on {field}, got {other:?}"),
        }
        let vs = VarStore::new(Device::Cpu);
        assert!(UNet::new(&vs.root(), &config).is_err());
    }
}

#[test]
fn config_toml_round_trips_and_rejects_unknown_fields() {
    let config = UNetConfig::tiny();
    let text = toml::to_string(&config).unwrap();
    assert_eq!(toml::from_str::<UNetConfig>(&text).unwrap(), config);
    // Missing fields take the cifar10 values.
    let partial: UNetConfig = toml::from_str("ch = 64\nch_mult = [1, 2]").unwrap();
    assert_eq!(partial, UNetConfig { ch: 64, ch_mult: vec![1, 2], ..UNetConfig::cifar10() });
    assert!(toml::from_str::<UNetConfig>("channels = 64").is_err());
}

#[test]
fn built_models_have_the_analytic_param_count() {
    let configs = [
        UNetConfig::cifar10(),
        UNetConfig::tiny(),
        small(8, vec![1, 2], vec![8, 4]),
        UNetConfig { in_channels: 1, out_channels: 2, ch: 16, num_groups: 8, num_res_blocks: 3, ..small(16, vec![1, 3, 2], vec![16, 4]) },
    ];
    for config in configs {
        let vs = VarStore::new(Device::Cpu);
        UNet::new(&vs.root(), &config).unwrap();
        assert_eq!(built_count(&vs), config.param_count(), "{config:?}");
    }
}

#[test]
fn initialisation_follows_the_paper() {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    UNet::new(&vs.root(), &UNetConfig::cifar10()).unwrap();
    let vars = vs.variables();
    let zero_weight = |name: &str| name.ends_with("conv2.weight") || name.ends_with("to_out.0.weight") || name == "conv_out.weight";
    for (name, t) in &vars {
        let is_norm = name.contains("norm");
        let (min, max) = (t.min().double_value(&[]), t.max().double_value(&[]));
        if name.ends_with("bias") || zero_weight(name) {
            assert_eq!((min, max), (0.0, 0.0), "{name} must start at zero");
        } else if is_norm {
            assert_eq!((min, max), (1.0, 1.0), "{name} must start at one");
        } else {
            // Glorot-uniform: U(-l, l), l = sqrt(6 / (fan_in + fan_out)), variance l^2 / 3.
            let size = t.size();
            let receptive: i64 = size[2..].iter().product();
            let limit = (6.0 / ((size[0] + size[1]) * receptive) as f64).sqrt();
            // The bound is drawn as a float32, which may round it up.
            let bound = f64::from(limit as f32);
            assert!(max <= bound && min >= -bound, "{name}: [{min}, {max}] outside +-{bound}");
            if t.numel() >= 10_000 {
                let var = t.to_kind(Kind::Double).var(false).double_value(&[]);
                let expected = limit * limit / 3.0;
                assert!((var / expected - 1.0).abs() < 0.05, "{name}: variance {var}, Glorot {expected}");
            }
        }
    }
    // The zero-initialised residual branches make the fresh network output zero.
    let vs_tiny = VarStore::new(Device::Cpu);
    let unet = UNet::new(&vs_tiny.root(), &UNetConfig::tiny()).unwrap();
    let out = unet.forward_t(&Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)), &Tensor::from_slice(&[0i64, 999]), false);
    assert_eq!(out.abs().max().double_value(&[]), 0.0);
}

#[test]
fn pytorch_initialisation_is_torch_nn_default() {
    use super::ModelInit;
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    UNet::new(&vs.root(), &UNetConfig { init: ModelInit::Pytorch, ..UNetConfig::cifar10() }).unwrap();
    let vars = vs.variables();
    for (name, t) in &vars {
        let (min, max) = (t.min().double_value(&[]), t.max().double_value(&[]));
        if name.contains("norm") {
            let start = if name.ends_with("weight") { 1.0 } else { 0.0 };
            assert_eq!((min, max), (start, start), "{name}: GroupNorm starts at its identity");
            continue;
        }
        // kaiming_uniform(a = sqrt(5)) and torch.nn's bias rule: U(-b, b),
        // b = 1 / sqrt(fan_in) of the layer's weight, variance b^2 / 3.
        let layer = name.strip_suffix("weight").or_else(|| name.strip_suffix("bias")).unwrap();
        let fan_in: i64 = vars[&format!("{layer}weight")].size()[1..].iter().product();
        let bound = 1.0 / (fan_in as f64).sqrt();
        let float32 = bound * (1.0 + 1e-6); // the limit itself is rounded to float32
        assert!(max <= float32 && min >= -float32, "{name}: [{min}, {max}] outside +-{bound}");
        if t.numel() >= 64 {
            assert!(max > 0.5 * bound && min < -0.5 * bound, "{name}: [{min}, {max}] does not fill +-{bound}");
        }
        if t.numel() >= 10_000 {
            let var = t.to_kind(Kind::Double).var(false).double_value(&[]);
            let expected = bound * bound / 3.0;
            assert!((var / expected - 1.0).abs() < 0.05, "{name}: variance {var}, expected {expected}");
        }
    }
    // No branch starts as identity: the fresh network's output is not zero.
    let vs_tiny = VarStore::new(Device::Cpu);
    let unet = UNet::new(&vs_tiny.root(), &UNetConfig { init: ModelInit::Pytorch, ..UNetConfig::tiny() }).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let out = unet.forward_t(&x, &Tensor::from_slice(&[0i64, 999]), false);
    assert!(out.abs().max().double_value(&[]) > 1e-3);
}

#[test]
fn variable_names_are_the_diffusers_ones() {
    let vs = VarStore::new(Device::Cpu);
    UNet::new(&vs.root(), &UNetConfig::cifar10()).unwrap();
    let vars = vs.variables();
    let shape = |name: &str| vars.get(name).map(|t| t.size()).unwrap_or_else(|| panic!("no variable {name}"));
    assert_eq!(shape("conv_in.weight"), [128, 3, 3, 3]);
    assert_eq!(shape("time_embedding.linear_1.weight"), [512, 128]);
    assert_eq!(shape("down_blocks.1.resnets.0.conv_shortcut.weight"), [256, 128, 1, 1]);
    assert_eq!(shape("down_blocks.1.attentions.1.to_out.0.weight"), [256, 256]);
    assert_eq!(shape("down_blocks.0.downsamplers.0.conv.weight"), [128, 128, 3, 3]);
    assert_eq!(shape("mid_block.attentions.0.group_norm.weight"), [256]);
    assert_eq!(shape("up_blocks.2.attentions.2.to_q.weight"), [256, 256]);
    assert_eq!(shape("up_blocks.3.resnets.2.conv1.weight"), [128, 256, 3, 3]);
    assert_eq!(shape("up_blocks.2.upsamplers.0.conv.bias"), [256]);
    assert_eq!(shape("conv_out.weight"), [3, 128, 3, 3]);
    assert!(vars.keys().all(|k| !k.contains("__")), "no renamed duplicates");
    assert!(!vars.contains_key("up_blocks.3.upsamplers.0.conv.weight"));
    assert!(!vars.contains_key("up_blocks.1.attentions.0.to_q.weight"), "no attention at 8x8");
}

#[test]
fn a_second_unet_on_the_same_path_is_refused() {
    let vs = VarStore::new(Device::Cpu);
    UNet::new(&vs.root(), &UNetConfig::tiny()).unwrap();
    let err = UNet::new(&vs.root(), &UNetConfig::tiny()).err().unwrap();
    assert!(matches!(err, UNetError::PathInUse { .. }), "{err}");
    // A fresh sub-path is fine.
    UNet::new(&vs.root().sub("ema"), &UNetConfig::tiny()).unwrap();
}

/// A network with every parameter random, so that every branch contributes.
fn randomized(config: &UNetConfig) -> (VarStore, UNet) {
    tch::manual_seed(7);
    let vs = VarStore::new(Device::Cpu);
    let unet = UNet::new(&vs.root(), config).unwrap();
    tch::no_grad(|| {
        for mut t in vs.trainable_variables() {
            let fan_in = (t.numel() as i64 / t.size()[0]).max(1);
            let _ = t.uniform_(-1.0 / (fan_in as f64).sqrt(), 1.0 / (fan_in as f64).sqrt());
        }
    });
    (vs, unet)
}

#[test]
fn odd_configs_give_the_input_shape() {
    let configs = [
        small(8, vec![1, 2], vec![8, 4]),
        small(8, vec![1, 1, 2, 2], vec![1]),
        UNetConfig { in_channels: 1, out_channels: 2, ch: 16, num_groups: 8, num_res_blocks: 3, ..small(16, vec![1, 3, 2], vec![16, 4]) },
        small(32, vec![1], vec![]),
    ];
    for config in configs {
        let (_vs, unet) = randomized(&config);
        let s = config.image_size;
        let x = Tensor::randn([3, config.in_channels, s, s], (Kind::Float, Device::Cpu));
        let out = unet.forward_t(&x, &Tensor::from_slice(&[0i64, 17, 999]), false);
        assert_eq!(out.size(), [3, config.out_channels, s, s], "{config:?}");
        assert!(out.isfinite().all().int64_value(&[]) == 1);
        // Fully convolutional: a larger input of a valid size works too.
        let x2 = Tensor::randn([1, config.in_channels, 2 * s, 2 * s], (Kind::Float, Device::Cpu));
        assert_eq!(unet.forward_t(&x2, &Tensor::from_slice(&[5i64]), true).size(), [1, config.out_channels, 2 * s, 2 * s]);
    }
}

#[test]
fn dropout_acts_only_in_training() {
    let config = UNetConfig { dropout: 0.5, ..small(8, vec![1, 2], vec![4]) };
    let (_vs, unet) = randomized(&config);
    let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[10i64, 900]);
    let eval = |train| tch::no_grad(|| unet.forward_t(&x, &t, train));
    assert!(eval(false).equal(&eval(false)), "eval is deterministic");
    let (a, b) = (eval(true), eval(true));
    assert!(!a.equal(&b), "training draws new dropout masks");
    assert!(!a.equal(&eval(false)));
    // Without dropout, train and eval agree exactly.
    let (_vs, plain) = randomized(&UNetConfig { dropout: 0.0, ..config });
    let run = |train| tch::no_grad(|| plain.forward_t(&x, &t, train));
    assert!(run(true).equal(&run(false)));
}

#[test]
fn timesteps_change_the_output_and_gradients_reach_every_parameter() {
    let (vs, unet) = randomized(&small(8, vec![1, 2], vec![4]));
    let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let a = unet.forward_t(&x, &Tensor::from_slice(&[0i64, 0]), true);
    let b = tch::no_grad(|| unet.forward_t(&x, &Tensor::from_slice(&[999i64, 999]), false));
    assert!(a.f_sub(&b).unwrap().abs().max().double_value(&[]) > 1e-3);
    a.square().mean(Kind::Float).backward();
    for (name, t) in vs.variables() {
        let g = t.grad();
        assert!(g.defined() && g.abs().max().double_value(&[]) > 0.0, "no gradient for {name}");
    }
}
