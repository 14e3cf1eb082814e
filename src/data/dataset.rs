//! What every reader implements: a fixed, ordered list of samples, their
//! bytes as they travel to a worker, and the decoder that turns those into
//! pixels.

use bytes::Bytes;
use serde::Serialize;

use super::decode::Decoder;
use super::error::DataError;

/// What `ddpm data inspect` reports and a run records about its data.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetInfo {
    /// The spec as given.
    pub spec: String,
    /// The reader: cifar10-binary, cifar10-python, lsun-lmdb, image-folder, synthetic-shapes.
    pub format: String,
    /// Number of samples.
    pub count: usize,
    /// Side of the square images the model sees.
    pub resolution: usize,
    /// Always 3 (RGB).
    pub channels: usize,
    /// train or test (CIFAR-10, synthetic); train, val or test when an LSUN
    /// folder's name says so; none for folders.
    pub split: Option<String>,
    /// Where the data is read from.
    pub source: String,
}

/// A dataset: a fixed, ordered list of samples.
pub trait Dataset: Send + Sync {
    /// Number of samples; never 0 (an empty dataset fails to open).
    fn len(&self) -> usize;

    /// Always false: opening refuses empty datasets.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn info(&self) -> DatasetInfo;

    /// The bytes of sample `index` as they travel to a worker.
    fn encoded(&self, index: usize) -> Result<Bytes, DataError>;

    /// What turns [`Dataset::encoded`] bytes into uint8 `[3, R, R]`.
    fn decoder(&self) -> Decoder;

    /// A name for sample `index` that lets a user find it (a file path, an
    /// LMDB key), for error messages.
    fn describe(&self, index: usize) -> String {
        format!("sample {index}")
    }
}

/// Sample `index` decoded to uint8 `[3, R, R]`, before augmentation; a
/// decode error names the sample.
pub fn decode_sample(ds: &dyn Dataset, index: usize) -> Result<Vec<u8>, DataError> {
    let bytes = ds.encoded(index)?;
    ds.decoder().decode(&bytes).map_err(|e| e.in_sample(ds.describe(index)))
}
