//! A folder of images: every `.png`, `.jpg`, `.jpeg` and `.webp` file below
//! it (recursively, following links, case-insensitive extensions), sorted
//! by path so that sample `i` is the same file on every machine. Each sample
//! travels as the file's bytes and is center-cropped and resized like LSUN.

use std::path::PathBuf;

use bytes::Bytes;

use super::dataset::{Dataset, DatasetInfo};
use super::decode::{decode_rgb, Decoder, SampleFormat};
use super::error::DataError;
use super::spec::DatasetSpec;

const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

pub struct Folder {
    spec: DatasetSpec,
    root: PathBuf,
    files: Vec<PathBuf>,
    resolution: usize,
}

impl Folder {
    pub fn open(spec: &DatasetSpec, resolution: Option<usize>) -> Result<Self, DataError> {
        let root = spec.path().to_path_buf();
        let meta = std::fs::metadata(&root).map_err(|e| DataError::io(&root, e))?;
        if !meta.is_dir() {
            return Err(DataError::format(&root, "not a folder: folder: needs a directory of PNG/JPEG/WebP images"));
        }
        let mut files = Vec::new();
        for entry in walkdir::WalkDir::new(&root).follow_links(true).sort_by_file_name() {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(&root).to_path_buf();
                match e.into_io_error() {
                    Some(io) => DataError::io(&path, io),
                    None => DataError::format(&path, "a symbolic link loop"),
                }
            })?;
            let is_image =
                entry.path().extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)));
            if entry.file_type().is_file() && is_image {
                files.push(entry.into_path());
            }
        }
        if files.is_empty() {
            return Err(DataError::format(&root, "no images: no .png, .jpg, .jpeg or .webp file in this folder or below it"));
        }
        let resolution = match resolution {
            Some(r) => r,
            None => {
                // The smaller side of the first image.
                let first = &files[0];
                let bytes = std::fs::read(first).map_err(|e| DataError::io(first, e))?;
                let (w, h, _) = decode_rgb(&bytes).map_err(|e| e.in_sample(first.display().to_string()))?;
                w.min(h)
            }
        };
        Ok(Folder { spec: spec.clone(), root, files, resolution })
    }
}

impl Dataset for Folder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn info(&self) -> DatasetInfo {
        DatasetInfo {
            spec: self.spec.to_string(),
            format: "image-folder".to_string(),
            count: self.len(),
            resolution: self.resolution,
            channels: 3,
            split: None,
            source: self.root.display().to_string(),
        }
    }

    fn encoded(&self, index: usize) -> Result<Bytes, DataError> {
        let file = self.files.get(index).ok_or(DataError::IndexOutOfRange { index, len: self.len() })?;
        std::fs::read(file).map(Bytes::from).map_err(|e| DataError::io(file, e))
    }

    fn decoder(&self) -> Decoder {
        Decoder::new(SampleFormat::Image, self.resolution)
    }

    fn describe(&self, index: usize) -> String {
        match self.files.get(index) {
            Some(f) => f.display().to_string(),
            None => format!("image {index}"),
        }
    }
}
