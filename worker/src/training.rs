//! A training replica's side of the run: loading the training state the
//! coordinator sends, and one training step (the shard's gradient on the
//! device, the exchange through a [`GradientExchange`] backend, the same
//! update on every replica).

use bytes::Bytes;
use ddpm::proto;
use ddpm::wire::state;

use crate::client::{self, Client};
use crate::device::messages::TrainingState;
use crate::device::DeviceHandle;
use crate::directive::CallResult;
use crate::exchange::{Exchanged, GradientExchange};

/// Loads the training state into the device: from a peer replica when
/// this worker has a peer listener and one can send it, else (and when
/// that fails) through the coordinator; returns its step.
pub async fn fetch_training_state(
    client: &mut Client,
    worker_id: u64,
    dev: &DeviceHandle,
    peers: Option<&ddpm::ring::PeerListener>,
) -> CallResult<u64> {
    if let Some(peers) = peers {
        if let Some(step) = crate::peer_state::sync(client, worker_id, dev, peers).await {
            return Ok(step);
        }
    }
    fetch_from_coordinator(client, worker_id, dev).await
}

/// Downloads the training state through the coordinator (with the EMA
/// when the run's replicas keep it); returns its step.
async fn fetch_from_coordinator(client: &mut Client, worker_id: u64, dev: &DeviceHandle) -> CallResult<u64> {
    let (h, mut t) = client::fetch_state(client, worker_id, proto::StateKind::Training, 0).await?;
    let ema = if h.tensors == state::TRAINING_WITH_EMA { t.pop() } else { None };
    let [params, adam_m, adam_v] = <[Vec<f32>; 3]>::try_from(t)
        .ok()
        .filter(|_| h.tensors.len() >= 3 && h.tensors[..3] == state::TRAINING)
        .ok_or_else(|| anyhow::anyhow!("unexpected training state tensors {:?}", h.tensors))?;
    dev.load(TrainingState { step: h.step, adam_step: h.adam_step, params, adam_m, adam_v, ema }).await?;
    tracing::info!(step = h.step, "training state loaded");
    Ok(h.step)
}

/// How a training step ended.
#[derive(Debug)]
pub enum StepEnd {
    /// The update is applied: the replica is at the assignment's step;
    /// its shard's compute took `compute_s`.
    Applied { compute_s: f64 },
    /// This attempt was abandoned (it is redone): nothing applied.
    Abandoned(String),
    /// This worker's gradient was refused: it must register again.
    Rejected(String),
    /// The run ended during the step.
    RunOver(String),
    /// The coordinator was lost during the step.
    Lost(String),
}

/// Computes the shard's gradient, exchanges it, applies the outcome.
pub async fn train_step(
    exchange: &mut impl GradientExchange,
    dev: &DeviceHandle,
    a: &proto::TrainAssignment,
    samples: Vec<(u64, Bytes)>,
) -> anyhow::Result<StepEnd> {
    let computed = dev.compute(a.step, samples).await?;
    let compute_s = computed.compute_s;
    let (grad, outcome) = match exchange.exchange(a, computed).await? {
        Exchanged::Reduced { grad, outcome } => (grad, outcome),
        Exchanged::Abandoned(reason) => return Ok(StepEnd::Abandoned(reason)),
        Exchanged::Rejected(reason) => return Ok(StepEnd::Rejected(reason)),
        Exchanged::RunOver(reason) => return Ok(StepEnd::RunOver(reason)),
        Exchanged::Lost(reason) => return Ok(StepEnd::Lost(reason)),
    };
    if !outcome.apply {
        tracing::warn!(step = a.step, "non-finite gradient: skipping this update, as every replica does");
    }
    dev.apply(a.step, grad, outcome).await?;
    Ok(StepEnd::Applied { compute_s })
}
