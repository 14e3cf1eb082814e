//! How much of the machine's CPU sat idle during a benchmark run's counted
//! steps, from Linux's `/proc/stat`.
//!
//! Overlapping the all-reduce with the backward pass (as PyTorch DDP does
//! with its gradient buckets) can only give back time that some core spends
//! waiting: on CPU workers the ring's copies and sums run on the same cores
//! as the backward pass. This idle time is the ceiling for that overlap on
//! the machine measured, which is why `ddpm bench dist` prints it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The machine's CPU counters: (all ticks, idle ticks), over every core.
fn cpu_ticks() -> Option<(u64, u64)> {
    parse_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// (all ticks, idle ticks) from the first line of a `/proc/stat`.
fn parse_ticks(stat: &str) -> Option<(u64, u64)> {
    // "cpu  user nice system idle iowait irq softirq steal guest guest_nice"
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // guest and guest_nice are already inside user and nice.
    let total = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

/// Lines in the run's metrics log so far: one per finished step.
fn steps_logged(metrics: &PathBuf) -> usize {
    std::fs::read_to_string(metrics).map(|s| s.lines().count()).unwrap_or(0)
}

/// Watches a run's metrics log from another thread and reads the CPU
/// counters when step `first` and step `last` are logged.
pub struct IdleWatch {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Option<f64>>,
}

impl IdleWatch {
    /// Starts watching `metrics` (which need not exist yet).
    pub fn start(metrics: PathBuf, first: usize, last: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut start = None;
            loop {
                // Read before the log, so that the log is read once more
                // after `finish` (the run may have ended just before).
                let stopping = flag.load(Ordering::Relaxed);
                let logged = steps_logged(&metrics);
                if start.is_none() && logged >= first {
                    start = cpu_ticks();
                }
                if logged >= last {
                    let ((t0, i0), (t1, i1)) = (start?, cpu_ticks()?);
                    return (t1 > t0).then(|| (i1 - i0) as f64 / (t1 - t0) as f64);
                }
                if stopping {
                    return None;
                }
                // Steps take hundreds of milliseconds: 10 ms is well inside one.
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self { stop, handle }
    }

    /// The idle fraction of all cores between the two steps, or None when
    /// the run ended before them or the counters are unreadable.
    pub fn finish(self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_counts_idle_and_iowait_of_the_first_eight_counters() {
        let stat = "cpu  100 5 20 300 7 1 2 3 50 0\ncpu0 50 2 10 150 3 0 1 1 25 0\n";
        assert_eq!(parse_ticks(stat), Some((100 + 5 + 20 + 300 + 7 + 1 + 2 + 3, 307)));
        assert_eq!(parse_ticks("cpu  1 2 x\n"), None);
        assert_eq!(parse_ticks(""), None);
    }

    #[test]
    fn a_busy_core_shows_less_idle_than_none() {
        if cpu_ticks().is_none() {
            return; // not Linux
        }
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        let watch = IdleWatch::start(metrics.clone(), 1, 2);
        std::fs::write(&metrics, "{}\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // Spin one core for a while: at most (cores - 1) / cores is idle.
        let until = std::time::Instant::now() + Duration::from_millis(500);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        std::fs::write(&metrics, "{}\n{}\n").unwrap();
        let idle = watch.finish().expect("both steps were logged");
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        assert!((0.0..=1.0).contains(&idle), "idle fraction {idle}");
        assert!(idle < (cores - 1.0) / cores + 0.35, "idle {idle} with one of {cores} cores spinning for most of the window");
    }

    #[test]
    fn a_run_that_stops_early_has_no_measure() {
        let dir = tempfile::tempdir().unwrap();
        let watch = IdleWatch::start(dir.path().join("metrics.jsonl"), 1, 2);
        assert_eq!(watch.finish(), None);
    }
}
