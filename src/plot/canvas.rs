//! Drawing into an `image::RgbImage`: rectangles, crisp axis lines,
//! anti-aliased polylines, and text in embedded-graphics' built-in mono
//! bitmap fonts (no font files), scaled by whole pixels and optionally
//! turned a quarter for a vertical axis title.

use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::{Dimensions, DrawTarget, Drawable, Pixel, Point, Size};
use embedded_graphics::primitives::Rectangle;
use embedded_graphics::text::{Alignment, Baseline, Text, TextStyleBuilder};
use image::{Rgb, RgbImage};

pub type Color = [u8; 3];

/// A pixel rectangle, `x0..x1` by `y0..y1` (exclusive ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x0: i32,
    pub y0: i32,
    pub x1: i32,
    pub y1: i32,
}

impl Rect {
    pub fn width(&self) -> i32 {
        self.x1 - self.x0
    }

    pub fn height(&self) -> i32 {
        self.y1 - self.y0
    }
}

/// A bitmap font at a whole-pixel scale.
#[derive(Clone, Copy)]
pub struct Font {
    pub face: &'static MonoFont<'static>,
    pub scale: i32,
}

impl Font {
    /// The size `text` takes, unturned.
    pub fn size(&self, text: &str) -> (i32, i32) {
        let cell = self.face.character_size;
        let per = cell.width + self.face.character_spacing;
        (text.chars().count() as i32 * per as i32 * self.scale, cell.height as i32 * self.scale)
    }

    pub fn height(&self) -> i32 {
        self.face.character_size.height as i32 * self.scale
    }
}

/// Where the anchor point is on the text's box.
#[derive(Debug, Clone, Copy)]
pub enum Anchor {
    TopLeft,
    TopCenter,
    TopRight,
    MiddleLeft,
    MiddleRight,
    Center,
}

pub struct Canvas {
    pub img: RgbImage,
}

impl Canvas {
    pub fn new(width: u32, height: u32, background: Color) -> Self {
        Self { img: RgbImage::from_pixel(width, height, Rgb(background)) }
    }

    fn inside(&self, x: i32, y: i32) -> bool {
        x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height()
    }

    pub fn put(&mut self, x: i32, y: i32, c: Color) {
        if self.inside(x, y) {
            self.img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    }

    /// `c` over the pixel with opacity `alpha` (0..1).
    pub fn blend(&mut self, x: i32, y: i32, c: Color, alpha: f32) {
        if !self.inside(x, y) || alpha <= 0.0 {
            return;
        }
        let a = alpha.min(1.0);
        let p = self.img.get_pixel_mut(x as u32, y as u32);
        for (dst, src) in p.0.iter_mut().zip(c) {
            *dst = (*dst as f32 * (1.0 - a) + src as f32 * a).round() as u8;
        }
    }

    pub fn fill(&mut self, r: Rect, c: Color) {
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 {
                self.put(x, y, c);
            }
        }
    }

    /// The outline of `r`, `width` pixels thick, inside it.
    pub fn frame(&mut self, r: Rect, width: i32, c: Color) {
        let w = width.max(1);
        self.fill(Rect { y1: r.y0 + w, ..r }, c);
        self.fill(Rect { y0: r.y1 - w, ..r }, c);
        self.fill(Rect { x1: r.x0 + w, ..r }, c);
        self.fill(Rect { x0: r.x1 - w, ..r }, c);
    }

    /// A vertical line of `width` pixels from `y0` to `y1`, drawn
    /// `dash` on and `dash` off (0: solid).
    pub fn vline(&mut self, x: i32, y0: i32, y1: i32, width: i32, dash: i32, c: Color) {
        for y in y0..y1 {
            if dash > 0 && ((y - y0) / dash) % 2 == 1 {
                continue;
            }
            for dx in 0..width.max(1) {
                self.put(x + dx, y, c);
            }
        }
    }

    pub fn hline(&mut self, x0: i32, x1: i32, y: i32, width: i32, c: Color) {
        self.fill(Rect { x0, y0: y, x1, y1: y + width.max(1) }, c);
    }

    /// An anti-aliased polyline through `points` (pixel coordinates),
    /// `width` pixels wide, clipped to `clip` (one point: a dot).
    pub fn polyline(&mut self, points: &[(f64, f64)], width: f64, c: Color, clip: Rect) {
        match points {
            [] => {}
            [p] => self.stroke(std::iter::once((*p, *p)), width, c, clip),
            _ => self.stroke(points.windows(2).map(|w| (w[0], w[1])), width, c, clip),
        }
    }

