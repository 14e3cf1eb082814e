//! The progress line a person follows: every `log_every` steps, the mean
//! loss, throughput, compute and all-reduce time over the window since the
//! last line, the workers and the time left.

use std::time::Instant;

use super::StepMetrics;

/// Rolling numbers since the last progress line.
#[derive(Default)]
pub struct Progress {
    steps: u64,
    images: u64,
    seconds: f64,
    compute_s: f64,
    allreduce_s: f64,
    loss: f64,
}

impl Progress {
    /// Adds step `m` of a global batch of `batch` images.
    pub fn add(&mut self, m: &StepMetrics, batch: usize) {
        self.steps += 1;
        self.images += batch as u64;
        self.seconds += m.step_s;
        self.compute_s += m.compute_s;
        self.allreduce_s += m.allreduce_s;
        self.loss += m.loss;
    }

    /// Images per second over the window.
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.seconds.max(1e-9)
    }

    /// Logs the line for the window ending at `step` and starts a new window.
    /// `bytes` is one member's gradient on the wire.
    pub fn log_and_reset(&mut self, step: u64, total: u64, workers: usize, bytes: usize, started: Instant) {
        let n = self.steps.max(1) as f64;
        let imgs = self.images_per_s();
        let allreduce_ms = 1e3 * self.allreduce_s / n;
        let mb_s = if self.allreduce_s > 0.0 { bytes as f64 * n / self.allreduce_s / 1e6 } else { 0.0 };
        let elapsed = started.elapsed().as_secs_f64();
        let eta = elapsed / step as f64 * (total - step) as f64;
        // One line a person can follow; the same numbers per step are in metrics.jsonl.
        tracing::info!(
            "step {step}/{total}  loss {:.4}  {imgs:.1} img/s  compute {:.0} ms  all-reduce {allreduce_ms:.1} ms ({mb_s:.0} MB/s per worker)  workers {workers}  eta {}",
            self.loss / n,
            1e3 * self.compute_s / n,
            format_duration(eta),
        );
        *self = Self::default();
    }
}

/// Whether step `step` gets a progress line: the first of this start, the
/// last, and every `log_every`-th.
pub fn line_due(step: u64, resumed_from: u64, total: u64, log_every: u64) -> bool {
    step == resumed_from + 1 || step == total || step.is_multiple_of(log_every.max(1))
}

pub fn format_duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_first_last_and_every_n() {
        let due: Vec<u64> = (11..=30).filter(|&s| line_due(s, 10, 30, 5)).collect();
        assert_eq!(due, vec![11, 15, 20, 25, 30]);
        assert_eq!(format_duration(3725.0), "1h02m");
        assert_eq!(format_duration(65.0), "1m05s");
    }
}
