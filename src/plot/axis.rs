//! Axes: a data range mapped to [0, 1], linear or logarithmic, with tick
//! positions a person reads at a glance (1-2-5 steps, decades) and short
//! labels (`250`, `0.03`, `12k`, `1e-4`).

/// How data values map onto an axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    Linear {
        lo: f64,
        hi: f64,
    },
    /// `lo > 0`; equal ratios take equal lengths.
    Log {
        lo: f64,
        hi: f64,
    },
}

impl Scale {
    /// A linear axis over the data's range, never empty.
    pub fn linear(lo: f64, hi: f64) -> Self {
        let (lo, hi) = if hi - lo > f64::EPSILON * hi.abs().max(1.0) { (lo, hi) } else { (lo - 1.0, hi + 1.0) };
        Scale::Linear { lo, hi }
    }

    /// A log axis over positive data from `lo` to `hi`, padded by `pad`
    /// of its span on each side (at least a tenth of a decade in all).
    pub fn log_padded(lo: f64, hi: f64, pad: f64) -> Self {
        let (a, b) = (lo.log10(), hi.log10());
        let span = (b - a).max(0.1);
        let mid = (a + b) / 2.0;
        let (a, b) = (mid.min(a).min(mid - span / 2.0), mid.max(b).max(mid + span / 2.0));
        Scale::Log { lo: 10f64.powf(a - pad * span), hi: 10f64.powf(b + pad * span) }
    }

    /// Where `v` lies, 0 at `lo` and 1 at `hi` (outside for values outside).
    pub fn unit(&self, v: f64) -> f64 {
        match *self {
            Scale::Linear { lo, hi } => (v - lo) / (hi - lo),
            Scale::Log { lo, hi } => (v.log10() - lo.log10()) / (hi.log10() - lo.log10()),
        }
    }

    /// Whether `v` can be drawn on this axis at all.
    pub fn accepts(&self, v: f64) -> bool {
        match self {
            Scale::Linear { .. } => v.is_finite(),
            Scale::Log { .. } => v.is_finite() && v > 0.0,
        }
    }

    /// Tick values inside the range, about `target` of them (at least 2
    /// where the range allows), in increasing order.
    pub fn ticks(&self, target: usize) -> Vec<f64> {
        match *self {
            Scale::Linear { lo, hi } => linear_ticks(lo, hi, target),
            Scale::Log { lo, hi } => log_ticks(lo, hi, target),
        }
    }
}

/// 1, 2 or 5 times a power of ten, the nearest to `raw` from above.
fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let m = raw / mag;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn linear_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let step = nice_step((hi - lo) / target.max(1) as f64);
    // A bound a rounding error short of a tick still gets it.
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    // Multiplying (not accumulating), then rounding, keeps 0.1 * 3 at 0.3.
    (first..=last).map(|i| if i == 0 { 0.0 } else { round_sig(i as f64 * step, 12) }).collect()
}

/// Decades (every k-th one for wide ranges), 1-2-5 or 1..9 in each decade:
/// the densest of these with at most `target + 2` ticks (else the sparsest
/// with two). A range inside one decade too narrow even for 1..9 gets
/// linear ticks (drawn at their log positions).
fn log_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let decades = (b - a).max(1) as usize;
    let every = decades.div_ceil(target.max(1)).max(1) as i32;
    let within = |v: f64| v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9);
    let nines = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
    let candidates: [(&[f64], i32); 4] = [(&[1.0], every), (&[1.0], 1), (&[1.0, 2.0, 5.0], 1), (&nines, 1)];
    let mut fits: Option<Vec<f64>> = None;
    let mut sparsest: Option<Vec<f64>> = None;
    for (mantissas, stride) in candidates {
        let ticks: Vec<f64> = (a..=b)
            .filter(|e| e.rem_euclid(stride) == 0)
            .flat_map(|e| mantissas.iter().map(move |m| round_sig(m * 10f64.powi(e), 6)))
            .filter(|v| within(*v))
            .collect();
        if ticks.len() < 2 {
            continue;
        }
        if ticks.len() > target + 2 {
            sparsest.get_or_insert(ticks);
        } else {
            fits = Some(ticks);
        }
    }
    fits.or(sparsest).unwrap_or_else(|| linear_ticks(lo, hi, target.min(5)))
}

fn round_sig(v: f64, digits: i32) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(digits - 1 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

/// A tick label: at most 3 significant digits, `k`/`M` for thousands and
/// millions, `e` notation for the very small.
pub fn label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    let (x, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if a < 1e-3 {
        let e = a.log10().floor() as i32;
        return format!("{}e{e}", trim(round_sig(v / 10f64.powi(e), 3), 2));
    }
    let x = round_sig(x, 3);
    let decimals = (2 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{}{suffix}", trim(x, decimals))
}

fn trim(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_ticks_are_round_numbers_inside_the_range() {
        assert_eq!(Scale::linear(0.0, 100.0).ticks(5), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(Scale::linear(1.0, 20.0).ticks(5), vec![5.0, 10.0, 15.0, 20.0]);
        assert_eq!(Scale::linear(0.0, 0.3).ticks(3), vec![0.0, 0.1, 0.2, 0.3]);
        // A single value still gets an axis.
        assert!(!Scale::linear(7.0, 7.0).ticks(5).is_empty());
    }

    #[test]
    fn log_ticks_are_decades_or_subdivisions() {
        assert_eq!(Scale::Log { lo: 1e-3, hi: 2.0 }.ticks(6), vec![1e-3, 1e-2, 1e-1, 1.0]);
        assert_eq!(Scale::Log { lo: 0.009, hi: 1.6 }.ticks(6), vec![0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]);
        assert_eq!(Scale::Log { lo: 0.25, hi: 1.1 }.ticks(6), vec![0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]);
        assert_eq!(Scale::Log { lo: 0.015, hi: 1.1 }.ticks(6), vec![0.02, 0.05, 0.1, 0.2, 0.5, 1.0]);
        // Twelve decades, about six ticks: every other decade.
        assert_eq!(Scale::Log { lo: 1e-8, hi: 1e4 }.ticks(6), vec![1e-8, 1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4]);
        // Few ticks: decades, however many.
        assert_eq!(Scale::Log { lo: 0.008, hi: 2.3 }.ticks(2), vec![0.01, 0.1, 1.0]);
        // Too narrow even for 1..9: linear steps.
        let t = Scale::Log { lo: 0.31, hi: 0.35 }.ticks(6);
        assert!(t.len() >= 2 && t.iter().all(|v| (0.31..=0.35).contains(v)), "{t:?}");
    }

    #[test]
    fn units_map_the_range_onto_0_1() {
        let s = Scale::Log { lo: 0.01, hi: 1.0 };
        assert!((s.unit(0.1) - 0.5).abs() < 1e-12);
        assert!(!s.accepts(0.0) && s.accepts(1e-9));
        let p = Scale::log_padded(0.5, 0.5, 0.05);
        let Scale::Log { lo, hi } = p else { panic!() };
        assert!(lo < 0.5 && hi > 0.5);
    }

    #[test]
    fn labels_are_short() {
        let got: Vec<String> = [0.0, 0.1 + 0.2, 250.0, 12_000.0, 1_500_000.0, 0.00025, -2.0, 1e-4].iter().map(|v| label(*v)).collect();
        assert_eq!(got, ["0", "0.3", "250", "12k", "1.5M", "2.5e-4", "-2", "1e-4"]);
    }
}
