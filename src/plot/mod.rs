//! A run's training curves as a picture: the loss per step (log scale,
//! every step faint and its moving average bold, skipped updates and
//! periodic evaluations marked) above the throughput per step, as an RGB
//! image (`ddpm metrics plot` writes it as PNG). [`rd`] draws an
//! evaluation job's rate-distortion curve with the same parts.
//!
//! Everything is drawn here, text included, with embedded-graphics' mono
//! bitmap fonts built into the binary: a plot never needs font files, so
//! it renders the same on a bare container as on a desktop.

pub mod axis;
pub mod canvas;
pub mod error;
pub mod panel;
pub mod rd;
pub mod rd_curve;
pub mod series;
mod title;

use image::RgbImage;

use crate::store::metrics_rows::RunRows;
use axis::{label, Scale};
use canvas::{Anchor, Canvas, Rect};
use error::check_size;
pub use error::{PlotError, MAX_SIDE, MIN_SIZE};
use panel::{Curve, Panel, Style, Swatch};
use series::Series;
use title::title_bar;

/// The colours of a plot; tests look for the curves' by value.
pub mod theme {
    use super::canvas::Color;

    pub const BACKGROUND: Color = [246, 246, 243];
    pub const PLOT_BACKGROUND: Color = [255, 255, 255];
    pub const GRID: Color = [228, 228, 228];
    pub const AXIS: Color = [90, 90, 90];
    pub const TEXT: Color = [28, 28, 28];
    pub const MUTED: Color = [140, 140, 140];
    /// Loss: its moving average, and every step.
    pub const LOSS: Color = [31, 100, 180];
    pub const LOSS_RAW: Color = [170, 198, 232];
    /// Throughput: its moving average, and every step.
    pub const THROUGHPUT: Color = [222, 110, 20];
    pub const THROUGHPUT_RAW: Color = [250, 205, 165];
    pub const SKIPPED: Color = [210, 30, 40];
    pub const EVAL: Color = [40, 150, 60];
    /// The rate-distortion plot: distortion and rate against the reverse
    /// steps, and distortion against rate.
    pub const DISTORTION: Color = [200, 70, 40];
    pub const RATE: Color = [20, 120, 150];
    pub const RATE_DISTORTION: Color = [110, 60, 170];
}

/// What to draw, and how large.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotOptions {
    pub width: u32,
    pub height: u32,
    /// Moving-average window in steps (1: none); `None`: about a fiftieth
    /// of the run ([`series::auto_window`]).
    pub smooth: Option<usize>,
    /// The line across the top, e.g. the run's URL.
    pub title: String,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self { width: 1200, height: 800, smooth: None, title: String::new() }
    }
}

/// Draws the loss and throughput panels of `rows`.
pub fn render(rows: &RunRows, opts: &PlotOptions) -> Result<RgbImage, PlotError> {
    Ok(draw(rows, opts)?.0)
}

/// The image, and where its loss and throughput plot areas are.
fn draw(rows: &RunRows, opts: &PlotOptions) -> Result<(RgbImage, [Rect; 2]), PlotError> {
    let (width, height) = (opts.width, opts.height);
    check_size(width, height)?;
    let (Some(first), Some(last)) = (rows.steps.first(), rows.steps.last()) else {
        return Err(PlotError::NoSteps);
    };
    let window = opts.smooth.unwrap_or_else(|| series::auto_window(rows.steps.len()));
    if window == 0 {
        return Err(PlotError::Smooth);
    }
    let scale = ((width / 1200).min(height / 800)).max(1) as i32;
    let st = Style::at(scale);
    let x = Scale::linear(first.step as f64, last.step as f64);
    let panels = [loss_panel(rows, window), throughput_panel(rows, window)];

    let mut c = Canvas::new(width, height, theme::BACKGROUND);
    let s = scale;
    let pad = 14 * s;
    let summary = format!(
        "steps {}-{} \u{b7} {} rows{}",
        label(first.step as f64),
        label(last.step as f64),
        rows.steps.len(),
        if window > 1 { format!(" \u{b7} smoothing {window} steps") } else { String::new() }
    );
    let top = title_bar(&mut c, &st, &opts.title, &summary, pad);

    // Rows: header, plot, x labels (twice), the x title; columns: the y
    // title, y labels, ticks, plot.
    let x_title_h = st.axis.height() + 6 * s;
    let gap = pad;
    let fixed = 2 * (Panel::header_height(&st) + Panel::ticks_height(&st)) + gap + x_title_h + pad;
    let free = (height as i32 - top - fixed).max(40);
    let heights = [free * 55 / 100, free - free * 55 / 100];
    let y_labels = panels.iter().zip(heights).flat_map(|(p, h)| p.y_labels(Panel::y_tick_count(h, &st)));
    let label_w = y_labels.map(|(_, t)| st.tick.size(&t).0).max().unwrap_or(0);
    let y_title_x = pad + st.axis.height() / 2;
    let x0 = pad + st.axis.height() + 8 * s + label_w + 9 * s;
    let x1 = width as i32 - pad - st.tick.size(&label(last.step as f64)).0 / 2 - 4 * s;
    let mut y = top;
    let mut areas = [Rect { x0, y0: 0, x1, y1: 0 }; 2];
    for ((panel, h), area) in panels.iter().zip(heights).zip(&mut areas) {
        y += Panel::header_height(&st);
        *area = Rect { x0, y0: y, x1, y1: y + h };
        panel.draw(&mut c, *area, &x, y_title_x, &st);
        y = area.y1 + Panel::ticks_height(&st) + gap;
    }
    let x_title_y = y - gap + x_title_h / 2;
    c.text("step", st.axis, ((x0 + x1) / 2, x_title_y), Anchor::Center, false, theme::TEXT);
    Ok((c.img, areas))
}

