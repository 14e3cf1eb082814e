//! The renderer on synthetic runs: size, ink, and curves where their
//! values say they are.

use std::collections::HashSet;

use super::*;

/// A run of `n` steps; `f(step)` gives (loss, images/s, applied).
fn run(n: u64, f: impl Fn(u64) -> (f64, f64, bool)) -> RunRows {
    let text: String = (1..=n)
        .map(|s| {
            let (loss, ips, applied) = f(s);
            format!("{{\"step\":{s},\"loss\":{loss},\"images_per_s\":{ips},\"applied\":{applied}}}\n")
        })
        .collect();
    RunRows::parse(&text)
}

fn opts(smooth: Option<usize>) -> PlotOptions {
    PlotOptions { smooth, title: "runs/test".into(), ..Default::default() }
}

/// Whether a pixel within `r` of (x, y) has colour `c`.
fn near(img: &RgbImage, (x, y): (f64, f64), r: i32, c: [u8; 3]) -> bool {
    let (x, y) = (x.floor() as i32, y.floor() as i32);
    (-r..=r).any(|dy| {
        (-r..=r).any(|dx| {
            let (px, py) = (x + dx, y + dy);
            px >= 0 && py >= 0 && img.get_pixel_checked(px as u32, py as u32).is_some_and(|p| p.0 == c)
        })
    })
}

fn count(img: &RgbImage, area: Rect, c: [u8; 3]) -> usize {
    count_where(img, area, |p| p == c)
}

fn count_where(img: &RgbImage, area: Rect, f: impl Fn([u8; 3]) -> bool) -> usize {
    let pixels = (area.y0..area.y1).flat_map(|y| (area.x0..area.x1).map(move |x| (x, y)));
    pixels.filter(|(x, y)| f(img.get_pixel(*x as u32, *y as u32).0)).count()
}

/// Whether `p` is `c` drawn over white with at least half coverage (an
/// anti-aliased thin line is rarely its exact colour).
fn tinted(p: [u8; 3], c: [u8; 3]) -> bool {
    let k = (0..3).max_by_key(|k| 255 - c[*k] as i32).unwrap_or(0);
    let a = (255.0 - p[k] as f32) / (255.0 - c[k] as f32);
    (0.5..=1.0).contains(&a) && (0..3).all(|j| (255.0 * (1.0 - a) + c[j] as f32 * a - p[j] as f32).abs() <= 2.5)
}

/// Whether a pixel within `r` of (x, y) is tinted `c`.
fn near_tint(img: &RgbImage, (x, y): (f64, f64), r: i32, c: [u8; 3]) -> bool {
    let area = Rect { x0: x as i32 - r, y0: y as i32 - r, x1: x as i32 + r + 1, y1: y as i32 + r + 1 };
    count_where(img, area, |p| tinted(p, c)) > 0
}

/// The pixel of (step, value) in a plot area whose axes run over `xs` and `ys`.
fn at(area: Rect, (x, xs): (f64, Scale), (y, ys): (f64, Scale)) -> (f64, f64) {
    (area.x0 as f64 + xs.unit(x) * area.width() as f64, area.y1 as f64 - ys.unit(y) * area.height() as f64)
}

#[test]
fn a_plot_has_the_asked_size_text_and_both_curves() {
    let rows = run(300, |s| (1.0 / (1.0 + s as f64 / 30.0) + 0.05 * ((s * 7) % 5) as f64, 100.0 + (s % 9) as f64, true));
    let (img, [loss, ips]) = draw(&rows, &opts(None)).unwrap();
    assert_eq!(img.dimensions(), (1200, 800));
    let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 20, "{} colours", colours.len());
    // Faint steps and the bold average, each in its own panel only.
    for (c, inside, outside) in
        [(theme::LOSS, loss, ips), (theme::LOSS_RAW, loss, ips), (theme::THROUGHPUT, ips, loss), (theme::THROUGHPUT_RAW, ips, loss)]
    {
        let n = count_where(&img, inside, |p| tinted(p, c));
        assert!(n > 200, "{c:?}: {n} pixels");
        assert_eq!(count_where(&img, outside, |p| tinted(p, c)), 0, "{c:?}");
    }
    assert!(count(&img, loss, theme::LOSS) > 200 && count(&img, ips, theme::THROUGHPUT) > 200);
    // Text: the title band, the y labels left of the plots, x labels below.
    let band = |x0, y0, x1, y1| count(&img, Rect { x0, y0, x1, y1 }, theme::TEXT);
    assert!(band(0, 0, 1200, loss.y0 - 30) > 100, "no title");
    assert!(band(0, loss.y0, loss.x0 - 4, loss.y1) > 50, "no y labels");
    assert!(band(ips.x0, ips.y1 + 2, ips.x1, 800) > 50, "no x labels");
    assert!(loss.height() > ips.height() && ips.height() > 200, "{loss:?} {ips:?}");
}

