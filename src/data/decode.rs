//! Worker side of the data layer: encoded sample bytes -> uint8 `[3, R, R]`
//! -> model input in [-1, 1] (docs/ddpm.md section 1).
//!
//! Image files are center-cropped to a square and resized with a Lanczos-3
//! convolution, the preprocessing the DDPM LSUN data went through (the
//! progressive-GAN `dataset_tool.py create_lsun`: crop the centre square,
//! PIL `resize(ANTIALIAS)`). The resize is `fast_image_resize`, which
//! implements Pillow's convolution, so results match Pillow to within a
//! level or two.
//!
//! WebP goes through libwebp (the `libwebp-sys` crate compiles libwebp 1.6
//! from its vendored source with the `cc` crate: a fresh machine needs a C
//! compiler and nothing else), the same decoder Pillow, OpenCV and the LSUN
//! tools use, so our pixels equal Pillow's. PNG and JPEG go through the
//! pure-Rust `image` crate. Alpha is dropped, grey is replicated to RGB.

use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use serde::{Deserialize, Serialize};

use super::error::DataError;

/// How a dataset's encoded samples are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleFormat {
    /// Raw uint8 pixels in `[3, R, R]` order (CIFAR-10, synthetic).
    RawChw,
    /// An image file (WebP, JPEG or PNG): decoded, center-cropped to a
    /// square and resized to `R`.
    Image,
}

/// Turns one sample's encoded bytes into uint8 `[3, R, R]` pixels. Small and
/// serializable: the coordinator sends it to workers inside the run config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decoder {
    format: SampleFormat,
    resolution: usize,
}

/// Channels of every decoded sample (RGB; grey images are replicated and
/// alpha is dropped).
pub const CHANNELS: usize = 3;

impl Decoder {
    pub fn new(format: SampleFormat, resolution: usize) -> Self {
        Self { format, resolution }
    }

    pub fn format(&self) -> SampleFormat {
        self.format
    }

    /// The side of the square images `decode` returns.
    pub fn resolution(&self) -> usize {
        self.resolution
    }

    /// Values in one decoded sample: `3 * R * R`.
    pub fn sample_len(&self) -> usize {
        CHANNELS * self.resolution * self.resolution
    }

    /// uint8 pixels `[3, R, R]` of one sample.
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, DataError> {
        match self.format {
            SampleFormat::RawChw => {
                if bytes.len() != self.sample_len() {
                    return Err(DataError::decode(format!(
                        "raw sample has {} bytes, expected 3x{r}x{r} = {}",
                        bytes.len(),
                        self.sample_len(),
                        r = self.resolution
                    )));
                }
                Ok(bytes.to_vec())
            }
            SampleFormat::Image => {
                let (w, h, rgb) = decode_rgb(bytes)?;
                let square = center_crop_resize(&rgb, w, h, self.resolution)?;
                Ok(hwc_to_chw(&square, self.resolution, self.resolution))
            }
        }
    }

    /// `decode` then `to_model_input`: `out` is `[3, R, R]` in [-1, 1].
    pub fn decode_to_model_input(&self, bytes: &[u8], flip: bool, out: &mut [f32]) -> Result<(), DataError> {
        let pixels = self.decode(bytes)?;
        to_model_input(&pixels, CHANNELS, self.resolution, flip, out);
        Ok(())
    }
}

/// `x / 127.5 - 1` (docs/ddpm.md section 1), mirrored left-right when `flip`.
/// `pixels_chw` and `out` are `[channels, size, size]`.
///
/// # Panics
/// If either slice is not `channels * size * size` long: a programming
/// error, never user data (decoders check sizes).
pub fn to_model_input(pixels_chw: &[u8], channels: usize, size: usize, flip: bool, out: &mut [f32]) {
    let n = channels * size * size;
    assert_eq!(pixels_chw.len(), n, "to_model_input: pixels are not [{channels}, {size}, {size}]");
    assert_eq!(out.len(), n, "to_model_input: output is not [{channels}, {size}, {size}]");
    if size == 0 {
        return;
    }
    for (src, dst) in pixels_chw.chunks_exact(size).zip(out.chunks_exact_mut(size)) {
        if flip {
            for (d, &s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = s as f32 / 127.5 - 1.0;
            }
        } else {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s as f32 / 127.5 - 1.0;
            }
        }
    }
}

