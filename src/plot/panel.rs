//! One panel of a plot: a header (title left, legend right), the plot
//! area with its grid, curves and markers, and its axes' ticks.

use embedded_graphics::mono_font::iso_8859_1::{FONT_10X20, FONT_8X13, FONT_9X15, FONT_9X15_BOLD};

use super::axis::{label, Scale};
use super::canvas::{Anchor, Canvas, Color, Font, Rect};
use super::series::{thin, Series};
use super::theme;

/// The fonts and the whole-pixel scale of everything that is not data.
#[derive(Clone, Copy)]
pub struct Style {
    pub scale: i32,
    pub title: Font,
    pub header: Font,
    pub axis: Font,
    pub tick: Font,
}

impl Style {
    /// The plots' fonts, each font pixel `scale` image pixels.
    pub fn at(scale: i32) -> Self {
        let font = |face| Font { face, scale };
        Style { scale, title: font(&FONT_10X20), header: font(&FONT_9X15_BOLD), axis: font(&FONT_9X15), tick: font(&FONT_8X13) }
    }
}

/// A series drawn twice: every point faint, and its moving average bold
/// (when smoothing is on; else the points alone, bold).
pub struct Curve {
    pub raw: Series,
    pub smooth: Option<Series>,
    pub dark: Color,
    pub light: Color,
}

/// A legend entry's sample mark.
#[derive(Clone, Copy)]
pub enum Swatch {
    Line(Color, f64),
    Rug(Color),
    Dashed(Color),
}

pub struct Panel {
    pub title: String,
    /// Said after the title where there is room.
    pub detail: String,
    pub y_title: &'static str,
    pub y: Scale,
    pub curve: Curve,
    /// Said in the middle of the plot when the curve has no points.
    pub empty_note: &'static str,
    /// Steps marked along the bottom edge (updates skipped).
    pub rug: Vec<u64>,
    /// Steps marked by a dashed line with a label (evaluations).
    pub events: Vec<(u64, String)>,
    pub legend: Vec<(Swatch, String)>,
    /// The x axis counts whole things (steps): no ticks between integers.
    pub x_whole: bool,
}

/// The most ticks along an x axis; fewer where the plot is narrow.
const X_TICKS: usize = 8;

impl Panel {
    /// About as many y ticks as fit `height` pixels without crowding.
    pub fn y_tick_count(height: i32, st: &Style) -> usize {
        (height / (3 * st.tick.height())).clamp(2, 6) as usize
    }

    pub fn y_labels(&self, count: usize) -> Vec<(f64, String)> {
        self.y.ticks(count).into_iter().map(|v| (v, label(v))).collect()
    }

    /// The height of the header above the plot area.
    pub fn header_height(st: &Style) -> i32 {
        st.header.height() + 8 * st.scale
    }

    /// The height of the x tick labels below the plot area.
    pub fn ticks_height(st: &Style) -> i32 {
        st.tick.height() + 9 * st.scale
    }

    /// Draws the panel whose plot area is `plot`, its y labels ending
    /// left of it and its y title at `y_title_x`.
    pub fn draw(&self, c: &mut Canvas, plot: Rect, x: &Scale, y_title_x: i32, st: &Style) {
        let s = st.scale;
        let at_x = |v: f64| plot.x0 as f64 + x.unit(v) * plot.width() as f64;
        let at_y = |v: f64| plot.y1 as f64 - self.y.unit(v) * plot.height() as f64;
        c.fill(plot, theme::PLOT_BACKGROUND);

        // Grid and ticks.
        let tick = 5 * s;
        for (v, text) in self.y_labels(Self::y_tick_count(plot.height(), st)) {
            let py = at_y(v).round() as i32;
            if py < plot.y0 || py > plot.y1 {
                continue;
            }
            c.hline(plot.x0, plot.x1, py, 1, theme::GRID);
            c.hline(plot.x0 - tick, plot.x0, py, s, theme::AXIS);
            c.text(&text, st.tick, (plot.x0 - tick - 4 * s, py), Anchor::MiddleRight, false, theme::TEXT);
        }
        // About one tick per eight label characters of width.
        let x_ticks = (plot.width() / (8 * st.tick.size("0").0).max(1)).clamp(2, X_TICKS as i32) as usize;
        for v in x.ticks(x_ticks).into_iter().filter(|v| !self.x_whole || v.fract() == 0.0) {
            let px = at_x(v).round() as i32;
            if px < plot.x0 || px > plot.x1 {
                continue;
            }
            c.vline(px, plot.y0, plot.y1, 1, 0, theme::GRID);
            c.vline(px, plot.y1, plot.y1 + tick, s, 0, theme::AXIS);
            c.text(&label(v), st.tick, (px, plot.y1 + tick + 4 * s), Anchor::TopCenter, false, theme::TEXT);
        }
        let mid = (plot.y0 + plot.y1) / 2;
        c.text(self.y_title, st.axis, (y_title_x, mid), Anchor::Center, true, theme::TEXT);

        // Events under the curve, so the curve stays readable.
        let mut label_end = i32::MIN;
        for (step, text) in &self.events {
            let px = at_x(*step as f64).round() as i32;
            c.vline(px, plot.y0, plot.y1, s, 4 * s, theme::EVAL);
            let (w, _) = st.tick.size(text);
            let (lx, anchor) = if px + 4 * s + w < plot.x1 { (px + 4 * s, Anchor::TopLeft) } else { (px - 3 * s, Anchor::TopRight) };
            let x0 = if matches!(anchor, Anchor::TopLeft) { lx } else { lx - w };
            if x0 > label_end && x0 >= plot.x0 {
                c.text(text, st.tick, (lx, plot.y0 + 4 * s), anchor, false, theme::EVAL);
                label_end = x0 + w + 6 * s;
            }
        }

        self.draw_curve(c, plot, &at_x, &at_y, s);
        for step in &self.rug {
            let px = at_x(*step as f64).round() as i32;
            c.vline(px - s / 2, plot.y1 - 12 * s, plot.y1, s.max(2), 0, theme::SKIPPED);
        }
        if self.curve.raw.is_empty() {
            c.text(self.empty_note, st.axis, ((plot.x0 + plot.x1) / 2, mid), Anchor::Center, false, theme::MUTED);
        }
        c.frame(Rect { x0: plot.x0 - 1, y0: plot.y0 - 1, x1: plot.x1 + 1, y1: plot.y1 + 1 }, 1, theme::AXIS);
        self.draw_header(c, plot, st);
    }

