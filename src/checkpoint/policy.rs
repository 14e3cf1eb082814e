//! When to take a checkpoint and what to keep: `[checkpoint]` of the
//! training config, and the pure decision the coordinator asks after every
//! step, at the end and on SIGTERM.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `[checkpoint]`: saving and retention.
///
/// Defaults, for the paper's runs: the official code saves every 1600 s
/// and keeps 2 (DDPM.md section 7). Here a checkpoint is taken every 30
/// minutes of wall clock (at most half an hour of work lost to a
/// rescheduled pod) and every 20,000 steps (predictable steps to evaluate;
/// about 16 minutes at the paper's 21 steps/s for CIFAR-10, so about 40 per
/// 800k-step run), at the end and on SIGTERM. The last 2 are kept, like
/// the official code, plus every 100,000th step as a milestone (8 for
/// CIFAR-10, 572 MB each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Save when the step is a multiple of this (0: never by steps).
    pub every_steps: u64,
    /// Save when this many minutes passed since the last save (0: never by time).
    pub every_minutes: f64,
    /// Save after the last step.
    pub at_end: bool,
    /// Save when asked to stop (SIGTERM, Ctrl-C) before exiting.
    pub on_sigterm: bool,
    /// Keep the newest this many complete checkpoints (at least 1).
    pub keep_last: usize,
    /// Also keep every checkpoint whose step is a multiple of this (0: none).
    pub milestone_every: u64,
    /// Attempts to upload one checkpoint before reporting it failed.
    pub upload_attempts: u32,
    /// Seconds before the first retry of a failed upload; doubles each time.
    pub retry_initial_s: f64,
    /// The longest wait between two attempts, in seconds.
    pub retry_max_s: f64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_steps: 20_000,
            every_minutes: 30.0,
            at_end: true,
            on_sigterm: true,
            keep_last: 2,
            milestone_every: 100_000,
            upload_attempts: 8,
            retry_initial_s: 2.0,
            retry_max_s: 120.0,
        }
    }
}

impl CheckpointConfig {
    /// Checks the values; the error names the key and says what is allowed.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, r: String| Err((format!("checkpoint.{k}"), r));
        if !(self.every_minutes >= 0.0 && self.every_minutes.is_finite()) {
            return bad("every_minutes", format!("must be >= 0 (0 disables time-based saves), got {}", self.every_minutes));
        }
        if self.keep_last == 0 {
            return bad("keep_last", "must be at least 1: the newest checkpoint is what a run resumes from".into());
        }
        if self.upload_attempts == 0 {
            return bad("upload_attempts", "must be at least 1".into());
        }
        if !(self.retry_initial_s > 0.0 && self.retry_initial_s.is_finite()) {
            return bad("retry_initial_s", format!("must be a positive number of seconds, got {}", self.retry_initial_s));
        }
        if !(self.retry_max_s >= self.retry_initial_s && self.retry_max_s.is_finite()) {
            return bad("retry_max_s", format!("must be >= retry_initial_s ({}), got {}", self.retry_initial_s, self.retry_max_s));
        }
        Ok(())
    }
}

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
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Steps => "steps",
            Reason::Time => "time",
            Reason::End => "end",
            Reason::Signal => "signal",
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
        if self.every_steps > 0 && step > 0 && step % self.every_steps == 0 {
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

    #[test]
    fn validation_names_the_key() {
        assert!(CheckpointConfig::default().validate().is_ok());
        let e = CheckpointConfig { keep_last: 0, ..Default::default() }.validate().unwrap_err();
        assert_eq!(e.0, "checkpoint.keep_last");
        let e = CheckpointConfig { every_minutes: -1.0, ..Default::default() }.validate().unwrap_err();
        assert_eq!(e.0, "checkpoint.every_minutes");
    }
}
