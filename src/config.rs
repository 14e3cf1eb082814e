//! The training run's configuration: one struct per component, composed into
//! [`TrainConfig`], loaded from TOML or a preset and validated once.
//!
//! Presets are the paper's recipes (DDPM.md section 7) and a tiny one for
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

/// Which data and how it is augmented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset spec (`cifar10:PATH`, `lsun:PATH`, `folder:PATH`,
    /// `synthetic:NAME`; see [`crate::data::DatasetSpec`]). The paper's
    /// presets leave it unset: a run must say what it trains on.
    pub spec: Option<crate::data::DatasetSpec>,
    /// Random horizontal flip, on in the paper (off for LSUN bedroom).
    pub random_flip: bool,
}

/// Adam with linear warmup and global-norm clipping (DDPM.md section 7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    /// Steps of linear warmup: step s (1-based) uses lr * min(s / warmup, 1).
    pub warmup_steps: u64,
    /// Global L2 norm the gradient is clipped to; 0 disables clipping.
    pub grad_clip: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// The training loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopConfig {
    /// Global batch size, split across the workers.
    pub batch_size: usize,
    /// Optimizer steps to train for.
    pub steps: u64,
    /// The run seed: data order and every per-sample random choice derive from it.
    pub seed: u64,
    /// EMA decay per optimizer step.
    pub ema_decay: f64,
    /// Log a progress line every this many steps.
    pub log_every: u64,
}

/// How the work is distributed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistConfig {
    /// Gradient wire format: `f32` (exact) or `bf16` (half the bytes).
    pub grad_dtype: GradDtype,
    /// Size of one gradient chunk on the wire, in KiB.
    pub chunk_kib: usize,
    /// Seconds a step may take before its missing members are dropped.
    pub step_timeout_s: f64,
    /// Seconds between worker heartbeats.
    pub heartbeat_interval_s: f64,
    /// Seconds of silence after which a worker is dropped.
    pub heartbeat_timeout_s: f64,
    /// Compare every replica's parameter checksum with the coordinator's
    /// every this many steps (0: never).
    pub checksum_every: u64,
    /// Require the global batch to split evenly across the workers.
    pub require_even_shards: bool,
}

/// Gradient wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradDtype {
    F32,
    Bf16,
}

/// Sampling done by the training run itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleConfig {
    /// Draw a grid from the EMA weights when training ends.
    pub at_end: bool,
    /// Images in the grid.
    pub count: u64,
    /// `ancestral` (Algorithm 2, all T steps) or `ddim`.
    pub sampler: SamplerKind,
    /// DDIM steps (ignored by the ancestral sampler).
    pub steps: u32,
    /// Seed of the sampling noise.
    pub seed: u64,
}

/// Evaluation while training: every `every_steps` steps the coordinator
/// submits a job on the EMA weights of that step that draws `samples`
/// images (DDIM by default: fast samplers are for monitoring, DDPM.md 5),
/// keeps their grid, and with an Inception file measures `metrics` on them;
/// the results are appended to the run's metrics log with the step. The
/// job runs on eval workers (`ddpm-worker --role eval`) while training goes
/// on; without any, training pauses at that step while the training workers
/// run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// 0: no evaluation during training.
    pub every_steps: u64,
    /// Images drawn each time (the FID's sample count).
    pub samples: u64,
    /// `ddim` or `ancestral`.
    pub sampler: SamplerKind,
    /// DDIM steps.
    pub steps: u32,
    /// Seed of the sampling noise (the same images' noise every time, so
    /// successive grids show the same samples improving).
    pub seed: u64,
    /// Images per forward pass (0: the job default, 16).
    pub batch: u32,
    /// The Inception TorchScript file, as a path on the workers. Empty: only
    /// the grid.
    pub inception: String,
    /// `fid` and/or `is`.
    pub metrics: Vec<String>,
    /// Inception Score splits.
    pub is_splits: u32,
    /// FID reference: a pytorch-fid / TTUR `.npz` on the coordinator, or a
    /// dataset spec (empty: the training set) and how many of its images
    /// (0: all). Computed statistics are kept for the coordinator's life.
    pub reference_stats: String,
    pub reference_data: String,
    pub reference_images: u64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every_steps: 0,
            samples: 1000,
            sampler: SamplerKind::Ddim,
            steps: 50,
            seed: 0,
            batch: 0,
            inception: String::new(),
            metrics: vec!["fid".into()],
            is_splits: 10,
            reference_stats: String::new(),
            reference_data: String::new(),
            reference_images: 0,
        }
    }
}

