//! Where the run is in its life: its phase (for people and tools), whether
//! a stop was requested (SIGTERM/Ctrl-C), whether training workers may take
//! job tasks (training is over, or paused for a periodic evaluation), and
//! whether the coordinator is shutting down. Every change wakes
//! [`Lifecycle::changed_within`] waiters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::changes::Changes;

/// The phase GetStatus reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the workers of step 1.
    Waiting,
    Training,
    /// Training paused for a periodic evaluation, or finishing them.
    Evaluating,
    /// Drawing the end-of-training grid.
    Sampling,
    /// Serving jobs after the last step (`--serve`).
    Serving,
    Done,
}

impl Phase {
    pub const ALL: [Phase; 6] = [Self::Waiting, Self::Training, Self::Evaluating, Self::Sampling, Self::Serving, Self::Done];

    /// The word of `StatusReply.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Training => "training",
            Self::Evaluating => "evaluating",
            Self::Sampling => "sampling",
            Self::Serving => "serving",
            Self::Done => "done",
        }
    }
}

pub struct Lifecycle {
    phase: Mutex<Phase>,
    stop_requested: AtomicBool,
    training_over: AtomicBool,
    trainers_lent: AtomicBool,
    shutting_down: AtomicBool,
    run_finished: AtomicBool,
    changed: Changes,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            phase: Mutex::new(Phase::Waiting),
            stop_requested: AtomicBool::new(false),
            training_over: AtomicBool::new(false),
            trainers_lent: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            run_finished: AtomicBool::new(false),
            changed: Changes::default(),
        }
    }
}

impl Lifecycle {
    fn set(&self, flag: &AtomicBool, value: bool) {
        flag.store(value, Ordering::SeqCst);
        self.changed.notify();
    }

    pub fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_phase(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
        self.changed.notify();
    }

    /// SIGTERM/Ctrl-C: finish the step, checkpoint, exit.
    pub fn request_stop(&self) {
        self.set(&self.stop_requested, true);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst)
    }

    /// Training (and its grid) is over: training workers take job tasks.
    pub fn end_training(&self) {
        self.set(&self.training_over, true);
    }

    pub fn training_over(&self) -> bool {
        self.training_over.load(Ordering::SeqCst)
    }

    /// While training pauses for a periodic evaluation, training workers
    /// take job tasks too.
    pub fn lend_trainers(&self, lent: bool) {
        self.set(&self.trainers_lent, lent);
    }

    /// Whether training workers may take job tasks now.
    pub fn trainers_take_jobs(&self) -> bool {
        self.training_over() || self.trainers_lent.load(Ordering::SeqCst)
    }

    /// The coordinator stops; `finished`: because the run is over (workers
    /// exit) rather than stopped or failed (workers wait for its restart).
    pub fn begin_shutdown(&self, finished: bool) {
        self.set(&self.run_finished, finished);
        self.set(&self.shutting_down, true);
    }

    /// The coordinator shuts down because the run is over.
    pub fn run_finished(&self) -> bool {
        self.run_finished.load(Ordering::SeqCst)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Waits for the next change, or `timeout`.
    pub async fn changed_within(&self, timeout: Duration) {
        self.changed.within(timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainers_take_jobs_when_training_is_over_or_they_are_lent() {
        let l = Lifecycle::default();
        assert_eq!(l.phase().as_str(), "waiting");
        assert!(!l.trainers_take_jobs());
        l.lend_trainers(true);
        assert!(l.trainers_take_jobs());
        l.lend_trainers(false);
        assert!(!l.trainers_take_jobs());
        l.end_training();
        assert!(l.trainers_take_jobs() && l.training_over());
    }

    #[tokio::test]
    async fn a_stop_request_wakes_waiters() {
        let l = std::sync::Arc::new(Lifecycle::default());
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move {
                while !l.stop_requested() {
                    l.changed_within(Duration::from_secs(30)).await;
                }
            })
        };
        tokio::task::yield_now().await;
        l.request_stop();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").unwrap();
    }
}
