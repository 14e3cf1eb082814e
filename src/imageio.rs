//! Writing uint8 CHW images as PNG: single images, and grids laid out like
//! torchvision's `make_grid` (2-pixel black padding around and between
//! cells, `cols` images per row).

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

/// Padding of `save_grid_png`, as torchvision's `make_grid` default.
pub const GRID_PADDING: usize = 2;

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

/// uint8 `[channels, H, W]` of a grid of `[channels, h, w]` images, `cols`
/// per row, with `GRID_PADDING` black pixels around and between them.
pub fn grid_chw(images_chw: &[&[u8]], channels: usize, h: usize, w: usize, cols: usize) -> Result<(Vec<u8>, usize, usize), ImageIoError> {
    if images_chw.is_empty() || cols == 0 {
        return Err(ImageIoError::Shape("a grid needs at least one image and one column".into()));
    }
    let cols = cols.min(images_chw.len());
    let rows = images_chw.len().div_ceil(cols);
    let p = GRID_PADDING;
    let (gh, gw) = (rows * (h + p) + p, cols * (w + p) + p);
    let mut grid = vec![0u8; channels * gh * gw];
    for (k, img) in images_chw.iter().enumerate() {
        check(img, channels, h, w)?;
        let (y0, x0) = (p + (k / cols) * (h + p), p + (k % cols) * (w + p));
        for c in 0..channels {
            for y in 0..h {
                let src = &img[(c * h + y) * w..][..w];
                grid[(c * gh + y0 + y) * gw + x0..][..w].copy_from_slice(src);
            }
        }
    }
    Ok((grid, gh, gw))
}

/// Writes a grid of uint8 `[channels, h, w]` images as one PNG (see `grid_chw`).
pub fn save_grid_png(path: &Path, images_chw: &[&[u8]], channels: usize, h: usize, w: usize, cols: usize) -> Result<(), ImageIoError> {
    let (grid, gh, gw) = grid_chw(images_chw, channels, h, w, cols)?;
    save_png(path, &grid, channels, gh, gw)
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
    fn grid_matches_make_grid_layout() {
        // Two 1x1x2 images in one row: width 2 * (2 + 2) + 2 = 10, height 1 + 4 = 5.
        let a = [10u8, 11];
        let b = [20u8, 21];
        let (g, gh, gw) = grid_chw(&[&a, &b], 1, 1, 2, 4).unwrap();
        assert_eq!((gh, gw), (5, 10));
        let row2 = &g[2 * gw..3 * gw];
        assert_eq!(row2, &[0, 0, 10, 11, 0, 0, 20, 21, 0, 0]);
        assert!(g[..2 * gw].iter().all(|&v| v == 0));
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