/// `[checkpoint]`: saving and retention.
///
/// Defaults, for the paper's runs: the official code saves every 1600 s
/// and keeps 2 (DDPM.md section 7). Here a checkpoint is taken every 30
/// minutes of wall clock (at most half an hour of work lost to a
/// rescheduled pod) and every 20,000 steps (predictable steps to evaluate;
/// about 16 minutes at the paper's 21 steps/s for CIFAR-10, so about 40 per
/// 800k-step run), at the end and on SIGTERM. The last 2 are kept, like
/// the official code, plus every 100,000th step as a milestone (8 for
/// CIFAR-10, 572 MB each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Save when the step is a multiple of this (0: never by steps).
    pub every_steps: u64,
    /// Save when this many minutes passed since the last save (0: never by time).
    pub every_minutes: f64,
    /// Save after the last step.
    pub at_end: bool,
    /// Save when asked to stop (SIGTERM, Ctrl-C) before exiting.
    pub on_sigterm: bool,
    /// Keep the newest this many complete checkpoints (at least 1).
    pub keep_last: usize,
    /// Also keep every checkpoint whose step is a multiple of this (0: none).
    pub milestone_every: u64,
    /// Attempts to upload one checkpoint before reporting it failed.
    pub upload_attempts: u32,
    /// Seconds before the first retry of a failed upload; doubles each time.
    pub retry_initial_s: f64,
    /// The longest wait between two attempts, in seconds.
    pub retry_max_s: f64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_steps: 20_000,
            every_minutes: 30.0,
            at_end: true,
            on_sigterm: true,
            keep_last: 2,
            milestone_every: 100_000,
            upload_attempts: 8,
            retry_initial_s: 2.0,
            retry_max_s: 120.0,
        }
    }
}

impl CheckpointConfig {
    /// Checks the values; the error names the key and says what is allowed.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, r: String| Err((format!("checkpoint.{k}"), r));
        if !(self.every_minutes >= 0.0 && self.every_minutes.is_finite()) {
            return bad("every_minutes", format!("must be >= 0 (0 disables time-based saves), got {}", self.every_minutes));
        }
        if self.keep_last == 0 {
            return bad("keep_last", "must be at least 1: the newest checkpoint is what a run resumes from".into());
        }
        if self.upload_attempts == 0 {
            return bad("upload_attempts", "must be at least 1".into());
        }
        if !(self.retry_initial_s > 0.0 && self.retry_initial_s.is_finite()) {
            return bad("retry_initial_s", format!("must be a positive number of seconds, got {}", self.retry_initial_s));
        }
        if !(self.retry_max_s >= self.retry_initial_s && self.retry_max_s.is_finite()) {
            return bad("retry_max_s", format!("must be >= retry_initial_s ({}), got {}", self.retry_initial_s, self.retry_max_s));
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self::cifar10()
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { spec: None, random_flip: true }
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { lr: 2e-4, warmup_steps: 5000, grad_clip: 1.0, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self { batch_size: 128, steps: 800_000, seed: 0, ema_decay: 0.9999, log_every: 100 }
    }
}

impl Default for DistConfig {
    fn default() -> Self {
        Self {
            grad_dtype: GradDtype::F32,
            chunk_kib: 4096,
            step_timeout_s: 600.0,
            heartbeat_interval_s: 2.0,
            heartbeat_timeout_s: 30.0,
            checksum_every: 100,
            require_even_shards: false,
        }
    }
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self { at_end: true, count: 64, sampler: SamplerKind::Ancestral, steps: 50, seed: 0 }
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
        // grid uses DDIM (DDPM.md section 5: fast samplers are for
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
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Self::from_toml_str(&text, base)
            .map_err(|e| ConfigError::Parse { path: path.display().to_string(), reason: e.to_string() })
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
        self.diffusion
            .validate()
            .map_err(|e| ConfigError::Invalid { field: "diffusion".into(), reason: e.to_string() })?;
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
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return bad(name, format!("must be a positive number of seconds, got {v}"));
            }
        }
        if d.heartbeat_timeout_s <= d.heartbeat_interval_s {
            return bad(
                "dist.heartbeat_timeout_s",
                format!("must exceed heartbeat_interval_s ({} <= {})", d.heartbeat_timeout_s, d.heartbeat_interval_s),
            );
        }
        self.checkpoint.validate().map_err(|(field, reason)| ConfigError::Invalid { field, reason })?;
        let s = &self.sample;
        if s.sampler == SamplerKind::Ddim && (s.steps == 0 || s.steps as usize > self.diffusion.num_timesteps) {
            return bad(
                "sample.steps",
                format!("DDIM steps must be in 1..={}, got {}", self.diffusion.num_timesteps, s.steps),
            );
        }
        let e = &self.eval;
        if e.every_steps > 0 {
            if e.samples == 0 {
                return bad("eval.samples", "must be at least 1 (the images each evaluation draws)".into());
            }
            if e.sampler == SamplerKind::Ddim && (e.steps == 0 || e.steps as usize > self.diffusion.num_timesteps) {
                return bad(
                    "eval.steps",
                    format!("DDIM steps must be in 1..={}, got {}", self.diffusion.num_timesteps, e.steps),
                );
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
                    Some(existing) if existing.is_table() && v.is_table() => merge_toml(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, t) => *b = t,
    }
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
mod tests {
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
        let c = TrainConfig::from_toml_str("[eval]
every_steps = 10
samples = 500
", &TrainConfig::tiny()).unwrap();
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
        assert_eq!(e.0, "checkpoint.keep_last");
        let e = CheckpointConfig { every_minutes: -1.0, ..Default::default() }.validate().unwrap_err();
        assert_eq!(e.0, "checkpoint.every_minutes");
    }
}
