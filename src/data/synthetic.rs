//! `synthetic:shapes`: a built-in dataset that needs no download, for the
//! demo and the tests.
//!
//! Each image is a black background with one shape (70%) or two shapes
//! (30%, the second drawn over the first), each a filled circle, square or
//! upward triangle in one of six saturated colours (red, green, blue,
//! yellow, cyan, magenta), with a half-size between 18% and 32% of the side
//! and placed wholly inside the image. Edges are hard (no anti-aliasing).
//! The train split has 50,000 images and the test split 10,000 others; the
//! default size is 32x32 and any resolution renders the same scenes.
//!
//! High contrast, few colours and a single background make it learnable: a
//! U-Net of one or two million parameters trained for a few minutes on a
//! CPU samples recognisable coloured blobs and shapes.
//!
//! Image `i` is a pure function of `(split, i)` through its own SplitMix64
//! stream; rendering uses pixel-centre tests in f64, which IEEE arithmetic
//! makes identical on every machine.

use bytes::Bytes;

use super::dataset::{Dataset, DatasetInfo};
use super::decode::{Decoder, SampleFormat};
use super::error::DataError;
use super::spec::{DatasetSpec, Split};
use crate::rng::{mix64, Stream};

pub const DEFAULT_RESOLUTION: usize = 32;
pub const TRAIN_COUNT: usize = 50_000;
pub const TEST_COUNT: usize = 10_000;

/// Key of the shapes streams ("SHAPES" in ASCII).
const SHAPES_KEY: u64 = 0x5348_4150_4553;

const COLOURS: [[u8; 3]; 6] = [[230, 25, 25], [25, 200, 40], [30, 60, 235], [245, 220, 20], [20, 220, 230], [225, 30, 220]];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

/// One shape of one image, in units of the image side (0..1).
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    pub shape: Shape,
    pub colour: [u8; 3],
    pub cx: f64,
    pub cy: f64,
    pub half: f64,
}

/// The scene of image `index` of `split`, independent of the resolution.
pub fn scene(split: Split, index: usize) -> Vec<Placed> {
    let split_tag = match split {
        Split::Train => 1,
        Split::Test => 2,
    };
    let mut s = Stream::new(mix64(mix64(SHAPES_KEY ^ split_tag) ^ index as u64));
    let count = if s.uniform() < 0.7 { 1 } else { 2 };
    (0..count)
        .map(|_| {
            let shape = [Shape::Circle, Shape::Square, Shape::Triangle][s.below(3) as usize];
            let colour = COLOURS[s.below(COLOURS.len() as u64) as usize];
            let half = 0.18 + 0.14 * s.uniform();
            let cx = half + (1.0 - 2.0 * half) * s.uniform();
            let cy = half + (1.0 - 2.0 * half) * s.uniform();
            Placed { shape, colour, cx, cy, half }
        })
        .collect()
}

/// uint8 `[3, size, size]` pixels of a scene.
pub fn render(scene: &[Placed], size: usize) -> Vec<u8> {
    let plane = size * size;
    let mut out = vec![0u8; 3 * plane];
    let n = size as f64;
    for p in scene {
        let (cx, cy, half) = (p.cx * n, p.cy * n, p.half * n);
        for y in 0..size {
            let py = y as f64 + 0.5;
            for x in 0..size {
                let px = x as f64 + 0.5;
                let (dx, dy) = (px - cx, py - cy);
                let inside = match p.shape {
                    Shape::Circle => dx * dx + dy * dy <= half * half,
                    Shape::Square => dx.abs() <= half && dy.abs() <= half,
                    // Apex at (cx, cy - half), base from (cx - half, cy + half) to (cx + half, cy + half).
                    Shape::Triangle => dy.abs() <= half && dx.abs() <= (dy + half) / 2.0,
                };
                if inside {
                    for c in 0..3 {
                        out[c * plane + y * size + x] = p.colour[c];
                    }
                }
            }
        }
    }
    out
}

pub struct Shapes {
    spec: DatasetSpec,
    split: Split,
    resolution: usize,
}

impl Shapes {
    pub fn open(spec: &DatasetSpec, resolution: Option<usize>) -> Result<Self, DataError> {
        Ok(Shapes {
            spec: spec.clone(),
            split: spec.effective_split().unwrap_or(Split::Train),
            resolution: resolution.unwrap_or(DEFAULT_RESOLUTION),
        })
    }
}

impl Dataset for Shapes {
    fn len(&self) -> usize {
        match self.split {
            Split::Train => TRAIN_COUNT,
            Split::Test => TEST_COUNT,
        }
    }

    fn info(&self) -> DatasetInfo {
        DatasetInfo {
            spec: self.spec.to_string(),
            format: "synthetic-shapes".to_string(),
            count: self.len(),
            resolution: self.resolution,
            channels: 3,
            split: Some(self.split.as_str().to_string()),
            source: "built in".to_string(),
        }
    }

    fn encoded(&self, index: usize) -> Result<Bytes, DataError> {
        if index >= self.len() {
            return Err(DataError::IndexOutOfRange { index, len: self.len() });
        }
        Ok(Bytes::from(render(&scene(self.split, index), self.resolution)))
    }

    fn decoder(&self) -> Decoder {
        Decoder::new(SampleFormat::RawChw, self.resolution)
    }

    fn describe(&self, index: usize) -> String {
        format!("synthetic shapes image {index} ({})", self.split.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_deterministic_varied_and_split_apart() {
        assert_eq!(scene(Split::Train, 5), scene(Split::Train, 5));
        assert_ne!(scene(Split::Train, 5), scene(Split::Train, 6));
        assert_ne!(scene(Split::Train, 5), scene(Split::Test, 5));
        let n = 2000;
        let two = (0..n).filter(|&i| scene(Split::Train, i).len() == 2).count();
        assert!((450..750).contains(&two), "{two} of {n} images have two shapes");
    }

    #[test]
    fn render_draws_inside_shapes_only() {
        let s = [Placed { shape: Shape::Square, colour: [255, 0, 0], cx: 0.5, cy: 0.5, half: 0.25 }];
        let px = render(&s, 8);
        // [3, 8, 8]: the square covers rows and columns 2..6.
        for y in 0..8 {
            for x in 0..8 {
                let on = (2..6).contains(&x) && (2..6).contains(&y);
                assert_eq!(px[y * 8 + x], if on { 255 } else { 0 }, "({x}, {y})");
                assert_eq!(px[64 + y * 8 + x], 0);
            }
        }
        // Every image has some colour and some background.
        for i in 0..50 {
            let px = render(&scene(Split::Train, i), 32);
            let lit = (0..1024).filter(|&j| px[j] | px[1024 + j] | px[2048 + j] != 0).count();
            assert!((30..1000).contains(&lit), "image {i}: {lit} lit pixels");
        }
    }
}