/// The encodings `decode_rgb` understands, told apart by their magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    WebP,
    Png,
    Jpeg,
}

pub fn sniff(bytes: &[u8]) -> Option<ImageKind> {
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(ImageKind::WebP)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageKind::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageKind::Jpeg)
    } else {
        None
    }
}

/// Decodes an image file to interleaved RGB: `(width, height, [h, w, 3])`.
pub fn decode_rgb(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>), DataError> {
    match sniff(bytes) {
        Some(ImageKind::WebP) => decode_webp(bytes),
        Some(kind) => {
            let format = if kind == ImageKind::Png { image::ImageFormat::Png } else { image::ImageFormat::Jpeg };
            let img = image::load_from_memory_with_format(bytes, format)
                .map_err(|e| DataError::decode(format!("corrupt or truncated {kind:?} image: {e}")))?;
            let rgb = img.into_rgb8();
            let (w, h) = (rgb.width() as usize, rgb.height() as usize);
            check_size(w, h)?;
            Ok((w, h, rgb.into_raw()))
        }
        None => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Err(DataError::decode(format!(
                "not a WebP, PNG or JPEG image ({} bytes, starting with {})",
                bytes.len(),
                if head.is_empty() { "nothing".to_string() } else { head.join(" ") }
            )))
        }
    }
}

fn check_size(w: usize, h: usize) -> Result<(), DataError> {
    if w == 0 || h == 0 {
        return Err(DataError::decode(format!("image is {w}x{h}")));
    }
    Ok(())
}

/// The largest image (in pixels) `decode_rgb` accepts: 64 megapixels.
pub const MAX_PIXELS: usize = 1 << 26;

/// libwebp, the decoder the LSUN tools, OpenCV and Pillow use.
fn decode_webp(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>), DataError> {
    let (mut w, mut h) = (0i32, 0i32);
    // SAFETY: libwebp reads at most `bytes.len()` bytes from the pointer and
    // writes the two ints.
    let ok = unsafe { libwebp_sys::WebPGetInfo(bytes.as_ptr(), bytes.len(), &mut w, &mut h) };
    if ok == 0 || w <= 0 || h <= 0 {
        return Err(DataError::decode("corrupt or truncated WebP image (libwebp cannot read its header)"));
    }
    let (w, h) = (w as usize, h as usize);
    // libwebp caps sides at 16383, so this cannot overflow; the cap keeps a
    // hostile header from allocating 800 MB.
    if w * h > MAX_PIXELS {
        return Err(DataError::decode(format!("WebP image of {w}x{h} is larger than the {MAX_PIXELS} pixels this reader accepts")));
    }
    let mut rgb = vec![0u8; w * h * 3];
    // SAFETY: `rgb` is exactly `h` rows of `3 * w` bytes; libwebp checks the
    // bitstream against the buffer size and stride before writing.
    let out = unsafe { libwebp_sys::WebPDecodeRGBInto(bytes.as_ptr(), bytes.len(), rgb.as_mut_ptr(), rgb.len(), (w * 3) as i32) };
    if out.is_null() {
        return Err(DataError::decode(format!(
            "corrupt, truncated or animated WebP image ({w}x{h}, {} bytes; libwebp could not decode it)",
            bytes.len()
        )));
    }
    Ok((w, h, rgb))
}

