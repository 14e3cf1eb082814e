//! An evaluation job's rate-distortion curve as a picture, three panels
//! side by side as in the paper's Figure 5: distortion (RMSE on the
//! [0, 255] scale) and rate (bits/dim received) against the reverse
//! process steps T - t, and distortion against rate ([`RdCurve`] says how
//! each is computed). `ddpm metrics plot-rd` writes it as PNG.

use image::RgbImage;

use super::axis::{label, Scale};
use super::canvas::{Anchor, Canvas, Color, Rect};
use super::error::{check_size, PlotError};
use super::panel::{Curve, Panel, Style};
use super::rd_curve::RdCurve;
use super::series::Series;
use super::theme;
use super::title::title_bar;

/// How large, and the line across the top.
#[derive(Debug, Clone, PartialEq)]
pub struct RdOptions {
    pub width: u32,
    pub height: u32,
    pub title: String,
}

impl Default for RdOptions {
    fn default() -> Self {
        Self { width: 1500, height: 520, title: String::new() }
    }
}

/// Draws the three panels of `curve`.
pub fn render(curve: &RdCurve, opts: &RdOptions) -> Result<RgbImage, PlotError> {
    Ok(draw(curve, opts)?.0)
}

/// One panel and its x axis.
struct Column {
    panel: Panel,
    x: Scale,
    x_title: &'static str,
}

/// The image, and where its distortion, rate and rate-distortion plot areas are.
pub(super) fn draw(curve: &RdCurve, opts: &RdOptions) -> Result<(RgbImage, [Rect; 3]), PlotError> {
    let (width, height) = (opts.width, opts.height);
    check_size(width, height)?;
    if curve.timesteps() == 0 {
        return Err(PlotError::NoSteps);
    }
    let s = ((width / 1500).min(height / 520)).max(1) as i32;
    let st = Style::at(s);
    let (steps, rate, distortion) = (curve.steps(), curve.rate(), curve.distortion());
    let t = curve.timesteps();
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (rate_hi, distortion_hi) = (max(&rate), max(&distortion));
    // To T, as the paper's axis, though the last step taken is T - 1.
    let steps_x = Scale::linear(0.0, t as f64);
    let (rate_y, distortion_y) = (Scale::linear(0.0, rate_hi * 1.08), Scale::linear(0.0, distortion_hi * 1.08));
    let first_last = |v: &[f64]| format!(" \u{b7} {} to {}", label(v[0]), label(v[v.len() - 1]));
    let reverse_steps = "reverse process steps (T - t)";
    let columns = [
        Column {
            panel: panel(
                "distortion, RMSE [0, 255]",
                first_last(&distortion),
                "RMSE",
                (&steps, &distortion),
                distortion_y,
                theme::DISTORTION,
            ),
            x: steps_x,
            x_title: reverse_steps,
        },
        Column {
            panel: panel("rate, bits/dim", first_last(&rate), "bits/dim", (&steps, &rate), rate_y, theme::RATE),
            x: steps_x,
            x_title: reverse_steps,
        },
        Column {
            panel: Panel {
                x_whole: false,
                ..panel("distortion vs rate", String::new(), "RMSE", (&rate, &distortion), distortion_y, theme::RATE_DISTORTION)
            },
            x: Scale::linear(0.0, rate_hi),
            x_title: "rate (bits/dim)",
        },
    ];

    let mut c = Canvas::new(width, height, theme::BACKGROUND);
    let pad = 14 * s;
    let mut summary = format!("T = {t}");
    if curve.images > 0 {
        summary += &format!(" \u{b7} {} images", curve.images);
    }
    if !curve.data.is_empty() {
        summary += &format!(" of {}", curve.data);
    }
    summary += &format!(" \u{b7} L_0 {} \u{b7} bound {} bits/dim", label(curve.decoder_nll()), label(curve.bits_per_dim));
    let top = title_bar(&mut c, &st, &opts.title, &summary, pad);

    // Per column: the y title, y labels, ticks, plot; rows: header, plot,
    // x labels, x title.
    let x_title_h = st.axis.height() + 6 * s;
    let y0 = top + Panel::header_height(&st);
    let y1 = (height as i32 - pad - x_title_h - Panel::ticks_height(&st)).max(y0 + 40);
    let gap = 3 * pad;
    let column_w = (width as i32 - 2 * pad - 2 * gap) / 3;
    let mut areas = [Rect { x0: 0, y0, x1: 0, y1 }; 3];
    for (i, (col, area)) in columns.iter().zip(&mut areas).enumerate() {
        let cx0 = pad + i as i32 * (column_w + gap);
        let labels = col.panel.y_labels(Panel::y_tick_count(y1 - y0, &st));
        let label_w = labels.iter().map(|(_, t)| st.tick.size(t).0).max().unwrap_or(0);
        let x0 = cx0 + st.axis.height() + 8 * s + label_w + 9 * s;
        let last_label = match col.x {
            Scale::Linear { hi, .. } | Scale::Log { hi, .. } => label(hi),
        };
        let x1 = (cx0 + column_w - st.tick.size(&last_label).0 / 2).max(x0 + 40);
        *area = Rect { x0, y0, x1, y1 };
        col.panel.draw(&mut c, *area, &col.x, cx0 + st.axis.height() / 2, &st);
        let x_title_y = y1 + Panel::ticks_height(&st) + x_title_h / 2;
        c.text(col.x_title, st.axis, ((x0 + x1) / 2, x_title_y), Anchor::Center, false, theme::TEXT);
    }
    Ok((c.img, areas))
}

