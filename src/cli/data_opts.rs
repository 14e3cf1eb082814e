//! The dataset options shared by the `ddpm data` subcommands (`inspect`,
//! `export`, `fid-stats`).

use ddpm::data::{self, DatasetSpec, OpenOptions};

/// The dataset options shared by the subcommands.
#[derive(clap::Args)]
pub struct DataOpts {
    /// Dataset spec: cifar10:PATH[:train|:test], lsun:PATH, folder:PATH or
    /// synthetic:shapes[:train|:test], each with an optional @RESOLUTION
    /// (e.g. lsun:/data/church_outdoor_train_lmdb@256).
    #[arg(long = "data", value_name = "SPEC")]
    pub spec: DatasetSpec,
    /// Side of the square images, if the spec has no @RESOLUTION.
    #[arg(long)]
    pub resolution: Option<usize>,
}

impl DataOpts {
    pub(crate) fn open(&self) -> anyhow::Result<Box<dyn data::Dataset>> {
        Ok(data::open(&self.spec, &OpenOptions { resolution: self.resolution })?)
    }
}
