//! Unit tests of the config: presets, TOML overlays, validation.

use super::*;

#[test]
fn presets_validate() {
    for name in PRESETS {
        let mut c = TrainConfig::preset(name).unwrap();
        if c.data.spec.is_none() {
            c.data.spec = Some("synthetic:shapes".parse().unwrap());
        }
        c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn unknown_preset_lists_the_valid_ones() {
    let e = TrainConfig::preset("cifar100").unwrap_err().to_string();
    assert!(e.contains("cifar100") && e.contains("cifar10, lsun256, tiny"), "{e}");
}

#[test]
fn toml_overlays_a_preset() {
    let c = TrainConfig::from_toml_str("[train]\nbatch_size = 8\n[optim]\nlr = 1e-3\n", &TrainConfig::tiny()).unwrap();
    assert_eq!(c.train.batch_size, 8);
    assert_eq!(c.optim.lr, 1e-3);
    assert_eq!(c.model, UNetConfig::tiny());
    assert_eq!(c.data.spec.as_ref().unwrap().to_string(), "synthetic:shapes");
}

#[test]
fn toml_switches_a_tagged_table_to_another_kind_and_merges_within_one() {
    use crate::diffusion::BetaSchedule;
    let cosine = "[diffusion.beta_schedule]\nkind = \"cosine\"\ns = 0.01\n";
    let c = TrainConfig::from_toml_str(cosine, &TrainConfig::tiny()).unwrap();
    assert_eq!(c.diffusion.beta_schedule, BetaSchedule::Cosine { s: 0.01 });
    // The same kind keeps the preset's other fields.
    let c = TrainConfig::from_toml_str("[diffusion.beta_schedule]\nend = 0.03\n", &TrainConfig::tiny()).unwrap();
    assert_eq!(c.diffusion.beta_schedule, BetaSchedule::Linear { start: 1e-4, end: 0.03 });
    // A new kind without its fields is refused, naming what is missing.
    let e = TrainConfig::from_toml_str("[diffusion.beta_schedule]\nkind = \"cosine\"\n", &TrainConfig::tiny()).unwrap_err();
    assert!(e.to_string().contains("missing field `s`"), "{e}");
}

#[test]
fn toml_rejects_unknown_keys_and_bad_types() {
    let e = TrainConfig::from_toml_str("[train]\nbatchsize = 8\n", &TrainConfig::tiny()).unwrap_err();
    assert!(e.to_string().contains("batchsize"), "{e}");
    let e = TrainConfig::from_toml_str("[train]\nbatch_size = \"big\"\n", &TrainConfig::tiny()).unwrap_err();
    assert!(e.to_string().contains("batch_size") || e.to_string().contains("invalid type"), "{e}");
}

#[test]
fn validation_names_the_field() {
    let mut c = TrainConfig::tiny();
    c.train.batch_size = 0;
    assert!(c.validate().unwrap_err().to_string().contains("train.batch_size"));
    let mut c = TrainConfig::cifar10();
    assert!(c.validate().unwrap_err().to_string().contains("--data"));
    c.data.spec = Some("synthetic:shapes".parse().unwrap());
    // A sampler is a word parsed where the config is read: an unknown
    // one is refused there, naming the field.
    let e = TrainConfig::from_toml_str("[sample]\nsampler = \"euler\"\n", &c).unwrap_err();
    assert!(e.to_string().contains("sample.sampler"), "{e}");
    let mut c = TrainConfig::tiny();
    c.eval.metrics = vec!["kid".into()];
    c.validate().expect("[eval] is only checked when it is on");
    c.eval.every_steps = 100;
    assert!(c.validate().unwrap_err().to_string().contains("eval.metrics"));
    c.eval.metrics = vec!["fid".into()];
    c.eval.steps = 0;
    assert!(c.validate().unwrap_err().to_string().contains("eval.steps"));
    let c = TrainConfig::from_toml_str(
        "[eval]
every_steps = 10
samples = 500
",
        &TrainConfig::tiny(),
    )
    .unwrap();
    assert_eq!((c.eval.every_steps, c.eval.samples, c.eval.sampler.as_str(), c.eval.steps), (10, 500, "ddim", 50));
}

#[test]
fn world_size_checks() {
    let mut c = TrainConfig::tiny();
    c.train.batch_size = 10;
    c.check_world_size(3).unwrap();
    assert!(c.check_world_size(11).unwrap_err().to_string().contains("at most 10"));
    c.dist.require_even_shards = true;
    assert!(c.check_world_size(3).unwrap_err().to_string().contains("multiple of 3"));
    c.check_world_size(5).unwrap();
}

#[test]
fn warmup_is_linear_then_flat() {
    let c = TrainConfig::cifar10();
    assert_eq!(c.lr_at(1), 2e-4 / 5000.0);
    assert_eq!(c.lr_at(2500), 1e-4);
    assert_eq!(c.lr_at(5000), 2e-4);
    assert_eq!(c.lr_at(800_000), 2e-4);
}

#[test]
fn validation_names_the_key() {
    assert!(CheckpointConfig::default().validate().is_ok());
    let e = CheckpointConfig { keep_last: 0, ..Default::default() }.validate().unwrap_err();
    assert_eq!(e.field, "checkpoint.keep_last");
    let e = CheckpointConfig { every_minutes: -1.0, ..Default::default() }.validate().unwrap_err();
    assert_eq!(e.field, "checkpoint.every_minutes");
}

#[test]
fn precision_and_backend_parse_and_name_the_key_when_wrong() {
    let base = TrainConfig::tiny();
    assert_eq!(base.train.precision, Precision::Fp32, "the paper's fp32 is the default");
    let c = TrainConfig::from_toml_str("[train]\nprecision = \"bf16\"\n[dist]\nbackend = \"nccl\"\n", &base).unwrap();
    assert_eq!((c.train.precision, c.dist.backend), (Precision::Bf16, Backend::Nccl));
    c.validate().unwrap();
    let c = TrainConfig::from_toml_str("[dist]\nbackend = \"auto\"\n", &base).unwrap();
    assert_eq!(c.dist.backend, Backend::Auto);
    let e = TrainConfig::from_toml_str("[train]\nprecision = \"fp16\"\n", &base).unwrap_err().to_string();
    assert!(e.contains("train.precision") && e.contains("fp32") && e.contains("bf16"), "{e}");
    let e = TrainConfig::from_toml_str("[dist]\nbackend = \"gloo\"\n", &base).unwrap_err().to_string();
    assert!(e.contains("dist.backend") && e.contains("nccl") && e.contains("auto"), "{e}");
    // A config saved before the key existed (a checkpoint's) reads as fp32.
    let old = "[train]\nbatch_size = 8\n";
    assert_eq!(TrainConfig::from_toml_str(old, &base).unwrap().train.precision, Precision::Fp32);
}

#[test]
fn auto_is_nccl_when_every_member_is_a_gpu_else_the_ring() {
    assert_eq!(Backend::Auto.resolve(false), Backend::Ring);
    assert_eq!(Backend::Auto.resolve(true), Backend::Nccl);
    for b in [Backend::Coordinator, Backend::Ring, Backend::Nccl] {
        assert_eq!(b.resolve(true), b);
        assert_eq!(b.resolve(false), b);
    }
    assert!(Backend::Ring.may_use_ring() && Backend::Auto.may_use_ring());
    assert!(!Backend::Coordinator.may_use_ring() && !Backend::Nccl.may_use_ring());
}
