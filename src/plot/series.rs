//! The numbers a panel draws: a run's rows as (step, value) series, their
//! moving average, and the thinning that keeps a million-step run as cheap
//! to draw as its shape needs.

use crate::store::metrics_rows::{EvalRow, StepRow};

/// Points in step order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub x: Vec<f64>,
    pub y: Vec<f64>,
}

impl Series {
    /// The rows' `value`s that pass `keep`, against their steps.
    pub fn of(rows: &[StepRow], value: impl Fn(&StepRow) -> f64, keep: impl Fn(f64) -> bool) -> Self {
        let (x, y) = rows.iter().map(|r| (r.step as f64, value(r))).filter(|(_, v)| keep(*v)).unzip();
        Self { x, y }
    }

    pub fn len(&self) -> usize {
        self.x.len()
    }

    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    /// The smallest and largest value (`None` when empty).
    pub fn y_range(&self) -> Option<(f64, f64)> {
        let lo = self.y.iter().copied().reduce(f64::min)?;
        let hi = self.y.iter().copied().reduce(f64::max)?;
        Some((lo, hi))
    }

    /// The same points with `y` averaged over `window` neighbours.
    pub fn smoothed(&self, window: usize) -> Self {
        Self { x: self.x.clone(), y: moving_average(&self.y, window) }
    }
}

/// The default smoothing window for `n` rows: about a fiftieth of the run,
/// at most 1000 steps (1: none).
pub fn auto_window(n: usize) -> usize {
    (n / 50).clamp(1, 1000)
}

/// Centred moving average over `window` values, narrowing at the ends (so
/// a live run's last point is the mean of the newest rows, not lagged).
pub fn moving_average(y: &[f64], window: usize) -> Vec<f64> {
    let w = window.max(1);
    let mut prefix = Vec::with_capacity(y.len() + 1);
    prefix.push(0.0);
    for v in y {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + v);
    }
    (0..y.len())
        .map(|i| {
            let a = i.saturating_sub((w - 1) / 2);
            let b = (i + w / 2 + 1).min(y.len());
            (prefix[b] - prefix[a]) / (b - a) as f64
        })
        .collect()
}

/// Pixel-space points (x increasing) thinned to what a polyline through
/// them shows: in each pixel column the first, lowest, highest and last.
pub fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len().min(4096));
    let mut i = 0;
    while i < points.len() {
        let col = points[i].0.floor();
        let mut j = i;
        while j + 1 < points.len() && points[j + 1].0.floor() == col {
            j += 1;
        }
        let run = &points[i..=j];
        if run.len() <= 4 {
            out.extend_from_slice(run);
        } else {
            let lo = (0..run.len()).min_by(|a, b| run[*a].1.total_cmp(&run[*b].1)).unwrap_or(0);
            let hi = (0..run.len()).max_by(|a, b| run[*a].1.total_cmp(&run[*b].1)).unwrap_or(0);
            let mut keep = [0, lo.min(hi), lo.max(hi), run.len() - 1];
            keep.sort_unstable();
            let mut last = usize::MAX;
            for k in keep {
                if k != last {
                    out.push(run[k]);
                    last = k;
                }
            }
        }
        i = j + 1;
    }
    out
}

/// The steps of rows whose update was not applied.
pub fn skipped_steps(rows: &[StepRow]) -> Vec<u64> {
    rows.iter().filter(|r| !r.applied).map(|r| r.step).collect()
}

/// Finished evaluations with an FID: (step, FID).
pub fn fids(evals: &[EvalRow]) -> Vec<(u64, f64)> {
    evals.iter().filter_map(|e| Some((e.step, e.eval.get("fid")?.get("value")?.as_f64()?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_moving_average_is_centred_and_narrows_at_the_ends() {
        let y = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(moving_average(&y, 1), y.to_vec());
        assert_eq!(moving_average(&y, 3), vec![1.5, 2.0, 3.0, 4.0, 4.5]);
        assert_eq!(moving_average(&y, 100), vec![3.0; 5]);
        assert!(moving_average(&[], 5).is_empty());
    }

    #[test]
    fn thinning_keeps_each_columns_extremes_in_order() {
        let pts: Vec<(f64, f64)> = (0..100).map(|i| (i as f64 / 10.0, ((i * 37) % 11) as f64)).collect();
        let thin = thin(&pts);
        assert!(thin.len() <= 40, "{}", thin.len());
        assert!(thin.windows(2).all(|w| w[0].0 <= w[1].0));
        for col in 0..10 {
            let inside: Vec<f64> = pts.iter().filter(|p| p.0.floor() == col as f64).map(|p| p.1).collect();
            let kept: Vec<f64> = thin.iter().filter(|p| p.0.floor() == col as f64).map(|p| p.1).collect();
            let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
            let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
            assert_eq!((min(&kept), max(&kept)), (min(&inside), max(&inside)));
        }
        let few = [(0.0, 1.0), (0.5, 2.0), (3.0, 0.0)];
        assert_eq!(super::thin(&few), few.to_vec());
    }

    #[test]
    fn series_skips_and_fids_come_from_the_rows() {
        let rows = crate::store::metrics_rows::RunRows::parse(concat!(
            "{\"step\":1,\"loss\":0.9,\"images_per_s\":10.0}\n",
            "{\"step\":2,\"loss\":0.0,\"applied\":false}\n",
            "{\"step\":3,\"loss\":0.5,\"images_per_s\":12.0}\n",
            "{\"step\":3,\"eval\":{\"state\":\"done\",\"fid\":{\"value\":42.5}}}\n",
            "{\"step\":3,\"eval\":{\"state\":\"failed\",\"error\":\"x\"}}\n",
        ));
        let loss = Series::of(&rows.steps, |r| r.loss, |v| v > 0.0);
        assert_eq!((loss.x, loss.y), (vec![1.0, 3.0], vec![0.9, 0.5]));
        let ips = Series::of(&rows.steps, |r| r.images_per_s, |v| v > 0.0);
        assert_eq!(ips.y_range(), Some((10.0, 12.0)));
        assert_eq!(skipped_steps(&rows.steps), vec![2]);
        assert_eq!(fids(&rows.evals), vec![(3, 42.5)]);
        assert_eq!((auto_window(20), auto_window(5000), auto_window(10_000_000)), (1, 100, 1000));
    }
}
