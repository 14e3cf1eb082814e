//! CIFAR-10 in both official distributions, from the extracted folder or
//! straight from the downloaded `.tar.gz`:
//!
//! - binary (`cifar-10-batches-bin/`): `data_batch_1.bin` .. `data_batch_5.bin`
//!   and `test_batch.bin`, records of 1 label byte + 3072 pixel bytes
//!   (1024 red, 1024 green, 1024 blue, rows top to bottom);
//! - python (`cifar-10-batches-py/`): `data_batch_1` .. `data_batch_5` and
//!   `test_batch`, pickled dicts whose `data` is a uint8 array `[N, 3072]`
//!   in the same pixel order and whose `labels` is a list of N ints.
//!
//! All batches of the split are loaded into one buffer at open (150 MB for
//! the train split), so `encoded` is a zero-copy slice and the coordinator
//! never opens a file per sample.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::dataset::{Dataset, DatasetInfo};
use super::decode::{Decoder, SampleFormat};
use super::error::DataError;
use super::pickle;
use super::spec::{DatasetSpec, Split};

pub const SIDE: usize = 32;
pub const RECORD_PIXELS: usize = 3 * SIDE * SIDE;
const BIN_RECORD: usize = 1 + RECORD_PIXELS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Binary,
    Python,
}

impl Version {
    fn file_name(self, batch: &str) -> String {
        match self {
            Version::Binary => format!("{batch}.bin"),
            Version::Python => batch.to_string(),
        }
    }

    fn folder(self) -> &'static str {
        match self {
            Version::Binary => "cifar-10-batches-bin",
            Version::Python => "cifar-10-batches-py",
        }
    }

    fn format_name(self) -> &'static str {
        match self {
            Version::Binary => "cifar10-binary",
            Version::Python => "cifar10-python",
        }
    }
}

fn batch_names(split: Split) -> &'static [&'static str] {
    match split {
        Split::Train => &["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
        Split::Test => &["test_batch"],
    }
}

/// CIFAR-10, one split, held in memory.
pub struct Cifar10 {
    spec: DatasetSpec,
    split: Split,
    version: Version,
    source: String,
    /// `[N, 3, 32, 32]` uint8.
    pixels: Bytes,
    /// (batch file name, index of its first image).
    batches: Vec<(String, usize)>,
}

impl Cifar10 {
    pub fn open(spec: &DatasetSpec) -> Result<Self, DataError> {
        let path = spec.path();
        let split = spec.effective_split().unwrap_or(Split::Train);
        let meta = fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        let (version, files) = if meta.is_dir() { read_folder(path, split)? } else { read_archive(path, split)? };
        let mut pixels = Vec::new();
        let mut batches = Vec::new();
        for (name, bytes) in files {
            let start = pixels.len() / RECORD_PIXELS;
            match version {
                Version::Binary => parse_binary(&name, &bytes, &mut pixels)?,
                Version::Python => parse_python(&name, &bytes, &mut pixels)?,
            }
            batches.push((name.display().to_string(), start));
        }
        Ok(Cifar10 { spec: spec.clone(), split, version, source: path.display().to_string(), pixels: Bytes::from(pixels), batches })
    }
}

/// A batch file's name (for messages) and contents.
type BatchFile = (PathBuf, Vec<u8>);

/// Finds the batches of `split` in an extracted folder (or its parent).
fn read_folder(path: &Path, split: Split) -> Result<(Version, Vec<BatchFile>), DataError> {
    let first = batch_names(split)[0];
    let mut found = None;
    'search: for dir in [path.to_path_buf(), path.join(Version::Binary.folder()), path.join(Version::Python.folder())] {
        for version in [Version::Binary, Version::Python] {
            if dir.join(version.file_name(first)).is_file() {
                found = Some((version, dir));
                break 'search;
            }
        }
    }
    let Some((version, dir)) = found else {
        return Err(DataError::format(
            path,
            format!(
                "no CIFAR-10 {} batches here: expected {first}.bin (binary version) or {first} (python version), \
                 in this folder or in a cifar-10-batches-bin / cifar-10-batches-py folder inside it; \
                 extract cifar-10-binary.tar.gz or cifar-10-python.tar.gz, or give the .tar.gz itself",
                split.as_str()
            ),
        ));
    };
    let mut files = Vec::new();
    for batch in batch_names(split) {
        let file = dir.join(version.file_name(batch));
        if !file.is_file() {
            return Err(DataError::format(
                &file,
                format!("missing: the {} split needs {} (re-extract the download)", split.as_str(), expected_list(version, split)),
            ));
        }
        let bytes = fs::read(&file).map_err(|e| DataError::io(&file, e))?;
        files.push((file, bytes));
    }
    Ok((version, files))
}

