//! The sections of [`TrainConfig`](super::TrainConfig), one struct per
//! component, each with its documented `Default` (the `cifar10` preset's).
//!
//! Over 450 lines and still one concept: the config file's schema, every
//! key with its meaning and default where a user looks for it.

use serde::{Deserialize, Serialize};

use crate::diffusion::SamplerKind;

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

/// Adam with linear warmup and global-norm clipping (docs/ddpm.md section 7).
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
    /// Arithmetic of the forward and backward passes: `fp32` (the paper's)
    /// or `bf16` (libtorch autocast; parameters, gradients, Adam and the EMA
    /// stay float32). See [`Precision`].
    pub precision: Precision,
}

/// `[train] precision`: what the U-Net's forward and backward compute in.
///
/// `bf16` runs the forward pass under libtorch's autocast
/// (`src/train/autocast.rs`): convolutions and matrix products take
/// bfloat16 copies of their inputs and of the float32 weights, other ops
/// follow their inputs' type, the loss is float32, and the backward pass
/// follows the forward's types back to float32 gradients of the float32
/// master weights. The update (clipping norm, Adam, the EMA) is the same
/// float32 code as with `fp32`, so every replica still applies the same
/// bits from the same reduced gradient. bfloat16 keeps float32's exponent
/// range, so no loss scaling is needed (unlike float16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Float32 throughout (the default, as in the paper).
    #[default]
    Fp32,
    /// Autocast to bfloat16 for the forward and backward passes.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// How the work is distributed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistConfig {
    /// How each step's gradient is reduced: `coordinator` (every member
    /// streams its gradient to the coordinator, which sums and screens),
    /// `ring` (worker to worker over direct connections; the coordinator
    /// receives one reduced gradient per step, a slice from each member),
    /// `nccl` (GPU workers through NCCL; see [`Backend::Nccl`]) or `auto`
    /// (see [`Backend::resolve`]).
    pub backend: Backend,
    /// Ring backend: seconds a member waits for its predecessor's next
    /// frame before it reports it as stalled (and the attempt is redone
    /// without it). Covers the spread of the members' compute times.
    pub ring_peer_timeout_s: f64,
    /// Ring backend: members whose processes share a host's shared memory
    /// (/dev/shm) pass the gradient through it instead of TCP (f32 only;
    /// tried per link, TCP where it fails; same bits either way).
    pub ring_shm: bool,
    /// Gradient wire format: `f32` (exact) or `bf16` (half the bytes).
    pub grad_dtype: GradDtype,
    /// Size of one gradient chunk on the wire, in KiB.
    pub chunk_kib: usize,
    /// Seconds a step may take before its missing members are dropped.
    pub step_timeout_s: f64,
    /// Seconds between worker heartbeats.
    pub heartbeat_interval_s: f64,
    /// Seconds of silence after which a worker is dropped (a worker whose
    /// connection closes is dropped at once).
    pub heartbeat_timeout_s: f64,
    /// Straggler policy: once every other member of a step has delivered
    /// its gradient, the ones still computing get this many times the
    /// others' time (at least `straggler_min_s`), then they are dropped and
    /// the step is redone without them (0: wait for `step_timeout_s`).
    pub straggler_factor: f64,
    /// The least time a straggler is given after the others delivered.
    pub straggler_min_s: f64,
    /// Gradient screening: a member's chunk may have at most this many
    /// times the members' median norm of that chunk in the last applied
    /// step (or of this step, with three or more members) before it is
    /// refused and the step redone without it (0: no norm bound; a lone
    /// non-finite chunk is always refused).
    pub screen_factor: f64,
    /// Compare every replica's parameter digest (`train::param_digest`)
    /// with the others' and the coordinator's every this many steps (0:
    /// never). Every step by default: the digest is read in place, on the
    /// host's threads or by tensor ops on the device.
    pub checksum_every: u64,
    /// Steps the coordinator's own copy of the state (the shadow) may lag
    /// behind the run before the next step waits for it. With the ring its
    /// update arrives after each step, fed by the members while the next
    /// one computes; a crash of every worker loses at most this many steps
    /// plus the one in flight.
    pub shadow_lag: u64,
    /// Whether the coordinator keeps its own per-step copy of the state
    /// with a worker-to-worker backend: `on` (fed by the members after each
    /// step, bounded by `shadow_lag`) or `off` (the replicas are the truth:
    /// they keep the EMA too, and the coordinator takes the state from one
    /// of them only when a checkpoint, a job or a joiner needs it). The
    /// coordinator backend always keeps it: the reduced gradient is in its
    /// hands anyway.
    pub shadow: ShadowMode,
    /// Require the global batch to split evenly across the workers.
    pub require_even_shards: bool,
}