#[test]
fn an_exponential_decay_is_a_straight_line_on_the_log_axis() {
    // loss = 10^(-step/100): three decades over 300 steps.
    let rows = run(300, |s| (10f64.powf(-(s as f64) / 100.0), 50.0, true));
    let (img, [loss, ips]) = draw(&rows, &opts(Some(1))).unwrap();
    let xs = Scale::linear(1.0, 300.0);
    let ys = Scale::log_padded(1e-3, 10f64.powf(-0.01), 0.06);
    for step in [20.0, 100.0, 150.0, 250.0] {
        let p = at(loss, (step, xs), (10f64.powf(-step / 100.0), ys));
        assert!(near(&img, p, 1, theme::LOSS), "step {step}: no loss curve at {p:?}");
        // ...and it is a line, not a band: nothing 20 px above or below.
        assert!(!near(&img, (p.0, p.1 - 20.0), 3, theme::LOSS) && !near(&img, (p.0, p.1 + 20.0), 3, theme::LOSS));
    }
    // Midway in steps is midway in height.
    let (a, b, m) = (at(loss, (1.0, xs), (0.99, ys)), at(loss, (300.0, xs), (1e-3, ys)), at(loss, (150.5, xs), (10f64.powf(-1.505), ys)));
    assert!((m.1 - (a.1 + b.1) / 2.0).abs() < 1.5, "{a:?} {m:?} {b:?}");
    // Constant throughput: one flat line at 50 on an axis from 0 to 56.
    let p = at(ips, (150.0, xs), (50.0, Scale::linear(0.0, 56.0)));
    assert!(near(&img, p, 1, theme::THROUGHPUT), "{p:?}");
}

#[test]
fn smoothing_draws_the_average_through_the_noise() {
    // Alternating 0.25 and 0.75 (off the grid lines): the mean of 10 is 0.5.
    let rows = run(200, |s| (if s % 2 == 0 { 0.25 } else { 0.75 }, 10.0, true));
    let (img, [loss, _]) = draw(&rows, &opts(Some(10))).unwrap();
    let xs = Scale::linear(1.0, 200.0);
    let ys = Scale::log_padded(0.25, 0.75, 0.06);
    let p = at(loss, (100.0, xs), (0.5, ys));
    assert!(near(&img, p, 2, theme::LOSS), "no average at {p:?}");
    // Steps off the x grid lines too: the faint line's corners.
    assert!(near_tint(&img, at(loss, (97.0, xs), (0.75, ys)), 2, theme::LOSS_RAW));
    assert!(near_tint(&img, at(loss, (98.0, xs), (0.25, ys)), 2, theme::LOSS_RAW));
    assert!(!near_tint(&img, at(loss, (98.0, xs), (0.75, ys)), 0, theme::LOSS_RAW));
}

#[test]
fn skipped_updates_and_evaluations_are_marked_at_their_steps() {
    let plain = draw(&run(100, |_| (0.5, 10.0, true)), &opts(None)).unwrap();
    assert_eq!(count(&plain.0, plain.1[0], theme::SKIPPED), 0);
    assert_eq!(count(&plain.0, plain.1[0], theme::EVAL), 0);
    let mut rows = run(100, |s| (0.5, 10.0, s != 40));
    rows.evals = RunRows::parse("{\"step\":70,\"eval\":{\"state\":\"done\",\"fid\":{\"value\":31.25}}}").evals;
    let (img, [loss, ips]) = draw(&rows, &opts(None)).unwrap();
    let xs = Scale::linear(1.0, 100.0);
    let x40 = (loss.x0 as f64 + xs.unit(40.0) * loss.width() as f64) as i32;
    let x70 = (loss.x0 as f64 + xs.unit(70.0) * loss.width() as f64) as i32;
    let column = |x: i32| Rect { x0: x - 2, y0: loss.y0, x1: x + 3, y1: loss.y1 };
    assert!(count(&img, column(x40), theme::SKIPPED) >= 10, "no mark at the skipped step");
    assert_eq!(count(&img, ips, theme::SKIPPED), 0);
    assert!(count(&img, column(x70), theme::EVAL) > loss.height() as usize / 3, "no evaluation line");
    // Its label, right of the line near the top.
    let label = Rect { x0: x70 + 2, y0: loss.y0, x1: x70 + 90, y1: loss.y0 + 30 };
    assert!(count(&img, label, theme::EVAL) > 30);
}

#[test]
fn any_size_in_range_renders_and_others_are_refused() {
    let rows = run(5000, |s| (1.0 / s as f64, 1000.0, s % 1000 != 0));
    for (w, h) in [(480, 360), (1200, 800), (2400, 1600), (4096, 600)] {
        let img = render(&rows, &PlotOptions { width: w, height: h, ..opts(None) }).unwrap();
        assert_eq!(img.dimensions(), (w, h));
        assert!(img.pixels().any(|p| p.0 == theme::LOSS) && img.pixels().any(|p| p.0 == theme::THROUGHPUT), "{w}x{h}");
    }
    for (w, h) in [(479, 800), (1200, 100), (5000, 800)] {
        assert_eq!(render(&rows, &PlotOptions { width: w, height: h, ..opts(None) }), Err(PlotError::Size { width: w, height: h }));
    }
    assert_eq!(render(&RunRows::default(), &opts(None)), Err(PlotError::NoSteps));
    assert_eq!(render(&rows, &opts(Some(0))), Err(PlotError::Smooth));
}

#[test]
fn one_step_and_missing_values_still_make_a_plot() {
    // One row, no throughput field: an axis around the step, a note in
    // the empty panel.
    let rows = RunRows::parse("{\"step\":7,\"loss\":0.25}\n");
    let (img, [loss, ips]) = draw(&rows, &opts(None)).unwrap();
    assert!(count(&img, loss, theme::LOSS) > 5);
    assert_eq!(count(&img, ips, theme::THROUGHPUT), 0);
    assert!(count(&img, ips, theme::MUTED) > 50, "no note in the empty panel");
    // A non-finite loss is left out, not drawn off the axis.
    let rows = RunRows::parse("{\"step\":1,\"loss\":1e400}\n{\"step\":2,\"loss\":0.5}\n");
    assert!(draw(&rows, &opts(None)).is_ok());
}
