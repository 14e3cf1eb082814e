//! Starting the run again in this process when a start lost the state of
//! its last steps: every worker that held it is gone
//! ([`crate::training::lost`]). Exiting 1 would leave the run stopped
//! until someone (a Kubernetes Job, a person) starts the coordinator
//! again; instead it does what such a restart does, without leaving: the
//! start's server and tasks stop as a stopping coordinator's do (workers
//! still alive are told the run goes on and wait), the lease is handed
//! back, and the run starts again on the same addresses, from the live
//! replicas' step when some come back, else from the coordinator's
//! salvaged copy or the newest checkpoint.
//!
//! It does so only while each loss comes at a later step than the one
//! before: workers that die at the same step every time (a bad batch, a
//! driver fault) end the process with exit 1 instead of a loop that never
//! trains a new step.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::training::lost::loss;

/// The losses of the run's starts so far in this process.
#[derive(Debug, Default)]
pub struct Restarts {
    /// The run's step at the last loss.
    lost_at: Option<u64>,
    count: u32,
}

impl Restarts {
    /// Whether to start the run again after a start ended with `e`: the
    /// start lost the state of its last steps, no stop was requested, and
    /// the run got past the step of the loss before (logged either way).
    pub fn again(&mut self, e: &anyhow::Error, stop_requested: bool) -> bool {
        let Some(lost) = loss(e) else { return false };
        if stop_requested {
            return false;
        }
        let step = lost.step;
        if let Some(before) = self.lost_at.filter(|&before| step <= before) {
            tracing::error!(
                step,
                before,
                "{e:#}. The run lost every worker again without getting past step {before}, where it lost them last time: \
                 this coordinator does not start it again itself (exit 1); look at the workers' logs for what ends them there"
            );
            return false;
        }
        self.lost_at = Some(step);
        self.count += 1;
        tracing::warn!(
            step,
            restart = self.count,
            "{}. This coordinator starts the run again itself, in this process and on the same address: \
             it resumes from {} once workers join (or from the step live replicas hold)",
            lost.what,
            lost.resumes_from
        );
        true
    }
}

/// The stop signal (SIGTERM, Ctrl-C), shared by every start of the run.
pub struct StopSignal {
    requested: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl StopSignal {
    /// Watches `shutdown` for the run's whole life.
    pub fn watch(shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, requested) = watch::channel(false);
        let task = tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        Self { requested, task }
    }

    pub fn requested(&self) -> bool {
        *self.requested.borrow()
    }

    /// Resolves once a stop is requested, for one start.
    pub fn future(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut requested = self.requested.clone();
        async move {
            if requested.wait_for(|&r| r).await.is_err() {
                // The watch ended with the run: no stop will come.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for StopSignal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `addr` again, the port the last start served (it was closed
/// when that start stopped its server); retries for a few seconds while
/// the old socket lets go of it.
pub async fn rebind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if tries < 50 => {
                tries += 1;
                tracing::debug!(%addr, "cannot listen on the run's address yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => anyhow::bail!("cannot listen on {addr} again to start the run again: {e}; start ddpm-coord again on this run"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::lost::{ShadowLost, StateLost};

    fn state_lost(step: u64) -> anyhow::Error {
        StateLost { step, checkpoint: 4 }.into()
    }

    #[test]
    fn a_run_starts_again_while_each_loss_comes_later() {
        let mut r = Restarts::default();
        assert!(r.again(&state_lost(5), false));
        assert!(r.again(&ShadowLost { why: "feeders gone".into(), saved: 4, run_step: 7 }.into(), false));
        // Lost again at or before the last loss's step: no progress, exit 1.
        assert!(!r.again(&state_lost(7), false));
        assert!(!r.again(&state_lost(6), false));
    }

    #[test]
    fn a_stop_or_another_error_ends_the_run() {
        let mut r = Restarts::default();
        assert!(!r.again(&state_lost(5), true));
        assert!(!r.again(&anyhow::anyhow!("the store is full"), false));
        assert!(r.again(&state_lost(5), false), "the refusals above counted as losses");
    }

    #[tokio::test]
    async fn every_start_sees_one_stop_signal() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = StopSignal::watch(async move {
            let _ = rx.await;
        });
        let first = stop.future();
        assert!(!stop.requested());
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), first).await.expect("the first start's future resolves");
        assert!(stop.requested());
        tokio::time::timeout(Duration::from_secs(5), stop.future()).await.expect("a later start's resolves at once");
    }

    #[tokio::test]
    async fn a_run_that_is_never_stopped_is_never_told_to_stop() {
        let stop = StopSignal::watch(async {});
        // The signal resolved at once here: the future does too.
        tokio::time::timeout(Duration::from_secs(5), stop.future()).await.unwrap();
        let never = StopSignal::watch(std::future::pending());
        assert!(tokio::time::timeout(Duration::from_millis(100), never.future()).await.is_err());
    }

    #[tokio::test]
    async fn the_same_address_is_served_again() {
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = first.local_addr().unwrap();
        drop(first);
        let again = rebind(addr).await.unwrap();
        assert_eq!(again.local_addr().unwrap(), addr);
    }
}