/// Whether the coordinator keeps a per-step copy of the state (`[dist] shadow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShadowMode {
    /// Fed after every step: a crash of every worker loses at most
    /// `shadow_lag` steps; costs the coordinator the model's bytes and an
    /// Adam + EMA pass per step.
    On,
    /// No per-step copy: the coordinator's received bytes per step do not
    /// grow with the model; the state comes from a replica when needed.
    Off,
}

impl ShadowMode {
    pub fn name(self) -> &'static str {
        match self {
            ShadowMode::On => "on",
            ShadowMode::Off => "off",
        }
    }
}

/// The reduction backend (`[dist] backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Coordinator,
    Ring,
    /// NCCL between GPU workers (`libnccl.so.2`, loaded at run time by
    /// `ddpm::nccl`; the worker's exchange in `nccl_exchange.rs`, not yet
    /// run on a GPU). Every training member must be a CUDA worker that can
    /// load the library; one that cannot refuses when it registers, before
    /// the run starts.
    Nccl,
    /// NCCL when every member of a step is a GPU worker, the ring
    /// otherwise ([`Backend::resolve`]).
    Auto,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Coordinator => "coordinator",
            Backend::Ring => "ring",
            Backend::Nccl => "nccl",
            Backend::Auto => "auto",
        }
    }

    /// Whether the replicas keep the EMA beside their parameters and Adam
    /// (every backend but the star, whose workers keep nothing between
    /// steps that the coordinator does not): a replica's state is then the
    /// whole training state, which a new coordinator may go on from.
    pub fn replicas_keep_ema(self) -> bool {
        self != Backend::Coordinator
    }

    /// The backend a step's members use: `auto` is NCCL when every member
    /// can be an NCCL rank (a GPU worker that loaded NCCL), else the ring
    /// (which carries any device's gradient through host memory); the
    /// others are themselves.
    pub fn resolve(self, every_member_nccl: bool) -> Backend {
        match self {
            Backend::Auto if every_member_nccl => Backend::Nccl,
            Backend::Auto => Backend::Ring,
            b => b,
        }
    }

    /// Whether a training worker may be asked to run the ring, and so must
    /// register with a peer endpoint: `ring`, and `auto` (which falls back
    /// to it whenever a CPU worker is among the members).
    pub fn may_use_ring(self) -> bool {
        matches!(self, Backend::Ring | Backend::Auto)
    }
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
/// images (DDIM by default: fast samplers are for monitoring, docs/ddpm.md section 5),
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
/// and keeps 2 (docs/ddpm.md section 7). Here a checkpoint is taken every 30
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
    /// Who writes a checkpoint's parameters, EMA and Adam moments when the
    /// coordinator keeps no copy of them (`[dist] shadow = "off"`).
    pub writers: CheckpointWriters,
}

/// Who writes a checkpoint's tensors with the shadow off (`[checkpoint] writers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointWriters {
    /// Each replica writes a 1/N shard straight to the run's store (the
    /// sharded layout); the coordinator checks them and writes the
    /// manifest. Its workers need the store's credentials. A periodic
    /// checkpoint only: the last one of a start, which no step waits for,
    /// goes through the coordinator.
    Replicas,
    /// One replica sends the whole state to the coordinator, which writes
    /// it (the whole layout).
    Coordinator,
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
            writers: CheckpointWriters::Replicas,
        }
    }
}

/// A key of a section whose value is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The key as written in the TOML file (`checkpoint.keep_last`).
    pub field: String,
    /// What is allowed, and what was given.
    pub reason: String,
}

impl CheckpointConfig {
    /// Checks the values; the error names the key and says what is allowed.
    pub fn validate(&self) -> Result<(), InvalidField> {
        let bad = |k: &str, reason: String| Err(InvalidField { field: format!("checkpoint.{k}"), reason });
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
        Self { batch_size: 128, steps: 800_000, seed: 0, ema_decay: 0.9999, log_every: 100, precision: Precision::Fp32 }
    }
}

impl Default for DistConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Coordinator,
            ring_peer_timeout_s: 30.0,
            ring_shm: true,
            grad_dtype: GradDtype::F32,
            chunk_kib: 4096,
            step_timeout_s: 600.0,
            heartbeat_interval_s: 2.0,
            heartbeat_timeout_s: 30.0,
            straggler_factor: 4.0,
            straggler_min_s: 30.0,
            screen_factor: 100.0,
            checksum_every: 1,
            shadow_lag: 2,
            shadow: ShadowMode::On,
            require_even_shards: false,
        }
    }
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self { at_end: true, count: 64, sampler: SamplerKind::Ancestral, steps: 50, seed: 0 }
    }
}