/// A panel of one bold curve through the points (x, y).
fn panel(title: &str, detail: String, y_title: &'static str, (x, y): (&[f64], &[f64]), y_axis: Scale, color: Color) -> Panel {
    Panel {
        title: title.into(),
        detail,
        y_title,
        y: y_axis,
        curve: Curve { raw: Series { x: x.to_vec(), y: y.to_vec() }, smooth: None, dark: color, light: color },
        empty_note: "no timesteps",
        rug: Vec::new(),
        events: Vec::new(),
        legend: Vec::new(),
        x_whole: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// T steps of a curve whose distortion falls and rate rises as in the
    /// paper: RMSE 80 at the first reverse step down to 1, the KL terms
    /// largest at small t.
    fn curve(t: usize) -> RdCurve {
        let terms: Vec<f64> = (0..t).map(|k| if k == 0 { 2.0 } else { 0.5 / k as f64 }).collect();
        let x0_rmse: Vec<f64> = (0..t).map(|k| 1.0 + 79.0 * k as f64 / (t - 1) as f64).collect();
        let prior = 1e-3;
        let bits_per_dim = prior + terms.iter().sum::<f64>();
        let data = "synthetic:shapes".into();
        RdCurve { job_id: Some(3), weights_step: Some(10), data, images: 4, bits_per_dim, prior, terms, x0_rmse }
    }

    /// The rows of the pixels of colour `c` in `r`.
    fn rows_of(img: &RgbImage, r: Rect, c: [u8; 3]) -> Vec<i32> {
        let pixels = (r.y0..r.y1).flat_map(|y| (r.x0..r.x1).map(move |x| (x, y)));
        pixels.filter(|(x, y)| img.get_pixel(*x as u32, *y as u32).0 == c).map(|(_, y)| y).collect()
    }

    fn count(img: &RgbImage, r: Rect, c: [u8; 3]) -> usize {
        rows_of(img, r, c).len()
    }

    /// The mean pixel row of colour `c` in the columns `x0..x1` of `r`.
    fn mean_row(img: &RgbImage, r: Rect, (x0, x1): (i32, i32), c: [u8; 3]) -> f64 {
        let rows = rows_of(img, Rect { x0, x1, ..r }, c);
        assert!(!rows.is_empty(), "no {c:?} in columns {x0}..{x1}");
        rows.iter().sum::<i32>() as f64 / rows.len() as f64
    }

    #[test]
    fn three_panels_each_with_its_curve_where_the_numbers_put_it() {
        let c = curve(1000);
        let (img, areas) = draw(&c, &RdOptions { title: "rate-distortion".into(), ..Default::default() }).unwrap();
        assert_eq!(img.dimensions(), (1500, 520));
        let colours = [theme::DISTORTION, theme::RATE, theme::RATE_DISTORTION];
        for (i, (area, colour)) in areas.iter().zip(colours).enumerate() {
            assert!(area.width() > 250 && area.height() > 250, "{area:?}");
            assert!(count(&img, *area, colour) > 300, "panel {i}: no curve");
            for (j, other) in areas.iter().enumerate() {
                if j != i {
                    assert_eq!(count(&img, *other, colour), 0, "panel {i}'s colour in panel {j}");
                }
            }
        }
        let [d, r, rd] = areas;
        // Distortion falls (the curve goes down the image: rows grow), rate rises.
        let ends = |a: Rect| ((a.x0 + 3, a.x0 + a.width() / 10), (a.x1 - a.width() / 10, a.x1 - 3));
        let (left, right) = ends(d);
        assert!(mean_row(&img, d, left, theme::DISTORTION) + 100.0 < mean_row(&img, d, right, theme::DISTORTION));
        let (left, right) = ends(r);
        assert!(mean_row(&img, r, left, theme::RATE) > mean_row(&img, r, right, theme::RATE) + 100.0);
        // At step 0 the distortion is 80 on an axis to 86.4.
        let y_at = |a: Rect, v: f64, hi: f64| a.y1 as f64 - v / hi * a.height() as f64;
        let top = mean_row(&img, d, (d.x0, d.x0 + 3), theme::DISTORTION);
        assert!((top - y_at(d, 80.0, 80.0 * 1.08)).abs() < 4.0, "{top} vs {}", y_at(d, 80.0, 86.4));
        // The last rate is the bound less L_0: the top of the (steep) curve
        // at the right end of the rate panel.
        let last = c.rate()[999];
        assert!((last + c.decoder_nll() - c.bits_per_dim).abs() < 1e-9);
        let y = rows_of(&img, Rect { x0: r.x1 - 2, ..r }, theme::RATE).into_iter().min().unwrap() as f64;
        assert!((y - y_at(r, last, last * 1.08)).abs() < 3.0, "{y} vs {}", y_at(r, last, last * 1.08));
        assert!(count(&img, Rect { x0: rd.x1 - 6, ..rd }, theme::RATE_DISTORTION) > 0);
        // Text: the title band and each panel's tick labels.
        assert!(count(&img, Rect { x0: 0, y0: 0, x1: 1500, y1: d.y0 - 30 }, theme::TEXT) > 100, "no title");
        for a in areas {
            assert!(count(&img, Rect { y0: a.y1 + 2, y1: 520, ..a }, theme::TEXT) > 50, "no x labels under {a:?}");
            assert!(count(&img, Rect { x0: a.x0 - 60, x1: a.x0 - 4, ..a }, theme::TEXT) > 30, "no y labels left of {a:?}");
        }
    }

    #[test]
    fn any_size_in_range_and_tiny_t_render() {
        for (t, (w, h)) in [(2, (480, 360)), (10, (1500, 520)), (1000, (3000, 1040)), (100, (4096, 4096))] {
            let img = render(&curve(t), &RdOptions { width: w, height: h, ..Default::default() }).unwrap();
            assert_eq!(img.dimensions(), (w, h));
            for colour in [theme::DISTORTION, theme::RATE, theme::RATE_DISTORTION] {
                assert!(img.pixels().any(|p| p.0 == colour), "T = {t}, {w}x{h}: no {colour:?}");
            }
        }
        let e = render(&curve(10), &RdOptions { width: 100, height: 520, ..Default::default() });
        assert_eq!(e, Err(PlotError::Size { width: 100, height: 520 }));
        // A flat curve (an untrained model's zero KL terms) still has axes.
        let flat = RdCurve { terms: vec![0.0; 5], x0_rmse: vec![0.0; 5], prior: 0.0, bits_per_dim: 0.0, ..curve(5) };
        assert!(render(&flat, &RdOptions::default()).is_ok());
    }
}
