//! Writing uint8 CHW images as PNG: single images, and grids for people to
//! look at (`cols` images per row, small images enlarged, a grey border:
//! `view_grid_chw`); the exact pixels of samples are in the jobs' `.npz`.

use std::path::{Path, PathBuf};

use image::ImageEncoder;

#[derive(Debug, thiserror::Error)]
pub enum ImageIoError {
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode PNG: {0}")]
    Encode(String),
    #[error("bad image shape: {0}")]
    Shape(String),
}

fn color_type(channels: usize) -> Result<image::ExtendedColorType, ImageIoError> {
    match channels {
        1 => Ok(image::ExtendedColorType::L8),
        3 => Ok(image::ExtendedColorType::Rgb8),
        4 => Ok(image::ExtendedColorType::Rgba8),
        c => Err(ImageIoError::Shape(format!("{c} channels; PNG takes 1, 3 or 4"))),
    }
}

fn check(pixels: &[u8], channels: usize, h: usize, w: usize) -> Result<(), ImageIoError> {
    if pixels.len() != channels * h * w {
        return Err(ImageIoError::Shape(format!("{} values for [{channels}, {h}, {w}]", pixels.len())));
    }
    if h == 0 || w == 0 || h > u32::MAX as usize || w > u32::MAX as usize {
        return Err(ImageIoError::Shape(format!("size {w}x{h}")));
    }
    Ok(())
}

/// A PNG file's bytes for uint8 `[channels, h, w]` pixels.
pub fn encode_png(pixels_chw: &[u8], channels: usize, h: usize, w: usize) -> Result<Vec<u8>, ImageIoError> {
    check(pixels_chw, channels, h, w)?;
    let ct = color_type(channels)?;
    let hwc = crate::data::chw_to_hwc(pixels_chw, channels, h, w);
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&hwc, w as u32, h as u32, ct)
        .map_err(|e| ImageIoError::Encode(e.to_string()))?;
    Ok(out)
}

/// Writes uint8 `[channels, h, w]` pixels as a PNG file.
pub fn save_png(path: &Path, pixels_chw: &[u8], channels: usize, h: usize, w: usize) -> Result<(), ImageIoError> {
    let png = encode_png(pixels_chw, channels, h, w)?;
    std::fs::write(path, png).map_err(|source| ImageIoError::Write { path: path.to_path_buf(), source })
}

/// A cell of a grid meant to be looked at is at least this many pixels on
/// its longer side: 16x16 samples are enlarged 4 times, 32x32 twice.
pub const VIEW_CELL_MIN: usize = 64;
/// Pixels between (and around) the cells of a grid to look at.
pub const VIEW_PADDING: usize = 4;
/// The border's grey: visible against both black and white backgrounds,
/// so that images on black (the synthetic shapes) do not run together.
pub const VIEW_BORDER: u8 = 128;

/// The whole-number enlargement that makes an `h` x `w` cell at least
/// [`VIEW_CELL_MIN`] pixels on its longer side (1 for large images).
pub fn view_scale(h: usize, w: usize) -> usize {
    VIEW_CELL_MIN.div_ceil(h.max(w).max(1)).max(1)
}

/// uint8 `[channels, H, W]` of a grid for people: each `[channels, h, w]`
/// image enlarged by [`view_scale`] with nearest-neighbour sampling (every
/// pixel becomes a square block: nothing is smoothed or made up), with a
/// [`VIEW_PADDING`]-pixel grey border between and around them.
pub fn view_grid_chw(
    images_chw: &[&[u8]],
    channels: usize,
    h: usize,
    w: usize,
    cols: usize,
) -> Result<(Vec<u8>, usize, usize), ImageIoError> {
    if images_chw.is_empty() || cols == 0 {
        return Err(ImageIoError::Shape("a grid needs at least one image and one column".into()));
    }
    let s = view_scale(h, w);
    let (ch, cw) = (h * s, w * s);
    let cols = cols.min(images_chw.len());
    let rows = images_chw.len().div_ceil(cols);
    let p = VIEW_PADDING;
    let (gh, gw) = (rows * (ch + p) + p, cols * (cw + p) + p);
    let mut grid = vec![VIEW_BORDER; channels * gh * gw];
    for (k, img) in images_chw.iter().enumerate() {
        check(img, channels, h, w)?;
        let (y0, x0) = (p + (k / cols) * (ch + p), p + (k % cols) * (cw + p));
        for c in 0..channels {
            for y in 0..ch {
                let src = &img[(c * h + y / s) * w..][..w];
                let dst = &mut grid[(c * gh + y0 + y) * gw + x0..][..cw];
                for (x, v) in dst.iter_mut().enumerate() {
                    *v = src[x / s];
                }
            }
        }
    }
    Ok((grid, gh, gw))
}

/// A PNG of [`view_grid_chw`]: how sample and dataset grids are written.
pub fn encode_view_grid_png(images_chw: &[&[u8]], channels: usize, h: usize, w: usize, cols: usize) -> Result<Vec<u8>, ImageIoError> {
    let (grid, gh, gw) = view_grid_chw(images_chw, channels, h, w, cols)?;
    encode_png(&grid, channels, gh, gw)
}

