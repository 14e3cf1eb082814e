//! "Something changed": the signal a component raises after every change
//! that others may be waiting for. Waiters re-check what they wait for
//! after each wake-up, or after a timeout, so a missed wake-up costs at
//! most the timeout and a spurious one costs a re-check.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
pub struct Changes(Notify);

impl Changes {
    /// Wakes everyone waiting now.
    pub fn notify(&self) {
        self.0.notify_waiters();
    }

    /// A future that resolves at the next change; armed when created, so
    /// that a change between creating it and awaiting it is not missed.
    pub fn next(&self) -> impl Future<Output = ()> + '_ {
        let mut notified = Box::pin(self.0.notified());
        notified.as_mut().enable();
        notified
    }

    /// Waits for the next change, or `timeout`.
    pub async fn within(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.next()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_armed_waiter_sees_a_change_made_before_it_awaits() {
        let c = Changes::default();
        let next = c.next();
        c.notify();
        tokio::time::timeout(Duration::from_secs(1), next).await.expect("woken");
        let started = std::time::Instant::now();
        c.within(Duration::from_millis(20)).await;
        assert!(started.elapsed() >= Duration::from_millis(20), "no change: the timeout ends the wait");
    }
}