fn expected_list(version: Version, split: Split) -> String {
    batch_names(split).iter().map(|b| version.file_name(b)).collect::<Vec<_>>().join(", ")
}

/// Reads the batches of `split` from `cifar-10-binary.tar.gz` or
/// `cifar-10-python.tar.gz` (or a plain `.tar` of either).
fn read_archive(path: &Path, split: Split) -> Result<(Version, Vec<BatchFile>), DataError> {
    let file = fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut head = [0u8; 2];
    let gz = {
        let mut f = &file;
        f.read_exact(&mut head).is_ok() && head == [0x1f, 0x8b]
    };
    let file = fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader: Box<dyn Read> =
        if gz { Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file))) } else { Box::new(std::io::BufReader::new(file)) };
    let corrupt = |e: std::io::Error| {
        DataError::format(path, format!("not a readable .tar.gz ({e}); expected the CIFAR-10 download cifar-10-binary.tar.gz or cifar-10-python.tar.gz, or its extracted folder"))
    };
    let mut archive = tar::Archive::new(reader);
    let mut members: Vec<(Version, String, PathBuf, Vec<u8>)> = Vec::new();
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let member = entry.path().map_err(corrupt)?.into_owned();
        let Some(name) = member.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        for version in [Version::Binary, Version::Python] {
            if batch_names(split).iter().any(|b| version.file_name(b) == name) {
                // The header's size is only a hint: a corrupt one must not allocate terabytes.
                let mut bytes = Vec::with_capacity((entry.size() as usize).min(64 << 20));
                entry.read_to_end(&mut bytes).map_err(corrupt)?;
                let shown = PathBuf::from(format!("{}[{}]", path.display(), member.display()));
                members.push((version, name.clone(), shown, bytes));
            }
        }
    }
    let Some(version) = [Version::Binary, Version::Python].into_iter().find(|v| members.iter().any(|m| m.0 == *v)) else {
        return Err(DataError::format(
            path,
            format!(
                "this archive holds no CIFAR-10 {} batches ({} or {}); expected cifar-10-binary.tar.gz or cifar-10-python.tar.gz",
                split.as_str(),
                expected_list(Version::Binary, split),
                expected_list(Version::Python, split)
            ),
        ));
    };
    let mut files = Vec::new();
    for batch in batch_names(split) {
        let want = version.file_name(batch);
        let Some(pos) = members.iter().position(|m| m.0 == version && m.1 == want) else {
            return Err(DataError::format(
                path,
                format!(
                    "the archive lacks {want}: the {} split needs {} (incomplete download?)",
                    split.as_str(),
                    expected_list(version, split)
                ),
            ));
        };
        let (_, _, shown, bytes) = members.swap_remove(pos);
        files.push((shown, bytes));
    }
    Ok((version, files))
}