/// Interleaved RGB `[h, w, 3]`: the centre square, resized to `size` with
/// Lanczos-3 (copied exactly when it already is `size`).
pub fn center_crop_resize(rgb: &[u8], w: usize, h: usize, size: usize) -> Result<Vec<u8>, DataError> {
    let side = w.min(h);
    let (left, top) = ((w - side) / 2, (h - side) / 2);
    if side == size {
        let mut out = Vec::with_capacity(size * size * 3);
        for row in rgb.chunks_exact(w * 3).skip(top).take(size) {
            out.extend_from_slice(&row[left * 3..(left + size) * 3]);
        }
        return Ok(out);
    }
    let src = fast_image_resize::images::ImageRef::new(w as u32, h as u32, rgb, PixelType::U8x3)
        .map_err(|e| DataError::decode(format!("cannot resize a {w}x{h} image: {e}")))?;
    let mut dst = Image::new(size as u32, size as u32, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3)).crop(
        left as f64,
        top as f64,
        side as f64,
        side as f64,
    );
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| DataError::decode(format!("cannot resize a {w}x{h} image to {size}x{size}: {e}")))?;
    Ok(dst.into_vec())
}

/// `[h, w, 3]` -> `[3, h, w]`.
pub fn hwc_to_chw(hwc: &[u8], h: usize, w: usize) -> Vec<u8> {
    let plane = h * w;
    let mut chw = vec![0u8; 3 * plane];
    for (i, px) in hwc.chunks_exact(3).enumerate().take(plane) {
        chw[i] = px[0];
        chw[plane + i] = px[1];
        chw[2 * plane + i] = px[2];
    }
    chw
}

/// `[c, h, w]` -> `[h, w, c]`.
pub fn chw_to_hwc(chw: &[u8], c: usize, h: usize, w: usize) -> Vec<u8> {
    let plane = h * w;
    let mut hwc = vec![0u8; c * plane];
    for i in 0..plane {
        for ch in 0..c {
            hwc[i * c + ch] = chw[ch * plane + i];
        }
    }
    hwc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_input_scales_and_flips() {
        // [1, 2, 2]
        let px = [0u8, 255, 51, 102];
        let mut out = [0f32; 4];
        to_model_input(&px, 1, 2, false, &mut out);
        assert_eq!(out, [-1.0, 1.0, 51.0 / 127.5 - 1.0, 102.0 / 127.5 - 1.0]);
        to_model_input(&px, 1, 2, true, &mut out);
        assert_eq!(out, [1.0, -1.0, 102.0 / 127.5 - 1.0, 51.0 / 127.5 - 1.0]);
    }

    #[test]
    fn raw_decoder_checks_length() {
        let d = Decoder::new(SampleFormat::RawChw, 2);
        assert_eq!(d.decode(&[7; 12]).unwrap(), vec![7; 12]);
        let e = d.decode(&[7; 11]).unwrap_err().to_string();
        assert!(e.contains("11 bytes, expected 3x2x2 = 12"), "{e}");
    }

    #[test]
    fn crop_without_resize_is_exact() {
        // 4x2 image, centre square is columns 1..3.
        let rgb: Vec<u8> = (0..24).collect();
        let out = center_crop_resize(&rgb, 4, 2, 2).unwrap();
        assert_eq!(out, vec![3, 4, 5, 6, 7, 8, 15, 16, 17, 18, 19, 20]);
        // Resizing a constant image keeps it constant.
        let flat = vec![200u8; 30 * 20 * 3];
        assert!(center_crop_resize(&flat, 30, 20, 8).unwrap().iter().all(|&v| v == 200));
    }

    #[test]
    fn layouts_round_trip() {
        let hwc: Vec<u8> = (0..2 * 3 * 3).collect();
        assert_eq!(chw_to_hwc(&hwc_to_chw(&hwc, 2, 3), 3, 2, 3), hwc);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let e = Decoder::new(SampleFormat::Image, 8).decode(b"hello world").unwrap_err().to_string();
        assert!(e.contains("not a WebP, PNG or JPEG image (11 bytes, starting with 68 65 6c"), "{e}");
        let mut fake_webp = b"RIFF\0\0\0\0WEBPVP8 ".to_vec();
        fake_webp.extend_from_slice(&[0; 20]);
        let e = Decoder::new(SampleFormat::Image, 8).decode(&fake_webp).unwrap_err().to_string();
        assert!(e.contains("WebP"), "{e}");
    }
}
