//! `[dist] shadow = "off"`: the coordinator keeps no copy of the state, so
//! when it needs one (a checkpoint, a job's weights, a joiner) it asks a
//! replica idle at the run's step (UploadState); with the shadow on, a
//! new coordinator asks one for the step it goes on from. The replica copies its
//! state and EMA to the host on the device thread, in order with its
//! steps, so the copy is exactly that step's; the upload itself runs in
//! the background while the replica goes on training.

use ddpm::proto;
use ddpm::wire::state::{self, TRAINING_WITH_EMA};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;
use crate::device::messages::TrainingState;
use crate::device::DeviceHandle;
use crate::directive::CallResult;

/// Fault injection for the tests (`tests/ring_faults.rs`):
/// `DDPM_FAULT_HOLD_UPLOAD=STEP:FILE` makes the first worker asked for the
/// state of step STEP hold it forever, heartbeats going on, as a replica
/// that hangs or dies before its upload arrives.
fn upload_held(step: u64) -> bool {
    crate::fault::first_at_step("DDPM_FAULT_HOLD_UPLOAD", step)
}

/// Takes the replica's state of `asked` and starts sending it.
pub async fn upload_state(client: &Client, worker_id: u64, dev: &DeviceHandle, asked: u64) -> CallResult<()> {
    if upload_held(asked) {
        tracing::warn!(step = asked, "fault injection: holding the state of step {asked}");
        std::future::pending::<()>().await;
    }
    let (exported, param_checksum) = dev.export().await?;
    if exported.step != asked {
        // The coordinator refuses it and asks another replica.
        tracing::warn!(asked, step = exported.step, "asked for the state of step {asked}, but this replica is at step {}", exported.step);
    }
    let header = state_header(worker_id, dev, &exported, param_checksum);
    tokio::spawn(push(client.clone(), header, exported));
    Ok(())
}

/// The header of `exported` (with its EMA) sent by replica `worker_id`,
/// whose parameters' digest is `param_checksum`.
pub fn state_header(worker_id: u64, dev: &DeviceHandle, exported: &TrainingState, param_checksum: u64) -> proto::StateHeader {
    proto::StateHeader {
        step: exported.step,
        adam_step: exported.adam_step,
        tensors: TRAINING_WITH_EMA.iter().map(|s| s.to_string()).collect(),
        elements: dev.param_count,
        layout_hash: dev.layout_hash,
        param_checksum,
        worker_id,
    }
}

/// Streams `exported` after `header`; the coordinator says whether it took it.
async fn push(mut client: Client, header: proto::StateHeader, exported: TrainingState) {
    let step = header.step;
    let (tx, rx) = mpsc::channel(4);
    let produce = async move {
        let ema = exported.ema.as_deref().unwrap_or_default();
        for chunk in state::chunks(vec![&exported.params, &exported.adam_m, &exported.adam_v, ema], header) {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    };
    let (sent, ()) = tokio::join!(client.push_state(ReceiverStream::new(rx)), produce);
    match sent {
        Ok(_) => tracing::info!(step, "sent the state of step {step} to the coordinator"),
        Err(s) => tracing::warn!(step, "the coordinator did not take the state of step {step}: {}", s.message()),
    }
}
