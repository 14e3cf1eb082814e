//! What the device thread's commands carry: a training state to load, a
//! shard's gradient back, and the tasks of jobs and what they measured.
//! Plain data, so that the async side and the thread's work share it
//! without either importing the other.

use ddpm::train::sample::SampleRequest;

/// A training replica's state as sent by the coordinator, or as the
/// replica uploads it.
pub struct TrainingState {
    pub step: u64,
    pub adam_step: u64,
    pub params: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
    /// The EMA, which a replica keeps with a worker-to-worker backend.
    pub ema: Option<Vec<f32>>,
}

/// The gradient of one shard.
pub struct Computed {
    /// Mean L_simple over the shard.
    pub loss: f64,
    /// The mean gradient over the shard, flat in layout order.
    pub grad: Vec<f32>,
    /// Seconds spent on decode + forward + backward.
    pub compute_s: f64,
}

/// One analysis task (`ddpm::train::analysis`), as the device thread runs it.
#[derive(Debug)]
pub enum AnalysisTask {
    /// Rows `first_row..first_row + rows` of a progressive generation.
    Progressive { seed: u64, first_row: u64, rows: usize, snapshots: usize, batch: usize },
    /// Two decoded images, uint8 `[3, R, R]` each.
    Interpolate { a: Vec<u8>, b: Vec<u8>, t: usize, lambdas: usize, seed: u64 },
}

/// Where an evaluation task's images come from.
pub enum EvalImages {
    /// Drawn with the job's weights.
    Sample(SampleRequest),
    /// Decoded dataset images uint8 `[n, 3, R, R]` with dataset indices
    /// `first..first + n`.
    Dataset { first: u64, pixels: Vec<u8> },
}

/// One evaluation task, as the device thread runs it.
pub struct EvalTask {
    pub images: EvalImages,
    /// Pool-feature sums (FID).
    pub features: bool,
    /// Inception Score sums: (splits, images in the whole job).
    pub inception_score: Option<(usize, u64)>,
    /// The bound, with this noise seed.
    pub bpd_seed: Option<u64>,
    /// The Inception TorchScript file.
    pub inception: String,
    /// Images per forward pass of the feature network or the bound.
    pub batch: usize,
}

/// What an evaluation task measured, in the wire forms of `ddpm::eval`;
/// `None` is what the task did not ask for.
#[derive(Debug, Default, PartialEq)]
pub struct EvalOutput {
    /// The drawn images (tasks on generated images; dataset images are
    /// the coordinator's already).
    pub images: Option<Vec<u8>>,
    /// `FeatureStats` sums (FID).
    pub features: Option<Vec<u8>>,
    /// `ScoreStats` sums (Inception Score).
    pub scores: Option<Vec<u8>>,
    /// `BpdSums` (the bound).
    pub bpd: Option<Vec<u8>>,
}
