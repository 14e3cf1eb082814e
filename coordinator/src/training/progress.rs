//! The progress line a person follows: every `log_every` steps, the mean
//! loss, throughput, compute and all-reduce time over the window since the
//! last line, the workers and the time left.

use crate::step_record::StepMetrics;

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
    /// `bytes` is one member's gradient on the wire; `eta_s` the time left
    /// (none: unknown).
    pub fn log_and_reset(&mut self, step: u64, total: u64, workers: usize, bytes: usize, eta_s: Option<f64>) {
        let n = self.steps.max(1) as f64;
        let round = |x: f64, digits: i32| {
            let f = 10f64.powi(digits);
            (x * f).round() / f
        };
        let loss = round(self.loss / n, 4);
        let images_per_s = round(self.images_per_s(), 1);
        let compute_ms = round(1e3 * self.compute_s / n, 1);
        let allreduce_ms = round(1e3 * self.allreduce_s / n, 1);
        let mb_s = if self.allreduce_s > 0.0 { round(bytes as f64 * n / self.allreduce_s / 1e6, 0) } else { 0.0 };
        let eta = eta_s.map_or_else(|| "unknown".to_string(), format_duration);
        // One line a person can follow, its numbers as fields (so that
        // --log-format json has them as numbers); the same numbers per step
        // are in metrics.jsonl.
        tracing::info!(
            step,
            total,
            loss,
            images_per_s,
            compute_ms,
            allreduce_ms,
            allreduce_mb_per_s = mb_s,
            workers,
            eta = %eta,
            eta_s = eta_s.map(f64::round),
            "step {step}/{total}"
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