    fn draw_curve(&self, c: &mut Canvas, plot: Rect, at_x: &dyn Fn(f64) -> f64, at_y: &dyn Fn(f64) -> f64, s: i32) {
        let pixels = |series: &Series| -> Vec<(f64, f64)> {
            let pts: Vec<(f64, f64)> = series.x.iter().zip(&series.y).map(|(x, y)| (at_x(*x), at_y(*y))).collect();
            thin(&pts)
        };
        let raw = pixels(&self.curve.raw);
        // Few enough points to tell apart: mark each one.
        let sparse = self.curve.raw.len() * 8 <= plot.width() as usize;
        match &self.curve.smooth {
            Some(smooth) => {
                c.polyline(&raw, s as f64, self.curve.light, plot);
                if sparse {
                    c.dots(&raw, 4.0 * s as f64, self.curve.light, plot);
                }
                c.polyline(&pixels(smooth), 2.5 * s as f64, self.curve.dark, plot);
            }
            None => {
                c.polyline(&raw, 2.0 * s as f64, self.curve.dark, plot);
                if sparse {
                    c.dots(&raw, 5.0 * s as f64, self.curve.dark, plot);
                }
            }
        }
    }

    /// Title on the left; legend entries on the right, as many as fit.
    fn draw_header(&self, c: &mut Canvas, plot: Rect, st: &Style) {
        let s = st.scale;
        let y = plot.y0 - 6 * s - st.header.height() / 2;
        let full = format!("{}{}", self.title, self.detail);
        let title = if st.header.size(&full).0 <= plot.width() { full } else { self.title.clone() };
        let title = c.text(&title, st.header, (plot.x0, y), Anchor::MiddleLeft, false, theme::TEXT);
        // The first entries that fit (the curves before the markers),
        // right-aligned.
        let swatch_w = 22 * s;
        let widths: Vec<i32> = self.legend.iter().map(|(_, t)| swatch_w + 6 * s + st.tick.size(t).0 + 18 * s).collect();
        let room = plot.x1 - title.x1 - 16 * s + 18 * s;
        let shown = (0..=widths.len()).take_while(|k| widths[..*k].iter().sum::<i32>() <= room).last().unwrap_or(0);
        let mut left = plot.x1 - widths[..shown].iter().sum::<i32>() + 18 * s;
        for ((swatch, text), w) in self.legend.iter().zip(&widths).take(shown) {
            let (x0, x1) = (left, left + swatch_w);
            c.text(text, st.tick, (x1 + 6 * s, y), Anchor::MiddleLeft, false, theme::TEXT);
            match *swatch {
                Swatch::Line(color, width) => {
                    let pts = [(x0 as f64, y as f64 + 0.5), (x1 as f64, y as f64 + 0.5)];
                    let clip = Rect { x0, y0: y - 8 * s, x1: x1 + 1, y1: y + 8 * s };
                    c.polyline(&pts, width * s as f64, color, clip);
                }
                Swatch::Rug(color) => c.vline((x0 + x1) / 2, y - 6 * s, y + 6 * s, s.max(2), 0, color),
                Swatch::Dashed(color) => c.vline((x0 + x1) / 2, y - 8 * s, y + 8 * s, s, 4 * s, color),
            }
            left += w;
        }
    }
}
