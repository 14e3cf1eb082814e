//! The dashboard's curves, downsampled per pixel column on the server: a
//! run of 800,000 steps is drawn from a few thousand points, not from every
//! row, and looks the same.
//!
//! Each column keeps the first, the last, the smallest and the largest of
//! its points, in step order (M4: Jugel et al., "M4: A Visualization-
//! Oriented Time Series Data Aggregation", VLDB 2014): a line through them
//! covers the same pixels as a line through every point, so a one-step
//! spike stays visible. A missing value (a step logged without one) is
//! kept once per column, so the page can mark it. Each column's mean of
//! its finite values is the smooth curve.

use serde::Serialize;

/// One curve, downsampled.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Curve {
    /// `[step, value]`, in step order; `value` null where the row had none.
    pub points: Vec<(u64, Option<f32>)>,
    /// `[step, mean]` per column with a finite value: the column's middle
    /// step and the mean of its finite values.
    pub mean: Vec<(u64, f32)>,
}

/// What `/api/curves` sends.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Curves {
    /// Step rows the curves stand for.
    pub rows: usize,
    pub first_step: u64,
    pub last_step: u64,
    /// Pixel columns asked for.
    pub columns: usize,
    pub loss: Curve,
    pub images_per_s: Curve,
}

/// The column of step `s` among `columns` over `first..=last`.
fn column(s: u64, first: u64, last: u64, columns: usize) -> usize {
    let span = u128::from(last - first) + 1;
    ((u128::from(s - first) * columns as u128) / span) as usize
}

/// `values` over `steps` (ascending) in `columns` columns.
fn downsample_one(steps: &[u64], values: &[f32], columns: usize) -> Curve {
    let mut out = Curve::default();
    let (Some(&first), Some(&last)) = (steps.first(), steps.last()) else { return out };
    let mut start = 0;
    while start < steps.len() {
        let col = column(steps[start], first, last, columns);
        let mut end = start + 1;
        while end < steps.len() && column(steps[end], first, last, columns) == col {
            end += 1;
        }
        // Indexes of the column's first, last, min, max and first missing value.
        let mut keep = vec![start, end - 1];
        let finite: Vec<usize> = (start..end).filter(|&i| values[i].is_finite()).collect();
        if let Some(&lo) = finite.iter().min_by(|&&a, &&b| values[a].total_cmp(&values[b])) {
            keep.push(lo);
        }
        if let Some(&hi) = finite.iter().max_by(|&&a, &&b| values[a].total_cmp(&values[b])) {
            keep.push(hi);
        }
        if let Some(gap) = (start..end).find(|&i| !values[i].is_finite()) {
            keep.push(gap);
        }
        keep.sort_unstable();
        keep.dedup();
        out.points.extend(keep.into_iter().map(|i| (steps[i], values[i].is_finite().then_some(values[i]))));
        if !finite.is_empty() {
            let mean = finite.iter().map(|&i| f64::from(values[i])).sum::<f64>() / finite.len() as f64;
            out.mean.push((steps[start] + (steps[end - 1] - steps[start]) / 2, mean as f32));
        }
        start = end;
    }
    out
}

/// Both curves of the history's columns in `columns` pixel columns.
pub fn downsample(steps: &[u64], loss: &[f32], images_per_s: &[f32], columns: usize) -> Curves {
    let columns = columns.max(1);
    Curves {
        rows: steps.len(),
        first_step: steps.first().copied().unwrap_or(0),
        last_step: steps.last().copied().unwrap_or(0),
        columns,
        loss: downsample_one(steps, loss, columns),
        images_per_s: downsample_one(steps, images_per_s, columns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_rows_are_kept_as_they_are() {
        let steps: Vec<u64> = (1..=30).collect();
        let loss: Vec<f32> = steps.iter().map(|&s| 1.0 / s as f32).collect();
        let c = downsample(&steps, &loss, &loss, 824);
        assert_eq!(c.rows, 30);
        assert_eq!(c.loss.points.len(), 30);
        assert!(c.loss.points.iter().zip(&steps).all(|(p, s)| p.0 == *s));
        assert_eq!(c.loss.mean.len(), 30);
    }

    #[test]
    fn a_long_run_keeps_at_most_four_points_a_column_and_its_spikes() {
        let n = 800_000u64;
        let steps: Vec<u64> = (1..=n).collect();
        let mut loss: Vec<f32> = steps.iter().map(|&s| 0.03 + 0.01 * ((s % 97) as f32 / 97.0)).collect();
        loss[123_456] = 5.0; // one step's spike
        loss[654_321] = f32::NAN; // one step without a loss
        let c = downsample(&steps, &loss, &loss, 800);
        assert!(c.loss.points.len() <= 4 * 800 + 1, "{}", c.loss.points.len());
        assert!(c.loss.points.contains(&(123_457, Some(5.0))), "the spike is gone");
        assert!(c.loss.points.contains(&(654_322, None)), "the missing value is gone");
        assert!(c.loss.points.windows(2).all(|w| w[0].0 < w[1].0), "points out of order");
        assert_eq!(c.loss.mean.len(), 800);
        let (lo, hi) = c.loss.points.iter().filter_map(|p| p.1).fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(v), b.max(v)));
        assert_eq!((lo, hi), (0.03, 5.0), "the smallest and largest values must survive");
        assert_eq!((c.first_step, c.last_step), (1, n));
    }

    #[test]
    fn an_empty_history_has_no_points() {
        let c = downsample(&[], &[], &[], 0);
        assert_eq!((c.rows, c.columns, c.loss.points.len()), (0, 1, 0));
    }
}
