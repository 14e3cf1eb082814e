//! The training run's configuration: one struct per component, composed into
//! [`TrainConfig`], loaded from TOML or a preset and validated once.
//!
//! Presets are the paper's recipes (docs/ddpm.md section 7) and a tiny one for
//! demos and tests:
//!
//! | preset    | model   | batch | lr    | variance   | data               |
//! |-----------|---------|-------|-------|------------|--------------------|
//! | `cifar10` | cifar10 | 128   | 2e-4  | fixedlarge | (set `--data`)     |
//! | `lsun256` | lsun256 | 64    | 2e-5  | fixedsmall | (set `--data`)     |
//! | `tiny`    | tiny    | 32    | 1e-3  | fixedlarge | `synthetic:shapes` |

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::diffusion::{DiffusionConfig, SamplerKind, VarianceType};
use crate::unet::UNetConfig;

mod sections;

pub use sections::{
    Backend, CheckpointConfig, CheckpointWriters, DataConfig, DistConfig, EvalConfig, GradDtype, InvalidField, LoopConfig, OptimConfig,
    Precision, SampleConfig, ShadowMode,
};

/// Everything that defines a training run; saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub model: UNetConfig,
    pub diffusion: DiffusionConfig,
    pub data: DataConfig,
    pub optim: OptimConfig,
    pub train: LoopConfig,
    pub dist: DistConfig,
    pub sample: SampleConfig,
    /// Evaluation every N steps while training.
    pub eval: EvalConfig,
    /// When to checkpoint and what to keep ([`CheckpointConfig`]).
    pub checkpoint: CheckpointConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self::cifar10()
    }
}
/// What a worker receives when it registers: the training config, how to
/// decode the dataset's samples, and the parameter layout it must build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub train: TrainConfig,
    pub decoder: crate::data::Decoder,
    /// Parameters of the run's model.
    pub param_count: u64,
    /// Hash of the parameter layout (`train::flat::Layout::hash`).
    pub layout_hash: u64,
    /// The run's id (`ddpm::store::run_id`): a worker keeps its device's
    /// state across coordinators only for the same run (0: unknown).
    #[serde(default)]
    pub run_id: u64,
}

/// The names `TrainConfig::preset` accepts.
pub const PRESETS: &[&str] = &["cifar10", "lsun256", "tiny"];

impl TrainConfig {
    /// The paper's CIFAR-10 recipe.
    pub fn cifar10() -> Self {
        Self {
            model: UNetConfig::cifar10(),
            diffusion: DiffusionConfig::default(),
            data: DataConfig::default(),
            optim: OptimConfig::default(),
            train: LoopConfig::default(),
            dist: DistConfig::default(),
            sample: SampleConfig::default(),
            eval: EvalConfig::default(),
            checkpoint: CheckpointConfig::default(),
        }
    }

    /// The paper's 256x256 recipe (LSUN church: 1.2M steps, fixedsmall).
    pub fn lsun256() -> Self {
        let mut c = Self::cifar10();
        c.model = UNetConfig::lsun256();
        c.diffusion.model_var_type = VarianceType::FixedSmall;
        c.optim.lr = 2e-5;
        c.train.batch_size = 64;
        c.train.steps = 1_200_000;
        c.sample.count = 16;
        c
    }

    /// A tiny run for demos and tests: the tiny U-Net on the built-in
    /// synthetic shapes, a few minutes on a CPU.
    pub fn tiny() -> Self {
        let mut c = Self::cifar10();
        c.model = UNetConfig::tiny();
        c.data.spec = Some("synthetic:shapes".parse().expect("a valid spec"));
        c.optim.lr = 1e-3;
        c.optim.warmup_steps = 50;
        c.train.batch_size = 32;
        c.train.steps = 600;
        c.train.ema_decay = 0.995;
        c.train.log_every = 20;
        // A CPU demo cannot wait for 1000 ancestral steps per image: the
        // grid uses DDIM (docs/ddpm.md section 5: fast samplers are for
        // monitoring; headline numbers need all 1000 steps).
        c.sample.count = 36;
        c.sample.sampler = SamplerKind::Ddim;
        c.sample.steps = 100;
        c
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        match name {
            "cifar10" => Ok(Self::cifar10()),
            "lsun256" => Ok(Self::lsun256()),
            "tiny" => Ok(Self::tiny()),
            _ => Err(ConfigError::UnknownPreset { name: name.into() }),
        }
    }

