//! The gRPC client of the coordinator: connecting with the endpoint
//! settings bulk transfers need, and downloading state streams (training
//! state, a job's pinned weights) into flat tensors.

use std::time::{Duration, Instant};

use ddpm::proto::{self, coordinator_client::CoordinatorClient};
use ddpm::runtime::error_chain;
use ddpm::wire::tls::{is_tls_failure, ClientTls};
use ddpm::wire::{self, auth::Credentials};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::directive::{CallResult, Directed};

/// The coordinator stayed unreachable for `--connect-timeout`: gone or
/// never there. A type of its own so that `main` exits with
/// [`ddpm::exit::NO_COORDINATOR`], which a supervisor tells from a crash.
#[derive(Debug, thiserror::Error)]
#[error("cannot {verb} the coordinator at {addr} within {waited_s:.0} s (--connect-timeout): {cause}")]
pub struct CoordinatorGone {
    /// "reach" (no connection) or "join" (connections broke while joining).
    pub verb: &'static str,
    pub addr: String,
    pub waited_s: f64,
    pub cause: String,
}

/// The coordinator's client; cheap to clone (one HTTP/2 connection). Every
/// call carries the worker token and, once registered, the session secret.
pub type Client = CoordinatorClient<InterceptedService<Channel, Credentials>>;

/// Connects, retrying until `timeout` (the coordinator may start after
/// its workers), with `credentials` on every call.
pub async fn connect(addr: &str, tls: &ClientTls, timeout: Duration, credentials: Credentials) -> anyhow::Result<Client> {
    // Gradients and states are streamed in MiB chunks: large windows and
    // frames keep the pipe full; keep-alives notice a dead coordinator.
    let endpoint = tls
        .endpoint(addr)?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(wire::MAX_FRAME_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let started = Instant::now();
    loop {
        match endpoint.connect().await {
            Ok(ch) => {
                return Ok(CoordinatorClient::with_interceptor(ch, credentials)
                    .max_decoding_message_size(wire::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(wire::MAX_MESSAGE_BYTES))
            }
            // A TLS failure (an untrusted certificate, a wrong name) will
            // not heal by waiting: say what it is at once.
            Err(e) if is_tls_failure(&e) => anyhow::bail!("TLS with the coordinator at {addr} failed: {}", error_chain(&e)),
            Err(e) if started.elapsed() < timeout => {
                tracing::debug!("coordinator at {addr} not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(CoordinatorGone {
                    verb: "reach",
                    addr: addr.to_string(),
                    waited_s: started.elapsed().as_secs_f64(),
                    cause: e.to_string(),
                }
                .into())
            }
        }
    }
}

/// Downloads a state stream (`kind`; `job_id` for a job's pinned weights,
/// 0 otherwise) into its header and named flat tensors.
pub async fn fetch_state(
    client: &mut Client,
    worker_id: u64,
    kind: proto::StateKind,
    job_id: u64,
) -> CallResult<(proto::StateHeader, Vec<Vec<f32>>)> {
    const CONTEXT: &str = "fetching the state";
    let mut stream =
        client.fetch_state(proto::FetchStateRequest { worker_id, kind: kind as i32, job_id }).await.directed(CONTEXT)?.into_inner();
    let mut header = None;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.directed(CONTEXT)?;
        if let Some(h) = chunk.header {
            bytes.reserve(h.tensors.len() * h.elements as usize * 4);
            header = Some(h);
        }
        bytes.extend_from_slice(&chunk.data);
    }
    let header = header.ok_or_else(|| anyhow::anyhow!("state stream without a header"))?;
    let tensors = wire::state::split(&bytes, header.tensors.len(), header.elements as usize).map_err(anyhow::Error::from)?;
    Ok((header, tensors))
}

#[cfg(test)]
mod tests {
    use ddpm::wire::{self, state};

    #[test]
    fn a_state_stream_splits_into_its_tensors() {
        let bytes = wire::f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let t = state::split(&bytes, 3, 2).unwrap();
        assert_eq!(t, vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.0]]);
        let e = state::split(&bytes[..20], 3, 2).unwrap_err();
        assert_eq!(e.to_string(), "state stream has 20 bytes, expected 24 (3 tensors of 2 float32)");
        assert_eq!(state::split(&[], 2, 0).unwrap(), vec![Vec::<f32>::new(); 2]);
    }
}
