//! LSUN in its distributed form: an LMDB directory (`church_outdoor_train_lmdb/`
//! with `data.mdb` and `lock.mdb`) whose keys are image ids and whose values
//! are encoded images (WebP as exported by the LSUN tools; JPEG and PNG are
//! accepted too).
//!
//! The keys are read once at open, in LMDB's (sorted) order, so sample `i` is
//! the `i`-th key; `encoded` is one B-tree lookup in a short read
//! transaction. The environment is opened read-only and without LMDB's lock
//! file, so a dataset on a read-only volume works; nothing may write to it
//! while a run reads it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use bytes::Bytes;
use heed::types::Bytes as RawBytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};

use super::dataset::{Dataset, DatasetInfo};
use super::decode::{Decoder, SampleFormat};
use super::error::DataError;
use super::spec::DatasetSpec;

/// The paper's LSUN resolution, used when neither the spec nor the config sets one.
pub const DEFAULT_RESOLUTION: usize = 256;

type LmdbEnv = Env<WithoutTls>;

/// heed refuses to open one environment twice in a process, so opened ones
/// are shared (an `Env` is a reference-counted handle).
static OPENED: LazyLock<Mutex<HashMap<PathBuf, LmdbEnv>>> = LazyLock::new(Default::default);

pub struct Lsun {
    spec: DatasetSpec,
    path: PathBuf,
    env: LmdbEnv,
    db: Database<RawBytes, RawBytes>,
    /// All keys, concatenated; key `i` is `keys[key_ends[i-1]..key_ends[i]]`.
    keys: Vec<u8>,
    key_ends: Vec<usize>,
    resolution: usize,
}

fn lmdb_error(path: &Path, e: heed::Error) -> DataError {
    DataError::format(path, format!("cannot read the LMDB database: {e}"))
}

fn open_env(path: &Path) -> Result<LmdbEnv, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    // A directory holds data.mdb; a file is data.mdb itself.
    let (dir_mode, data_file) = if meta.is_dir() { (true, path.join("data.mdb")) } else { (false, path.to_path_buf()) };
    if dir_mode && !data_file.is_file() {
        return Err(DataError::format(
            path,
            "no data.mdb in this folder: an LSUN dataset is an LMDB directory such as church_outdoor_train_lmdb/ (unzip the download)",
        ));
    }
    let canonical = std::fs::canonicalize(&data_file).map_err(|e| DataError::io(&data_file, e))?;
    let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = opened.get(&canonical) {
        return Ok(env.clone());
    }
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    let mut flags = EnvFlags::READ_ONLY | EnvFlags::NO_LOCK | EnvFlags::NO_READ_AHEAD;
    if !dir_mode {
        flags |= EnvFlags::NO_SUB_DIR;
    }
    // SAFETY: the environment is opened read-only and without locks; the
    // documented contract for users is that nothing writes to a dataset
    // while it is read. Each path is opened once per process (`OPENED`).
    let env = unsafe {
        options.flags(flags);
        options.open(if dir_mode { path } else { &canonical })
    }
    .map_err(|e| match e {
        heed::Error::Mdb(heed::MdbError::Invalid) => {
            DataError::format(&data_file, "not an LMDB database (bad header): expected the data.mdb of an LSUN LMDB directory")
        }
        heed::Error::Mdb(heed::MdbError::VersionMismatch) => {
            DataError::format(&data_file, "an LMDB database of an incompatible LMDB version")
        }
        e => lmdb_error(path, e),
    })?;
    opened.insert(canonical, env.clone());
    Ok(env)
}

impl Lsun {
    pub fn open(spec: &DatasetSpec, resolution: Option<usize>) -> Result<Self, DataError> {
        let path = spec.path().to_path_buf();
        let env = open_env(&path)?;
        let rtxn = env.read_txn().map_err(|e| lmdb_error(&path, e))?;
        let db: Database<RawBytes, RawBytes> = env
            .open_database(&rtxn, None)
            .map_err(|e| lmdb_error(&path, e))?
            .ok_or_else(|| DataError::format(&path, "the LMDB database has no main table"))?;
        let mut keys = Vec::new();
        let mut key_ends = Vec::new();
        for item in db.lazily_decode_data().iter(&rtxn).map_err(|e| lmdb_error(&path, e))? {
            let (k, _) = item.map_err(|e| lmdb_error(&path, e))?;
            keys.extend_from_slice(k);
            key_ends.push(keys.len());
        }
        drop(rtxn);
        if key_ends.is_empty() {
            return Err(DataError::format(&path, "the LMDB database is empty: no images"));
        }
        Ok(Lsun { spec: spec.clone(), path, env, db, keys, key_ends, resolution: resolution.unwrap_or(DEFAULT_RESOLUTION) })
    }

    fn key(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.key_ends[index - 1] };
        &self.keys[start..self.key_ends[index]]
    }
}

impl Dataset for Lsun {
    fn len(&self) -> usize {
        self.key_ends.len()
    }

    fn info(&self) -> DatasetInfo {
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // LSUN folders are named after their split: bedroom_train_lmdb, church_outdoor_val_lmdb.
        let split = ["train", "val", "test"].into_iter().find(|s| name.contains(&format!("_{s}"))).map(str::to_string);
        DatasetInfo {
            spec: self.spec.to_string(),
            format: "lsun-lmdb".to_string(),
            count: self.len(),
            resolution: self.resolution,
            channels: 3,
            split,
            source: self.path.display().to_string(),
        }
    }

    fn encoded(&self, index: usize) -> Result<Bytes, DataError> {
        if index >= self.len() {
            return Err(DataError::IndexOutOfRange { index, len: self.len() });
        }
        let rtxn = self.env.read_txn().map_err(|e| lmdb_error(&self.path, e))?;
        let value = self.db.get(&rtxn, self.key(index)).map_err(|e| lmdb_error(&self.path, e))?.ok_or_else(|| {
            DataError::format(&self.path, format!("key {} vanished: was the database changed while open?", self.describe(index)))
        })?;
        Ok(Bytes::copy_from_slice(value))
    }

    fn decoder(&self) -> Decoder {
        Decoder::new(SampleFormat::Image, self.resolution)
    }

    fn describe(&self, index: usize) -> String {
        if index >= self.len() {
            return format!("LSUN image {index}");
        }
        format!("LSUN image {index} (key {} in {})", String::from_utf8_lossy(self.key(index)), self.path.display())
    }
}