fn parse_binary(path: &Path, bytes: &[u8], pixels: &mut Vec<u8>) -> Result<(), DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(BIN_RECORD) {
        let hint = if bytes.len().is_multiple_of(BIN_RECORD + 1) && !bytes.is_empty() {
            " (it divides into 3074-byte records: is this CIFAR-100, which has two label bytes?)"
        } else {
            " (the file is truncated or not a CIFAR-10 binary batch; re-download cifar-10-binary.tar.gz)"
        };
        return Err(DataError::format(
            path,
            format!("{} bytes is not a whole number of {BIN_RECORD}-byte records (1 label byte + 3072 pixel bytes){hint}", bytes.len()),
        ));
    }
    pixels.reserve(bytes.len() / BIN_RECORD * RECORD_PIXELS);
    for (i, rec) in bytes.chunks_exact(BIN_RECORD).enumerate() {
        if rec[0] > 9 {
            return Err(DataError::format(
                path,
                format!("record {i} has label {}, but CIFAR-10 labels are 0-9: not a CIFAR-10 binary batch", rec[0]),
            ));
        }
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(())
}

fn parse_python(path: &Path, bytes: &[u8], pixels: &mut Vec<u8>) -> Result<(), DataError> {
    let bad =
        |problem: String| DataError::format(path, format!("not a CIFAR-10 python batch: {problem}; re-download cifar-10-python.tar.gz"));
    let v = pickle::load(bytes).map_err(|e| bad(e.to_string()))?;
    let keys = v.dict_keys();
    if !matches!(v, pickle::Value::Dict(_)) {
        return Err(bad("the pickle is not a dict".into()));
    }
    let data = v.dict_get("data").ok_or_else(|| bad(format!("the dict has no 'data' entry (keys: {})", keys.join(", "))))?;
    let Some(labels) = v.dict_get("labels") else {
        let hint = if keys.iter().any(|k| k == "fine_labels") { " (this is CIFAR-100)" } else { "" };
        return Err(bad(format!("the dict has no 'labels' entry{hint} (keys: {})", keys.join(", "))));
    };
    let a = pickle::ndarray(&data).map_err(|e| bad(format!("'data': {e}")))?;
    if a.dtype != "u1" {
        return Err(bad(format!("'data' has numpy type {}, expected uint8", a.dtype)));
    }
    let [n, RECORD_PIXELS] = a.shape[..] else {
        return Err(bad(format!("'data' has shape {:?}, expected [N, 3072]", a.shape)));
    };
    if a.data.len() != n * RECORD_PIXELS {
        return Err(bad(format!("'data' holds {} bytes for shape [{n}, 3072] (truncated?)", a.data.len())));
    }
    let labels = pickle::int_list(&labels).map_err(|e| bad(format!("'labels': {e}")))?;
    if labels.len() != n {
        return Err(bad(format!("{} labels for {n} images", labels.len())));
    }
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| !(0..10).contains(*l)) {
        return Err(bad(format!("label {l} of image {i} is not 0-9")));
    }
    pixels.extend_from_slice(&a.data);
    Ok(())
}

impl Dataset for Cifar10 {
    fn len(&self) -> usize {
        self.pixels.len() / RECORD_PIXELS
    }

    fn info(&self) -> DatasetInfo {
        DatasetInfo {
            spec: self.spec.to_string(),
            format: self.version.format_name().to_string(),
            count: self.len(),
            resolution: SIDE,
            channels: 3,
            split: Some(self.split.as_str().to_string()),
            source: self.source.clone(),
        }
    }

    fn encoded(&self, index: usize) -> Result<Bytes, DataError> {
        if index >= self.len() {
            return Err(DataError::IndexOutOfRange { index, len: self.len() });
        }
        Ok(self.pixels.slice(index * RECORD_PIXELS..(index + 1) * RECORD_PIXELS))
    }

    fn decoder(&self) -> Decoder {
        Decoder::new(SampleFormat::RawChw, SIDE)
    }

    fn describe(&self, index: usize) -> String {
        let pos = self.batches.partition_point(|(_, start)| *start <= index).saturating_sub(1);
        match self.batches.get(pos) {
            Some((name, start)) => format!("CIFAR-10 image {index} (record {} of {name})", index - start),
            None => format!("CIFAR-10 image {index}"),
        }
    }
}
