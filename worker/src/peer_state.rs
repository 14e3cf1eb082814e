//! Training state straight from a peer replica, not through the
//! coordinator (the bytes on the link: `ddpm::ring::state_link`).
//!
//! The joiner's side: ask the coordinator (SyncFromPeer) which replica
//! sends which step with which secret, take that connection on the peer
//! listener the ring uses, check the state against the digest the replicas
//! agreed on, load it. Anything that goes wrong (no replica idle in time,
//! a sender that dies, lies or is late) costs only the peer path: the
//! caller fetches the state through the coordinator as before.
//!
//! The sender's side (SendState): copy the state and EMA of the step it is
//! idle at to the host on the device thread, in order with its steps, and
//! send it in the background while it trains on.

use std::time::Duration;

use ddpm::proto;
use ddpm::ring::frame::{Hello, KEY_BYTES};
use ddpm::ring::state_link::{self, Expected};
use ddpm::ring::{LinkFault, PeerListener};
use ddpm::train::param_digest;
use ddpm::wire::state;

use crate::client::Client;
use crate::device::messages::TrainingState;
use crate::device::DeviceHandle;
use crate::directive::CallResult;

/// How long a sender tries to reach the joiner's listener.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Fault injection for the tests (`tests/ring_faults.rs`):
/// `DDPM_FAULT_PEER_STATE_ALTER=STEP:FILE` makes the first replica told to
/// send the state of a step from STEP on alter one parameter first (and claim the
/// altered digest), as a replica whose memory went bad or that lies.
fn alter_sent(step: u64) -> bool {
    crate::fault::first_from_step("DDPM_FAULT_PEER_STATE_ALTER", step)
}

/// Takes the training state from the peer the coordinator names; the
/// step loaded, or `None` when the peer path did not work (said in the
/// log): the caller then fetches it through the coordinator.
pub async fn sync(client: &Client, worker_id: u64, dev: &DeviceHandle, peers: &PeerListener) -> Option<u64> {
    let req = proto::PeerSyncRequest { worker_id };
    let a = match client.clone().sync_from_peer(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            tracing::info!("taking the training state through the coordinator: {}", s.message());
            return None;
        }
    };
    match receive(&a, dev, peers).await {
        Ok(state) => {
            let step = state.step;
            match dev.load(state).await {
                Ok(()) => {
                    tracing::info!(step, from = a.from_worker, "training state loaded from worker {}, peer to peer", a.from_worker);
                    Some(step)
                }
                Err(e) => {
                    tracing::warn!(step, "could not load the state worker {} sent: {e}", a.from_worker);
                    None
                }
            }
        }
        Err(e) => {
            tracing::warn!(
                step = a.step,
                from = a.from_worker,
                "the state of step {} from worker {} is refused: it {e}; taking it through the coordinator",
                a.step,
                a.from_worker
            );
            None
        }
    }
}

/// The state `a` promises, from the connection its sender opens.
async fn receive(a: &proto::PeerSyncReply, dev: &DeviceHandle, peers: &PeerListener) -> Result<TrainingState, LinkFault> {
    let key: [u8; KEY_BYTES] = a.key[..].try_into().map_err(|_| LinkFault::malformed("came with a key of the wrong length"))?;
    let timeout = Duration::from_secs_f64(a.timeout_s.clamp(1.0, 3600.0));
    let want = Expected {
        step: a.step,
        elements: dev.param_count,
        layout_hash: dev.layout_hash,
        param_checksum: (a.param_checksum != 0).then_some(a.param_checksum),
    };
    let received = async {
        let mut stream = peers.accept_from(a.epoch, &key, a.from_worker, timeout).await?;
        state_link::receive(&mut stream, &want).await
    };
    let r = tokio::time::timeout(timeout, received)
        .await
        .map_err(|_| LinkFault::stalled(format!("did not send the whole state within {:.0} s", timeout.as_secs_f64())))??;
    let n = dev.param_count as usize;
    let [params, adam_m, adam_v, ema] =
        <[Vec<f32>; 4]>::try_from(state::split(&r.bytes, 4, n).map_err(|e| LinkFault::malformed(e.to_string()))?)
            .expect("split gives 4 tensors");
    Ok(TrainingState { step: r.header.step, adam_step: r.header.adam_step, params, adam_m, adam_v, ema: Some(ema) })
}

/// Takes the replica's state of `order.step` and starts sending it to the
/// joiner `order` names.
pub async fn send_state(worker_id: u64, dev: &DeviceHandle, order: proto::SendState) -> CallResult<()> {
    let (mut exported, mut param_checksum) = dev.export().await?;
    if exported.step != order.step {
        // The joiner refuses it and fetches the state through the coordinator.
        tracing::warn!(
            asked = order.step,
            step = exported.step,
            "told to send the state of step {}, but this replica is at step {}",
            order.step,
            exported.step
        );
    }
    if alter_sent(order.step) {
        tracing::warn!(step = order.step, "fault injection: altering the state sent to worker {}", order.to_worker);
        exported.params[0] += 1.0;
        param_checksum = param_digest::of_values(&exported.params);
    }
    let header = crate::upload::state_header(worker_id, dev, &exported, param_checksum);
    tokio::spawn(async move {
        let (to, step) = (order.to_worker, header.step);
        match send(worker_id, &order, &header, &exported).await {
            Ok(()) => tracing::info!(step, "sent the state of step {step} to worker {to}, peer to peer"),
            Err(e) => tracing::warn!(step, "could not send the state of step {step} to worker {to}: it {e}"),
        }
    });
    Ok(())
}

async fn send(worker_id: u64, order: &proto::SendState, header: &proto::StateHeader, s: &TrainingState) -> Result<(), LinkFault> {
    let key: [u8; KEY_BYTES] = order.key[..].try_into().map_err(|_| LinkFault::malformed("came with a key of the wrong length"))?;
    let hello = Hello { epoch: order.epoch, from: worker_id, key };
    let mut stream = ddpm::ring::connect(&order.endpoint, &hello, DIAL_TIMEOUT).await?;
    let ema = s.ema.as_deref().unwrap_or_default();
    let tensors = [&s.params[..], &s.adam_m[..], &s.adam_v[..], ema];
    state_link::send(&mut stream, header, &tensors).await.map_err(|e| LinkFault::io("took the state only in part", &e))
}
