//! The data layer: datasets in the formats users have, what travels from
//! the coordinator to workers, and the sampling order.
//!
//! - The coordinator opens a [`Dataset`] from a [`DatasetSpec`] and, for each
//!   global batch ([`order::SampleOrder`]), ships each worker the
//!   [`Dataset::encoded`] bytes of its share ([`order::shard_ranges`]):
//!   raw CHW pixels for CIFAR-10 and synthetic data, the original file bytes
//!   for LSUN and image folders.
//! - Workers hold the dataset's [`Decoder`] (sent in the run config), decode
//!   to uint8 `[3, R, R]` and call [`to_model_input`] with the flip drawn by
//!   [`order::BatchItem::draw`].
//!
//! Files: `dataset.rs` (the [`Dataset`] trait), `spec.rs` (the `--data`
//! grammar), `cifar.rs` + `pickle.rs`,
//! `lsun.rs`, `folder.rs`, `synthetic.rs`, `decode.rs` (worker side),
//! `order.rs` (sampling order), `remote.rs` (datasets in object storage,
//! fetched to a local cache), `error.rs`.

mod cifar;
mod dataset;
mod decode;
mod error;
mod folder;
mod lsun;
pub mod order;
mod pickle;
mod remote;
mod spec;
pub mod synthetic;

pub use dataset::{decode_sample, Dataset, DatasetInfo};
pub use decode::{
    center_crop_resize, chw_to_hwc, decode_rgb, hwc_to_chw, sniff, to_model_input, Decoder, ImageKind, SampleFormat, CHANNELS,
};
pub use error::DataError;
pub use order::{global_batch, shard_ranges, step_batch, BatchItem, OrderState, ResumeError, SampleOrder};
pub use remote::{default_cache_dir, fetch_remote, fetch_remote_to, is_remote, FetchReport};
pub use spec::{DatasetKind, DatasetSpec, Split, MAX_RESOLUTION, SYNTHETIC_NAMES};

/// Options from the config that complete a spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Side of the square images the model sees. `None`: the spec's `@R`, or
    /// the dataset's default (32 for CIFAR-10 and synthetic, 256 for LSUN,
    /// the smaller side of the first image for a folder).
    pub resolution: Option<usize>,
}

/// Opens the dataset a spec names.
pub fn open(spec: &DatasetSpec, opts: &OpenOptions) -> Result<Box<dyn Dataset>, DataError> {
    let resolution = match (spec.resolution, opts.resolution) {
        (Some(a), Some(b)) if a != b => {
            return Err(DataError::spec(
                &spec.to_string(),
                format!("the spec asks for resolution {a} but the configuration for {b}; drop one of them"),
            ))
        }
        (a, b) => a.or(b),
    };
    if let Some(r) = resolution {
        if !(1..=MAX_RESOLUTION).contains(&r) {
            return Err(DataError::spec(&spec.to_string(), format!("resolution {r} must be between 1 and {MAX_RESOLUTION}")));
        }
    }
    Ok(match spec.kind {
        DatasetKind::Cifar10 => {
            if let Some(r) = resolution.filter(|&r| r != cifar::SIDE) {
                return Err(DataError::spec(
                    &spec.to_string(),
                    format!("CIFAR-10 images are 32x32; resolution {r} is not supported (drop it or use 32)"),
                ));
            }
            Box::new(cifar::Cifar10::open(spec)?)
        }
        DatasetKind::Lsun => Box::new(lsun::Lsun::open(spec, resolution)?),
        DatasetKind::Folder => Box::new(folder::Folder::open(spec, resolution)?),
        DatasetKind::Synthetic => Box::new(synthetic::Shapes::open(spec, resolution)?),
    })
}