    /// Round dots `diameter` pixels wide at `points`, clipped to `clip`.
    pub fn dots(&mut self, points: &[(f64, f64)], diameter: f64, c: Color, clip: Rect) {
        self.stroke(points.iter().map(|p| (*p, *p)), diameter, c, clip);
    }

    /// Segments with round ends. A pixel's coverage is the largest of its
    /// segments' (not their sum), so joints and overlaps are not darker.
    fn stroke(&mut self, segments: impl Iterator<Item = ((f64, f64), (f64, f64))>, width: f64, c: Color, clip: Rect) {
        let clip = Rect {
            x0: clip.x0.max(0),
            y0: clip.y0.max(0),
            x1: clip.x1.min(self.img.width() as i32),
            y1: clip.y1.min(self.img.height() as i32),
        };
        if clip.width() <= 0 || clip.height() <= 0 {
            return;
        }
        let cw = clip.width() as usize;
        let mut mask = vec![0f32; cw * clip.height() as usize];
        let r = width / 2.0;
        for ((ax, ay), (bx, by)) in segments {
            let x_lo = ((ax.min(bx) - r - 1.0).floor() as i32).max(clip.x0);
            let x_hi = ((ax.max(bx) + r + 1.0).ceil() as i32).min(clip.x1 - 1);
            let y_lo = ((ay.min(by) - r - 1.0).floor() as i32).max(clip.y0);
            let y_hi = ((ay.max(by) + r + 1.0).ceil() as i32).min(clip.y1 - 1);
            let (dx, dy) = (bx - ax, by - ay);
            let len2 = dx * dx + dy * dy;
            for y in y_lo..=y_hi {
                for x in x_lo..=x_hi {
                    let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                    // The nearest point of the segment to the pixel's centre.
                    let t = if len2 > 0.0 { (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
                    let d = ((px - ax - t * dx).powi(2) + (py - ay - t * dy).powi(2)).sqrt();
                    let cover = (r + 0.5 - d).clamp(0.0, 1.0) as f32;
                    let m = &mut mask[(y - clip.y0) as usize * cw + (x - clip.x0) as usize];
                    *m = m.max(cover);
                }
            }
        }
        for (i, a) in mask.into_iter().enumerate() {
            if a > 0.0 {
                self.blend(clip.x0 + (i % cw) as i32, clip.y0 + (i / cw) as i32, c, a);
            }
        }
    }

    /// `text` in `font` with its `anchor` point at `(x, y)`; `turned`
    /// reads bottom to top (a y-axis title). Returns the box it took.
    pub fn text(&mut self, text: &str, font: Font, (x, y): (i32, i32), anchor: Anchor, turned: bool, c: Color) -> Rect {
        let (alignment, baseline) = match anchor {
            Anchor::TopLeft => (Alignment::Left, Baseline::Top),
            Anchor::TopCenter => (Alignment::Center, Baseline::Top),
            Anchor::TopRight => (Alignment::Right, Baseline::Top),
            Anchor::MiddleLeft => (Alignment::Left, Baseline::Middle),
            Anchor::MiddleRight => (Alignment::Right, Baseline::Middle),
            Anchor::Center => (Alignment::Center, Baseline::Middle),
        };
        let style = MonoTextStyle::new(font.face, Rgb888::new(c[0], c[1], c[2]));
        let layout = TextStyleBuilder::new().alignment(alignment).baseline(baseline).build();
        let glyphs = Text::with_text_style(text, Point::zero(), style, layout);
        let bb = glyphs.bounding_box();
        let mut target = Glyphs { canvas: self, origin: (x, y), scale: font.scale, turned };
        // Drawing into an image cannot fail.
        let Ok(_) = glyphs.draw(&mut target);
        let (s, tl) = (font.scale, bb.top_left);
        let (w, h) = (bb.size.width as i32 * s, bb.size.height as i32 * s);
        if turned {
            Rect { x0: x + tl.y * s, y0: y - tl.x * s - w, x1: x + tl.y * s + h, y1: y - tl.x * s }
        } else {
            Rect { x0: x + tl.x * s, y0: y + tl.y * s, x1: x + tl.x * s + w, y1: y + tl.y * s + h }
        }
    }
}

/// The DrawTarget embedded-graphics renders glyphs into: font pixel
/// (px, py) becomes a `scale`-sized block at `origin + scale * (px, py)`,
/// or at `origin + scale * (py, -px)` turned.
struct Glyphs<'a> {
    canvas: &'a mut Canvas,
    origin: (i32, i32),
    scale: i32,
    turned: bool,
}

impl Dimensions for Glyphs<'_> {
    fn bounding_box(&self) -> Rectangle {
        // Clipping happens per pixel in `Canvas::put`; the text may start
        // left of the anchor (centred, right-aligned), so no bound here.
        Rectangle::new(Point::new(-(1 << 20), -(1 << 20)), Size::new(1 << 21, 1 << 21))
    }
}