fn curve(raw: Series, window: usize, dark: [u8; 3], light: [u8; 3]) -> Curve {
    let smooth = (window > 1).then(|| raw.smoothed(window));
    Curve { raw, smooth, dark, light }
}

/// "last 0.312 (mean 0.334)": the newest value, and the newest average.
fn latest(c: &Curve) -> String {
    let Some(v) = c.raw.y.last() else { return String::new() };
    match c.smooth.as_ref().and_then(|s| s.y.last()) {
        Some(m) => format!(" \u{b7} last {} (mean {})", label(*v), label(*m)),
        None => format!(" \u{b7} last {}", label(*v)),
    }
}

fn curve_legend(c: &Curve, window: usize) -> Vec<(Swatch, String)> {
    match c.smooth {
        Some(_) => {
            vec![(Swatch::Line(c.light, 2.0), "per step".into()), (Swatch::Line(c.dark, 2.5), format!("mean of {window}"))]
        }
        None => vec![(Swatch::Line(c.dark, 2.0), "per step".into())],
    }
}

fn loss_panel(rows: &RunRows, window: usize) -> Panel {
    // The log axis takes positive finite losses; others are not drawn.
    let raw = Series::of(&rows.steps, |r| r.loss, |v| v.is_finite() && v > 0.0);
    let y = match raw.y_range() {
        Some((lo, hi)) => Scale::log_padded(lo, hi, 0.06),
        None => Scale::Log { lo: 0.1, hi: 1.0 },
    };
    let curve = curve(raw, window, theme::LOSS, theme::LOSS_RAW);
    let rug = series::skipped_steps(&rows.steps);
    let events: Vec<(u64, String)> =
        series::fids(&rows.evals).into_iter().map(|(step, fid)| (step, format!("FID {}", label(fid)))).collect();
    let mut legend = curve_legend(&curve, window);
    if !rug.is_empty() {
        legend.push((Swatch::Rug(theme::SKIPPED), format!("update skipped ({})", rug.len())));
    }
    if !events.is_empty() {
        legend.push((Swatch::Dashed(theme::EVAL), "evaluation".into()));
    }
    Panel {
        title: "training loss, log scale".into(),
        detail: latest(&curve),
        y_title: "loss",
        y,
        curve,
        empty_note: "no finite loss in the metrics log",
        rug,
        events,
        legend,
        x_whole: true,
    }
}

fn throughput_panel(rows: &RunRows, window: usize) -> Panel {
    // 0 is what a row without the field reads as: no step trains at 0/s.
    let raw = Series::of(&rows.steps, |r| r.images_per_s, |v| v.is_finite() && v > 0.0);
    let hi = raw.y_range().map_or(1.0, |(_, hi)| hi * 1.12);
    let curve = curve(raw, window, theme::THROUGHPUT, theme::THROUGHPUT_RAW);
    Panel {
        title: "throughput, images/s".into(),
        detail: latest(&curve),
        y_title: "images/s",
        y: Scale::linear(0.0, hi),
        legend: curve_legend(&curve, window),
        curve,
        empty_note: "no throughput in the metrics log",
        rug: Vec::new(),
        events: Vec::new(),
        x_whole: true,
    }
}

#[cfg(test)]
mod tests;