    /// Reads a TOML config file. Keys left out keep the values of `base`
    /// (a preset), so a file may hold only what differs from it.
    pub fn from_toml_file(path: &Path, base: &TrainConfig) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Self::from_toml_str(&text, base).map_err(|e| ConfigError::Parse { path: path.display().to_string(), reason: e.to_string() })
    }

    /// Parses TOML over `base`.
    pub fn from_toml_str(text: &str, base: &TrainConfig) -> Result<Self, toml::de::Error> {
        let overlay: toml::Value = toml::from_str(text)?;
        let mut merged = toml::Value::try_from(base).expect("TrainConfig serializes to TOML");
        merge_toml(&mut merged, overlay);
        merged.try_into()
    }

    /// Checks everything that can be checked before a run starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, reason: String| Err(ConfigError::Invalid { field: field.into(), reason });
        self.model.validate().map_err(|e| ConfigError::Invalid { field: "model".into(), reason: e.to_string() })?;
        self.diffusion.validate().map_err(|e| ConfigError::Invalid { field: "diffusion".into(), reason: e.to_string() })?;
        if self.data.spec.is_none() {
            return bad("data.spec", "no dataset: pass --data SPEC (e.g. cifar10:PATH or synthetic:shapes)".into());
        }
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return bad("optim.lr", format!("must be a positive number, got {}", o.lr));
        }
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) {
            return bad("optim.beta1/beta2", format!("must be in [0, 1), got {} and {}", o.beta1, o.beta2));
        }
        if o.eps.is_nan() || o.eps <= 0.0 {
            return bad("optim.eps", format!("must be positive, got {}", o.eps));
        }
        if o.grad_clip.is_nan() || o.grad_clip < 0.0 {
            return bad("optim.grad_clip", format!("must be >= 0 (0 disables clipping), got {}", o.grad_clip));
        }
        let t = &self.train;
        if t.batch_size == 0 {
            return bad("train.batch_size", "must be at least 1".into());
        }
        if t.steps == 0 {
            return bad("train.steps", "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&t.ema_decay) {
            return bad("train.ema_decay", format!("must be in [0, 1), got {}", t.ema_decay));
        }
        let d = &self.dist;
        if d.chunk_kib == 0 || d.chunk_kib > 16 * 1024 {
            return bad("dist.chunk_kib", format!("must be in 1..=16384 (KiB), got {}", d.chunk_kib));
        }
        for (name, v) in [
            ("dist.step_timeout_s", d.step_timeout_s),
            ("dist.heartbeat_interval_s", d.heartbeat_interval_s),
            ("dist.heartbeat_timeout_s", d.heartbeat_timeout_s),
            ("dist.ring_peer_timeout_s", d.ring_peer_timeout_s),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return bad(name, format!("must be a positive number of seconds, got {v}"));
            }
        }
        if !(d.straggler_factor >= 0.0 && d.straggler_factor.is_finite()) {
            return bad("dist.straggler_factor", format!("must be 0 (off) or a positive factor, got {}", d.straggler_factor));
        }
        if !(d.screen_factor >= 0.0 && d.screen_factor.is_finite()) {
            return bad("dist.screen_factor", format!("must be 0 (off) or a positive factor, got {}", d.screen_factor));
        }
        if !(d.straggler_min_s >= 0.0 && d.straggler_min_s.is_finite()) {
            return bad("dist.straggler_min_s", format!("must be a number of seconds >= 0, got {}", d.straggler_min_s));
        }
        if d.heartbeat_timeout_s <= d.heartbeat_interval_s {
            return bad(
                "dist.heartbeat_timeout_s",
                format!("must exceed heartbeat_interval_s ({} <= {})", d.heartbeat_timeout_s, d.heartbeat_interval_s),
            );
        }
        if d.shadow == ShadowMode::Off && d.backend == Backend::Coordinator {
            return bad(
                "dist.shadow",
                "\"off\" needs a worker-to-worker backend: with backend = \"coordinator\" every reduced gradient passes \
                 through the coordinator, which keeps its copy at no extra cost; set backend = \"ring\" or shadow = \"on\""
                    .into(),
            );
        }
        self.checkpoint.validate().map_err(|e| ConfigError::Invalid { field: e.field, reason: e.reason })?;
        let s = &self.sample;
        if s.sampler == SamplerKind::Ddim && (s.steps == 0 || s.steps as usize > self.diffusion.num_timesteps) {
            return bad("sample.steps", format!("DDIM steps must be in 1..={}, got {}", self.diffusion.num_timesteps, s.steps));
        }
        let e = &self.eval;
        if e.every_steps > 0 {
            if e.samples == 0 {
                return bad("eval.samples", "must be at least 1 (the images each evaluation draws)".into());
            }
            if e.sampler == SamplerKind::Ddim && (e.steps == 0 || e.steps as usize > self.diffusion.num_timesteps) {
                return bad("eval.steps", format!("DDIM steps must be in 1..={}, got {}", self.diffusion.num_timesteps, e.steps));
            }
            if let Some(m) = e.metrics.iter().find(|m| *m != "fid" && *m != "is") {
                return bad("eval.metrics", format!("unknown metric {m:?}: use \"fid\" and/or \"is\""));
            }
        }
        Ok(())
    }

    /// Checks that the global batch can be split across `workers`.
    pub fn check_world_size(&self, workers: usize) -> Result<(), ConfigError> {
        let b = self.train.batch_size;
        if workers == 0 {
            return Err(ConfigError::Invalid { field: "workers".into(), reason: "must be at least 1".into() });
        }
        if workers > b {
            return Err(ConfigError::Invalid {
                field: "workers".into(),
                reason: format!("{workers} workers cannot share a global batch of {b}: use at most {b} workers or a larger --batch-size"),
            });
        }
        if self.dist.require_even_shards && !b.is_multiple_of(workers) {
            return Err(ConfigError::Invalid {
                field: "train.batch_size".into(),
                reason: format!(
                    "the global batch {b} does not split evenly across {workers} workers and dist.require_even_shards is set: use a multiple of {workers}"
                ),
            });
        }
        Ok(())
    }

    /// Learning rate of (1-based) step `step` after linear warmup.
    pub fn lr_at(&self, step: u64) -> f64 {
        let w = self.optim.warmup_steps;
        if w == 0 {
            self.optim.lr
        } else {
            self.optim.lr * (step as f64 / w as f64).min(1.0)
        }
    }
}

/// Overlays `top` onto `base`, table by table.
fn merge_toml(base: &mut toml::Value, top: toml::Value) {
    match (base, top) {
        (toml::Value::Table(b), toml::Value::Table(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    // A table tagged by `kind` (an enum such as the beta
                    // schedule) whose kind the overlay changes is replaced
                    // whole: the preset's fields belong to the old kind
                    // (`start`/`end` of "linear" are no fields of "cosine").
                    Some(existing) if existing.is_table() && v.is_table() && !switches_kind(existing, &v) => merge_toml(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, t) => *b = t,
    }
}

/// Whether `top` names another `kind` than the tagged table `base`.
fn switches_kind(base: &toml::Value, top: &toml::Value) -> bool {
    matches!((base.get("kind"), top.get("kind")), (Some(old), Some(new)) if old != new)
}

/// A configuration that cannot work, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown preset {name:?}: choose one of {}", PRESETS.join(", "))]
    UnknownPreset { name: String },
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path} is not a valid training config: {reason}")]
    Parse { path: String, reason: String },
    #[error("invalid config: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

#[cfg(test)]
mod tests;