/// At most this many images go into a job's `grid.png`.
pub const GRID_IMAGES: usize = 256;

/// The columns of a square-ish grid of `n` images.
pub fn square_cols(n: usize) -> usize {
    ((n as f64).sqrt().ceil() as usize).max(1)
}

/// A job's grid: the first `shown` of RGB `[N, 3, res, res]` images in
/// `cols` columns ([`encode_view_grid_png`]).
pub fn rgb_grid_png(images_nchw: &[u8], res: usize, cols: usize, shown: usize) -> Result<Vec<u8>, ImageIoError> {
    let refs: Vec<&[u8]> = images_nchw.chunks_exact(3 * res * res).take(shown).collect();
    encode_view_grid_png(&refs, 3, res, res, cols.max(1))
}

/// Writes [`encode_view_grid_png`] to `path`.
pub fn save_grid_png(path: &Path, images_chw: &[&[u8]], channels: usize, h: usize, w: usize, cols: usize) -> Result<(), ImageIoError> {
    let png = encode_view_grid_png(images_chw, channels, h, w, cols)?;
    std::fs::write(path, png).map_err(|source| ImageIoError::Write { path: path.to_path_buf(), source })
}

/// A lossy WebP file (libwebp, `quality` 0-100) of interleaved RGB
/// `[h, w, 3]` pixels, as the LSUN tools store images. Used to make test and
/// benchmark data.
pub fn encode_webp_rgb(rgb_hwc: &[u8], w: usize, h: usize, quality: f32) -> Result<Vec<u8>, ImageIoError> {
    if rgb_hwc.len() != w * h * 3 || w == 0 || h == 0 || w > 16383 || h > 16383 {
        return Err(ImageIoError::Shape(format!("{} values for a {w}x{h} RGB image (WebP sides are 1..16383)", rgb_hwc.len())));
    }
    let mut out: *mut u8 = std::ptr::null_mut();
    // SAFETY: the input is `h` rows of `3 * w` bytes (checked above); on
    // success libwebp allocates `size` bytes at `out`, freed below with WebPFree.
    let size = unsafe { libwebp_sys::WebPEncodeRGB(rgb_hwc.as_ptr(), w as i32, h as i32, (w * 3) as i32, quality, &mut out) };
    if size == 0 || out.is_null() {
        return Err(ImageIoError::Encode("libwebp could not encode the image".into()));
    }
    // SAFETY: libwebp returned `size` initialised bytes at `out`.
    let bytes = unsafe { std::slice::from_raw_parts(out, size) }.to_vec();
    // SAFETY: `out` came from libwebp's allocator and is not used again.
    unsafe { libwebp_sys::WebPFree(out.cast()) };
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_grid_enlarges_blocks_and_draws_a_grey_border() {
        // Two 1-channel 2x2 images, one row: scale 32, cells 64x64.
        let a = [0u8, 10, 20, 30];
        let b = [255u8; 4];
        let (g, gh, gw) = view_grid_chw(&[&a, &b], 1, 2, 2, 2).unwrap();
        let p = VIEW_PADDING;
        assert_eq!((gh, gw), (64 + 2 * p, 2 * (64 + p) + p));
        let at = |y: usize, x: usize| g[y * gw + x];
        assert_eq!(at(0, 0), VIEW_BORDER);
        // Image a's pixel (0, 1) covers rows 0..32 and columns 32..64 of its cell.
        assert_eq!(at(p, p + 32), 10);
        assert_eq!(at(p + 31, p + 63), 10);
        assert_eq!(at(p + 32, p), 20);
        assert_eq!(at(p + 63, p + 63), 30);
        // The border between the two cells, then b.
        assert_eq!(at(p + 10, p + 64), VIEW_BORDER);
        assert_eq!(at(p + 10, 2 * p + 64), 255);
        assert_eq!(view_scale(16, 16), 4);
        assert_eq!(view_scale(32, 32), 2);
        assert_eq!(view_scale(256, 256), 1);
    }

    #[test]
    fn png_round_trips_through_the_decoder() {
        let px: Vec<u8> = (0..3 * 4 * 5).map(|i| (i * 4) as u8).collect();
        let png = encode_png(&px, 3, 4, 5).unwrap();
        let (w, h, rgb) = crate::data::decode_rgb(&png).unwrap();
        assert_eq!((w, h), (5, 4));
        assert_eq!(crate::data::hwc_to_chw(&rgb, 4, 5), px);
        assert!(encode_png(&px, 3, 4, 4).is_err());
    }

    #[test]
    fn webp_round_trips_approximately() {
        let (w, h) = (40, 30);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| ((i / 3 % w) * 6) as u8).collect();
        let webp = encode_webp_rgb(&rgb, w, h, 90.0).unwrap();
        let (dw, dh, back) = crate::data::decode_rgb(&webp).unwrap();
        assert_eq!((dw, dh), (w, h));
        let err = rgb.iter().zip(&back).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>() / rgb.len() as f64;
        assert!(err < 4.0, "mean abs error {err}");
    }
}
