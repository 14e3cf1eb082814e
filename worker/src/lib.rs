//! `ddpm-worker`: one device's share of a training run.
//!
//! It registers with the coordinator, builds the run's model on its device,
//! fetches the current state, then loops: take the next piece of work,
//! compute (a training step's gradient, or images), all-reduce, apply the
//! same update as every other replica. `main` parses flags and calls [`run`].
//!
//! - `lib.rs`: [`run`], the reconnect loop
//! - `options.rs`: [`WorkerOptions`], what it was asked to do
//! - `client.rs`: connecting, and downloading state streams
//! - `directive.rs`: what a failed coordinator call tells the worker to do
//! - `session.rs`: one membership: register, ready, heartbeats, the work loop
//! - `training.rs`: the training state and one training step
//! - `exchange.rs`: [`exchange::GradientExchange`], the all-reduce seam, and
//!   its coordinator backend; `ring_exchange.rs`: the worker-to-worker one
//! - `tasks/`: job tasks (sampling, evaluation, analysis) and their results
//! - `device/`: the thread that owns the model and every tensor
//! - `telemetry.rs`: its metrics and health on `--metrics-listen`
//! - `gpus.rs`: `--gpus`, one child process per GPU; `ports.rs`: each
//!   child's own metrics and peer ports
//! - `nccl_check.rs`: an NCCL run's refusal of a worker that cannot be a rank;
//!   `nccl_exchange.rs`: the NCCL backend (not yet run on a GPU)

pub mod client;
pub mod device;
mod directive;
pub mod exchange;
mod fault;
pub mod gpus;
mod nccl_check;
mod nccl_exchange;
pub mod options;
mod peer_state;
pub mod ports;
mod ring_exchange;
mod session;
mod shard;
mod spares;
mod tasks;
pub mod telemetry;
mod training;
mod upload;

use std::time::Duration;

use client::CoordinatorGone;
use device::DeviceHandle;
use options::WorkerOptions;
use session::SessionEnd;

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The coordinator ended the run: it is finished.
    RunOver,
    /// SIGTERM or Ctrl-C before the run's end.
    Stopped,
}

/// Backoff between reconnects to a lost coordinator: from the first
/// value, doubling, up to the last.
const RECONNECT_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// Runs the worker until the run ends or `shutdown` resolves. A coordinator
/// that drops this worker is joined again; one that is lost (killed,
/// restarting, the network) is reconnected to with backoff, for up to
/// `connect_timeout` each time, and joined again: a restarted coordinator
/// gets its workers back without anyone restarting them.
pub async fn run(opts: WorkerOptions, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<Ended> {
    tokio::pin!(shutdown);
    // The device (and its model) outlives a membership: a worker dropped
    // and registering again for the same run config reuses it.
    let mut device: Option<(String, DeviceHandle)> = None;
    // The training step whose state that device holds (0: none): a new
    // coordinator of the same run may go on from it (a worker-to-worker backend).
    let mut held_step = 0u64;
    let mut backoff = RECONNECT_BACKOFF.0;
    // Since when every attempt to join failed on a broken connection.
    let mut not_joined_since: Option<std::time::Instant> = None;
    loop {
        let began = std::time::Instant::now();
        let end = tokio::select! {
            r = async {
                // A fresh session secret per membership.
                let credentials = ddpm::wire::auth::Credentials::new(opts.token.clone());
                let client = client::connect(&opts.coord, &opts.tls, opts.connect_timeout, credentials.clone()).await?;
                session::session(client, &credentials, &opts, &mut device, &mut held_step).await
            } => r?,
            _ = &mut shutdown => {
                tracing::info!("shutdown requested");
                return Ok(Ended::Stopped);
            }
        };
        opts.stats.set_member(None).await;
        if !matches!(end, SessionEnd::Shutdown) {
            opts.stats.reconnecting();
        }
        if !matches!(end, SessionEnd::NotJoined(_)) {
            not_joined_since = None;
        }
        let pause = match end {
            SessionEnd::Shutdown => return Ok(Ended::RunOver),
            SessionEnd::NotJoined(reason) => {
                let since = *not_joined_since.get_or_insert(began);
                if since.elapsed() >= opts.connect_timeout {
                    return Err(CoordinatorGone {
                        verb: "join",
                        addr: opts.coord.clone(),
                        waited_s: since.elapsed().as_secs_f64(),
                        cause: reason,
                    }
                    .into());
                }
                tracing::warn!("could not join the coordinator at {} ({reason}); retrying in {:.2} s", opts.coord, backoff.as_secs_f64());
                let pause = backoff;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
                pause
            }
            SessionEnd::Dropped(reason) => {
                tracing::warn!("the coordinator dropped this worker ({reason}); registering again");
                // A pause, so that a coordinator that keeps refusing is not hammered.
                Duration::from_millis(500)
            }
            SessionEnd::Lost(reason) => {
                // A membership that lasted starts the backoff over.
                if began.elapsed() > 2 * RECONNECT_BACKOFF.1 {
                    backoff = RECONNECT_BACKOFF.0;
                }
                tracing::warn!("lost the coordinator at {} ({reason}); reconnecting in {:.2} s", opts.coord, backoff.as_secs_f64());
                let pause = backoff;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut shutdown => {
                tracing::info!("shutdown requested");
                return Ok(Ended::Stopped);
            }
        }
    }
}
