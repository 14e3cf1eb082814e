//! Config defaults, serde names and validation messages.

use crate::diffusion::{BetaSchedule, DiffusionConfig, DiffusionError, GaussianDiffusion, LossType, ModelMeanType, VarianceType};

fn invalid(edit: impl FnOnce(&mut DiffusionConfig)) -> DiffusionError {
    let mut config = DiffusionConfig::default();
    edit(&mut config);
    let err = config.validate().expect_err("config should be rejected");
    // new() must refuse what validate() refuses (compared as text: NaN != NaN).
    let from_new = GaussianDiffusion::new(&config).expect_err("new should fail too");
    assert_eq!(from_new.to_string(), err.to_string());
    err
}

#[test]
fn default_is_the_papers_cifar10_setting() {
    let c = DiffusionConfig::default();
    assert_eq!(c.num_timesteps, 1000);
    assert_eq!(c.beta_schedule, BetaSchedule::Linear { start: 1e-4, end: 0.02 });
    assert_eq!(c.model_mean_type, ModelMeanType::Eps);
    assert_eq!(c.model_var_type, VarianceType::FixedLarge);
    assert_eq!(c.loss_type, LossType::Mse);
    assert!(c.validate().is_ok());
}

#[test]
fn toml_names_and_round_trip() {
    let text = r#"
        num_timesteps = 20
        beta_schedule = { kind = "cosine", s = 0.008 }
        model_mean_type = "x0"
        model_var_type = "fixedsmall"
        loss_type = "kl"
    "#;
    let c: DiffusionConfig = toml::from_str(text).expect("parses");
    assert_eq!(c.num_timesteps, 20);
    assert_eq!(c.beta_schedule, BetaSchedule::Cosine { s: 0.008 });
    assert_eq!((c.model_mean_type, c.model_var_type, c.loss_type), (ModelMeanType::X0, VarianceType::FixedSmall, LossType::Kl));
    let back: DiffusionConfig = toml::from_str(&toml::to_string(&c).expect("serializes")).expect("reparses");
    assert_eq!(back, c);

    let json = serde_json::to_value(DiffusionConfig::default()).expect("serializes");
    assert_eq!(json["model_var_type"], "fixedlarge");
    assert_eq!(json["model_mean_type"], "eps");
    assert_eq!(json["loss_type"], "mse");
    assert_eq!(json["beta_schedule"]["kind"], "linear");
    assert_eq!(serde_json::from_str::<ModelMeanType>("\"mu\"").expect("mu"), ModelMeanType::Mu);
}

#[test]
fn missing_fields_default_and_unknown_fields_fail() {
    let c: DiffusionConfig = toml::from_str("num_timesteps = 50").expect("parses");
    assert_eq!(c, DiffusionConfig { num_timesteps: 50, ..DiffusionConfig::default() });
    let err = toml::from_str::<DiffusionConfig>("num_timestep = 50").expect_err("typo rejected");
    assert!(err.to_string().contains("num_timestep"), "{err}");
    let err = toml::from_str::<DiffusionConfig>(r#"beta_schedule = { kind = "linear", start = 1e-4, end = 0.02, s = 1.0 }"#)
        .expect_err("stray field rejected");
    assert!(err.to_string().contains('s'), "{err}");
    assert!(toml::from_str::<DiffusionConfig>(r#"model_var_type = "fixed_large""#).is_err());
}

#[test]
fn too_few_timesteps() {
    for t in [0, 1] {
        let err = invalid(|c| c.num_timesteps = t);
        assert_eq!(err, DiffusionError::TooFewTimesteps(t));
        let msg = err.to_string();
        assert!(msg.contains("num_timesteps") && msg.contains("at least 2"), "{msg}");
    }
    assert!(DiffusionConfig { num_timesteps: 2, ..DiffusionConfig::default() }.validate().is_ok());
}

#[test]
fn linear_betas_must_rise_inside_0_1() {
    let err = invalid(|c| c.beta_schedule = BetaSchedule::Linear { start: 0.02, end: 0.02 });
    assert!(err.to_string().contains("start (0.02) must be less than end (0.02)"), "{err}");
    let err = invalid(|c| c.beta_schedule = BetaSchedule::Linear { start: 0.03, end: 0.02 });
    assert!(matches!(err, DiffusionError::BetaStartNotBelowEnd { .. }));
    for (start, end, field) in
        [(0.0, 0.02, "start"), (-1e-4, 0.02, "start"), (1e-4, 1.0, "end"), (f64::NAN, 0.02, "start"), (1e-4, f64::INFINITY, "end")]
    {
        let err = invalid(|c| c.beta_schedule = BetaSchedule::Linear { start, end });
        assert!(matches!(err, DiffusionError::BetaOutOfRange { field: f, .. } if f == field), "{start} {end}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("beta_schedule.{field}")) && msg.contains("(0, 1)"), "{msg}");
    }
}

#[test]
fn cosine_offset_must_be_finite_and_non_negative() {
    for s in [-0.1, f64::NAN, f64::INFINITY] {
        let err = invalid(|c| c.beta_schedule = BetaSchedule::Cosine { s });
        assert!(err.to_string().contains("beta_schedule.s"), "{err}");
    }
    assert!(DiffusionConfig { beta_schedule: BetaSchedule::Cosine { s: 0.0 }, ..DiffusionConfig::default() }.validate().is_ok());
}

#[test]
fn betas_too_small_for_float64_are_refused_by_new() {
    let c = DiffusionConfig { beta_schedule: BetaSchedule::Linear { start: 1e-20, end: 0.02 }, ..DiffusionConfig::default() };
    assert!(c.validate().is_ok(), "validate only checks the range");
    let err = GaussianDiffusion::new(&c).expect_err("1 - 1e-20 == 1 in float64");
    assert!(matches!(err, DiffusionError::DegenerateBeta { index: 0, .. }), "{err}");
    assert!(err.to_string().contains("beta[0]"), "{err}");
}
