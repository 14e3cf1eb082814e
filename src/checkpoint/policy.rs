//! When to take a checkpoint: the pure decision the coordinator asks after
//! every step, at the end and on SIGTERM, from the `[checkpoint]` section
//! of the training config ([`CheckpointConfig`], in `crate::config`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::CheckpointConfig;

/// Why a checkpoint is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// The step is a multiple of `every_steps`.
    Steps,
    /// `every_minutes` passed since the last save.
    Time,
    /// The run finished.
    End,
    /// The process was asked to stop.
    Signal,
    /// The run lost what it needed to go on (every member that could
    /// complete a step's update): the coordinator's copy of its last whole
    /// step is saved for the next start.
    Salvage,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Steps => "steps",
            Reason::Time => "time",
            Reason::End => "end",
            Reason::Signal => "signal",
            Reason::Salvage => "salvage",
        })
    }
}

/// The save decisions of a [`CheckpointConfig`]; pure functions of the
/// step and the clock, so they are tested without a run.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointPolicy {
    every_steps: u64,
    every: Option<Duration>,
    at_end: bool,
    on_sigterm: bool,
}

impl CheckpointPolicy {
    pub fn new(config: &CheckpointConfig) -> Self {
        let every = (config.every_minutes > 0.0).then(|| Duration::from_secs_f64(config.every_minutes * 60.0));
        Self { every_steps: config.every_steps, every, at_end: config.at_end, on_sigterm: config.on_sigterm }
    }

    /// After step `step` finished at `now`: save if the step is a multiple
    /// of `every_steps`, or `every_minutes` passed since `last_save` (the
    /// time of the last save requested, or of the run's start / resume).
    pub fn should_save(&self, step: u64, now: Instant, last_save: Instant) -> Option<Reason> {
        if self.every_steps > 0 && step > 0 && step.is_multiple_of(self.every_steps) {
            return Some(Reason::Steps);
        }
        match self.every {
            Some(every) if now.saturating_duration_since(last_save) >= every => Some(Reason::Time),
            _ => None,
        }
    }

    /// After the last step `step`: save unless `at_end` is off or step
    /// `step` is already saved (`last_saved_step`).
    pub fn at_end(&self, step: u64, last_saved_step: Option<u64>) -> Option<Reason> {
        (self.at_end && last_saved_step != Some(step)).then_some(Reason::End)
    }

    /// On SIGTERM after step `step`: save unless `on_sigterm` is off or the
    /// step is already saved.
    pub fn on_signal(&self, step: u64, last_saved_step: Option<u64>) -> Option<Reason> {
        (self.on_sigterm && last_saved_step != Some(step)).then_some(Reason::Signal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_by_steps_time_end_and_signal() {
        let cfg = CheckpointConfig { every_steps: 100, every_minutes: 1.0, ..Default::default() };
        let p = CheckpointPolicy::new(&cfg);
        let t0 = Instant::now();
        assert_eq!(p.should_save(100, t0, t0), Some(Reason::Steps));
        assert_eq!(p.should_save(101, t0 + Duration::from_secs(59), t0), None);
        assert_eq!(p.should_save(101, t0 + Duration::from_secs(60), t0), Some(Reason::Time));
        assert_eq!(p.should_save(0, t0, t0), None);
        assert_eq!(p.at_end(500, Some(400)), Some(Reason::End));
        assert_eq!(p.at_end(500, Some(500)), None);
        assert_eq!(p.on_signal(7, None), Some(Reason::Signal));
        let off = CheckpointPolicy::new(&CheckpointConfig {
            every_steps: 0,
            every_minutes: 0.0,
            at_end: false,
            on_sigterm: false,
            ..Default::default()
        });
        assert_eq!(off.should_save(100, t0 + Duration::from_secs(1 << 20), t0), None);
        assert_eq!((off.at_end(1, None), off.on_signal(1, None)), (None, None));
    }
}