impl DrawTarget for Glyphs<'_> {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Self::Error> {
        use embedded_graphics::pixelcolor::RgbColor;
        let s = self.scale;
        for Pixel(p, color) in pixels {
            let (bx, by) = if self.turned {
                (self.origin.0 + p.y * s, self.origin.1 - (p.x + 1) * s)
            } else {
                (self.origin.0 + p.x * s, self.origin.1 + p.y * s)
            };
            for dy in 0..s {
                for dx in 0..s {
                    self.canvas.put(bx + dx, by + dy, [color.r(), color.g(), color.b()]);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_graphics::mono_font::ascii::FONT_6X10;

    const WHITE: Color = [255, 255, 255];
    const INK: Color = [0, 0, 0];

    fn inked(c: &Canvas, r: Rect) -> usize {
        let mut n = 0;
        for y in r.y0.max(0)..r.y1.min(c.img.height() as i32) {
            for x in r.x0.max(0)..r.x1.min(c.img.width() as i32) {
                n += usize::from(c.img.get_pixel(x as u32, y as u32).0 != WHITE);
            }
        }
        n
    }

    #[test]
    fn text_lands_in_the_box_it_reports_at_any_scale_and_turn() {
        for (scale, turned) in [(1, false), (2, false), (1, true), (3, true)] {
            let mut c = Canvas::new(200, 200, WHITE);
            let font = Font { face: &FONT_6X10, scale };
            let r = c.text("Loss 0.25", font, (100, 100), Anchor::Center, turned, INK);
            let (w, h) = font.size("Loss 0.25");
            let (rw, rh) = if turned { (h, w) } else { (w, h) };
            assert_eq!((r.width(), r.height()), (rw, rh), "scale {scale} turned {turned}");
            // Centred to within a font pixel (the font's own rounding).
            assert!(((r.x0 + r.x1) / 2 - 100).abs() <= scale && ((r.y0 + r.y1) / 2 - 100).abs() <= scale, "{r:?}");
            let all = inked(&c, Rect { x0: 0, y0: 0, x1: 200, y1: 200 });
            assert!(all > 20 * scale as usize, "{all}");
            assert_eq!(inked(&c, r), all, "ink outside the reported box {r:?}");
        }
    }

    #[test]
    fn a_polyline_covers_its_path_and_stays_in_its_clip() {
        let mut c = Canvas::new(100, 100, WHITE);
        let clip = Rect { x0: 10, y0: 10, x1: 90, y1: 90 };
        c.polyline(&[(0.0, 50.0), (50.0, 50.0), (50.0, 0.0)], 3.0, INK, clip);
        assert_eq!(c.img.get_pixel(30, 50).0, INK);
        assert_eq!(c.img.get_pixel(50, 30).0, INK);
        assert_eq!(c.img.get_pixel(30, 40).0, WHITE);
        assert_eq!(inked(&c, Rect { x0: 0, y0: 0, x1: 10, y1: 100 }), 0);
        assert_eq!(inked(&c, Rect { x0: 0, y0: 0, x1: 100, y1: 10 }), 0);
        // Anti-aliased: some pixels only partly covered.
        let grey = c.img.pixels().filter(|p| p.0 != WHITE && p.0 != INK).count();
        assert!(grey > 0);
    }

    #[test]
    fn dashes_alternate_and_frames_stay_inside() {
        let mut c = Canvas::new(20, 20, WHITE);
        c.vline(5, 0, 20, 1, 2, INK);
        let on: Vec<bool> = (0..8).map(|y| c.img.get_pixel(5, y).0 == INK).collect();
        assert_eq!(on, [true, true, false, false, true, true, false, false]);
        let mut c = Canvas::new(20, 20, WHITE);
        c.frame(Rect { x0: 2, y0: 2, x1: 18, y1: 18 }, 1, INK);
        assert_eq!(inked(&c, Rect { x0: 0, y0: 0, x1: 20, y1: 20 }), 4 * 15);
        assert_eq!(c.img.get_pixel(10, 10).0, WHITE);
    }
}
